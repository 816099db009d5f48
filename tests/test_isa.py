"""Guest ISA semantics, instruction by instruction, in the reference interpreter (tests/reference/guest_cpu.py).

Expected values are computed by hand (written out in the tables) or from algebraic
identities, never by calling the interpreter's own ALU. Each snippet ends in ``halt``, so
the registers of pid 1 can be read afterwards.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmu.guest.asm import assemble
from mmu.guest.isa import (
    DEFAULT_SEED,
    FORMAT_TABLE,
    FORMAT_USED,
    MAX_PID,
    MMAP_BASE,
    NREGS,
    OPCODES,
    PAGE_SIZE,
    SIGBUS,
    SIGILL,
    SIGSEGV,
    STACK_TOP,
    TEXT_BASE,
    USED_MASK_TABLE,
    decode,
    encode,
)
from mmu.trace.format import OP_EXIT, OP_FETCH, OP_FORK, OP_MMAP, OP_MUNMAP, OP_READ, OP_SWITCH, OP_WRITE
from tests.guest_ref import Machine, image, run
from tests.reference.guest_cpu import decode as ref_decode

M = (1 << 64) - 1
MIN = 1 << 63  # INT64_MIN as a bit pattern
MAXS = (1 << 63) - 1


def u(x: int) -> int:
    return x & M


def machine(src: str, args=(), max_instructions: int = 1_000_000, **kw) -> tuple[Machine, object]:
    m = Machine(assemble(src, "t.s"), args, **kw)
    return m, m.run(max_instructions)


def regs_after(src: str, args=(), **kw) -> list[int]:
    m, res = machine(src, args, **kw)
    assert res.reason == "halt", (res.reason, [f.message for f in res.faults])
    return m.procs[1].regs


def xorshift(x: int) -> int:  # written from Marsaglia (2003), "Xorshift RNGs", triple (13, 7, 17)
    x = (x ^ (x << 13)) % (1 << 64)
    x = x ^ (x >> 7)
    return (x ^ (x << 17)) % (1 << 64)


# --- ALU -------------------------------------------------------------------------------------------
ALU_CASES = [
    ("add", 1, 2, 3),
    ("add", M, 1, 0),  # wraps
    ("add", MAXS, 1, MIN),
    ("sub", 5, 3, 2),
    ("sub", 0, 1, M),
    ("mul", 6, 7, 42),
    ("mul", 1 << 32, 1 << 32, 0),  # low 64 bits of 2**64
    ("mul", M, M, 1),  # (-1)*(-1)
    ("mul", 3, u(-2), u(-6)),
    ("div", 7, 2, 3),
    ("div", u(-7), 2, u(-3)),  # truncates toward zero
    ("div", 7, u(-2), u(-3)),
    ("div", u(-7), u(-2), 3),
    ("div", 5, 0, M),  # division by zero: -1
    ("div", MIN, M, MIN),  # INT64_MIN / -1 overflows to INT64_MIN
    ("divu", 7, 2, 3),
    ("divu", M, 2, MAXS),
    ("divu", 5, 0, M),
    ("rem", 7, 2, 1),
    ("rem", u(-7), 2, u(-1)),  # sign of the dividend
    ("rem", 7, u(-2), 1),
    ("rem", u(-7), u(-2), u(-1)),
    ("rem", 5, 0, 5),  # remainder by zero: the dividend
    ("rem", MIN, M, 0),
    ("remu", 7, 2, 1),
    ("remu", M, 10, 5),  # 18446744073709551615 = 10 * 1844674407370955161 + 5
    ("remu", 5, 0, 5),
    ("and", 0b1100, 0b1010, 0b1000),
    ("or", 0b1100, 0b1010, 0b1110),
    ("xor", 0b1100, 0b1010, 0b0110),
    ("xor", M, 0x0F, M - 0x0F),
    ("shl", 1, 63, MIN),
    ("shl", 1, 64, 1),  # shift amount masked to 6 bits
    ("shl", 1, 65, 2),
    ("shl", M, 4, 0xFFFF_FFFF_FFFF_FFF0),
    ("shr", MIN, 63, 1),
    ("shr", MIN, 64, MIN),
    ("shr", M, 60, 15),
    ("sar", MIN, 63, M),
    ("sar", MIN, 1, 0xC000_0000_0000_0000),
    ("sar", 1 << 62, 62, 1),
    ("sar", u(-8), 65, u(-4)),  # 65 & 63 = 1
    ("slt", u(-1), 0, 1),
    ("slt", 0, u(-1), 0),
    ("slt", 1, 1, 0),
    ("slt", MIN, MAXS, 1),
    ("sltu", u(-1), 0, 0),
    ("sltu", 0, u(-1), 1),
    ("sltu", 1, 1, 0),
]


@pytest.mark.parametrize(("op", "a", "b", "want"), ALU_CASES)
def test_alu_register_form(op, a, b, want):
    regs = regs_after(f"li64 t0, {a}\nli64 t1, {b}\n{op} a0, t0, t1\nhalt\n")
    assert regs[1] == want


# immediates are signed 32-bit; shift immediates 0..63 (the encoding has no room for more)
IMM_CASES = [c for c in ALU_CASES if -(2**31) <= c[2] < 2**31 and not (c[0] in ("shl", "shr", "sar") and c[2] > 63)]


@pytest.mark.parametrize(("op", "a", "b", "want"), IMM_CASES)
def test_alu_immediate_form(op, a, b, want):
    name = "sltiu" if op == "sltu" else op + "i"
    regs = regs_after(f"li64 t0, {a}\n{name} a0, t0, {b}\nhalt\n")
    assert regs[1] == want


@pytest.mark.parametrize(
    ("insn", "a", "want"),
    [
        ("addi a0, t0, -1", 0, M),  # immediate sign-extended to 64 bits
        ("subi a0, t0, -1", M, 0),
        ("andi a0, t0, -1", 0x1234_5678_9ABC_DEF0, 0x1234_5678_9ABC_DEF0),
        ("andi a0, t0, 0xff", 0x1234_5678_9ABC_DEF0, 0xF0),
        ("ori a0, t0, -2147483648", 0, 0xFFFF_FFFF_8000_0000),
        ("xori a0, t0, -1", 0x0F, M - 0x0F),
        ("sltiu a0, t0, -1", M - 1, 1),  # compared with 2**64 - 1
        ("slti a0, t0, -1", M - 1, 1),  # -2 < -1
        ("muli a0, t0, -3", 5, u(-15)),
        ("divi a0, t0, 0", 9, M),
        ("divui a0, t0, -1", M, 1),  # -1 is 2**64-1 unsigned
        ("remi a0, t0, 0", 9, 9),
        ("remui a0, t0, 4", 11, 3),
        ("shli a0, t0, 0", 5, 5),
        ("shri a0, t0, 63", M, 1),
        ("sari a0, t0, 0", MIN, MIN),
    ],
)
def test_immediate_edge_cases(insn, a, want):
    assert regs_after(f"li64 t0, {a}\n{insn}\nhalt\n")[1] == want


@settings(max_examples=60, deadline=None)
@given(st.integers(0, M), st.integers(0, M))
def test_alu_identities(a, b):
    src = f"li64 t0, {a}\nli64 t1, {b}\n" + "".join(
        f"{op} {r}, t0, t1\n"
        for op, r in [("add", "s0"), ("sub", "s1"), ("mul", "s2"), ("div", "s3"), ("rem", "s4")]
        + [("divu", "s5"), ("remu", "s6"), ("slt", "s7"), ("sltu", "s8")]
    )
    regs = regs_after(src + "halt\n")
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = (regs[16 + i] for i in range(9))
    assert (s0 - b) % 2**64 == a and (s1 + b) % 2**64 == a
    assert s2 == (a * b) % 2**64
    sa = a - 2**64 if a >= 2**63 else a
    sb = b - 2**64 if b >= 2**63 else b
    if b:
        assert (s5 * b + s6) == a and s6 < b
        if not (a == MIN and b == M):
            q = s3 - 2**64 if s3 >= 2**63 else s3
            r = s4 - 2**64 if s4 >= 2**63 else s4
            assert q * sb + r == sa and abs(r) < abs(sb) and (r == 0 or (r < 0) == (sa < 0))
    assert s7 == int(sa < sb) and s8 == int(a < b)


# --- li, lih, r0 ----------------------------------------------------------------------------------
def test_li_sign_extends_and_lih_sets_the_upper_half():
    regs = regs_after(
        """
        li   a0, -1
        li   a1, 0x7fffffff
        li   a2, -2147483648
        li   a3, 0x12345678
        lih  a3, 0xdeadbeef         # keeps the low 32 bits
        li   a4, -1
        lih  a4, 0                  # clears the upper half
        halt
        """
    )
    assert regs[1:6] == [M, 0x7FFF_FFFF, 0xFFFF_FFFF_8000_0000, 0xDEAD_BEEF_1234_5678, 0xFFFF_FFFF]


@settings(max_examples=40, deadline=None)
@given(st.integers(-(2**63), M))
def test_li64_loads_any_64_bit_value(v):
    assert regs_after(f"li64 t3, {v}\nhalt\n")[10] == v % 2**64


def test_r0_reads_zero_and_ignores_writes():
    regs = regs_after(
        """
        li   zero, 5
        addi r0, r0, 7
        lih  zero, 1
        ld8  zero, -8(sp)
        jal  zero, next
next:   add  a0, zero, zero
        addi a1, r0, 3
        halt
        """
    )
    assert regs[0] == 0 and regs[1] == 0 and regs[2] == 3


def test_initial_registers():
    regs = regs_after("halt\n")
    assert regs[30] == STACK_TOP  # sp
    assert all(regs[i] == 0 for i in range(NREGS) if i != 30)


# --- loads and stores ------------------------------------------------------------------------------
DATA = """
        .data
        .align 8
buf:    .quad 0x8877665544332211, 0
        .text
_start: la   t0, buf
"""


@pytest.mark.parametrize(
    ("insn", "want"),
    [
        ("ld8 a0, 0(t0)", 0x8877_6655_4433_2211),
        ("ld1 a0, 0(t0)", 0x11),  # little-endian
        ("ld1 a0, 7(t0)", 0x88),  # zero-extended
        ("ld1s a0, 7(t0)", 0xFFFF_FFFF_FFFF_FF88),  # sign-extended
        ("ld1s a0, 6(t0)", 0x77),
        ("ld2 a0, 6(t0)", 0x8877),
        ("ld2s a0, 6(t0)", 0xFFFF_FFFF_FFFF_8877),
        ("ld2s a0, 2(t0)", 0x4433),
        ("ld4 a0, 4(t0)", 0x8877_6655),
        ("ld4s a0, 4(t0)", 0xFFFF_FFFF_8877_6655),
        ("ld4s a0, 0(t0)", 0x4433_2211),
        ("ld8 a0, 8(t0)", 0),
        ("ld a0, (t0)", 0x8877_6655_4433_2211),  # alias, no offset
        ("ld8 a0, buf", 0x8877_6655_4433_2211),  # absolute address, base r0
        ("ld8 a0, buf+8-8(zero)", 0x8877_6655_4433_2211),
    ],
)
def test_loads(insn, want):
    assert regs_after(DATA + f"{insn}\nhalt\n")[1] == want


@pytest.mark.parametrize(
    ("insn", "want"),
    [
        ("st1 t1, 1(t0)", 0x8877_6655_4433_EF11),  # only the low byte of the register
        ("st2 t1, 2(t0)", 0x8877_6655_CDEF_2211),
        ("st4 t1, 4(t0)", 0x89AB_CDEF_4433_2211),
        ("st8 t1, 0(t0)", 0x0123_4567_89AB_CDEF),
        ("st t1, 0(t0)", 0x0123_4567_89AB_CDEF),
    ],
)
def test_stores(insn, want):
    assert regs_after(DATA + f"li64 t1, 0x0123456789abcdef\n{insn}\nld8 a0, 0(t0)\nld8 a1, 8(t0)\nhalt\n")[1:3] == [
        want,
        0,
    ]


def test_negative_offsets_stack_and_zero_fill():
    regs = regs_after(
        """
        li   t0, 42
        st8  t0, -8(sp)
        ld8  a0, -8(sp)
        ld8  a1, -4096(sp)          # mapped, never written: zero
        halt
        """
    )
    assert regs[1:3] == [42, 0]


@pytest.mark.parametrize(
    ("insn", "signal", "access", "reason"),
    [
        ("ld8 a0, 4(t0)", SIGBUS, "load", "misaligned"),
        ("ld4 a0, 2(t0)", SIGBUS, "load", "misaligned"),
        ("ld2s a0, 1(t0)", SIGBUS, "load", "misaligned"),
        ("st2 a0, 3(t0)", SIGBUS, "store", "misaligned"),
        ("ld8 a0, 0(zero)", SIGSEGV, "load", "unmapped"),
        ("ld8 a0, 0(sp)", SIGSEGV, "load", "unmapped"),  # the page above the stack
        ("st1 a0, _start", SIGSEGV, "store", "not writable"),  # text is read + execute
        ("ld8 a0, 3(t0)", SIGBUS, "load", "misaligned"),  # alignment before permission
    ],
)
def test_access_faults_kill_the_process(insn, signal, access, reason):
    m, res = machine(DATA + f"li a0, 7\n{insn}\nhalt\n")
    assert res.reason == "exit" and res.exit_code == -signal
    (f,) = res.faults
    assert (f.pid, f.signal, f.access, f.reason) == (1, signal, access, reason)
    assert f.pc == TEXT_BASE + 16  # la, li, then the faulting instruction
    assert res.instructions == 2  # the faulting instruction does not retire
    assert "pid 1:" in f.message and f"{f.pc:#x}" in f.message


def test_aligned_byte_access_anywhere_and_text_is_readable():
    regs = regs_after(DATA + "ld1 a0, 5(t0)\nld8 a1, _start\nhalt\n")
    assert regs[1] == 0x66
    assert regs[2] == encode(0x20, 7, 0, 0, TEXT_BASE + PAGE_SIZE)  # the word at _start: li t0, buf


def test_fetch_faults():
    # jump into data: not executable
    _, res = machine(".data\nw: .quad 0\n.text\nla t0, w\njr t0\n")
    assert res.exit_code == -SIGSEGV and res.faults[0].access == "fetch"
    assert res.faults[0].reason == "not executable" and res.faults[0].pc == res.faults[0].addr
    # jump to a misaligned address
    _, res = machine("li t0, TEXT_BASE+4\njr t0\nhalt\n")
    assert res.exit_code == -SIGBUS and res.faults[0].reason == "misaligned" and res.faults[0].addr == TEXT_BASE + 4
    assert res.instructions == 2  # the jump retired; the fetch at its target faulted
    # run off the end of the text: the rest of the page is zero words, i.e. illegal
    _, res = machine("li a0, 1\n")
    assert res.exit_code == -SIGILL and res.faults[0].pc == TEXT_BASE + 8
    # past the text page: unmapped
    _, res = machine("li t0, TEXT_BASE + 4096\njr t0\n")
    assert res.exit_code == -SIGSEGV and res.faults[0].reason == "unmapped"


@pytest.mark.parametrize(
    "word",
    [
        0,  # opcode 0
        0xFF,  # unused opcode
        encode(0x01, 1, 2, 3) | 1 << 23,  # reserved bit
        encode(0x01, 1, 2, 3) | 1 << 32,  # immediate in a register-form instruction
        encode(0x40, 0, 1, 2, 8) | 4 << 32,  # branch offset not a multiple of 8
        encode(0x1B, 1, 1, 0, 1) | 64 << 32,  # shift immediate > 63
        encode(0x51) | 1 << 8,  # halt with a register field
    ],
)
def test_illegal_instructions(word):
    _, res = machine(f".quad {word:#x}\n")
    assert res.exit_code == -SIGILL and res.instructions == 0
    assert res.faults[0].access == "decode" and res.faults[0].addr == word
    assert f"{word:#018x}" in res.faults[0].message


# --- branches and jumps ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "a", "b", "taken"),
    [
        ("beq", 5, 5, True),
        ("beq", 5, 6, False),
        ("bne", 5, 6, True),
        ("bne", 5, 5, False),
        ("blt", u(-1), 1, True),  # signed
        ("blt", 1, u(-1), False),
        ("blt", 3, 3, False),
        ("bge", 3, 3, True),
        ("bge", u(-1), 1, False),
        ("bltu", u(-1), 1, False),  # unsigned
        ("bltu", 1, u(-1), True),
        ("bgeu", u(-1), 1, True),
        ("bgeu", 1, 2, False),
        ("bgt", 2, 1, True),
        ("bgt", 1, 1, False),
        ("ble", 1, 1, True),
        ("ble", 2, u(-2), False),
        ("bgtu", u(-2), 2, True),
        ("bleu", u(-2), 2, False),
    ],
)
def test_branches(op, a, b, taken):
    src = f"li64 t0, {a}\nli64 t1, {b}\n{op} t0, t1, yes\nli a0, 1\nhalt\nyes: li a0, 2\nhalt\n"
    assert regs_after(src)[1] == (2 if taken else 1)


@pytest.mark.parametrize(
    ("op", "v", "taken"),
    [
        ("beqz", 0, True),
        ("beqz", 1, False),
        ("bnez", 1, True),
        ("bltz", u(-1), True),
        ("bltz", 0, False),
        ("bgez", 0, True),
        ("bgez", u(-5), False),
        ("bgtz", 1, True),
        ("bgtz", 0, False),
        ("blez", 0, True),
        ("blez", 1, False),
    ],
)
def test_branches_against_zero(op, v, taken):
    src = f"li64 t0, {v}\n{op} t0, yes\nli a0, 1\nhalt\nyes: li a0, 2\nhalt\n"
    assert regs_after(src)[1] == (2 if taken else 1)


def test_backward_branch_loop():
    regs = regs_after("li t0, 0\nli t1, 10\nloop: addi a0, a0, 3\naddi t0, t0, 1\nbltu t0, t1, loop\nhalt\n")
    assert regs[1] == 30


def test_jal_jalr_call_ret():
    regs = regs_after(
        """
_start: call  f                     # 0x400000: ra = 0x400008
        mv    a1, ra
        jal   t0, g                 # 0x400010: t0 = 0x400018
        li    t2, h
        jalr  t2, t2, 8             # rd == rs1: the target uses the old value
        halt                        # 0x400028
f:      li    a0, 5
        ret
g:      mv    a2, t0
        jr    t0
h:      halt                        # 0x400048 (skipped: target is h + 8)
        mv    a3, t2
        halt
        """
    )
    assert regs[1] == 5 and regs[2] == TEXT_BASE + 8 and regs[3] == TEXT_BASE + 0x18
    assert regs[4] == TEXT_BASE + 0x28  # link of the jalr


def test_jalr_single_operand_links_ra():
    regs = regs_after("la t0, f\njalr t0\nhalt\nf: mv a0, ra\nhalt\n")
    assert regs[1] == TEXT_BASE + 16


# --- halt ------------------------------------------------------------------------------------------
def test_halt_stops_the_machine_with_a0():
    src = "syscall fork\nbeqz a0, child\nli a0, -3\nhalt\nchild: li t0, 1\nj child\n"
    m, res = machine(src)
    assert res.reason == "halt" and res.exit_code == -3
    assert res.instructions == 4
    assert m.procs[2].state == "ready"  # the child never ran
    res2 = m.run()
    assert res2.reason == "halt" and res2.instructions == 4


# --- system calls ----------------------------------------------------------------------------------
def test_exit_status_is_a_signed_64_bit_value():
    for code in (0, 1, 255, 256, -1, -(2**63)):
        res = run(assemble(f"li64 a0, {code}\nsyscall exit\n"))
        assert res.reason == "exit" and res.exit_code == code and res.statuses == {1: code}
        assert res.instructions == 3  # li64 is two instructions


def test_write_to_console():
    src = """
        .data
msg:    .ascii "hello, world\\n"
        .text
        la   a0, msg
        li   a1, 13
        syscall write
        mv   s0, a0
        la   a0, msg
        li   a1, 0
        syscall write               # len 0: returns 0, writes nothing
        mv   s1, a0
        li   a0, 0
        li   a1, 8
        syscall write               # unmapped buffer: -1, nothing written
        mv   s2, a0
        la   a0, msg
        li   a1, 8192
        syscall write               # runs off the data page into unmapped memory: -1
        mv   s3, a0
        li   a0, TEXT_BASE
        li   a1, 1
        syscall write               # text is readable
        mv   s4, a0
        halt
    """
    m, res = machine(src)
    regs = m.procs[1].regs
    assert res.console == b"hello, world\n" + bytes([0x20])  # first byte of `la a0, msg` (opcode li)
    assert regs[16:21] == [13, 0, M, M, 1]


def test_write_reads_unwritten_mapped_memory_as_zero_and_spans_pages():
    src = """
        li   a0, 8192
        li   a1, PROT_READ | PROT_WRITE
        syscall mmap
        mv   s0, a0
        li   t0, 'A'
        st1  t0, 4095(s0)
        li   t0, 'B'
        st1  t0, 4096(s0)
        addi a0, s0, 4094
        li   a1, 4
        syscall write
        halt
    """
    _, res = machine(src)
    assert res.console == b"\0AB\0"


def test_getarg_getpid_and_unknown_syscall():
    src = """
        li   a0, 0
        li   a1, 99
        syscall getarg
        mv   s0, a0
        li   a0, 1
        li   a1, 99
        syscall getarg
        mv   s1, a0
        li   a0, 2
        li   a1, 99
        syscall getarg              # absent: the default
        mv   s2, a0
        li   a0, -1
        li   a1, 98
        syscall getarg              # index 2**64-1: absent
        mv   s3, a0
        syscall getpid
        mv   s4, a0
        li   a1, 77
        syscall 1000                # unknown: -1, a1 untouched
        mv   s5, a0
        mv   s6, a1
        halt
    """
    m, _ = machine(src, args=[5, -1])
    assert m.procs[1].regs[16:23] == [5, M, 99, 98, 1, M, 77]


def test_syscalls_preserve_other_registers():
    src = "".join(f"li r{i}, {100 + i}\n" for i in range(3, 30)) + "syscall getpid\nsyscall rand\nsyscall yield\nhalt\n"
    regs = regs_after(src)
    assert regs[3:30] == [100 + i for i in range(3, 30)]


def test_rand_is_xorshift64_of_the_process_state():
    src = "syscall rand\nmv s0, a0\nsyscall rand\nmv s1, a0\nsyscall rand\nmv s2, a0\nhalt\n"
    x1 = xorshift(DEFAULT_SEED)
    x2 = xorshift(x1)
    assert regs_after(src)[16:19] == [x1, x2, xorshift(x2)]
    assert regs_after(src, seed=1)[16] == xorshift(1) == 0x40822041
    with pytest.raises(ValueError):
        Machine(assemble("halt"), seed=0)


def test_mmap_first_fit_and_munmap():
    src = """
        li   a0, 1                  # rounded up to one page
        li   a1, PROT_READ | PROT_WRITE
        syscall mmap
        mv   s0, a0
        li   a0, 12288
        li   a1, PROT_READ | PROT_WRITE
        syscall mmap
        mv   s1, a0                 # three pages right after
        li   a0, 4096
        li   a1, PROT_READ | PROT_WRITE
        syscall mmap
        mv   s2, a0
        addi a0, s1, 4096           # unmap the middle page of s1's three
        li   a1, 4096
        syscall munmap
        mv   s3, a0
        li   a0, 8192               # two pages do not fit in the one-page hole
        li   a1, PROT_READ
        syscall mmap
        mv   s4, a0
        li   a0, 100                # one page does
        li   a1, PROT_READ
        syscall mmap
        mv   s5, a0
        halt
    """
    regs = regs_after(src)
    P = PAGE_SIZE
    assert regs[16:22] == [MMAP_BASE, MMAP_BASE + P, MMAP_BASE + 4 * P, 0, MMAP_BASE + 5 * P, MMAP_BASE + 2 * P]


@pytest.mark.parametrize(
    ("call", "a0", "a1"),
    [
        ("mmap", 0, 3),  # length 0
        ("mmap", 4096, 16),  # unknown prot bit
        ("mmap", -1, 3),  # larger than the mmap region
        ("munmap", MMAP_BASE + 8, 4096),  # misaligned
        ("munmap", MMAP_BASE, 0),  # length 0
        ("munmap", 0x7FFF_FFFF_F000, 8192),  # runs past the user half
    ],
)
def test_mmap_munmap_errors(call, a0, a1):
    regs = regs_after(f"li64 a0, {a0}\nli64 a1, {a1}\nsyscall {call}\nhalt\n")
    assert regs[1] == M


def test_munmap_of_unmapped_range_succeeds_and_mappings_start_zeroed():
    src = """
        li64 a0, MMAP_BASE
        li   a1, 4096
        syscall munmap              # nothing mapped there: still 0
        mv   s0, a0
        li   a0, 4096
        li   a1, PROT_READ | PROT_WRITE
        syscall mmap
        mv   s1, a0
        li   t0, 55
        st8  t0, 0(s1)
        mv   a0, s1
        li   a1, 4096
        syscall munmap
        li   a0, 4096
        li   a1, PROT_READ | PROT_WRITE
        syscall mmap                # same address again (first fit), fresh zero page
        mv   s2, a0
        ld8  s3, 0(s2)
        halt
    """
    regs = regs_after(src)
    assert regs[16:20] == [0, MMAP_BASE, MMAP_BASE, 0]


@pytest.mark.parametrize(
    ("prot", "insn", "signal", "reason"),
    [
        ("PROT_READ", "st8 t0, 0(a0)", SIGSEGV, "not writable"),
        ("PROT_NONE", "ld8 t0, 0(a0)", SIGSEGV, "unmapped"),
        ("PROT_WRITE", "ld8 t0, 0(a0)", None, None),  # any prot bit makes a page readable (x86)
        ("PROT_READ | PROT_WRITE", "jr a0", SIGSEGV, "not executable"),
        ("PROT_READ | PROT_EXEC", "jr a0", SIGILL, "illegal instruction"),  # executable zero page
        ("PROT_READ | PROT_WRITE | PROT_THP", "st8 t0, 0(a0)", None, None),
    ],
)
def test_mmap_protections(prot, insn, signal, reason):
    _, res = machine(f"li a0, 4096\nli a1, {prot}\nsyscall mmap\n{insn}\nli a0, 0\nhalt\n")
    if signal is None:
        assert res.reason == "halt" and not res.faults
    else:
        assert res.exit_code == -signal and res.faults[0].reason == reason


def test_munmap_partial_then_access():
    src = """
        li   a0, 12288
        li   a1, PROT_READ | PROT_WRITE
        syscall mmap
        mv   s0, a0
        addi a0, s0, 4096
        li   a1, 1                  # rounded up to the whole page
        syscall munmap
        st8  zero, 0(s0)
        st8  zero, 8192(s0)
        st8  zero, 4096(s0)         # the hole
        halt
    """
    _, res = machine(src)
    assert res.exit_code == -SIGSEGV
    assert res.faults[0].addr == MMAP_BASE + 4096 and res.faults[0].reason == "unmapped"


def test_fork_wait_exit():
    src = """
        .data
v:      .quad 10
        .text
        syscall fork
        beqz a0, child
        mv   s0, a0                 # child pid
        syscall wait
        mv   s1, a0
        mv   s2, a1
        ld8  s3, v                  # the child's store is not visible here
        syscall wait                # no children left: -1, a1 = 0
        mv   s4, a0
        mv   s5, a1
        syscall getpid
        mv   s6, a0
        halt
child:  li   t0, 99
        st8  t0, v
        syscall getpid
        addi a0, a0, 40
        syscall exit
    """
    m, res = machine(src)
    assert res.reason == "halt"
    assert m.procs[1].regs[16:23] == [2, 2, 42, 10, M, 0, 1]
    assert m.procs[2].state == "dead" and res.statuses == {2: 42}


def test_wait_reaps_in_exit_order_and_reports_fault_status():
    src = """
        syscall fork
        beqz a0, c1
        syscall fork
        beqz a0, c2
        syscall fork
        beqz a0, c3
        syscall yield               # let all three run and exit
        syscall wait
        mv   s0, a0
        mv   s1, a1
        syscall wait
        mv   s2, a0
        mv   s3, a1
        syscall wait
        mv   s4, a0
        mv   s5, a1
        halt
c1:     syscall yield               # exits last
        li   a0, 1
        syscall exit
c2:     ld8  a0, 0(zero)            # killed by SIGSEGV first
c3:     li   a0, 3
        syscall exit
    """
    m, res = machine(src)
    assert m.procs[1].regs[16:22] == [3, u(-SIGSEGV), 4, 3, 2, 1]
    assert res.statuses == {3: -SIGSEGV, 4: 3, 2: 1}
    assert [f.pid for f in res.faults] == [3]


def test_wait_blocks_until_a_child_exits():
    src = """
        syscall fork
        beqz a0, child
        syscall wait                # blocks: the child is still running
        mv   s0, a0
        mv   s1, a1
        la   a0, p
        li   a1, 1
        syscall write
        halt
child:  li   t0, 0
        li   t1, 50
spin:   addi t0, t0, 1
        bltu t0, t1, spin
        la   a0, c
        li   a1, 1
        syscall write
        li   a0, 7
        syscall exit
        .data
p:      .ascii "P"
c:      .ascii "C"
    """
    m, res = machine(src, quantum=10)
    assert res.console == b"CP"
    assert m.procs[1].regs[16:18] == [2, 7]


def test_orphans_run_to_completion_and_run_ends_when_all_exit():
    src = """
        syscall fork
        beqz a0, child
        li   a0, 5
        syscall exit                # parent exits first
child:  syscall yield
        la   a0, msg
        li   a1, 6
        syscall write
        li   a0, 9
        syscall exit
        .data
msg:    .ascii "orphan"
    """
    _, res = machine(src)
    assert res.reason == "exit" and res.exit_code == 5 and res.console == b"orphan"
    assert res.statuses == {1: 5, 2: 9}


def test_fork_copies_registers_memory_and_rand_state():
    src = """
        .data
v:      .quad 1
        .text
        li   s0, 123
        syscall rand
        syscall fork
        mv   s1, a0
        syscall rand
        mv   s2, a0
        ld8  t0, v
        addi t0, t0, 1
        st8  t0, v
        ld8  s3, v
        bnez s1, parent
        halt                        # the child halts the machine
parent: syscall wait                # the parent blocks here first
        halt
    """
    m, res = machine(src)
    # the parent blocks in wait, the child runs and halts
    assert res.reason == "halt"
    parent, child = m.procs[1].regs, m.procs[2].regs
    x2 = xorshift(xorshift(DEFAULT_SEED))
    assert parent[16:20] == [123, 2, x2, 2]
    assert child[16:20] == [123, 0, x2, 2]  # same rand stream, own copy of v


def test_fork_fails_when_pids_run_out():
    m = Machine(assemble("syscall fork\nmv s0, a0\nsyscall fork\nmv s1, a0\nhalt\n"))
    m.next_pid = MAX_PID
    m.run()
    assert m.procs[1].regs[16:18] == [MAX_PID, M]


def test_yield_alternates_round_robin():
    src = """
        syscall fork
        la   s0, letters
        add  s0, s0, a0             # parent 'C' (a0 = 2), child 'A' (a0 = 0)
        li   s1, 3
loop:   mv   a0, s0
        li   a1, 1
        syscall write
        syscall yield
        addi s1, s1, -1
        bnez s1, loop
        li   a0, 0
        syscall exit
        .data
letters: .ascii "ABC"
    """
    _, res = machine(src)
    assert res.console == b"CACACA"
    assert res.switches == 8  # dispatches 1 2 1 2 1 2 (3 yields each), then 1 and 2 exit


def test_preemption_after_quantum_instructions():
    # each process spins 2*N instructions, then writes its letter; the child spins less
    src = """
        syscall fork
        li   t1, 40
        beqz a0, go
        li   t1, 60                 # the parent spins longer
go:     mv   s0, a0
        li   t0, 0
spin:   addi t0, t0, 1
        bltu t0, t1, spin
        la   a0, letters
        add  a0, a0, s0
        li   a1, 1
        syscall write
        li   a0, 0
        syscall exit
        .data
letters: .ascii "C.P"
    """
    big = run(assemble(src), quantum=10_000)
    assert big.console == b"PC" and big.switches == 2
    small = run(assemble(src), quantum=10)
    assert small.console == b"CP"
    assert small.instructions == big.instructions
    # slices of 10: pid 1 runs 10, pid 2 runs 10, ... pid 2 needs 3+80+7 = 90 after fork
    assert small.switches > 10


def test_instruction_limit_and_resume():
    src = "li t0, 0\nli t1, 1000\nloop: addi t0, t0, 1\nbltu t0, t1, loop\nmv a0, t0\nsyscall exit\n"
    prog = assemble(src)
    full = run(prog, trace=True)
    m = Machine(prog, quantum=7, trace=True)
    parts = []
    while True:
        r = m.run(333)
        parts.append(r.reason)
        if r.reason != "limit":
            break
        assert r.exit_code is None
    assert parts[:-1] == ["limit"] * (len(parts) - 1) and parts[-1] == "exit"
    assert r.exit_code == 1000 and r.instructions == full.instructions == 2 + 2000 + 2
    whole = Machine(prog, quantum=7, trace=True).run()
    assert r.events == whole.events and r.switches == whole.switches


def test_event_trace():
    src = """
        .data
v:      .quad 0
        .text
        li   a0, 4096
        li   a1, PROT_READ | PROT_WRITE
        syscall mmap
        st4  zero, 4(a0)
        ld1  t0, v
        syscall fork
        beqz a0, done
        syscall wait
done:   li   a0, 4096
        mv   a0, a0
        syscall exit
    """
    prog = assemble(src)
    res = run(prog, trace=True)
    pc = TEXT_BASE
    data = prog.data_base
    ev = res.events
    f = [(OP_FETCH, 1, pc + 8 * i, 8, 0) for i in range(6)]
    assert ev[:3] == [
        (OP_MMAP, 1, TEXT_BASE, 1, 5 | 32),  # text and data: prot | MAP_FILE (file mappings)
        (OP_MMAP, 1, data, 1, 3 | 32),
        (OP_MMAP, 1, STACK_TOP - (1 << 20), 256, 3),
    ]
    assert ev[3:12] == [
        (OP_SWITCH, 1, 0, 0, 0),
        f[0],
        f[1],
        f[2],
        (OP_MMAP, 1, MMAP_BASE, 1, 3),
        f[3],
        (OP_WRITE, 1, MMAP_BASE + 4, 4, 0),
        f[4],
        (OP_READ, 1, data, 1, 0),
    ]
    assert ev[12:17] == [f[5], (OP_FORK, 1, 0, 2, 0), (OP_FETCH, 1, pc + 48, 8, 0), (OP_FETCH, 1, pc + 56, 8, 0)] + [
        (OP_SWITCH, 2, 0, 0, 0)
    ]
    tail = ev[17:]
    assert tail[:4] == [(OP_FETCH, 2, pc + 48, 8, 0), (OP_FETCH, 2, pc + 64, 8, 0)] + [
        (OP_FETCH, 2, pc + 72, 8, 0),
        (OP_FETCH, 2, pc + 80, 8, 0),
    ]
    assert tail[4:] == [
        (OP_EXIT, 2, 0, 0, 0),
        (OP_SWITCH, 1, 0, 0, 0),
        (OP_FETCH, 1, pc + 64, 8, 0),
        (OP_FETCH, 1, pc + 72, 8, 0),
        (OP_FETCH, 1, pc + 80, 8, 0),
        (OP_EXIT, 1, 0, 0, 0),
    ]
    assert OP_MUNMAP not in {e[0] for e in ev}


def test_munmap_event():
    res = run(assemble("li64 a0, MMAP_BASE\nli a1, 8193\nsyscall munmap\nhalt\n"), trace=True)
    assert (OP_MUNMAP, 1, MMAP_BASE, 3, 0) in res.events


def test_every_opcode_is_exercised_here():
    """A guard: this file names every mnemonic of the ISA at least once."""
    import inspect
    import sys

    text = inspect.getsource(sys.modules[__name__])
    for name, _fmt in OPCODES.values():
        assert f"{name} " in text or f'"{name}"' in text or f"{name}i" in text, name


def test_tables_agree_with_opcodes():
    for op in range(256):
        if op in OPCODES:
            fmt = OPCODES[op][1]
            assert FORMAT_TABLE[op] == fmt and int(USED_MASK_TABLE[op]) == FORMAT_USED[fmt]
            assert decode(op) is not None  # all other fields zero is always valid
        else:
            assert FORMAT_TABLE[op] == 0 and USED_MASK_TABLE[op] == 0 and decode(op) is None


# --- the reference's own reading of docs/isa.md against mmu.guest.isa and the assembler -------------
@settings(max_examples=400, deadline=None)
@given(op=st.integers(0, 255), rest=st.integers(0, (1 << 56) - 1), sparse=st.booleans())
def test_reference_decoder_agrees_with_isa_decode(op, rest, sparse):
    # two readings of the encoding (isa.py's tables, the reference's from the document) accept
    # the same words and give the same fields; sparse words keep only the fields some format uses
    word = op | (rest << 8)
    if sparse:
        word &= 0x7FFFFF | (0xFFFF_FFFF << 32)  # no reserved bit (31..23)
    want = decode(word)
    assert ref_decode(word) == (None if want is None else tuple(want))


def test_reference_decoder_agrees_on_every_opcode_alone():
    for op in range(256):
        want = decode(op)
        assert ref_decode(op) == (None if want is None else tuple(want)), hex(op)


@pytest.mark.parametrize(
    "src",
    [
        "halt\n",
        "_start: li a0, 1\nhalt\n.data\n.quad 1, 2\n",
        ".zero 4096\nhalt\n.data\n.byte 7\n",  # text one page + 8 bytes: data two pages up
        ".zero 4088\nhalt\n.data\n.byte 7\n",  # text of exactly one page: data right after it
        '.data\n.ascii "only data"\n',  # no text: data at TEXT_BASE
    ],
)
def test_assembler_layout_matches_the_reference(src):
    prog = assemble(src, "t.s")
    img = image(prog)
    assert img.entry == prog.entry and img.data_start == prog.data_base
    assert [tuple(s[1:]) for s in prog.segments()] == [(a, n, pr, bytes(c)) for a, n, pr, c in img.segments()]


def test_shipped_programs_layout_matches_the_reference():
    from pathlib import Path

    from mmu.guest.asm import assemble_file

    for path in sorted((Path(__file__).resolve().parent.parent / "traces" / "programs").glob("*.s")):
        prog = assemble_file(path)
        img = image(prog)
        assert img.entry == prog.entry and img.data_start == prog.data_base, path.name
        assert [tuple(s[1:]) for s in prog.segments()] == [(a, n, pr, bytes(c)) for a, n, pr, c in img.segments()]
