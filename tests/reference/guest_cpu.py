"""Reference interpreter of the guest ISA, written from ``docs/isa.md`` alone.

It imports nothing from ``mmu`` and shares no code with it: it decodes instruction words
itself from the encoding the document specifies, keeps each process's address space as a
sorted list of page ranges with their protections plus a dict of the pages written, and
implements the scheduler and the system calls from the document's rules. A program comes
in as plain values -- the text as little-endian bytes, the data bytes and the symbol table
(:class:`Image`) -- which the tests take from the assembler's ``Program``; the reference lays
memory out itself (text at ``TEXT_BASE``, data at the next page boundary, the stack below
``STACK_TOP``) and finds the entry point (``_start``, else ``TEXT_BASE``).

The numba executor (``mmu.guest.run``) must agree with it on console output, exit statuses,
instruction counts, faults, switches and the event stream.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Fault", "Image", "Machine", "Proc", "RunResult", "decode", "run"]

# --- constants, as docs/isa.md states them ---------------------------------------------------------
U64 = (1 << 64) - 1
TOP_BIT = 1 << 63
PAGE = 4096
TEXT_BASE = 0x40_0000
USER_TOP = 0x8000_0000_0000
MMAP_BASE = 0x7000_0000_0000
MMAP_END = 0x7FFF_0000_0000
STACK_TOP = 0x7FFF_FFFF_F000
STACK_SIZE = 1 << 20
READ, WRITE, EXEC = 1, 2, 4  # PROT_READ, PROT_WRITE, PROT_EXEC (8, PROT_THP, is only a hint)
DEFAULT_QUANTUM = 10_000
DEFAULT_SEED = 0x9E37_79B9_7F4A_7C15
DEFAULT_LIMIT = 100_000_000
LAST_PID = 65535
A0, A1, SP = 1, 2, 30
SIGILL, SIGBUS, SIGSEGV = 4, 7, 11
SIGNAL_NAME = {SIGILL: "illegal instruction", SIGBUS: "bus error", SIGSEGV: "segmentation fault"}
SYSCALLS = ("exit", "write", "mmap", "munmap", "fork", "wait", "yield", "getpid", "getarg", "rand")

# event op codes (docs/trace-format.md)
OP_READ, OP_WRITE, OP_FETCH = 0, 1, 2
_ACCESS_OPS = {"load": OP_READ, "store": OP_WRITE, "fetch": OP_FETCH}
OP_SWITCH, OP_MMAP, OP_MUNMAP, OP_FORK, OP_EXIT = 16, 17, 18, 19, 20
MAP_FILE = 32  # mmap flag of a private file mapping: the segments with contents (text, data)

# --- decoding (docs/isa.md, "Encoding" and "Opcode formats") -----------------------------------------
_OPC, _RD, _RS1, _RS2 = 0xFF, 0x1F << 8, 0x1F << 13, 0x1F << 18
_IMM32 = 0xFFFF_FFFF << 32
_IMM_SHAMT = 0x3F << 32  # bits 37..32
_IMM_TARGET = 0xFFFF_FFF8 << 32  # bits 63..35: an offset that is a multiple of 8
_FIELDS_OF_FORMAT = {
    "R": _OPC | _RD | _RS1 | _RS2,
    "I": _OPC | _RD | _RS1 | _IMM32,
    "SHI": _OPC | _RD | _RS1 | _IMM_SHAMT,
    "LI": _OPC | _RD | _IMM32,
    "LIH": _OPC | _RD | _IMM32,
    "LOAD": _OPC | _RD | _RS1 | _IMM32,
    "STORE": _OPC | _RS1 | _RS2 | _IMM32,
    "BRANCH": _OPC | _RS1 | _RS2 | _IMM_TARGET,
    "JAL": _OPC | _RD | _IMM_TARGET,
    "JALR": _OPC | _RD | _RS1 | _IMM32,
    "SYS": _OPC | _IMM32,
    "NONE": _OPC,
}


def format_of(opcode: int) -> str | None:
    """The format of ``opcode`` (docs/isa.md's table), None for an opcode that is not an instruction."""
    if 0x01 <= opcode <= 0x0F:
        return "R"
    if opcode in (0x1B, 0x1C, 0x1D):
        return "SHI"
    if 0x11 <= opcode <= 0x1F:
        return "I"
    if 0x30 <= opcode <= 0x36:
        return "LOAD"
    if 0x38 <= opcode <= 0x3B:
        return "STORE"
    if 0x40 <= opcode <= 0x45:
        return "BRANCH"
    return {0x20: "LI", 0x21: "LIH", 0x48: "JAL", 0x49: "JALR", 0x50: "SYS", 0x51: "NONE"}.get(opcode)


def decode(word: int) -> tuple[int, int, int, int, int] | None:
    """``(opcode, rd, rs1, rs2, imm)`` of a 64-bit word, or None if it is not a valid instruction.

    ``imm`` is bits 63..32 read as a signed 32-bit number (a Python int, may be negative).
    """
    fmt = format_of(word & 0xFF)
    if fmt is None or word & ~_FIELDS_OF_FORMAT[fmt] & U64:
        return None
    imm = word >> 32
    if imm >= 1 << 31:
        imm -= 1 << 32
    return word & 0xFF, (word >> 8) & 31, (word >> 13) & 31, (word >> 18) & 31, imm


# --- arithmetic ----------------------------------------------------------------------------------
def _s(v: int) -> int:
    """The signed (two's complement) view of a 64-bit pattern."""
    return v - (1 << 64) if v & TOP_BIT else v


def _alu(fn: int, a: int, b: int) -> int:
    """ALU function ``fn`` (the opcode's low nibble) on 64-bit patterns ``a``, ``b``; docs/isa.md's table."""
    if fn == 1:
        return (a + b) & U64
    if fn == 2:
        return (a - b) & U64
    if fn == 3:
        return (a * b) & U64
    if fn in (4, 6):  # signed division truncates toward zero; remainder has the dividend's sign
        x, y = _s(a), _s(b)
        if y == 0:
            return U64 if fn == 4 else a
        if x == -(1 << 63) and y == -1:
            return TOP_BIT if fn == 4 else 0
        q = abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1)
        return (q if fn == 4 else x - q * y) & U64
    if fn == 5:
        return a // b if b else U64
    if fn == 7:
        return a % b if b else a
    if fn == 8:
        return a & b
    if fn == 9:
        return a | b
    if fn == 10:
        return a ^ b
    if fn == 11:
        return (a << (b & 63)) & U64
    if fn == 12:
        return a >> (b & 63)
    if fn == 13:
        return (_s(a) >> (b & 63)) & U64
    if fn == 14:
        return 1 if _s(a) < _s(b) else 0
    assert fn == 15
    return 1 if a < b else 0


def _xorshift64(x: int) -> int:
    x ^= (x << 13) & U64
    x ^= x >> 7
    x ^= (x << 17) & U64
    return x


# --- what a run gives back -------------------------------------------------------------------------
@dataclass(frozen=True)
class Image:
    """A program as plain values: ``text`` (little-endian instruction words), ``data``, ``symbols``."""

    text: bytes
    data: bytes = b""
    symbols: dict[str, int] = field(default_factory=dict)

    @property
    def entry(self) -> int:
        return self.symbols.get("_start", TEXT_BASE)

    @property
    def data_start(self) -> int:
        return _round_up(TEXT_BASE + len(self.text))

    def segments(self) -> list[tuple[int, int, int, bytes]]:
        """Process 1's initial mappings, ``(start, size, prot, contents)``: text, data, stack."""
        segs = []
        if self.text:
            segs.append((TEXT_BASE, _round_up(len(self.text)), READ | EXEC, self.text))
        if self.data:
            segs.append((self.data_start, _round_up(len(self.data)), READ | WRITE, self.data))
        segs.append((STACK_TOP - STACK_SIZE, STACK_SIZE, READ | WRITE, b""))
        return segs


def _round_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


@dataclass(frozen=True)
class Fault:
    """The record of a fault that killed a process (docs/isa.md, "Faults")."""

    pid: int
    signal: int
    pc: int
    access: str
    addr: int
    size: int
    reason: str

    @property
    def message(self) -> str:
        name = SIGNAL_NAME[self.signal]
        if self.signal == SIGILL:
            return f"pid {self.pid}: {name}: word 0x{self.addr:016x} at pc {self.pc:#x}"
        return (
            f"pid {self.pid}: {name}: {self.access} of {self.size} bytes at {self.addr:#x}: "
            f"{self.reason} (pc {self.pc:#x})"
        )


@dataclass
class RunResult:
    """``console`` bytes, ``exit_code`` (None at the limit), ``reason`` ("exit" | "halt" | "limit"),
    and totals over the whole run: ``instructions``, ``statuses`` (pid -> status), ``faults``,
    ``switches``, ``events`` (None unless traced)."""

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
        return self.console.decode("utf-8", errors="replace")


class _Kill(Exception):
    """A fault in the current instruction; ``retired`` is filled in by the slice."""

    def __init__(self, signal: int, access: str, addr: int, size: int, reason: str) -> None:
        super().__init__(reason)
        self.args5 = (signal, access, addr, size, reason)
        self.retired = 0


# --- a process ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class Proc:
    """Registers (``regs``, 32 ints), ``pc``, rand state, address space, family, ``state``.

    ``state`` is "ready" (queued or running), "blocked" (in wait), "zombie" (exited, not yet
    reaped) or "dead". ``ranges`` is a sorted list of disjoint ``[first_page, end_page)`` with
    a protection; ``pages`` holds the contents of pages written (others read as zero).
    """

    pid: int
    regs: list[int]
    pc: int
    rand: int
    parent: Proc | None = None
    ranges: list[tuple[int, int, int]] = field(default_factory=list)
    pages: dict[int, bytearray] = field(default_factory=dict)
    state: str = "ready"
    status: int | None = None
    children: list[Proc] = field(default_factory=list)  # not yet reaped, live or zombie
    exited: deque[Proc] = field(default_factory=deque)  # zombie children in the order they exited
    _prot_cache: dict[int, int] = field(default_factory=dict)

    def prot(self, page: int) -> int:
        """Protection of virtual page number ``page`` (0: unmapped)."""
        p = self._prot_cache.get(page)
        if p is None:
            i = bisect_right(self.ranges, (page, U64, U64)) - 1
            p = self.ranges[i][2] if i >= 0 and self.ranges[i][1] > page else 0
            self._prot_cache[page] = p
        return p

    def unmap(self, first: int, end: int) -> None:
        out = []
        for s, e, p in self.ranges:
            if e <= first or s >= end:
                out.append((s, e, p))
            else:
                if s < first:
                    out.append((s, first, p))
                if end < e:
                    out.append((end, e, p))
        self.ranges = out
        for page in [q for q in self.pages if first <= q < end]:
            del self.pages[page]
        self._prot_cache.clear()

    def map(self, first: int, end: int, prot: int) -> None:
        self.unmap(first, end)
        self.ranges.append((first, end, prot))
        self.ranges.sort()

    def all_mapped(self, first: int, last: int) -> bool:
        """Whether every page in ``[first, last]`` is mapped (with any protection)."""
        want = first
        for s, e, _p in self.ranges:
            if s > want:
                break
            want = max(want, e)
            if want > last:
                return True
        return want > last

    def load(self, addr: int, n: int) -> int:
        page = self.pages.get(addr // PAGE)
        if page is None:
            return 0
        off = addr % PAGE
        return int.from_bytes(page[off : off + n], "little")

    def store(self, addr: int, n: int, value: int) -> None:
        page = self.pages.setdefault(addr // PAGE, bytearray(PAGE))
        off = addr % PAGE
        page[off : off + n] = (value % (1 << (8 * n))).to_bytes(n, "little")


# --- the machine -------------------------------------------------------------------------------------
class Machine:
    """Processes, the round-robin scheduler and the system calls of docs/isa.md.

    ``image`` is loaded as pid 1; ``args`` are returned by getarg (stored mod 2**64); ``seed`` is
    pid 1's rand state; ``quantum`` the slice length; ``trace`` records the event stream.
    :meth:`run` may be called again after a "limit" stop, to continue.
    """

    def __init__(self, image: Image, args=(), seed: int = DEFAULT_SEED, quantum: int = DEFAULT_QUANTUM,
                 trace: bool = False) -> None:  # fmt: skip
        if not 1 <= seed <= U64:
            raise ValueError(f"seed must be nonzero and fit in 64 bits, got {seed}")
        if quantum < 1:
            raise ValueError(f"quantum must be at least 1, got {quantum}")
        self.args = []
        for a in args:
            if not -(1 << 63) <= int(a) <= U64:
                raise ValueError(f"argument {a} does not fit in 64 bits")
            self.args.append(int(a) & U64)
        self.quantum = quantum
        self.events: list | None = [] if trace else None
        self.console = bytearray()
        self.statuses: dict[int, int] = {}
        self.faults: list[Fault] = []
        self.queue: deque[Proc] = deque()
        self.running: Proc | None = None
        self.slice_used = 0
        self.last_dispatched = 0
        self.switches = 0
        self.instructions = 0
        self.halted: Proc | None = None
        self.decoded: dict[int, tuple | None] = {}

        regs = [0] * 32
        regs[SP] = STACK_TOP
        first = Proc(1, regs, image.entry, seed)
        for start, size, prot, contents in image.segments():
            first.map(start // PAGE, (start + size) // PAGE, prot)
            for off in range(0, len(contents), PAGE):
                chunk = contents[off : off + PAGE]
                first.pages[(start + off) // PAGE] = bytearray(chunk.ljust(PAGE, b"\0"))
            self._record(OP_MMAP, 1, start, size // PAGE, prot | (MAP_FILE if contents else 0))
        self.procs: dict[int, Proc] = {1: first}
        self.next_pid = 2
        self.queue.append(first)

    def _record(self, op: int, pid: int, addr: int = 0, arg: int = 0, flags: int = 0) -> None:
        if self.events is not None:
            self.events.append((op, pid, addr, arg, flags))

    # -- scheduling ----------------------------------------------------------------------------------
    def run(self, max_instructions: int = DEFAULT_LIMIT) -> RunResult:
        """Run until no process remains, a ``halt``, or ``max_instructions`` more have retired."""
        left = max_instructions
        while self.halted is None:
            if self.running is None:
                if not self.queue:
                    return self._result("exit")
                if left <= 0:
                    return self._result("limit")
                p = self.queue.popleft()
                self.running, self.slice_used = p, 0
                if p.pid != self.last_dispatched:  # a switch: another process than the last one
                    self.last_dispatched = p.pid
                    self.switches += 1
                    self._record(OP_SWITCH, p.pid)
            p = self.running
            room = min(self.quantum - self.slice_used, left)
            if room <= 0:
                return self._result("limit")
            why, n = self._execute(p, room)
            left -= n
            self.slice_used += n
            self.instructions += n
            if why == "halt":
                self.halted = p
            elif why == "room":
                if self.slice_used < self.quantum:  # the limit, mid-slice: p keeps the rest of it
                    return self._result("limit")
                self.queue.append(p)  # quantum used up
                self.running = None
            else:
                if why == "yield":
                    self.queue.append(p)
                self.running = None  # yield, blocked in wait, exited or killed
        return self._result("halt")

    def _result(self, reason: str) -> RunResult:
        if reason == "halt":
            code: int | None = _s(self.halted.regs[A0])
        elif reason == "exit":
            code = self.statuses.get(1)
        else:
            code = None
        events = None if self.events is None else list(self.events)
        return RunResult(bytes(self.console), code, reason, self.instructions, dict(self.statuses),
                         list(self.faults), self.switches, events)  # fmt: skip

    # -- instructions --------------------------------------------------------------------------------
    def _execute(self, p: Proc, room: int) -> tuple[str, int]:
        """Run ``p`` for up to ``room`` instructions; why it stopped ("room", "yield", "block",
        "exit", "halt") and how many instructions retired."""
        done = 0
        try:
            while done < room:
                why = self._step(p)
                done += 1
                if why is not None:
                    return why, done
        except _Kill as k:
            signal, access, addr, size, reason = k.args5
            self.faults.append(Fault(p.pid, signal, p.pc, access, addr, size, reason))
            self._end(p, -signal)
            return "exit", done
        return "room", done

    def _check(self, p: Proc, access: str, addr: int, size: int) -> None:
        """Alignment first, then the page's protection (docs/isa.md, "Faults"). An aligned access
        the page does not allow is still an event (the engine translates it before the kernel
        kills the process: docs/isa.md, "Event stream")."""
        if addr % size:
            raise _Kill(SIGBUS, access, addr, size, "misaligned")
        prot = p.prot(addr // PAGE) if addr < USER_TOP else 0
        reason = None
        if not prot:
            reason = "unmapped"
        elif access == "store" and not prot & WRITE:
            reason = "not writable"
        elif access == "fetch" and not prot & EXEC:
            reason = "not executable"
        if reason is not None:
            self._record(_ACCESS_OPS[access], p.pid, addr, size)
            raise _Kill(SIGSEGV, access, addr, size, reason)

    def _step(self, p: Proc) -> str | None:
        """Execute one instruction of ``p``; raise :class:`_Kill` if it faults (it then does not
        retire). Returns None, or why the slice ends after it."""
        pc = p.pc
        self._check(p, "fetch", pc, 8)
        word = p.load(pc, 8)
        self._record(OP_FETCH, p.pid, pc, 8)
        insn = self.decoded.get(word, 0)
        if insn == 0:
            insn = self.decoded[word] = decode(word)
        if insn is None:
            raise _Kill(SIGILL, "decode", word, 8, "illegal instruction")
        op, rd, rs1, rs2, imm = insn
        x = p.regs
        nxt = (pc + 8) & U64
        value = None  # what goes to rd, if anything
        if op < 0x20:  # ALU: low nibble the function, bit 4 the immediate form
            value = _alu(op & 15, x[rs1], imm & U64 if op & 0x10 else x[rs2])
        elif op == 0x20:  # li
            value = imm & U64
        elif op == 0x21:  # lih: upper half from imm32, lower half kept
            value = ((imm & 0xFFFF_FFFF) << 32) | (x[rd] & 0xFFFF_FFFF)
        elif op < 0x38:  # ld1 ld2 ld4 ld8, ld1s ld2s ld4s
            n = 1 << (op & 3)
            ea = (x[rs1] + imm) & U64
            self._check(p, "load", ea, n)
            value = p.load(ea, n)
            if op >= 0x34 and value >> (8 * n - 1):
                value = (value - (1 << (8 * n))) & U64
            self._record(OP_READ, p.pid, ea, n)
        elif op < 0x40:  # st1 st2 st4 st8
            n = 1 << (op & 3)
            ea = (x[rs1] + imm) & U64
            self._check(p, "store", ea, n)
            p.store(ea, n, x[rs2])
            self._record(OP_WRITE, p.pid, ea, n)
        elif op < 0x48:
            a, b = x[rs1], x[rs2]
            taken = (a == b, a != b, _s(a) < _s(b), _s(a) >= _s(b), a < b, a >= b)[op - 0x40]
            if taken:
                nxt = (pc + imm) & U64
        elif op == 0x48:  # jal
            value, nxt = nxt, (pc + imm) & U64
        elif op == 0x49:  # jalr: the target from rs1 before rd is written
            value, nxt = nxt, (x[rs1] + imm) & U64
        elif op == 0x50:
            p.pc = nxt
            return self._syscall(p, imm)
        else:  # halt
            p.pc = nxt
            return "halt"
        if value is not None and rd != 0:
            x[rd] = value
        p.pc = nxt
        return None

    # -- system calls (docs/isa.md, "System calls") -----------------------------------------------
    def _syscall(self, p: Proc, number: int) -> str | None:
        x = p.regs
        a0, a1 = x[A0], x[A1]
        name = SYSCALLS[number] if 0 <= number < len(SYSCALLS) else None
        if name == "exit":
            self._end(p, _s(a0))
            return "exit"
        if name == "wait":
            if p.exited:
                c = p.exited.popleft()
                p.children.remove(c)
                c.state = "dead"
                x[A0], x[A1] = c.pid, c.status & U64
            elif p.children:
                p.state = "blocked"
                return "block"
            else:
                x[A0], x[A1] = U64, 0
            return None
        if name == "yield":
            x[A0] = 0
            return "yield"
        if name == "write":
            result = self._write(p, a0, a1)
        elif name == "mmap":
            result = self._mmap(p, a0, a1)
        elif name == "munmap":
            result = self._munmap(p, a0, a1)
        elif name == "fork":
            result = self._fork(p)
        elif name == "getpid":
            result = p.pid
        elif name == "getarg":
            result = self.args[a0] if a0 < len(self.args) else a1
        elif name == "rand":
            p.rand = _xorshift64(p.rand)
            result = p.rand
        else:
            result = -1
        x[A0] = result & U64
        return None

    def _write(self, p: Proc, ptr: int, length: int) -> int:
        if length == 0:
            return 0
        if ptr + length > USER_TOP or not p.all_mapped(ptr // PAGE, (ptr + length - 1) // PAGE):
            return -1
        for addr in range(ptr, ptr + length):
            self.console.append(p.load(addr, 1))
        return length

    def _mmap(self, p: Proc, length: int, prot: int) -> int:
        if length == 0 or length > MMAP_END - MMAP_BASE or prot > 15:
            return -1
        n = -(-length // PAGE)
        lo, hi = MMAP_BASE // PAGE, MMAP_END // PAGE
        at = lo  # first fit: the lowest gap of n free pages at or above MMAP_BASE
        for s, e, _prot in p.ranges:
            if e <= at:
                continue
            if s - at >= n or s >= hi:
                break
            at = e
        if at + n > hi:
            return -1
        p.map(at, at + n, prot)
        self._record(OP_MMAP, p.pid, at * PAGE, n, prot)
        return at * PAGE

    def _munmap(self, p: Proc, addr: int, length: int) -> int:
        if addr % PAGE or length == 0:
            return -1
        n = -(-length // PAGE)
        if addr + n * PAGE > USER_TOP:
            return -1
        p.unmap(addr // PAGE, addr // PAGE + n)
        self._record(OP_MUNMAP, p.pid, addr, n)
        return 0

    def _fork(self, p: Proc) -> int:
        if self.next_pid > LAST_PID:
            return -1
        c = Proc(self.next_pid, list(p.regs), p.pc, p.rand, parent=p, ranges=list(p.ranges),
                 pages={k: bytearray(v) for k, v in p.pages.items()})  # fmt: skip
        self.next_pid += 1
        c.regs[A0] = 0
        self.procs[c.pid] = c
        p.children.append(c)
        self.queue.append(c)
        self._record(OP_FORK, p.pid, 0, c.pid)
        return c.pid

    def _end(self, p: Proc, status: int) -> None:
        """``p`` exits (or is killed) with ``status`` (docs/isa.md, "Processes and scheduling")."""
        p.status = status
        self.statuses[p.pid] = status
        p.ranges, p.pages = [], {}
        p._prot_cache.clear()
        self._record(OP_EXIT, p.pid)
        for c in p.children:  # orphans: their exits are reaped by nobody
            c.parent = None
            if c.state == "zombie":
                c.state = "dead"
        p.children, p.exited = [], deque()
        parent = p.parent
        if parent is None:
            p.state = "dead"
        elif parent.state == "blocked":  # woken with this child, at the tail of the queue
            parent.children.remove(p)
            parent.regs[A0], parent.regs[A1] = p.pid, status & U64
            parent.state = "ready"
            self.queue.append(parent)
            p.state = "dead"
        else:
            p.state = "zombie"
            parent.exited.append(p)


def run(image: Image, args=(), *, seed: int = DEFAULT_SEED, quantum: int = DEFAULT_QUANTUM,
        max_instructions: int = DEFAULT_LIMIT, trace: bool = False) -> RunResult:  # fmt: skip
    """Run ``image`` with command-line ``args`` on a fresh :class:`Machine`."""
    return Machine(image, args, seed=seed, quantum=quantum, trace=trace).run(max_instructions)
