"""Plain-Python reference interpreter of the guest ISA: the semantic reference.

No MMU, no numba: each process has its own virtual address space made of VMAs (sorted
page ranges with mmap protections) and a dict of 4 KiB pages holding what was written
(unwritten pages read as zero). Every semantic choice is stated here and in
``docs/isa.md``; the numba interpreter must reproduce the console output, exit statuses,
instruction counts and (with ``trace=True``) the event stream exactly.

Summary of the rules (details in ``docs/isa.md``):

* Registers hold unsigned 64-bit values; arithmetic wraps mod 2**64; r0 reads 0 and
  writes to it are dropped.
* ``div``/``rem`` are signed (truncating toward zero), ``divu``/``remu`` unsigned.
  Divisor 0: quotient all ones (-1), remainder = dividend. ``INT64_MIN / -1`` =
  ``INT64_MIN``, remainder 0 (RISC-V rules). Shift amounts are the low 6 bits.
* Loads/stores must be naturally aligned (else SIGBUS); the pc must be 8-aligned when an
  instruction is fetched (else SIGBUS at the fetch). Alignment is checked before
  permissions. Readable = any prot bit; writable = PROT_WRITE; fetchable = PROT_EXEC.
  Otherwise SIGSEGV. A killed process exits with status ``-signal``.
* A faulting instruction does not retire: it is not counted and changes nothing.
* Scheduling: a FIFO run queue, slices of ``quantum`` retired instructions, round robin.
"""

from __future__ import annotations

import argparse
import bisect
import sys
from collections import deque
from dataclasses import dataclass, field

from mmu.guest.asm import Program, assemble_file
from mmu.guest.isa import (
    ALU_ADD,
    ALU_AND,
    ALU_DIV,
    ALU_DIVU,
    ALU_MUL,
    ALU_OR,
    ALU_REM,
    ALU_REMU,
    ALU_SAR,
    ALU_SHL,
    ALU_SHR,
    ALU_SLT,
    ALU_SLTU,
    ALU_SUB,
    ALU_XOR,
    DEFAULT_QUANTUM,
    DEFAULT_SEED,
    INIT_PID,
    MASK64,
    MAX_PID,
    MMAP_BASE,
    MMAP_END,
    OPC_BEQ,
    OPC_BGE,
    OPC_BGEU,
    OPC_BLT,
    OPC_BLTU,
    OPC_BNE,
    OPC_HALT,
    OPC_JAL,
    OPC_JALR,
    OPC_LD1S,
    OPC_LI,
    OPC_LIH,
    OPC_SYSCALL,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_MASK,
    PROT_WRITE,
    REG_A0,
    REG_A1,
    REG_SP,
    SIGBUS,
    SIGILL,
    SIGNAL_NAMES,
    SIGSEGV,
    STACK_TOP,
    SYS_ERROR,
    SYS_EXIT,
    SYS_FORK,
    SYS_GETARG,
    SYS_GETPID,
    SYS_MMAP,
    SYS_MUNMAP,
    SYS_RAND,
    SYS_WAIT,
    SYS_WRITE,
    SYS_YIELD,
    USER_TOP,
    decode,
    to_signed64,
    xorshift64,
)
from mmu.trace.ops import OP_EXIT, OP_FETCH, OP_FORK, OP_MMAP, OP_MUNMAP, OP_READ, OP_SWITCH, OP_WRITE

__all__ = ["Fault", "Machine", "Process", "RunResult", "alu", "run"]

DEFAULT_MAX_INSTRUCTIONS = 100_000_000

_SIGN = 1 << 63
_INT64_MIN = 1 << 63  # as an unsigned bit pattern

# Process states.
READY = "ready"  # in the run queue or running
BLOCKED = "blocked"  # in wait(), until a child exits
ZOMBIE = "zombie"  # exited, status not yet collected by its parent
DEAD = "dead"  # exited and reaped (or no parent left to reap it)

# Access kinds.
_LOAD = 0
_STORE = 1
_FETCH = 2
_ACCESS_NAMES = ("load", "store", "fetch")


def _signed(v: int) -> int:
    return v - (1 << 64) if v & _SIGN else v


def alu(fn: int, a: int, b: int) -> int:
    """The ALU: function ``fn`` (an ``ALU_*`` code, the low nibble of the opcode) of ``a`` and ``b``.

    ``a`` and ``b`` are unsigned 64-bit values (an immediate is sign-extended to 64 bits
    first); the result is unsigned 64-bit.
    """
    if fn == ALU_ADD:
        return (a + b) & MASK64
    if fn == ALU_SUB:
        return (a - b) & MASK64
    if fn == ALU_MUL:
        return (a * b) & MASK64
    if fn == ALU_DIV or fn == ALU_REM:
        if b == 0:
            return MASK64 if fn == ALU_DIV else a
        if a == _INT64_MIN and b == MASK64:  # INT64_MIN / -1 overflows
            return _INT64_MIN if fn == ALU_DIV else 0
        sa, sb = _signed(a), _signed(b)
        q = abs(sa) // abs(sb)
        if (sa < 0) != (sb < 0):
            q = -q
        return (q if fn == ALU_DIV else sa - q * sb) & MASK64
    if fn == ALU_DIVU:
        return MASK64 if b == 0 else a // b
    if fn == ALU_REMU:
        return a if b == 0 else a % b
    if fn == ALU_AND:
        return a & b
    if fn == ALU_OR:
        return a | b
    if fn == ALU_XOR:
        return a ^ b
    if fn == ALU_SHL:
        return (a << (b & 63)) & MASK64
    if fn == ALU_SHR:
        return a >> (b & 63)
    if fn == ALU_SAR:
        return (_signed(a) >> (b & 63)) & MASK64
    if fn == ALU_SLT:
        return int(_signed(a) < _signed(b))
    if fn == ALU_SLTU:
        return int(a < b)
    raise ValueError(f"not an ALU function: {fn}")


@dataclass(frozen=True)
class Fault:
    """A fault that killed a process.

    Attributes
    ----------
    pid, signal, pc : int
        The process, SIGSEGV / SIGBUS / SIGILL, and the address of the faulting instruction.
    access : str
        "fetch", "load", "store", or "decode" (illegal instruction).
    addr, size : int
        The address and size of the access (for "decode": the instruction word and 8).
    reason : str
        Why: "unmapped", "not writable", "not executable", "misaligned", "illegal instruction".
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
        head = f"pid {self.pid}: {SIGNAL_NAMES[self.signal]}"
        if self.signal == SIGILL:
            return f"{head}: word {self.addr:#018x} at pc {self.pc:#x}"
        return f"{head}: {self.access} of {self.size} bytes at {self.addr:#x}: {self.reason} (pc {self.pc:#x})"


class _Trap(Exception):
    def __init__(self, signal: int, access: int | str, addr: int, size: int, reason: str) -> None:
        super().__init__(reason)
        self.signal = signal
        self.access = access if isinstance(access, str) else _ACCESS_NAMES[access]
        self.addr = addr
        self.size = size
        self.reason = reason
        self.executed = 0


@dataclass(eq=False)
class Process:
    """One guest process: registers, pc, rand() state and address space.

    ``vmas`` is a sorted list of non-overlapping ``(first_vpn, end_vpn, prot)`` ranges;
    ``pages`` maps a virtual page number to its 4096 bytes once written.
    """

    pid: int
    ppid: int
    regs: list[int]
    pc: int
    rand: int
    vmas: list[tuple[int, int, int]] = field(default_factory=list)
    pages: dict[int, bytearray] = field(default_factory=dict)
    state: str = READY
    status: int | None = None
    children: set[int] = field(default_factory=set)
    zombies: list[int] = field(default_factory=list)  # exited children, in exit order
    instructions: int = 0
    _prot: dict[int, int] = field(default_factory=dict)  # per-page cache of vma lookups

    def prot_of(self, vpn: int) -> int:
        """mmap protection of page ``vpn`` (0 if unmapped)."""
        pr = self._prot.get(vpn)
        if pr is None:
            i = bisect.bisect_right(self.vmas, (vpn, MASK64, MASK64)) - 1
            pr = 0
            if i >= 0:
                s, e, p = self.vmas[i]
                if s <= vpn < e:
                    pr = p
            self._prot[vpn] = pr
        return pr

    def is_mapped(self, vpn: int) -> bool:
        i = bisect.bisect_right(self.vmas, (vpn, MASK64, MASK64)) - 1
        return i >= 0 and self.vmas[i][0] <= vpn < self.vmas[i][1]

    def map(self, first: int, end: int, prot: int) -> None:
        """Map pages ``[first, end)`` with ``prot`` (replacing whatever was there; zero contents)."""
        self.unmap(first, end)
        bisect.insort(self.vmas, (first, end, prot))

    def unmap(self, first: int, end: int) -> None:
        """Remove pages ``[first, end)`` from the address space (their contents are dropped)."""
        kept = []
        for s, e, p in self.vmas:
            if e <= first or s >= end:
                kept.append((s, e, p))
                continue
            if s < first:
                kept.append((s, first, p))
            if e > end:
                kept.append((end, e, p))
        self.vmas = kept
        if end - first < len(self.pages):
            for vpn in range(first, end):
                self.pages.pop(vpn, None)
        else:
            for vpn in [v for v in self.pages if first <= v < end]:
                del self.pages[vpn]
        self._prot.clear()

    def read(self, addr: int, size: int) -> int:
        """Unchecked little-endian read of ``size`` bytes at ``addr`` (within one page)."""
        page = self.pages.get(addr >> PAGE_SHIFT)
        if page is None:
            return 0
        off = addr & (PAGE_SIZE - 1)
        return int.from_bytes(page[off : off + size], "little")

    def write(self, addr: int, size: int, value: int) -> None:
        """Unchecked little-endian write of the low ``size`` bytes of ``value`` at ``addr``."""
        vpn = addr >> PAGE_SHIFT
        page = self.pages.get(vpn)
        if page is None:
            page = self.pages[vpn] = bytearray(PAGE_SIZE)
        off = addr & (PAGE_SIZE - 1)
        page[off : off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def check(self, addr: int, size: int, kind: int) -> None:
        """Raise :class:`_Trap` unless a ``kind`` access of ``size`` bytes at ``addr`` is allowed."""
        if addr & (size - 1):
            raise _Trap(SIGBUS, kind, addr, size, "misaligned")
        pr = self.prot_of(addr >> PAGE_SHIFT)
        if pr == 0:
            raise _Trap(SIGSEGV, kind, addr, size, "unmapped")
        if kind == _STORE and not pr & PROT_WRITE:
            raise _Trap(SIGSEGV, kind, addr, size, "not writable")
        if kind == _FETCH and not pr & PROT_EXEC:
            raise _Trap(SIGSEGV, kind, addr, size, "not executable")


@dataclass
class RunResult:
    """What a run produced.

    Attributes
    ----------
    console : bytes
        Everything written with write(), in order.
    exit_code : int or None
        Exit status of pid 1 (``-signal`` if a fault killed it); after ``halt``, the halting
        process's a0 as a signed value; None if the run stopped at the instruction limit.
    reason : str
        "exit" (every process has exited), "halt", or "limit".
    instructions : int
        Instructions retired by all processes.
    statuses : dict of int to int
        Exit status of every process that exited.
    faults : list of Fault
        Faults that killed processes, in order.
    switches : int
        Dispatches of a process other than the one that ran last (including the first).
    events : list of tuple or None
        With ``trace=True``: ``(op, pid, addr, arg, flags)`` in trace-format terms (see :class:`Machine`).
    """

    console: bytes
    exit_code: int | None
    reason: str
    instructions: int
    statuses: dict[int, int]
    faults: list[Fault]
    switches: int
    events: list[tuple[int, int, int, int, int]] | None = None

    @property
    def text(self) -> str:
        """The console output decoded as UTF-8 (bad bytes replaced)."""
        return self.console.decode("utf-8", errors="replace")


class Machine:
    """The reference machine: processes, a round-robin scheduler and the system calls.

    Parameters
    ----------
    program : Program
        Loaded into process 1: its segments mapped, pc = entry, sp = STACK_TOP, every other
        register 0, rand() state = ``seed``.
    args : sequence of int
        Command-line arguments returned by getarg(i, default) (stored mod 2**64).
    seed : int
        Initial rand() state of process 1 (nonzero, < 2**64).
    quantum : int
        Instructions per time slice (>= 1).
    trace : bool
        Record events: a (OP_MMAP, 1, start, pages, prot) per initial segment, then
        (OP_SWITCH, pid, 0, 0, 0) at each dispatch of a different process,
        (OP_FETCH, pid, pc, 8, 0) for each instruction fetched, (OP_READ/OP_WRITE, pid, addr,
        size, 0) for each load/store that succeeds, (OP_MMAP, pid, start, pages, prot) and
        (OP_MUNMAP, pid, start, pages, 0) for successful mmap/munmap calls,
        (OP_FORK, parent, 0, child, 0) and (OP_EXIT, pid, 0, 0, 0). A faulting access emits
        nothing (its fetch, if the fetch succeeded, is recorded). The kernel's reads of a
        write() buffer are not recorded.
    """

    def __init__(
        self,
        program: Program,
        args=(),
        seed: int = DEFAULT_SEED,
        quantum: int = DEFAULT_QUANTUM,
        trace: bool = False,
    ) -> None:
        if not 0 < seed <= MASK64:
            raise ValueError(f"seed must be in 1..2**64-1, got {seed}")
        if quantum < 1:
            raise ValueError(f"quantum must be >= 1, got {quantum}")
        self.args = []
        for a in args:
            a = int(a)
            if not -(1 << 63) <= a <= MASK64:
                raise ValueError(f"argument {a} does not fit in 64 bits")
            self.args.append(a & MASK64)
        self.program = program
        self.quantum = quantum
        self.events: list | None = [] if trace else None
        self.console = bytearray()
        self.procs: dict[int, Process] = {}
        self.statuses: dict[int, int] = {}
        self.faults: list[Fault] = []
        self.runq: deque[Process] = deque()
        self.current: Process | None = None
        self.slice_used = 0
        self.last_pid = 0
        self.switches = 0
        self.instructions = 0
        self.next_pid = INIT_PID + 1
        self.halted: Process | None = None
        self._decoded: dict[int, tuple | None] = {}

        regs = [0] * 32
        regs[REG_SP] = STACK_TOP
        p = Process(INIT_PID, 0, regs, program.entry, seed)
        for seg in program.segments():
            first = seg.start >> PAGE_SHIFT
            p.map(first, first + (seg.size >> PAGE_SHIFT), seg.prot)
            for off in range(0, len(seg.content), PAGE_SIZE):
                chunk = seg.content[off : off + PAGE_SIZE]
                p.pages[first + (off >> PAGE_SHIFT)] = bytearray(chunk) + bytearray(PAGE_SIZE - len(chunk))
            if self.events is not None:
                self.events.append((OP_MMAP, INIT_PID, seg.start, seg.size >> PAGE_SHIFT, seg.prot))
        self.procs[INIT_PID] = p
        self.runq.append(p)

    # -- scheduler ------------------------------------------------------------------------------
    def run(self, max_instructions: int = DEFAULT_MAX_INSTRUCTIONS) -> RunResult:
        """Run until every process has exited, a process halts, or ``max_instructions`` more retire.

        A run stopped at the limit can be continued by calling :meth:`run` again; the
        result is the same as one uninterrupted run.
        """
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
                    if self.events is not None:
                        self.events.append((OP_SWITCH, p.pid, 0, 0, 0))
            p = self.current
            budget = min(self.quantum - self.slice_used, remaining)
            if budget <= 0:
                reason = "limit"
                break
            try:
                outcome, n = self._slice(p, budget)
            except _Trap as t:
                n = t.executed
                self.faults.append(Fault(p.pid, t.signal, p.pc, t.access, t.addr, t.size, t.reason))
                self._terminate(p, -t.signal)
                outcome = "exit"
            self.instructions += n
            p.instructions += n
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
            elif outcome in ("block", "exit"):
                self.current = None
            else:  # halt
                self.current = None
        if self.halted is not None:
            reason = "halt"
            exit_code: int | None = to_signed64(self.halted.regs[REG_A0])
        elif reason == "limit":
            exit_code = None
        else:
            assert all(q.state in (ZOMBIE, DEAD) for q in self.procs.values())
            exit_code = self.statuses.get(INIT_PID)
        return RunResult(
            bytes(self.console),
            exit_code,
            reason,
            self.instructions,
            dict(self.statuses),
            list(self.faults),
            self.switches,
            self.events,
        )

    # -- the instruction loop -------------------------------------------------------------------
    def _slice(self, p: Process, budget: int) -> tuple[str, int]:
        """Run ``p`` for at most ``budget`` instructions: ("quantum"|"yield"|"block"|"exit"|"halt", retired)."""
        regs = p.regs
        ev = self.events
        pid = p.pid
        decoded = self._decoded
        check = p.check
        read = p.read
        n = 0
        try:
            while n < budget:
                pc = p.pc
                if pc & 7:
                    raise _Trap(SIGBUS, _FETCH, pc, 8, "misaligned")
                check(pc, 8, _FETCH)
                word = read(pc, 8)
                if ev is not None:
                    ev.append((OP_FETCH, pid, pc, 8, 0))
                insn = decoded.get(word, False)
                if insn is False:
                    d = decode(word)
                    insn = decoded[word] = None if d is None else tuple(d)
                if insn is None:
                    raise _Trap(SIGILL, "decode", word, 8, "illegal instruction")
                op, rd, rs1, rs2, imm = insn
                npc = (pc + 8) & MASK64
                if op < 0x20:  # ALU; bit 4 selects the immediate
                    v = alu(op & 0xF, regs[rs1], imm & MASK64 if op & 0x10 else regs[rs2])
                    if rd:
                        regs[rd] = v
                elif op < 0x30:
                    if rd:
                        if op == OPC_LI:
                            regs[rd] = imm & MASK64
                        else:
                            assert op == OPC_LIH
                            regs[rd] = (regs[rd] & 0xFFFF_FFFF) | ((imm & 0xFFFF_FFFF) << 32)
                elif op < 0x38:  # loads
                    size = 1 << (op & 3)
                    addr = (regs[rs1] + imm) & MASK64
                    check(addr, size, _LOAD)
                    v = read(addr, size)
                    if op >= OPC_LD1S and v >> (8 * size - 1):
                        v |= MASK64 ^ ((1 << (8 * size)) - 1)
                    if ev is not None:
                        ev.append((OP_READ, pid, addr, size, 0))
                    if rd:
                        regs[rd] = v
                elif op < 0x40:  # stores
                    size = 1 << (op & 3)
                    addr = (regs[rs1] + imm) & MASK64
                    check(addr, size, _STORE)
                    p.write(addr, size, regs[rs2])
                    if ev is not None:
                        ev.append((OP_WRITE, pid, addr, size, 0))
                elif op < 0x48:  # branches
                    a, b = regs[rs1], regs[rs2]
                    if op == OPC_BEQ:
                        taken = a == b
                    elif op == OPC_BNE:
                        taken = a != b
                    elif op == OPC_BLT:
                        taken = _signed(a) < _signed(b)
                    elif op == OPC_BGE:
                        taken = _signed(a) >= _signed(b)
                    elif op == OPC_BLTU:
                        taken = a < b
                    else:
                        assert op == OPC_BGEU
                        taken = a >= b
                    if taken:
                        npc = (pc + imm) & MASK64
                elif op == OPC_JAL:
                    if rd:
                        regs[rd] = npc
                    npc = (pc + imm) & MASK64
                elif op == OPC_JALR:
                    target = (regs[rs1] + imm) & MASK64  # read rs1 before writing rd
                    if rd:
                        regs[rd] = npc
                    npc = target
                elif op == OPC_SYSCALL:
                    p.pc = npc
                    n += 1
                    outcome = self._syscall(p, imm)
                    if outcome is not None:
                        return outcome, n
                    continue
                else:
                    assert op == OPC_HALT
                    p.pc = npc
                    self.halted = p
                    return "halt", n + 1
                p.pc = npc
                n += 1
        except _Trap as t:
            t.executed = n
            raise
        return "quantum", n

    # -- system calls ---------------------------------------------------------------------------
    def _syscall(self, p: Process, number: int) -> str | None:
        """Perform system call ``number`` for ``p`` (pc already past the syscall).

        Returns None to continue the slice, or "yield", "block", "exit".
        """
        regs = p.regs
        a0, a1 = regs[REG_A0], regs[REG_A1]
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
                child.state = DEAD
                regs[REG_A0] = child.pid
                regs[REG_A1] = child.status & MASK64
            elif p.children:
                p.state = BLOCKED
                return "block"
            else:
                regs[REG_A0] = SYS_ERROR
                regs[REG_A1] = 0
        elif number == SYS_YIELD:
            regs[REG_A0] = 0
            return "yield"
        elif number == SYS_GETPID:
            regs[REG_A0] = p.pid
        elif number == SYS_GETARG:
            regs[REG_A0] = self.args[a0] if a0 < len(self.args) else a1
        elif number == SYS_RAND:
            p.rand = xorshift64(p.rand)
            regs[REG_A0] = p.rand
        else:
            regs[REG_A0] = SYS_ERROR
        return None

    def _sys_write(self, p: Process, ptr: int, length: int) -> int:
        if length == 0:
            return 0
        if length > USER_TOP or ptr + length > USER_TOP:
            return SYS_ERROR
        end = ptr + length
        first, last = ptr >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        if any(p.prot_of(vpn) == 0 for vpn in range(first, last + 1)):
            return SYS_ERROR
        out = bytearray()
        addr = ptr
        while addr < end:
            off = addr & (PAGE_SIZE - 1)
            n = min(PAGE_SIZE - off, end - addr)
            page = p.pages.get(addr >> PAGE_SHIFT)
            out += page[off : off + n] if page is not None else bytes(n)
            addr += n
        self.console += out
        return length

    def _sys_mmap(self, p: Process, length: int, prot: int) -> int:
        if length == 0 or length > MMAP_END - MMAP_BASE or prot & ~PROT_MASK:
            return SYS_ERROR
        npages = (length + PAGE_SIZE - 1) >> PAGE_SHIFT
        cur, top = MMAP_BASE >> PAGE_SHIFT, MMAP_END >> PAGE_SHIFT
        for s, e, _pr in p.vmas:  # first fit: the lowest free run of npages pages
            if e <= cur:
                continue
            if s >= top or s - cur >= npages:
                break
            cur = e
        if cur + npages > top:
            return SYS_ERROR
        p.map(cur, cur + npages, prot)
        addr = cur << PAGE_SHIFT
        if self.events is not None:
            self.events.append((OP_MMAP, p.pid, addr, npages, prot))
        return addr

    def _sys_munmap(self, p: Process, addr: int, length: int) -> int:
        if addr & (PAGE_SIZE - 1) or length == 0 or length > USER_TOP:
            return SYS_ERROR
        npages = (length + PAGE_SIZE - 1) >> PAGE_SHIFT
        first = addr >> PAGE_SHIFT
        if (first + npages) << PAGE_SHIFT > USER_TOP:
            return SYS_ERROR
        p.unmap(first, first + npages)
        if self.events is not None:
            self.events.append((OP_MUNMAP, p.pid, addr, npages, 0))
        return 0

    def _sys_fork(self, p: Process) -> int:
        if self.next_pid > MAX_PID:
            return SYS_ERROR
        child = Process(
            self.next_pid,
            p.pid,
            list(p.regs),
            p.pc,
            p.rand,
            list(p.vmas),
            {vpn: bytearray(page) for vpn, page in p.pages.items()},
        )
        self.next_pid += 1
        child.regs[REG_A0] = 0
        self.procs[child.pid] = child
        p.children.add(child.pid)
        self.runq.append(child)
        if self.events is not None:
            self.events.append((OP_FORK, p.pid, 0, child.pid, 0))
        return child.pid

    def _terminate(self, p: Process, status: int) -> None:
        """End ``p`` with ``status``: free its memory, orphan its children, tell its parent."""
        p.status = status
        self.statuses[p.pid] = status
        p.vmas = []
        p.pages = {}
        p._prot.clear()
        for cpid in p.children:
            c = self.procs[cpid]
            c.ppid = 0
            if c.state == ZOMBIE:
                c.state = DEAD
        p.children.clear()
        p.zombies.clear()
        if self.events is not None:
            self.events.append((OP_EXIT, p.pid, 0, 0, 0))
        parent = self.procs.get(p.ppid)
        if parent is None or parent.state in (ZOMBIE, DEAD):
            p.state = DEAD
        elif parent.state == BLOCKED:
            p.state = DEAD
            parent.children.discard(p.pid)
            parent.regs[REG_A0] = p.pid
            parent.regs[REG_A1] = status & MASK64
            parent.state = READY
            self.runq.append(parent)
        else:
            p.state = ZOMBIE
            parent.zombies.append(p.pid)


def run(
    program: Program,
    args=(),
    *,
    seed: int = DEFAULT_SEED,
    quantum: int = DEFAULT_QUANTUM,
    max_instructions: int = DEFAULT_MAX_INSTRUCTIONS,
    trace: bool = False,
) -> RunResult:
    """Run ``program`` with command-line ``args`` on a fresh :class:`Machine`."""
    return Machine(program, args, seed=seed, quantum=quantum, trace=trace).run(max_instructions)


def main(argv: list[str] | None = None) -> int:
    """``python -m mmu.guest.refcpu prog.s [args...]``: run a program, print its console output."""
    ap = argparse.ArgumentParser(prog="python -m mmu.guest.refcpu", description=main.__doc__)
    ap.add_argument("program")
    ap.add_argument("args", nargs="*", type=lambda s: int(s, 0))
    ap.add_argument("--seed", type=lambda s: int(s, 0), default=DEFAULT_SEED)
    ap.add_argument("--quantum", type=int, default=DEFAULT_QUANTUM)
    ap.add_argument("--max-instructions", type=int, default=DEFAULT_MAX_INSTRUCTIONS)
    ns = ap.parse_args(argv)
    from mmu.errors import MMUInputError

    try:
        prog = assemble_file(ns.program)
        res = run(prog, ns.args, seed=ns.seed, quantum=ns.quantum, max_instructions=ns.max_instructions)
    except (MMUInputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(res.text)
    for f in res.faults:
        print(f.message, file=sys.stderr)
    print(
        f"[{res.reason}: exit code {res.exit_code}, {res.instructions} instructions, "
        f"{len(res.statuses)} processes, {res.switches} switches]",
        file=sys.stderr,
    )
    return 0 if res.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
