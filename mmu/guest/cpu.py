"""The guest CPU: a numba interpreter of the guest ISA (``docs/isa.md``) on the simulated MMU.

:func:`cpu_slice` runs one process until a system call, ``halt``, a fault or the end of its
slice. Every instruction fetch is a :func:`~mmu.modes.dispatch.translate_access` with
ACC_FETCH and every load and store one with ACC_READ / ACC_WRITE, through the TLBs, walkers
and VMM of the active mode, counted in ``stats`` exactly as the replay kernel counts trace
records; with recording on, each translated access is appended to the record buffers, so a
replay of the recorded trace repeats the same work. Data lives in the guest frames the
translation names (64-bit words of :mod:`mmu.memory`; smaller accesses are masked in).

The semantics are those of ``docs/isa.md`` (held to the reference interpreter in
``tests/reference/guest_cpu.py`` by the tests); the system calls, the scheduler and the
processes are the Python driver's (:mod:`mmu.guest.run`).
"""

from __future__ import annotations

import numpy as np

from mmu._jit import jit
from mmu.engine import ROOM_FRAMES
from mmu.guest.isa import (
    OPC_BEQ,
    OPC_BGE,
    OPC_BLT,
    OPC_BLTU,
    OPC_BNE,
    OPC_HALT,
    OPC_JAL,
    OPC_JALR,
    OPC_LD1S,
    OPC_LI,
    OPC_SYSCALL,
    REG_A0,
    SIGBUS,
    SIGILL,
    SIGSEGV,
    SYS_GETPID,
    SYS_RAND,
)
from mmu.guest.os import OS_OK
from mmu.guest.osops import os_event
from mmu.memory import ALIGN_ROOM, alloc_room, mem_read, mem_room, mem_write
from mmu.modes.cpuops import switch_to
from mmu.modes.dispatch import translate_access, translate_hit
from mmu.modes.shadow import sh_budget
from mmu.modes.vmm import MODE_NATIVE, MODE_SHADOW, V_MODE, vm_hpa, vm_room
from mmu.state import GuestMemory
from mmu.stats import S_ACCESSES, S_EVENTS, S_READS
from mmu.trace.ops import OP_SWITCH
from mmu.x86.bits import ACC_FETCH, ACC_READ, ACC_WRITE

# Slice outcomes (first element of cpu_slice's result).
EX_BUDGET = 0  # ``budget`` instructions retired
EX_SYSCALL = 1  # a ``syscall`` retired; its number is in cpu[X_ARG] (rand and getpid run here)
EX_HALT = 2  # a ``halt`` retired
EX_FAULT = 3  # an instruction faulted (did not retire): cpu[X_SIGNAL], X_ACCESS, X_ADDR, X_SIZE
EX_NEED_MEM = 4  # grow memory (Machine._grow), then call again: nothing was done for this instruction
EX_RECORDS_FULL = 5  # drain the record buffers, then call again
EX_OUT_OF_FRAMES = 6  # the guest ran out of physical frames

# cpu: int64[X_LEN], the interpreter's view of the running process.
X_PC = 0  # pc (in and out)
X_ROW = 1  # process row of the guest OS
X_PID = 2  # pid (recorded with each access)
X_RECORD = 3  # 1: append each translated access to the record buffers
X_ARG = 4  # out: syscall number (EX_SYSCALL)
X_SIGNAL = 5  # out (EX_FAULT): SIGBUS, SIGSEGV or SIGILL
X_ACCESS = 6  # out (EX_FAULT): FA_LOAD, FA_STORE, FA_FETCH or FA_DECODE
X_ADDR = 7  # out (EX_FAULT): address of the access (FA_DECODE: the instruction word)
X_SIZE = 8  # out (EX_FAULT): bytes of the access
X_RAND = 9  # the process's rand() state (in and out; a uint64 bit pattern)
X_LEN = 16

FA_LOAD = 0
FA_STORE = 1
FA_FETCH = 2
FA_DECODE = 3

_U0 = np.uint64(0)
_U1 = np.uint64(1)
_ONES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_I64_MIN = np.uint64(1 << 63)
_SIZE_MASK = (np.uint64(0xFF), np.uint64(0xFFFF), np.uint64(0xFFFF_FFFF), _ONES)


@jit(inline="always")
def _alu(fn, a, b):
    """ALU function ``fn`` (low nibble of the opcode) of uint64 ``a`` and ``b``."""
    if fn == 1:
        return a + b
    if fn == 2:
        return a - b
    if fn == 3:
        return a * b
    if fn == 4 or fn == 6:  # signed: truncate toward zero (RISC-V rules for 0 and overflow)
        if b == _U0:
            return _ONES if fn == 4 else a
        if a == _I64_MIN and b == _ONES:
            return _I64_MIN if fn == 4 else _U0
        neg_a = np.int64(a) < 0
        neg_b = np.int64(b) < 0
        ua = _U0 - a if neg_a else a
        ub = _U0 - b if neg_b else b
        q = ua // ub
        if neg_a != neg_b:
            q = _U0 - q
        return q if fn == 4 else a - q * b
    if fn == 5:
        return _ONES if b == _U0 else a // b
    if fn == 7:
        return a if b == _U0 else a % b
    if fn == 8:
        return a & b
    if fn == 9:
        return a | b
    if fn == 10:
        return a ^ b
    if fn == 11:
        return a << (b & np.uint64(63))
    if fn == 12:
        return a >> (b & np.uint64(63))
    if fn == 13:
        return np.uint64(np.int64(a) >> np.int64(b & np.uint64(63)))
    if fn == 14:
        return _U1 if np.int64(a) < np.int64(b) else _U0
    return _U1 if a < b else _U0


@jit
def cpu_slice(m, regs, cpu, used_mask, budget, rec, rpos):
    """Run process ``cpu[X_ROW]`` from ``cpu[X_PC]`` for at most ``budget`` instructions.

    Parameters
    ----------
    m : mmu.state.MachineState
        The machine, as :func:`mmu.engine.replay_kernel` takes it (mutated alike).
    regs : uint64[32]
        The process's registers (mutated; r0 stays 0).
    cpu : int64[X_LEN]
        pc, process row, pid, rand() state and recording flag in; pc, rand() state and the
        outcome's details out.
    used_mask : uint64[256]
        :data:`mmu.guest.isa.USED_MASK_TABLE` (valid-encoding masks by opcode).
    budget : int
        Instructions that may retire.
    rec : tuple
        ``(addr uint64[m], arg uint32[m], pid uint16[m], op uint8[m])`` record buffers,
        filled from ``rpos[0]`` (int64[1], mutated) when ``cpu[X_RECORD]``.

    Returns
    -------
    (outcome, retired)
        An ``EX_*`` outcome and the instructions retired (a syscall or halt counts).
    """
    mem, halloc, galloc, vm, hcache, sh, osst = m.mem, m.halloc, m.galloc, m.vm, m.hcache, m.sh, m.osst
    tlb, psc, ptc, stats, cfg, scratch = m.tlb, m.psc, m.ptc, m.stats, m.cfg, m.scratch
    gm = GuestMemory(mem, halloc, vm, stats, sh)
    raddr, rarg, rpid, rop = rec
    cap = raddr.shape[0] - 2
    recording = cpu[X_RECORD] != 0
    row = cpu[X_ROW]
    pid = np.uint16(cpu[X_PID])
    virt = vm.vmeta[V_MODE] != MODE_NATIVE
    shadow = vm.vmeta[V_MODE] == MODE_SHADOW
    pc = cpu[X_PC]
    n = np.int64(0)
    shb = np.int64(0)  # translations the shadow state has room for
    outcome = EX_BUDGET
    data = False  # the next translation is the data access of the fetched instruction
    va = pc
    access = ACC_FETCH
    size = np.int64(8)
    op = 0
    rd = 0
    rs2 = 0
    while True:
        if not data:
            if n >= budget:
                break
            if (
                not mem_room(mem, ROOM_FRAMES)
                or not alloc_room(galloc, ALIGN_ROOM)
                or (virt and not vm_room(vm, galloc, halloc))
            ):
                outcome = EX_NEED_MEM
                break
            if shadow and shb < 2:
                shb = sh_budget(sh, galloc, halloc)
                if shb < 2:
                    outcome = EX_NEED_MEM
                    break
            if recording and rpos[0] > cap:
                outcome = EX_RECORDS_FULL
                break
            if (pc & 7) != 0:
                cpu[X_SIGNAL] = SIGBUS
                cpu[X_ACCESS] = FA_FETCH
                cpu[X_ADDR] = pc
                cpu[X_SIZE] = 8
                outcome = EX_FAULT
                break
            va = pc
            access = ACC_FETCH
            size = 8
        shb -= 1
        stats[S_ACCESSES] += 1
        stats[S_READS + access] += 1
        hit, gpa = translate_hit(vm, sh, osst, tlb, cfg, row, va, access)
        st = OS_OK
        if not hit:
            st, gpa = translate_access(gm, galloc, hcache, osst, tlb, psc, ptc, stats, cfg, row, va, access, scratch)
        if recording:
            k = rpos[0]
            raddr[k] = np.uint64(va)
            rarg[k] = np.uint32(size)
            rpid[k] = pid
            rop[k] = np.uint8(access)
            rpos[0] = k + 1
        if st != OS_OK:
            outcome = EX_OUT_OF_FRAMES
            break
        if gpa < 0:
            cpu[X_SIGNAL] = SIGSEGV
            cpu[X_ACCESS] = FA_FETCH if access == ACC_FETCH else (FA_STORE if access == ACC_WRITE else FA_LOAD)
            cpu[X_ADDR] = va
            cpu[X_SIZE] = size
            outcome = EX_FAULT
            break
        hpa = vm_hpa(vm, gpa) if virt else gpa
        if data:
            # finish the load or store of the instruction fetched before
            shift = np.uint64(8 * (va & 7))
            mask = _SIZE_MASK[op & 3]
            word = mem_read(mem, hpa & ~np.int64(7))
            if access == ACC_READ:
                v = (word >> shift) & mask
                if op >= OPC_LD1S and size < 8 and (v >> np.uint64(8 * size - 1)) != _U0:
                    v |= ~mask
                if rd != 0:
                    regs[rd] = v
            else:
                word = (word & ~(mask << shift)) | ((regs[rs2] & mask) << shift)
                mem_write(mem, hpa & ~np.int64(7), word)
            data = False
            pc += 8
            n += 1
            continue
        w = mem_read(mem, hpa)
        op = np.int64(w & np.uint64(0xFF))
        um = used_mask[op]
        if um == _U0 or (w & ~um) != _U0:
            cpu[X_SIGNAL] = SIGILL
            cpu[X_ACCESS] = FA_DECODE
            cpu[X_ADDR] = np.int64(w)
            cpu[X_SIZE] = 8
            outcome = EX_FAULT
            break
        rd = np.int64((w >> np.uint64(8)) & np.uint64(31))
        rs1 = np.int64((w >> np.uint64(13)) & np.uint64(31))
        rs2 = np.int64((w >> np.uint64(18)) & np.uint64(31))
        imm = np.int64(np.int32(np.uint32(w >> np.uint64(32))))
        npc = pc + 8
        if op < 0x20:  # ALU; bit 4 selects the sign-extended immediate
            v = _alu(op & 15, regs[rs1], np.uint64(imm) if (op & 0x10) != 0 else regs[rs2])
            if rd != 0:
                regs[rd] = v
        elif op < 0x30:
            if rd != 0:
                if op == OPC_LI:
                    regs[rd] = np.uint64(imm)
                else:
                    regs[rd] = (regs[rd] & np.uint64(0xFFFF_FFFF)) | (np.uint64(np.uint32(imm)) << np.uint64(32))
        elif op < 0x40:  # loads 0x30..0x36, stores 0x38..0x3B: translate the data access next
            size = np.int64(1) << (op & 3)
            va = np.int64(regs[rs1] + np.uint64(imm))
            access = ACC_READ if op < 0x38 else ACC_WRITE
            if (va & (size - 1)) != 0:
                cpu[X_SIGNAL] = SIGBUS
                cpu[X_ACCESS] = FA_LOAD if access == ACC_READ else FA_STORE
                cpu[X_ADDR] = va
                cpu[X_SIZE] = size
                outcome = EX_FAULT
                break
            data = True
            continue
        elif op < 0x48:
            a = regs[rs1]
            b = regs[rs2]
            if op == OPC_BEQ:
                taken = a == b
            elif op == OPC_BNE:
                taken = a != b
            elif op == OPC_BLT:
                taken = np.int64(a) < np.int64(b)
            elif op == OPC_BGE:
                taken = np.int64(a) >= np.int64(b)
            elif op == OPC_BLTU:
                taken = a < b
            else:
                taken = a >= b
            if taken:
                npc = pc + imm
        elif op == OPC_JAL:
            if rd != 0:
                regs[rd] = np.uint64(npc)
            npc = pc + imm
        elif op == OPC_JALR:
            target = np.int64(regs[rs1] + np.uint64(imm))  # read rs1 before writing rd
            if rd != 0:
                regs[rd] = np.uint64(npc)
            npc = target
        elif op == OPC_SYSCALL:
            # rand and getpid touch only the process's own state: no trip to Python
            if imm == SYS_RAND:
                x = np.uint64(cpu[X_RAND])
                x ^= x << np.uint64(13)
                x ^= x >> np.uint64(7)
                x ^= x << np.uint64(17)
                cpu[X_RAND] = np.int64(x)
                regs[REG_A0] = x
            elif imm == SYS_GETPID:
                regs[REG_A0] = np.uint64(cpu[X_PID])
            else:
                pc = npc
                n += 1
                cpu[X_ARG] = imm
                outcome = EX_SYSCALL
                break
        elif op == OPC_HALT:
            pc = npc
            n += 1
            outcome = EX_HALT
            break
        pc = npc
        n += 1
    cpu[X_PC] = pc
    return outcome, n


@jit
def cpu_event(m, op, pid, addr, arg):
    """The guest kernel performs OS event ``op`` (OP_SWITCH or an :func:`~mmu.guest.osops.os_event`)
    on machine ``m`` (a MachineState).

    Counted in ``stats`` as the replay kernel counts an event record (only when it succeeds,
    since only then is it recorded). Returns an ``OS_*`` status.
    """
    galloc, osst, tlb, psc, stats, cfg = m.galloc, m.osst, m.tlb, m.psc, m.stats, m.cfg
    gm = GuestMemory(m.mem, m.halloc, m.vm, stats, m.sh)
    if op == OP_SWITCH:
        st = switch_to(gm, galloc, osst, tlb, psc, stats, cfg, pid)
    else:
        st = os_event(gm, galloc, osst, tlb, psc, stats, cfg, op, pid, addr, arg)
    if st == OS_OK:
        stats[S_EVENTS] += 1
    return st
