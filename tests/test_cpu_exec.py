"""The numba interpreter (mmu.guest.cpu via mmu.guest.run) agrees with the reference interpreter.

Each program is checked by its console output, exit status, instruction count and faults,
which the reference (tests/reference/guest_cpu.py, written from docs/isa.md) fixes. Register
state is made visible by dumping every register to a buffer and writing it to the console.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmu.engine import MachineConfig
from mmu.guest.asm import assemble
from mmu.guest.isa import FMT_I, FMT_R, FMT_SHI, OPCODES
from mmu.guest.run import run_program
from mmu.trace.format import read_trace
from tests.guest_ref import run

ALU_R = sorted(name for _op, (name, fmt) in OPCODES.items() if fmt == FMT_R)
ALU_I = sorted(name for _op, (name, fmt) in OPCODES.items() if fmt == FMT_I and name != "jalr")
ALU_SHI = sorted(name for _op, (name, fmt) in OPCODES.items() if fmt == FMT_SHI)
LOADS = ["ld1", "ld2", "ld4", "ld8", "ld1s", "ld2s", "ld4s"]
STORES = ["st1", "st2", "st4", "st8"]
BRANCHES = ["beq", "bne", "blt", "bge", "bltu", "bgeu"]

# Registers the random code may use: r1..r30 (ra = r31 is the dump's base pointer).
REGS = [f"r{i}" for i in range(0, 31)]

DUMP = (
    """
        li      ra, dump
"""
    + "".join(f"        st8     r{i}, {8 * i}(ra)\n" for i in range(1, 31))
    + """
        li      a0, dump
        li      a1, 256
        syscall write
        li      a0, 0
        syscall exit
        .data
buf:    .quad   0x8877665544332211, 0xfedcba9876543210, -1, 0x8000000000000080
dump:   .zero   256
"""
)

imm32 = st.integers(-(1 << 31), (1 << 31) - 1)
special = st.sampled_from([0, 1, -1, 2, -2, 63, 64, -(1 << 31), (1 << 31) - 1, 7, -8])
imm = st.one_of(imm32, special)
reg = st.sampled_from(REGS)


@st.composite
def insn(draw) -> str:
    kind = draw(st.sampled_from(["r", "i", "shi", "li", "lih", "load", "store", "branch"]))
    rd, rs1, rs2 = draw(reg), draw(reg), draw(reg)
    if kind == "r":
        return f"{draw(st.sampled_from(ALU_R))} {rd}, {rs1}, {rs2}"
    if kind == "i":
        return f"{draw(st.sampled_from(ALU_I))} {rd}, {rs1}, {draw(imm)}"
    if kind == "shi":
        return f"{draw(st.sampled_from(ALU_SHI))} {rd}, {rs1}, {draw(st.integers(0, 63))}"
    if kind == "li":
        return f"li {rd}, {draw(imm)}"
    if kind == "lih":
        return f"lih {rd}, {draw(st.integers(0, (1 << 32) - 1))}"
    if kind in ("load", "store"):
        op = draw(st.sampled_from(LOADS if kind == "load" else STORES))
        size = int(op[2])
        off = draw(st.integers(0, 32 // size - 1)) * size
        return f"{op} {rd if kind == 'load' else rs2}, buf+{off}"
    # a forward branch over the next instruction
    return f"{draw(st.sampled_from(BRANCHES))} {rs1}, {rs2}, .+16"


def compare(src: str, args=(), modes=("native",), events_in=None, **kw) -> None:
    """The executor in each of ``modes`` against the reference; with ``events_in`` (a folder),
    also the recorded trace against the reference's event stream, record for record."""
    prog = assemble(src)
    ref = run(prog, args, trace=events_in is not None, **kw)
    for mode in modes:
        record = None if events_in is None else events_in / f"{mode}.trace"
        got = run_program(prog, args, MachineConfig(mode=mode), record_path=record, **kw)
        assert got["console"] == ref.text
        assert got["exit_code"] == ref.exit_code
        assert got["instructions"] == ref.instructions
        assert got["reason"] == ref.reason
        assert got["faults"] == [f.message for f in ref.faults]
        if record is not None:
            recs = read_trace(record)
            events = list(zip(*(recs[k].tolist() for k in ("op", "pid", "addr", "arg", "flags")), strict=True))
            assert events == ref.events


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(insn(), min_size=1, max_size=40))
def test_random_straight_line_code(body):
    # random ALU, constant, load/store and branch instructions, then every register dumped
    compare("_start:\n" + "\n".join(f"        {i}" for i in body) + "\n" + DUMP)


@pytest.mark.parametrize(
    "a, b",
    [(0, 0), (7, 0), (-7, 2), (7, -2), (-(1 << 63), -1), (-(1 << 63), 1), ((1 << 63) - 1, -1), (-1, -1), (5, 3)],
)
def test_division_and_shift_corner_cases(a, b):
    # div/rem by zero and INT64_MIN / -1 follow the RISC-V rules; shifts use the low 6 bits
    ops = "div divu rem remu mul sar shl shr slt sltu".split()
    body = [f"li64 s0, {a}", f"li64 s1, {b}"] + [f"{op} r{i + 1}, s0, s1" for i, op in enumerate(ops)]
    compare("_start:\n" + "\n".join(f"        {i}" for i in body) + "\n" + DUMP)


def test_calls_jumps_and_sign_extending_loads():
    src = (
        """
_start: li      s0, 5
        call    f                # jal ra
        mv      s2, a0
        la      t0, g
        jalr    s3, t0, 0        # s3 = link
        ld1s    s4, buf+7        # 0x88 -> negative
        ld2s    s5, buf+6
        ld4s    s6, buf+4
        ld4     s7, buf+4
        jal     zero, tail
f:      addi    a0, s0, 37
        ret
g:      li      s1, 99
        jalr    zero, s3, 0
tail:   jalr    t1, t1, 0        # rd == rs1: the target is read first (t1 = 0 -> fault at 0)
"""
        + DUMP
    )
    compare(src)


@pytest.mark.parametrize(
    "snippet",
    [
        "ld8 a0, buf+4",  # misaligned load: SIGBUS
        "st2 a0, buf+1",  # misaligned store: SIGBUS
        "la t0, _start\n st8 a0, 0(t0)",  # store to text: SIGSEGV, not writable
        "li64 t0, 0x600000000000\n ld8 a0, 0(t0)",  # unmapped: SIGSEGV
        "la t0, buf\n jr t0",  # fetch from data: SIGSEGV, not executable
        "la t0, _start+4\n jr t0",  # misaligned pc: SIGBUS at the fetch
        ".quad 0",  # the all-zero word is illegal: SIGILL
        ".quad 0x80000000000011",  # reserved bits set: SIGILL
        "li64 t0, -8\n ld8 a0, 0(t0)",  # kernel half: SIGSEGV
        "li a0, 3\n halt",  # halt: exit code = a0
    ],
)
@pytest.mark.parametrize("mode", ["native", "nested", "shadow"])
def test_faults_kill_with_the_reference_message(tmp_path, snippet, mode):
    # and the recorded events equal the reference's: a faulting access that passes the
    # alignment check is translated (an event) before the kernel kills the process
    src = "_start: li a0, 1\n" + "\n".join(f"        {s.strip()}" for s in snippet.split("\n")) + "\n" + DUMP
    compare(src, modes=(mode,), events_in=tmp_path)


@pytest.mark.parametrize("mode", ["native", "nested", "shadow"])
def test_syscalls_and_instruction_limit(mode):
    src = (
        """
_start: li      a0, 1
        li      a1, 77
        syscall getarg           # a0 = args[1]
        mv      s0, a0
        li      a0, 9
        li      a1, 5
        syscall getarg           # default
        mv      s1, a0
        syscall rand
        mv      s2, a0
        syscall getpid
        mv      s3, a0
        li      a0, 0
        syscall mmap             # len 0: -1
        mv      s4, a0
        li      a0, 4096
        li      a1, 16
        syscall mmap             # bad prot: -1
        mv      s5, a0
        li      a0, 1
        li      a1, 0
        syscall munmap           # unaligned: -1
        mv      s6, a0
        syscall wait             # no children: -1, 0
        mv      s7, a0
        mv      s8, a1
        syscall 99               # unknown: -1
        mv      s9, a0
        li64    a0, 0x700000000000
        li      a1, 8
        syscall write            # unmapped buffer: -1
        mv      s10, a0
        syscall yield
        mv      s11, a0
"""
        + DUMP
    )
    compare(src, args=(3, -4), modes=(mode,))
    compare(src, args=(3, -4), modes=(mode,), max_instructions=20)


@pytest.mark.parametrize("mode", ["native", "nested", "shadow"])
def test_write_reads_data_not_faulted_in(mode):
    # write() of a .data string the program never touched: the kernel reads the image's page
    src = '_start: la a0, msg\n li a1, 3\n syscall write\n li a0, 0\n syscall exit\n .data\nmsg: .ascii "hi\\n"\n'
    compare(src, modes=(mode,))
