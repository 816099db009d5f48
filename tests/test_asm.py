"""The assembler and disassembler: encodings, round trips, syntax, layout and error messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmu.errors import MMUInputError
from mmu.guest.asm import AsmError, Program, assemble, assemble_file, disassemble
from mmu.guest.isa import (
    ABI_NAMES,
    FMT_BRANCH,
    FMT_I,
    FMT_JAL,
    FMT_JALR,
    FMT_LI,
    FMT_LIH,
    FMT_LOAD,
    FMT_R,
    FMT_SHI,
    FMT_STORE,
    FMT_SYS,
    MMAP_BASE,
    OPCODES,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    STACK_SIZE,
    STACK_TOP,
    SYS_WRITE,
    TEXT_BASE,
    Insn,
    decode,
    encode,
)

M = (1 << 64) - 1
INT32 = st.integers(-(2**31), 2**31 - 1)
REG = st.integers(0, 31)


def word_of(src: str) -> int:
    prog = assemble(src, "rt.s")
    assert len(prog.text) == 1, src
    return int(prog.text[0])


def words(src: str) -> list[int]:
    return [int(w) for w in assemble(src, "t.s").text]


def fields(op: int, rd=0, rs1=0, rs2=0, imm=0) -> int:
    """Independent packing of the documented layout (bits 7:0, 12:8, 17:13, 22:18, 63:32)."""
    return op + rd * 2**8 + rs1 * 2**13 + rs2 * 2**18 + (imm % 2**32) * 2**32


# --- encoding --------------------------------------------------------------------------------------
@st.composite
def valid_insns(draw) -> Insn:
    op = draw(st.sampled_from(sorted(OPCODES)))
    fmt = OPCODES[op][1]
    rd = rs1 = rs2 = imm = 0
    if fmt in (FMT_R, FMT_I, FMT_SHI, FMT_LI, FMT_LIH, FMT_LOAD, FMT_JAL, FMT_JALR):
        rd = draw(REG)
    if fmt in (FMT_R, FMT_I, FMT_SHI, FMT_LOAD, FMT_STORE, FMT_BRANCH, FMT_JALR):
        rs1 = draw(REG)
    if fmt in (FMT_R, FMT_STORE, FMT_BRANCH):
        rs2 = draw(REG)
    if fmt in (FMT_I, FMT_LI, FMT_LIH, FMT_LOAD, FMT_STORE, FMT_JALR, FMT_SYS):
        imm = draw(INT32 | st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31)]))
    elif fmt == FMT_SHI:
        imm = draw(st.integers(0, 63))
    elif fmt in (FMT_BRANCH, FMT_JAL):
        imm = 8 * draw(st.integers(-(2**28), 2**28 - 1))
    return Insn(op, rd, rs1, rs2, imm)


@settings(max_examples=400, deadline=None)
@given(valid_insns())
def test_encode_decode_disassemble_assemble_round_trip(insn):
    word = encode(*insn)
    assert word == fields(*insn)
    assert decode(word) == insn
    for abi in (True, False):
        text = disassemble(word, abi=abi)
        assert word_of(text) == word, text
    # with the pc, targets are absolute addresses; assembled at the same pc they match
    assert word_of(disassemble(word, pc=TEXT_BASE)) == word


@st.composite
def any_words(draw) -> int:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.integers(0, M))
    word = encode(*draw(valid_insns()))
    if kind == 1:
        return word
    return word ^ (1 << draw(st.integers(0, 63)))  # one flipped bit: often illegal


@settings(max_examples=400, deadline=None)
@given(any_words())
def test_any_word_disassembles_to_text_that_assembles_back(word):
    text = disassemble(word)
    assert word_of(text) == word, text
    if decode(word) is None:
        assert text == f".quad {word:#x}"


def test_every_opcode_decodes_in_the_round_trip_strategy():
    assert {op for op in OPCODES} == set(OPCODES)  # the strategy samples OPCODES itself
    assert len(OPCODES) == 15 + 15 + 2 + 7 + 4 + 6 + 2 + 2


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        ((0x00,), "not an opcode"),
        ((0x01, 32, 0, 0), "rd = 32"),
        ((0x01, 0, -1, 0), "rs1 = -1"),
        ((0x11, 1, 1, 0, 2**31), "out of range"),
        ((0x20, 1, 0, 0, -(2**31) - 1), "out of range"),
        ((0x01, 1, 1, 1, 5), "fields outside its format"),
        ((0x40, 0, 1, 1, 4), "fields outside its format"),  # branch offset not a multiple of 8
        ((0x1B, 1, 1, 0, 64), "fields outside its format"),  # shift immediate > 63
        ((0x51, 1), "fields outside its format"),
    ],
)
def test_encode_rejects_bad_fields(args, msg):
    with pytest.raises(ValueError, match=msg):
        encode(*args)


def test_lih_takes_any_32_bit_pattern():
    assert encode(0x21, 1, 0, 0, 0xFFFF_FFFF) == encode(0x21, 1, 0, 0, -1)
    assert decode(encode(0x21, 1, 0, 0, 0xFFFF_FFFF)).imm == -1


def test_disassembly_text():
    assert disassemble(fields(0x01, 1, 2, 3)) == "add a0, a1, a2"
    assert disassemble(fields(0x01, 1, 2, 3), abi=False) == "add r1, r2, r3"
    assert disassemble(fields(0x11, 30, 30, 0, -16)) == "addi sp, sp, -16"
    assert disassemble(fields(0x33, 7, 30, 0, 8)) == "ld8 t0, 8(sp)"
    assert disassemble(fields(0x38, 0, 30, 31, -1)) == "st1 ra, -1(sp)"
    assert disassemble(fields(0x40, 0, 1, 0, -16)) == "beq a0, zero, .-16"
    assert disassemble(fields(0x40, 0, 1, 0, 16), pc=0x400000) == "beq a0, zero, 0x400010"
    assert disassemble(fields(0x48, 31, 0, 0, 8), pc=0x400000, symbols={0x400008: "f"}) == "jal ra, f"
    assert disassemble(fields(0x21, 5, 0, 0, -1)) == "lih a4, 0xffffffff"
    assert disassemble(fields(0x50, 0, 0, 0, SYS_WRITE)) == "syscall write"
    assert disassemble(fields(0x50, 0, 0, 0, 77)) == "syscall 77"
    assert disassemble(0x51) == "halt"
    assert disassemble(0) == ".quad 0x0"
    assert [ABI_NAMES[i] for i in (0, 1, 6, 7, 15, 16, 28, 29, 30, 31)] == [
        "zero",
        "a0",
        "a5",
        "t0",
        "t8",
        "s0",
        "s12",
        "fp",
        "sp",
        "ra",
    ]


# --- syntax ----------------------------------------------------------------------------------------
def test_registers_aliases_and_case():
    assert word_of("ADD A0, R2, Sp") == fields(0x01, 1, 2, 30)
    assert word_of("add ra, fp, s12") == fields(0x01, 31, 29, 28)
    assert word_of("add r31, r0, t8") == fields(0x01, 31, 0, 15)


@pytest.mark.parametrize(
    ("src", "want"),
    [
        ("nop", [fields(0x11)]),
        ("mv a0, a1", [fields(0x11, 1, 2)]),
        ("not a0, a1", [fields(0x1A, 1, 2, 0, -1)]),
        ("neg a0, a1", [fields(0x02, 1, 0, 2)]),
        ("seqz a0, a1", [fields(0x1F, 1, 2, 0, 1)]),
        ("snez a0, a1", [fields(0x0F, 1, 0, 2)]),
        ("la a0, 0x1234", [fields(0x20, 1, 0, 0, 0x1234)]),
        ("li64 a0, 0x123456789abcdef0", [fields(0x20, 1, 0, 0, 0x9ABCDEF0), fields(0x21, 1, 0, 0, 0x12345678)]),
        ("li64 a0, -1", [fields(0x20, 1, 0, 0, -1), fields(0x21, 1, 0, 0, 0xFFFFFFFF)]),
        ("li64 a0, 5", [fields(0x20, 1, 0, 0, 5), fields(0x21, 1)]),  # always two words
        ("j .+8", [fields(0x48, 0, 0, 0, 8)]),
        ("call .", [fields(0x48, 31)]),
        ("jal .-8", [fields(0x48, 31, 0, 0, -8)]),  # one operand: links ra
        ("ret", [fields(0x49, 0, 31)]),
        ("jr t0", [fields(0x49, 0, 7)]),
        ("jalr t0", [fields(0x49, 31, 7)]),
        ("jalr t0, t1, -4", [fields(0x49, 7, 8, 0, -4)]),
        ("beqz a0, .", [fields(0x40, 0, 1, 0)]),
        ("bnez a0, .", [fields(0x41, 0, 1, 0)]),
        ("bltz a0, .", [fields(0x42, 0, 1, 0)]),
        ("bgez a0, .", [fields(0x43, 0, 1, 0)]),
        ("bgtz a0, .", [fields(0x42, 0, 0, 1)]),
        ("blez a0, .", [fields(0x43, 0, 0, 1)]),
        ("bgt a0, a1, .", [fields(0x42, 0, 2, 1)]),
        ("ble a0, a1, .", [fields(0x43, 0, 2, 1)]),
        ("bgtu a0, a1, .", [fields(0x44, 0, 2, 1)]),
        ("bleu a0, a1, .", [fields(0x45, 0, 2, 1)]),
        ("ld a0, 8(sp)", [fields(0x33, 1, 30, 0, 8)]),
        ("st a0, (sp)", [fields(0x3B, 0, 30, 1)]),
        ("ld8 a0, 0x100", [fields(0x33, 1, 0, 0, 0x100)]),
        ("ld8 a0, (0x100)", [fields(0x33, 1, 0, 0, 0x100)]),  # parenthesised expression, not a register
        ("ld8 a0, (4+4)(sp)", [fields(0x33, 1, 30, 0, 8)]),
        ("syscall exit", [fields(0x50, 0, 0, 0, 0)]),
        ("syscall RAND", [fields(0x50, 0, 0, 0, 9)]),
        ("syscall SYS_MMAP", [fields(0x50, 0, 0, 0, 2)]),
        ("syscall 3", [fields(0x50, 0, 0, 0, 3)]),
        ("halt", [0x51]),
    ],
)
def test_instruction_forms(src, want):
    assert words(src) == want


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("1+2*3", 7),
        ("(1+2)*3", 9),
        ("-8 & 0xff", 0xF8),
        ("1<<4|1", 17),
        ("7/2", 3),
        ("-7/2", -3),  # C: truncate toward zero
        ("-7%2", -1),
        ("~0", -1),
        ("0b1010 ^ 0o17", 0b0101),
        ("1_000_000", 1000000),
        ("'a'", 97),
        ("'\\n'", 10),
        ("'\\x41'", 65),
        ("'\\''", 39),
        ("'#'", 35),  # not a comment
        ("PAGE_SIZE - 1", 4095),
        ("SYS_GETARG", 8),
        ("PROT_READ | PROT_WRITE", 3),
        ("+5 - -5", 10),
    ],
)
def test_expressions(expr, value):
    assert word_of(f"li a0, {expr}") == fields(0x20, 1, 0, 0, value)


def test_labels_layout_and_symbols():
    src = """
# a comment line
        .equ  N, end - start        ; forward references are fine in .equ
start:  li    a0, N
loop:   addi  a0, a0, -1
        bnez  a0, loop              # backward
        beqz  a0, done              # forward
done:
end:    halt
        .data
a:      .byte 1, -1, 255
b:      .short 0x1234
        .align 8
c:      .quad c, end, -1
s:      .asciz "hi", "x"
t:      .ascii "\\t\\"\\\\\\0"
z:      .zero 3
        .long -2147483648, 0xffffffff
        .word64 1
"""
    prog = assemble(src, "t.s")
    sym = prog.symbols
    assert sym["start"] == TEXT_BASE and sym["loop"] == TEXT_BASE + 8
    assert sym["done"] == sym["end"] == TEXT_BASE + 32 and sym["N"] == 32
    assert prog.data_base == TEXT_BASE + PAGE_SIZE  # the page after the text
    assert sym["a"] == prog.data_base and sym["b"] == prog.data_base + 3 and sym["c"] == prog.data_base + 8
    assert prog.text.dtype == np.uint64 and [int(w) for w in prog.text] == [
        fields(0x20, 1, 0, 0, 32),
        fields(0x11, 1, 1, 0, -1),
        fields(0x41, 0, 1, 0, -8),
        fields(0x40, 0, 1, 0, 8),
        0x51,
    ]
    d = prog.data
    assert d[:5] == bytes([1, 0xFF, 0xFF, 0x34, 0x12]) and d[5:8] == bytes(3)
    assert d[8:32] == (sym["c"]).to_bytes(8, "little") + sym["end"].to_bytes(8, "little") + b"\xff" * 8
    assert d[32:37] == b"hi\0x\0" and sym["t"] == sym["s"] + 5
    assert d[37:41] == b'\t"\\\0' and d[41:44] == bytes(3)
    assert d[44:52] == bytes([0, 0, 0, 0x80, 0xFF, 0xFF, 0xFF, 0xFF]) and d[52:] == (1).to_bytes(8, "little")
    assert prog.entry == TEXT_BASE  # no _start: the first word
    assert prog.labels == {"start", "loop", "done", "end", "a", "b", "c", "s", "t", "z"}
    assert prog.lines[0] == ("t.s", 4) and prog.lines[-1] == ("t.s", 9)


def test_entry_point_segments_and_listing():
    prog = assemble("f: ret\n_start: call f\nhalt\n.data\nx: .byte 1\n", "t.s")
    assert prog.entry == TEXT_BASE + 8
    assert prog.segments() == (
        ("text", TEXT_BASE, PAGE_SIZE, PROT_READ | PROT_EXEC, prog.text_bytes),
        ("data", TEXT_BASE + PAGE_SIZE, PAGE_SIZE, PROT_READ | PROT_WRITE, b"\x01"),
        ("stack", STACK_TOP - STACK_SIZE, STACK_SIZE, PROT_READ | PROT_WRITE, b""),
    )
    assert prog.text_bytes == b"".join(int(w).to_bytes(8, "little") for w in prog.text)
    listing = prog.listing()
    assert "_start:" in listing and "jal ra, f" in listing and "0x00400010" in listing
    assert isinstance(prog, Program) and prog.text_end == TEXT_BASE + 24 and prog.data_end == prog.data_base + 1


def test_no_data_means_no_data_segment():
    prog = assemble("halt")
    assert [s.name for s in prog.segments()] == ["text", "stack"]


def test_text_directives():
    prog = assemble("halt\n.align 32\nx: .quad 0x51, x\n.zero 16\nhalt\n")
    assert [int(w) for w in prog.text] == [0x51, 0, 0, 0, 0x51, TEXT_BASE + 32, 0, 0, 0x51]
    assert prog.symbols["x"] == TEXT_BASE + 32


def test_data_directive_dot_is_the_address_of_the_value():
    prog = assemble(".data\n.quad 0\np: .quad ., .\n")
    base = prog.data_base
    assert prog.data[8:] == (base + 8).to_bytes(8, "little") + (base + 16).to_bytes(8, "little")


def test_branch_to_wrapped_absolute_address():
    # targets wrap mod 2**64 like the pc
    assert word_of("beq a0, a1, 0xfffffffffffffff8") == fields(0x40, 0, 1, 2, -TEXT_BASE - 8)


def test_li64_of_mmap_base_and_la_of_label():
    w = words("li64 t0, MMAP_BASE\nla t1, x\n.data\nx: .byte 0\n")
    assert w[0] == fields(0x20, 7, 0, 0, MMAP_BASE & 0xFFFFFFFF) and w[1] == fields(0x21, 7, 0, 0, MMAP_BASE >> 32)
    assert w[2] == fields(0x20, 8, 0, 0, TEXT_BASE + PAGE_SIZE)


def test_include(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.s").write_text('util:\n  ret\n  .data\nmsg: .asciz "u"\n  .text\n')
    (tmp_path / "main.s").write_text('_start: call util\n  halt\n  .include "lib/util.s"\n  li a0, msg\n')
    prog = assemble_file(tmp_path / "main.s")
    assert prog.symbols["util"] == TEXT_BASE + 16 and prog.data == b"u\0"
    assert len(prog.text) == 4 and prog.lines[2][0].endswith("util.s") and prog.lines[2][1] == 2
    # include_dirs for source given as a string
    prog2 = assemble('.include "util.s"\n', include_dirs=[tmp_path / "lib"])
    assert prog2.symbols["util"] == TEXT_BASE


def test_asm_error_is_an_input_error():
    with pytest.raises(MMUInputError) as e:
        assemble("bogus", "x.s")
    err = e.value
    assert isinstance(err, AsmError) and (err.filename, err.line, err.col) == ("x.s", 1, 1)
    assert "\n" not in str(err)


# --- error messages: one test per kind, exact text with line and column ----------------------------
def err(src: str, filename: str = "f.s") -> str:
    with pytest.raises(AsmError) as e:
        assemble(src, filename)
    return str(e.value)


def test_error_unknown_mnemonic():
    assert err("  nop\n  addx a0, a0, a0\n") == "f.s:2:3: unknown mnemonic 'addx'"


def test_error_bad_register():
    assert err("add a0, a1, r32") == "f.s:1:13: bad register 'r32'"
    assert err("add a0, 5, a1") == "f.s:1:9: bad register '5'"
    assert err("ld8 a0, 8(x9)") == "f.s:1:11: bad register 'x9'"


def test_error_wrong_operand_count():
    assert err("  add a0, a1") == "f.s:1:3: 'add' takes 3 operands (add rd, rs1, rs2), got 2"
    assert err("ret a0") == "f.s:1:1: 'ret' takes 0 operands (ret), got 1"
    assert err("jalr a0, a1") == "f.s:1:1: 'jalr' takes 1 or 3 operands (jalr rd, rs1, imm | jalr rs1), got 2"


def test_error_missing_operand():
    assert err("add a0, , a1") == "f.s:1:9: missing operand before ','"
    assert err("add a0, a1,   # oops") == "f.s:1:12: missing operand after ','"


def test_error_immediate_out_of_range():
    assert (
        err("\naddi a0, a0, 0x80000000")
        == "f.s:2:14: immediate 2147483648 out of range for 'addi' (-2147483648..2147483647)"
    )
    assert err("li a0, -2147483649") == (
        "f.s:1:8: immediate -2147483649 out of range for 'li' (-2147483648..2147483647) (use li64 for 64-bit constants)"
    )
    assert (
        err("ld8 a0, 0x80000000(sp)")
        == "f.s:1:9: immediate 2147483648 out of range for 'ld8' (-2147483648..2147483647)"
    )
    assert err(".data\n.byte 1, 256") == "f.s:2:10: immediate 256 out of range for '.byte' (-128..255)"
    assert err("li64 a0, 1<<64") == (
        "f.s:1:10: immediate 18446744073709551616 out of range for 'li64' (-9223372036854775808..18446744073709551615)"
    )


def test_error_shift_amount():
    assert err("shli a0, a0, 64") == "f.s:1:14: shift amount 64 out of range 0..63"


def test_error_undefined_symbol():
    assert err("li a0, 1 + nowhere") == "f.s:1:12: undefined symbol 'nowhere'"
    assert err("j missing") == "f.s:1:3: undefined symbol 'missing'"


def test_error_duplicate_label():
    assert err("x: nop\n\n  x: nop") == "f.s:3:3: duplicate label 'x' (first defined at f.s:1)"
    assert err(".equ K, 1\n.equ K, 2") == "f.s:2:6: duplicate symbol 'K' (first defined at f.s:1)"


def test_error_label_named_like_a_register():
    assert err("sp: nop") == "f.s:1:1: 'sp' is a register name and cannot be a symbol"


def test_error_unknown_directive():
    assert err("  .wrod 5") == "f.s:1:3: unknown directive '.wrod'"


def test_error_bad_number_and_literals():
    assert err("li a0, 12ab") == "f.s:1:8: bad number '12ab'"
    assert err("li a0, 0x") == "f.s:1:8: bad number '0x'"
    assert err('.data\n.ascii "abc') == "f.s:2:8: unterminated string"
    assert err("li a0, 'a") == "f.s:1:8: unterminated character literal"
    assert err("li a0, 'ab'") == "f.s:1:8: character literal 'ab' is not one byte"
    assert err('.data\n.ascii "a\\q"') == "f.s:2:10: unknown escape '\\q'"
    assert err("li a0, 5 @") == "f.s:1:10: unexpected character '@'"


def test_error_expression_syntax():
    assert err("li a0, (1 + 2") == "f.s:1:14: expected ')'"
    assert err("li a0, 1 +") == "f.s:1:11: expected an expression"
    assert err("li a0, 1 2") == "f.s:1:10: unexpected '2' in expression"
    assert err("li a0, 1 / (2 - 2)") == "f.s:1:10: division by zero in expression"


def test_error_branch_target_misaligned():
    assert err("beq a0, a1, . + 4") == "f.s:1:13: branch target 0x400004 is not 8-byte aligned"


def test_error_branch_target_out_of_range():
    assert err("j 0x100000000") == "f.s:1:3: branch target 0x100000000 out of range (offset 4290772992)"


def test_error_section_misuse():
    assert err(".data\nadd a0, a0, a0") == "f.s:2:1: instruction 'add' outside .text"
    assert err(".byte 1") == "f.s:1:1: '.byte' not allowed in .text (instructions are 8-byte words)"
    assert err('.asciz "x"') == "f.s:1:1: '.asciz' not allowed in .text (instructions are 8-byte words)"
    assert err(".zero 4") == "f.s:1:7: .zero of 4 bytes in .text is not a whole number of 8-byte words"


def test_error_bad_alignment_and_sizes():
    assert err(".data\n.align 3") == "f.s:2:8: alignment 3 is not a power of two 1..4096"
    assert err(".data\n.zero -1") == "f.s:2:7: size -1 out of range 0..2147483648"
    assert err(".data\nx: .zero x") == "f.s:2:10: the size must be a constant, not the label 'x'"
    assert err(".data\n.zero LATER\n.equ LATER, 8") == (
        "f.s:2:7: undefined symbol 'LATER' (the size must be a constant defined before use)"
    )


def test_error_circular_equ():
    assert err(".equ A, B\n.equ B, A + 1\nli a0, A") == "f.s:2:9: circular definition of 'A'"


def test_error_include(tmp_path):
    (tmp_path / "a.s").write_text('.include "b.s"\n')
    (tmp_path / "b.s").write_text('nop\n.include "a.s"\n')
    with pytest.raises(AsmError) as e:
        assemble_file(tmp_path / "a.s")
    assert str(e.value).endswith("b.s:2:10: include cycle: 'a.s' is already being assembled")
    assert err('.include "nope.s"') == "f.s:1:10: cannot include 'nope.s': no such file"
    assert err(".include nope") == 'f.s:1:10: .include expects one string: .include "file.s"'
    # an error inside an included file names that file and line
    (tmp_path / "c.s").write_text("nop\n  bad a0\n")
    with pytest.raises(AsmError) as e:
        assemble('.include "c.s"', include_dirs=[tmp_path])
    assert str(e.value).endswith("c.s:2:3: unknown mnemonic 'bad'")


def test_error_missing_file(tmp_path):
    with pytest.raises(AsmError, match=r"nope\.s:1:1: no such file"):
        assemble_file(tmp_path / "nope.s")


def test_error_statement_shape():
    assert err("5: nop") == "f.s:1:1: expected a label, instruction or directive, got '5'"
    assert err(".: nop") == "f.s:1:1: '.' is the current address and cannot be defined"
    assert err(".equ 5, 1") == "f.s:1:6: .equ expects a symbol name first"
    assert err(".data\n.quad") == "f.s:2:1: '.quad' needs at least one value"
    assert err(".data\n.ascii 5") == "f.s:2:8: '.ascii' expects strings in double quotes"
