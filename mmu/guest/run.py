"""Run a guest program on the simulated machine: the executor's Python driver (``mmu run``).

:func:`run_program` loads a :class:`~mmu.guest.asm.Program` as process 1 of a fresh
:class:`~mmu.engine.Machine`, runs slices of it in numba (:func:`mmu.guest.cpu.cpu_slice`)
and performs the system calls, the processes' bookkeeping (parents, zombies, wait) and the
round-robin scheduling here, in Python: they are rare. Everything the guest kernel does to
page tables and TLBs -- mmap, munmap, fork, exit, context switches -- is an OS event run by
the numba kernels of :mod:`mmu.guest.osops` and :mod:`mmu.modes.cpuops`, the same code that
replays those events from a trace. The rules (scheduling, syscall results, fault order and
fault messages) are those of ``docs/isa.md``; the tests hold the console output, exit statuses,
instruction counts and faults to an independent reference interpreter written from that
document (``tests/reference/guest_cpu.py``), in every mode.

The program's text and data are not copied in up front: process 1's text and data mappings
are file-backed (``MAP_FILE`` in their mmap events) and name rows of the program image
(``osst.image``), and a demand fault fills the new frame from the image instead of clearing it
(never the zero page), as a kernel reads a page of an executable in. So loading
costs the same work as mapping anonymous memory, and a trace recorded with ``record_path``
(every translated access and every OS event, in order) replays to identical stats.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmu.engine import Machine, MachineConfig
from mmu.errors import MMUInputError
from mmu.guest.asm import Program
from mmu.guest.cpu import (
    EX_BUDGET,
    EX_FAULT,
    EX_HALT,
    EX_NEED_MEM,
    EX_OUT_OF_FRAMES,
    EX_RECORDS_FULL,
    EX_SYSCALL,
    FA_DECODE,
    FA_FETCH,
    FA_STORE,
    X_ACCESS,
    X_ADDR,
    X_ARG,
    X_LEN,
    X_PC,
    X_PID,
    X_RAND,
    X_RECORD,
    X_ROW,
    X_SIGNAL,
    X_SIZE,
    cpu_event,
    cpu_slice,
)
from mmu.guest.isa import (
    DEFAULT_QUANTUM,
    DEFAULT_SEED,
    INIT_PID,
    MASK64,
    MAX_PID,
    MMAP_BASE,
    MMAP_END,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_MASK,
    PROT_WRITE,
    REG_A0,
    REG_A1,
    REG_SP,
    SIGILL,
    SIGNAL_NAMES,
    SIGSEGV,
    STACK_TOP,
    SYS_ERROR,
    SYS_EXIT,
    SYS_FORK,
    SYS_GETARG,
    SYS_MMAP,
    SYS_MUNMAP,
    SYS_WAIT,
    SYS_WRITE,
    SYS_YIELD,
    USED_MASK_TABLE,
    USER_TOP,
    to_signed64,
)
from mmu.guest.os import OS_OK, OS_TOO_MANY_PROCS, VMA_IMAGE
from mmu.guest.osops import (
    EV_PROT_GIVEN,
    EV_PROT_SHIFT,
    OS_NEED_ROOM,
    os_mmap_place,
    os_peek_user,
    os_prot_of,
    os_range_mapped,
    vma_index,
)
from mmu.trace.format import TraceWriter, base_header
from mmu.trace.ops import MAP_FILE, OP_EXIT, OP_FORK, OP_MMAP, OP_MUNMAP, OP_SWITCH, RECORD_DTYPE

__all__ = ["DEFAULT_MAX_INSTRUCTIONS", "run_program"]

DEFAULT_MAX_INSTRUCTIONS = 100_000_000
RECORD_BUFFER = 1 << 16  # accesses buffered between writes of a recorded trace

_READY, _BLOCKED, _ZOMBIE, _DEAD = "ready", "blocked", "zombie", "dead"
_ACCESS_NAMES = ("load", "store", "fetch", "decode")


@dataclass(frozen=True)
class Fault:
    """A fault that killed a process (``docs/isa.md``, *Faults*).

    Attributes
    ----------
    pid, signal, pc : int
        The process, SIGSEGV / SIGBUS / SIGILL, and the address of the faulting instruction.
    access : str
        "fetch", "load", "store", or "decode" (illegal instruction).
    addr, size : int
        The address and size of the access (for "decode": the instruction word and 8).
    reason : str
        "unmapped", "not writable", "not executable", "misaligned" or "illegal instruction".
    """

    pid: int
    signal: int
    pc: int
    access: str
    addr: int
    size: int
    reason: str

    @property
    def message(self) -> str:
        """The one-line message ``docs/isa.md`` specifies."""
        head = f"pid {self.pid}: {SIGNAL_NAMES[self.signal]}"
        if self.signal == SIGILL:
            return f"{head}: word {self.addr:#018x} at pc {self.pc:#x}"
        return f"{head}: {self.access} of {self.size} bytes at {self.addr:#x}: {self.reason} (pc {self.pc:#x})"


@dataclass(eq=False)
class _Proc:
    pid: int
    ppid: int
    regs: np.ndarray  # uint64[32]
    pc: int
    rand: int
    state: str = _READY
    status: int | None = None
    children: set[int] = field(default_factory=set)
    zombies: list[int] = field(default_factory=list)


class _Executor:
    """One run: the machine, the processes, the scheduler, the system calls, the recorder."""

    def __init__(self, program: Program, args, config: MachineConfig, seed: int, quantum: int, record_path) -> None:
        if not 0 < seed <= MASK64:
            raise MMUInputError(f"seed must be in 1..2**64-1, got {seed}")
        if quantum < 1:
            raise MMUInputError(f"quantum must be >= 1, got {quantum}")
        self.args = []
        for a in args:
            a = int(a)
            if not -(1 << 63) <= a <= MASK64:
                raise MMUInputError(f"argument {a} does not fit in 64 bits")
            self.args.append(a & MASK64)
        self.program = program
        self.quantum = quantum
        self.m = Machine(config)
        self.console = bytearray()
        self.procs: dict[int, _Proc] = {}
        self.statuses: dict[int, int] = {}
        self.faults: list[Fault] = []
        self.runq: deque[_Proc] = deque()
        self.current: _Proc | None = None
        self.slice_used = 0
        self.last_pid = 0
        self.switches = 0
        self.instructions = 0
        self.next_pid = INIT_PID + 1
        self.halted: _Proc | None = None
        self.cpu = np.zeros(X_LEN, dtype=np.int64)
        self.used_mask = np.ascontiguousarray(USED_MASK_TABLE, dtype=np.uint64)
        self.recording = record_path is not None
        n = RECORD_BUFFER if self.recording else 2
        self.rec = (
            np.zeros(n, dtype=np.uint64),
            np.zeros(n, dtype=np.uint32),
            np.zeros(n, dtype=np.uint16),
            np.zeros(n, dtype=np.uint8),
        )
        self.rpos = np.zeros(1, dtype=np.int64)
        self.writer: TraceWriter | None = None
        if record_path is not None:
            header = base_header(
                "mmu run", program.filename, "mmu run (guest CPU executor)",
                notes="every translated access and OS event of a guest run; mmap flags = prot (| MAP_FILE: text, data)",
                args=[int(a) for a in args], mode=config.mode,
            )  # fmt: skip
            self.writer = TraceWriter(record_path, header)
        self._load(seed)

    # -- loading --------------------------------------------------------------------------------
    def _load(self, seed: int) -> None:
        segs = self.program.segments()
        image_pages = [seg for seg in segs if seg.content]
        total = sum(-(-len(s.content) // PAGE_SIZE) for s in image_pages)
        image = np.zeros((max(1, total), PAGE_SIZE // 8), dtype=np.uint64)
        rows: dict[int, int] = {}
        at = 0
        for seg in image_pages:
            raw = seg.content + bytes(-len(seg.content) % PAGE_SIZE)
            words = np.frombuffer(raw, dtype="<u8").reshape(-1, PAGE_SIZE // 8)
            image[at : at + len(words)] = words
            rows[seg.start] = at
            at += len(words)
        m = self.m
        m.osst = m.osst._replace(image=image)
        for seg in segs:
            # text and data are private file mappings (MAP_FILE): never the zero page
            flags = seg.prot | (MAP_FILE if seg.content else 0)
            self._event(OP_MMAP, INIT_PID, seg.start, seg.size >> PAGE_SHIFT, flags)
            if seg.start in rows:
                row = int(m.osst.pid2slot[INIT_PID])
                i = int(vma_index(m.osst, np.int64(row), np.int64(seg.start >> PAGE_SHIFT)))
                m.osst.vmas[row, i, VMA_IMAGE] = rows[seg.start]
        regs = np.zeros(32, dtype=np.uint64)
        regs[REG_SP] = STACK_TOP
        p = _Proc(INIT_PID, 0, regs, self.program.entry, seed)
        self.procs[INIT_PID] = p
        self.runq.append(p)

    # -- the guest kernel's events ------------------------------------------------------------------
    def _flush_records(self) -> None:
        k = int(self.rpos[0])
        if self.writer is not None and k:
            r = np.zeros(k, dtype=RECORD_DTYPE)
            r["addr"], r["arg"], r["pid"], r["op"] = (a[:k] for a in self.rec)
            self.writer.write(r, validate=False)
        self.rpos[0] = 0

    def _event(self, op: int, pid: int, addr: int = 0, arg: int = 0, flags: int = 0) -> int:
        """Perform an OS event in the numba kernels, and record it if it happened."""
        m = self.m
        self._flush_records()
        m._grow()
        m.galloc.reserve_frees(m.galloc.live + 1)
        karg = arg | ((flags | EV_PROT_GIVEN) << EV_PROT_SHIFT) if op == OP_MMAP else arg
        for _attempt in range(2):
            st = int(
                cpu_event(m.state, np.int64(op), np.int64(pid), np.int64(addr), np.int64(karg))
            )  # fmt: skip
            if st != OS_NEED_ROOM:
                break
            m._grow(event=True)  # a big fork / exit / munmap: reserve for it, then do it
        if st == OS_OK and self.writer is not None:
            r = np.zeros(1, dtype=RECORD_DTYPE)
            r["addr"], r["arg"], r["pid"], r["op"], r["flags"] = addr, arg, pid, op, flags
            self.writer.write(r)
        return st

    def _must(self, st: int) -> None:
        if st == OS_TOO_MANY_PROCS:
            raise MMUInputError("more than 4096 processes")
        if st != OS_OK:
            raise MMUInputError("the guest ran out of physical frames")

    # -- scheduler (docs/isa.md, *Processes and scheduling*) ---------------------------------------
    def run(self, max_instructions: int) -> str:
        remaining = max_instructions
        reason = "exit"
        while self.halted is None:
            if self.current is None:
                if not self.runq:
                    break
                if remaining <= 0:
                    reason = "limit"
                    break
                p = self.runq.popleft()
                self.current = p
                self.slice_used = 0
                if p.pid != self.last_pid:
                    self.switches += 1
                    self.last_pid = p.pid
                    self._must(self._event(OP_SWITCH, p.pid))
            p = self.current
            budget = min(self.quantum - self.slice_used, remaining)
            if budget <= 0:
                reason = "limit"
                break
            outcome, n = self._slice(p, budget)
            self.instructions += n
            remaining -= n
            self.slice_used += n
            if outcome == "quantum":
                if self.slice_used < self.quantum:
                    reason = "limit"
                    break
                self.runq.append(p)
                self.current = None
            elif outcome == "yield":
                self.runq.append(p)
                self.current = None
            else:  # block, exit, halt
                self.current = None
        self._flush_records()
        if self.halted is not None:
            return "halt"
        return reason

    def _slice(self, p: _Proc, budget: int) -> tuple[str, int]:
        m = self.m
        cpu = self.cpu
        cpu[X_PC] = np.int64(to_signed64(p.pc))
        cpu[X_ROW] = int(m.osst.pid2slot[p.pid])
        cpu[X_PID] = p.pid
        cpu[X_RECORD] = 1 if self.recording else 0
        cpu[X_RAND] = np.int64(to_signed64(p.rand))
        done = 0
        while True:
            t0 = time.perf_counter()
            ex, n = cpu_slice(m.state, p.regs, cpu, self.used_mask, np.int64(budget - done), self.rec, self.rpos)
            m.elapsed += time.perf_counter() - t0
            done += int(n)
            p.pc = int(cpu[X_PC]) & MASK64
            p.rand = int(cpu[X_RAND]) & MASK64
            if ex == EX_BUDGET:
                return "quantum", done
            if ex == EX_NEED_MEM:
                m._grow()
                continue
            if ex == EX_RECORDS_FULL:
                self._flush_records()
                continue
            if ex == EX_SYSCALL:
                outcome = self._syscall(p, to_signed64(int(cpu[X_ARG])))
                if outcome is not None:
                    return outcome, done
                if done >= budget:
                    return "quantum", done
                cpu[X_PC] = np.int64(to_signed64(p.pc))
                continue
            if ex == EX_HALT:
                self.halted = p
                return "halt", done
            if ex == EX_FAULT:
                self._fault(p)
                return "exit", done
            assert ex == EX_OUT_OF_FRAMES
            raise MMUInputError("the guest ran out of physical frames")

    def _fault(self, p: _Proc) -> None:
        cpu = self.cpu
        sig = int(cpu[X_SIGNAL])
        kind = int(cpu[X_ACCESS])
        addr = int(cpu[X_ADDR]) & MASK64
        if kind == FA_DECODE:
            reason = "illegal instruction"
        elif sig != SIGSEGV:
            reason = "misaligned"
        else:
            prot = self._prot(p.pid, addr)
            if prot == 0:
                reason = "unmapped"
            elif kind == FA_STORE and not prot & PROT_WRITE:
                reason = "not writable"
            elif kind == FA_FETCH and not prot & PROT_EXEC:
                reason = "not executable"
            else:
                reason = "unmapped"
        self.faults.append(Fault(p.pid, sig, p.pc, _ACCESS_NAMES[kind], addr, int(cpu[X_SIZE]), reason))
        self._terminate(p, -sig)

    def _prot(self, pid: int, addr: int) -> int:
        if addr >= USER_TOP:
            return 0
        return int(os_prot_of(self.m.osst, np.int64(self.m.osst.pid2slot[pid]), np.int64(addr >> PAGE_SHIFT)))

    # -- system calls (docs/isa.md, *System calls*) -----------------------------------------------
    def _syscall(self, p: _Proc, number: int) -> str | None:
        """System call ``number`` (pc already past it); rand and getpid ran in the kernel."""
        regs = p.regs
        a0, a1 = int(regs[REG_A0]), int(regs[REG_A1])
        if number == SYS_EXIT:
            self._terminate(p, to_signed64(a0))
            return "exit"
        if number == SYS_WRITE:
            regs[REG_A0] = self._sys_write(p, a0, a1)
        elif number == SYS_MMAP:
            regs[REG_A0] = self._sys_mmap(p, a0, a1)
        elif number == SYS_MUNMAP:
            regs[REG_A0] = self._sys_munmap(p, a0, a1)
        elif number == SYS_FORK:
            regs[REG_A0] = self._sys_fork(p)
        elif number == SYS_WAIT:
            if p.zombies:
                child = self.procs[p.zombies.pop(0)]
                p.children.discard(child.pid)
                child.state = _DEAD
                regs[REG_A0] = child.pid
                regs[REG_A1] = child.status & MASK64
            elif p.children:
                p.state = _BLOCKED
                return "block"
            else:
                regs[REG_A0] = SYS_ERROR
                regs[REG_A1] = 0
        elif number == SYS_YIELD:
            regs[REG_A0] = 0
            return "yield"
        elif number == SYS_GETARG:
            regs[REG_A0] = self.args[a0] if a0 < len(self.args) else a1
        else:
            regs[REG_A0] = SYS_ERROR
        return None

    def _sys_write(self, p: _Proc, ptr: int, length: int) -> int:
        if length == 0:
            return 0
        if length > USER_TOP or ptr + length > USER_TOP:
            return SYS_ERROR
        osst = self.m.osst
        row = np.int64(osst.pid2slot[p.pid])
        first, last = ptr >> PAGE_SHIFT, (ptr + length - 1) >> PAGE_SHIFT
        if not os_range_mapped(osst, row, np.int64(first), np.int64(last)):
            return SYS_ERROR
        buf = np.zeros(length, dtype=np.uint8)
        os_peek_user(self.m.mem.state, self.m.vm, osst, row, np.int64(ptr), buf)
        self.console += buf.tobytes()
        return length

    def _sys_mmap(self, p: _Proc, length: int, prot: int) -> int:
        if length == 0 or length > MMAP_END - MMAP_BASE or prot & ~PROT_MASK:
            return SYS_ERROR
        npages = (length + PAGE_SIZE - 1) >> PAGE_SHIFT
        osst = self.m.osst
        vpn = int(
            os_mmap_place(
                osst, np.int64(osst.pid2slot[p.pid]), np.int64(npages), np.int64(MMAP_BASE >> PAGE_SHIFT),
                np.int64(MMAP_END >> PAGE_SHIFT),
            )
        )  # fmt: skip
        if vpn < 0:
            return SYS_ERROR
        addr = vpn << PAGE_SHIFT
        if self._event(OP_MMAP, p.pid, addr, npages, prot) != OS_OK:
            return SYS_ERROR  # the process's mapping table is full
        return addr

    def _sys_munmap(self, p: _Proc, addr: int, length: int) -> int:
        if addr & (PAGE_SIZE - 1) or length == 0 or length > USER_TOP:
            return SYS_ERROR
        npages = (length + PAGE_SIZE - 1) >> PAGE_SHIFT
        if ((addr >> PAGE_SHIFT) + npages) << PAGE_SHIFT > USER_TOP:
            return SYS_ERROR
        st = self._event(OP_MUNMAP, p.pid, addr, npages)
        if st != OS_OK:
            # only a split that finds the mapping table full; the ISA has no such limit
            raise MMUInputError(f"pid {p.pid}: munmap needs more than the kernel's mappings per process")
        return 0

    def _sys_fork(self, p: _Proc) -> int:
        if self.next_pid > MAX_PID:
            return SYS_ERROR
        cpid = self.next_pid
        self._must(self._event(OP_FORK, p.pid, 0, cpid))
        self.next_pid += 1
        regs = p.regs.copy()
        regs[REG_A0] = 0
        child = _Proc(cpid, p.pid, regs, p.pc, p.rand)
        self.procs[cpid] = child
        p.children.add(cpid)
        self.runq.append(child)
        return cpid

    def _terminate(self, p: _Proc, status: int) -> None:
        self._must(self._event(OP_EXIT, p.pid))
        p.status = status
        self.statuses[p.pid] = status
        for cpid in p.children:
            c = self.procs[cpid]
            c.ppid = 0
            if c.state == _ZOMBIE:
                c.state = _DEAD
        p.children.clear()
        p.zombies.clear()
        parent = self.procs.get(p.ppid)
        if parent is None or parent.state in (_ZOMBIE, _DEAD):
            p.state = _DEAD
        elif parent.state == _BLOCKED:
            p.state = _DEAD
            parent.children.discard(p.pid)
            parent.regs[REG_A0] = p.pid
            parent.regs[REG_A1] = status & MASK64
            parent.state = _READY
            self.runq.append(parent)
        else:
            p.state = _ZOMBIE
            parent.zombies.append(p.pid)


def run_program(
    program: Program,
    args=(),
    config: MachineConfig | None = None,
    record_path: str | Path | None = None,
    max_instructions: int = DEFAULT_MAX_INSTRUCTIONS,
    *,
    seed: int = DEFAULT_SEED,
    quantum: int = DEFAULT_QUANTUM,
) -> dict[str, Any]:
    """Run ``program`` with command-line ``args`` on a fresh machine and return its stats object.

    Parameters
    ----------
    program : Program
        An assembled program (:func:`mmu.guest.asm.assemble_file`).
    args : sequence of int
        Returned by getarg (stored mod 2**64).
    config : MachineConfig, optional
        Mode, CPU preset, costs (default: native on skylake).
    record_path : path, optional
        Write a trace of every translated access and OS event; ``mmu replay`` of it gives the
        same stats.
    max_instructions : int
        Stop after this many instructions retire (``reason`` "limit").
    seed, quantum : int
        Process 1's rand() state and the scheduler's slice (``docs/isa.md``).

    Returns
    -------
    dict
        The common stats object (:meth:`mmu.engine.Machine.result`) with these keys added:
        ``program``, ``args``, ``console`` (text), ``exit_code`` (pid 1's status; the halting
        process's a0 after ``halt``; None at the limit), ``reason`` ("exit", "halt" or
        "limit"), ``instructions``, ``instructions_per_s``, ``guest_processes``, ``switches``,
        ``statuses`` (pid -> status) and ``faults`` (messages).

    Raises
    ------
    MMUInputError
        Bad arguments, or the guest ran out of frames or processes.
    """
    config = config or MachineConfig()
    ex = _Executor(program, args, config, seed, quantum, record_path)
    try:
        reason = ex.run(max_instructions)
    except BaseException:
        if ex.writer is not None:
            ex.writer.abort()
        raise
    if ex.halted is not None:
        exit_code: int | None = to_signed64(int(ex.halted.regs[REG_A0]))
    elif reason == "limit":
        exit_code = None
    else:
        exit_code = ex.statuses.get(INIT_PID)
    if ex.writer is not None:
        ex.writer.update_header(exit_status=exit_code, instructions=ex.instructions)
        ex.writer.close()
    elapsed = ex.m.elapsed
    return ex.m.result(
        extra={
            "program": program.filename,
            "args": [int(a) for a in args],
            "console": ex.console.decode("utf-8", errors="replace"),
            "exit_code": exit_code,
            "reason": reason,
            "instructions": ex.instructions,
            "instructions_per_s": round(ex.instructions / elapsed) if elapsed > 0 else None,
            "guest_processes": len(ex.procs),
            "switches": ex.switches,
            "statuses": {str(k): v for k, v in ex.statuses.items()},
            "faults": [f.message for f in ex.faults],
        }
    )
