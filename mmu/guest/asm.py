"""Assembler and disassembler for the guest ISA (syntax in ``docs/isa.md``).

:func:`assemble` turns source text into a :class:`Program` (text image as uint64 words,
data image as bytes, load addresses, entry point, symbol table); :func:`assemble_file`
reads a file. Bad input raises :class:`AsmError`, whose message is one line
``file:line:col: what was wrong``. :func:`disassemble` turns one word back into text that
assembles to the same word (any word: an illegal one comes back as ``.quad 0x...``).

Two passes: the first parses every line, resolves registers, lays out text and data and
records where each label is; the second evaluates expressions (labels are known by then)
and encodes. Sizes (``.zero``, ``.align``) must therefore be constants known when the line
is read: numbers, builtins and ``.equ`` names defined earlier from such constants.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mmu.errors import MMUInputError
from mmu.guest.isa import (
    ABI_NAMES,
    BUILTIN_SYMBOLS,
    FMT_BRANCH,
    FMT_I,
    FMT_JAL,
    FMT_JALR,
    FMT_LI,
    FMT_LIH,
    FMT_LOAD,
    FMT_NONE,
    FMT_R,
    FMT_SHI,
    FMT_STORE,
    FMT_SYS,
    INSN_SIZE,
    MASK64,
    MNEMONICS,
    OPC_ADDI,
    OPC_BEQ,
    OPC_BGE,
    OPC_BGEU,
    OPC_BLT,
    OPC_BLTU,
    OPC_BNE,
    OPC_JAL,
    OPC_JALR,
    OPC_LD8,
    OPC_LI,
    OPC_LIH,
    OPC_SLTIU,
    OPC_SLTU,
    OPC_ST8,
    OPC_SUB,
    OPC_XORI,
    OPCODES,
    PAGE_SIZE,
    PROGRAM_LIMIT,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    REG_NUMBERS,
    REG_RA,
    REG_ZERO,
    STACK_SIZE,
    STACK_TOP,
    SYSCALL_NAMES,
    SYSCALL_NUMBERS,
    TEXT_BASE,
    decode,
    encode,
    page_align_up,
    sext32,
    to_signed64,
)

__all__ = ["AsmError", "Program", "Segment", "assemble", "assemble_file", "disassemble"]

ENTRY_SYMBOL = "_start"
MAX_INCLUDE_DEPTH = 16


class AsmError(MMUInputError):
    """An assembler error; ``str(err)`` is ``file:line:col: message`` (line and column from 1)."""

    def __init__(self, filename: str, line: int, col: int, message: str) -> None:
        self.filename = filename
        self.line = line
        self.col = col
        self.message = message
        super().__init__(f"{filename}:{line}:{col}: {message}")


class Segment(NamedTuple):
    """A region of the initial address space: ``size`` bytes (a page multiple) at ``start``.

    ``content`` (at most ``size`` bytes) is what the region holds at ``start``; the rest is zero.
    """

    name: str
    start: int
    size: int
    prot: int
    content: bytes


@dataclass(frozen=True, eq=False)
class Program:
    """An assembled program.

    Attributes
    ----------
    text : ndarray of uint64, shape (n,)
        The instruction words, loaded at ``text_base`` (word ``i`` at ``text_base + 8*i``).
    data : bytes
        The data image, loaded at ``data_base`` (the first page boundary after the text).
    entry : int
        Initial pc: the address of ``_start`` if defined, else ``text_base``.
    symbols : dict of str to int
        Every label (its address) and ``.equ`` constant of the program.
    filename : str
        Name of the main source file.
    lines : tuple of (str, int)
        Source file and line of each text word.
    labels : frozenset of str
        The names in ``symbols`` that are labels (the rest are ``.equ`` constants).
    """

    text: np.ndarray
    data: bytes
    entry: int
    symbols: Mapping[str, int]
    data_base: int
    filename: str = "<string>"
    lines: tuple[tuple[str, int], ...] = ()
    labels: frozenset[str] = frozenset()
    text_base: int = TEXT_BASE

    @property
    def text_end(self) -> int:
        return self.text_base + INSN_SIZE * len(self.text)

    @property
    def data_end(self) -> int:
        return self.data_base + len(self.data)

    @property
    def text_bytes(self) -> bytes:
        """The text image as little-endian bytes."""
        return self.text.astype("<u8").tobytes()

    def segments(self) -> tuple[Segment, ...]:
        """The initial mappings of a process running this program, in address order.

        text (R+X, holding the words), data (R+W, if the program has data) and the stack
        (R+W, ``STACK_SIZE`` bytes below ``STACK_TOP``, zero).
        """
        segs = []
        if len(self.text):
            size = page_align_up(INSN_SIZE * len(self.text))
            segs.append(Segment("text", self.text_base, size, PROT_READ | PROT_EXEC, self.text_bytes))
        if self.data:
            size = page_align_up(len(self.data))
            segs.append(Segment("data", self.data_base, size, PROT_READ | PROT_WRITE, self.data))
        segs.append(Segment("stack", STACK_TOP - STACK_SIZE, STACK_SIZE, PROT_READ | PROT_WRITE, b""))
        return tuple(segs)

    def listing(self, abi: bool = True) -> str:
        """The text disassembled, one line per word: address, word, labels, instruction."""
        by_addr: dict[int, list[str]] = {}
        for name, value in self.symbols.items():
            if name in self.labels and self.text_base <= value < self.text_end:
                by_addr.setdefault(value, []).append(name)
        targets = {a: sorted(names)[0] for a, names in by_addr.items()}
        out = []
        for i, word in enumerate(self.text.tolist()):
            pc = self.text_base + INSN_SIZE * i
            for name in sorted(by_addr.get(pc, ())):
                out.append(f"{name}:")
            out.append(f"  {pc:#010x}  {word:016x}  {disassemble(word, pc, targets, abi)}")
        return "\n".join(out)


# --- disassembler ------------------------------------------------------------------------------
def _reg(n: int, abi: bool) -> str:
    return ABI_NAMES[n] if abi else f"r{n}"


def disassemble(word: int, pc: int | None = None, symbols: Mapping[int, str] | None = None, abi: bool = True) -> str:
    """One instruction word as assembler text that assembles back to ``word``.

    Parameters
    ----------
    word : int
        An unsigned 64-bit value.
    pc : int, optional
        Address of the word. Branch and jal targets are then absolute addresses (or names
        from ``symbols``); without it they are relative to the instruction, ``.+16``.
    symbols : mapping of int to str, optional
        Names for target addresses (used only with ``pc``).
    abi : bool
        Register names a0, sp, ... (default) or r0..r31.
    """
    word = int(word) & MASK64
    insn = decode(word)
    if insn is None:
        return f".quad {word:#x}"
    name, fmt = OPCODES[insn.op]
    rd, rs1, rs2 = (_reg(r, abi) for r in (insn.rd, insn.rs1, insn.rs2))
    imm = insn.imm
    if fmt == FMT_R:
        return f"{name} {rd}, {rs1}, {rs2}"
    if fmt in (FMT_I, FMT_SHI):
        return f"{name} {rd}, {rs1}, {imm}"
    if fmt == FMT_LI:
        return f"{name} {rd}, {imm}"
    if fmt == FMT_LIH:
        return f"{name} {rd}, {imm & 0xFFFF_FFFF:#x}"
    if fmt == FMT_LOAD:
        return f"{name} {rd}, {imm}({rs1})"
    if fmt == FMT_STORE:
        return f"{name} {rs2}, {imm}({rs1})"
    if fmt in (FMT_BRANCH, FMT_JAL):
        if pc is None:
            target = f".{imm:+d}"
        else:
            t = (pc + imm) & MASK64
            target = symbols[t] if symbols and t in symbols else f"{t:#x}"
        return f"{name} {rs1}, {rs2}, {target}" if fmt == FMT_BRANCH else f"{name} {rd}, {target}"
    if fmt == FMT_JALR:
        return f"{name} {rd}, {rs1}, {imm}"
    if fmt == FMT_SYS:
        return f"{name} {SYSCALL_NAMES.get(imm, imm)}"
    assert fmt == FMT_NONE
    return name


# --- lexer -------------------------------------------------------------------------------------
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>[#;].*)
  | (?P<num>[0-9][0-9A-Za-z_]*)
  | (?P<char>'(?:\\.|[^\\'])*(?P<cq>')?)
  | (?P<str>"(?:\\.|[^\\"])*(?P<sq>")?)
  | (?P<ident>[A-Za-z_.$][A-Za-z0-9_.$]*)
  | (?P<op><<|>>|[-+*/%&|^~(),:])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, "'": 39, '"': 34, "a": 7, "b": 8, "f": 12, "v": 11, "e": 27}


class Tok(NamedTuple):
    kind: str  # num, char, str, ident, op
    text: str
    col: int  # 1-based
    value: object = None  # int for num/char, bytes for str


@dataclass
class _Line:
    filename: str
    lineno: int
    text: str

    def error(self, col: int, message: str) -> AsmError:
        return AsmError(self.filename, self.lineno, col, message)


def _unescape(body: str, line: _Line, col: int) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        if i + 1 >= len(body):
            raise line.error(col + i, "bad escape at end of literal")
        e = body[i + 1]
        if e == "x":
            digits = body[i + 2 : i + 4]
            if len(digits) != 2 or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise line.error(col + i, "bad escape '\\x': expected two hex digits")
            out.append(int(digits, 16))
            i += 4
        elif e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        else:
            raise line.error(col + i, f"unknown escape '\\{e}'")
    return bytes(out)


def _parse_number(text: str) -> int | None:
    t = text.replace("_", "").lower()
    try:
        if t.startswith("0x"):
            return int(t[2:], 16)
        if t.startswith("0b"):
            return int(t[2:], 2)
        if t.startswith("0o"):
            return int(t[2:], 8)
        return int(t, 10)
    except ValueError:
        return None


def _tokenize(line: _Line) -> list[Tok]:
    text = line.text
    toks: list[Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        col = pos + 1
        if m is None:
            raise line.error(col, f"unexpected character {text[pos]!r}")
        kind = next(k for k in ("ws", "comment", "num", "char", "str", "ident", "op") if m.group(k) is not None)
        s = m.group()
        pos = m.end()
        if kind == "ws":
            continue
        if kind == "comment":
            break
        if kind == "num":
            v = _parse_number(s)
            if v is None or s.endswith("_"):
                raise line.error(col, f"bad number '{s}'")
            toks.append(Tok("num", s, col, v))
        elif kind == "char":
            if m.group("cq") is None:
                raise line.error(col, "unterminated character literal")
            b = _unescape(s[1:-1], line, col + 1)
            if len(b) != 1:
                raise line.error(col, f"character literal {s} is not one byte")
            toks.append(Tok("num", s, col, b[0]))
        elif kind == "str":
            if m.group("sq") is None:
                raise line.error(col, "unterminated string")
            toks.append(Tok("str", s, col, _unescape(s[1:-1], line, col + 1)))
        else:
            toks.append(Tok(kind, s, col))
    return toks


# --- expressions -------------------------------------------------------------------------------
# AST nodes: ("num", value, col) ("sym", name, col) ("dot", col) ("un", op, node, col)
# ("bin", op, left, right, col)
_BINARY_LEVELS = (("|",), ("^",), ("&",), ("<<", ">>"), ("+", "-"), ("*", "/", "%"))


class _ExprParser:
    def __init__(self, toks: list[Tok], line: _Line, end_col: int) -> None:
        self.toks = toks
        self.pos = 0
        self.line = line
        self.end_col = end_col

    def peek(self) -> Tok | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def parse(self):
        node = self.binary(0)
        t = self.peek()
        if t is not None:
            raise self.line.error(t.col, f"unexpected '{t.text}' in expression")
        return node

    def binary(self, level: int):
        if level == len(_BINARY_LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while (t := self.peek()) is not None and t.kind == "op" and t.text in _BINARY_LEVELS[level]:
            self.pos += 1
            node = ("bin", t.text, node, self.binary(level + 1), t.col)
        return node

    def unary(self):
        t = self.peek()
        if t is not None and t.kind == "op" and t.text in "-+~":
            self.pos += 1
            return ("un", t.text, self.unary(), t.col)
        return self.primary()

    def primary(self):
        t = self.peek()
        if t is None:
            raise self.line.error(self.end_col, "expected an expression")
        self.pos += 1
        if t.kind == "num":
            return ("num", t.value, t.col)
        if t.kind == "ident":
            return ("dot", t.col) if t.text == "." else ("sym", t.text, t.col)
        if t.kind == "op" and t.text == "(":
            node = self.binary(0)
            close = self.peek()
            if close is None or close.text != ")":
                raise self.line.error(close.col if close else self.end_col, "expected ')'")
            self.pos += 1
            return node
        raise self.line.error(t.col, f"unexpected '{t.text}' in expression")


def _eval(node, lookup: Callable[[str, int], int], dot: int | None, line: _Line) -> int:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "sym":
        return lookup(node[1], node[2])
    if kind == "dot":
        if dot is None:
            raise line.error(node[1], "'.' (the current address) is not known here")
        return dot
    if kind == "un":
        v = _eval(node[2], lookup, dot, line)
        return -v if node[1] == "-" else ~v if node[1] == "~" else v
    _, op, left, right, col = node
    a = _eval(left, lookup, dot, line)
    b = _eval(right, lookup, dot, line)
    if op in "/%":
        if b == 0:
            raise line.error(col, "division by zero in expression")
        q = abs(a) // abs(b)
        if (a < 0) != (b < 0):
            q = -q
        return q if op == "/" else a - q * b  # C semantics: truncate toward zero
    if op in ("<<", ">>"):
        if b < 0 or b > 1024:
            raise line.error(col, f"shift count {b} out of range 0..1024")
        return a << b if op == "<<" else a >> b
    return {"+": a + b, "-": a - b, "*": a * b, "&": a & b, "|": a | b, "^": a ^ b}[op]


# --- pass 1 ------------------------------------------------------------------------------------
class _Operand(NamedTuple):
    toks: list[Tok]
    col: int  # column of its first character (or of the mnemonic for a missing operand)
    end_col: int


@dataclass
class _Fix:
    """An immediate to evaluate in pass 2: ``node`` converted by ``kind``."""

    node: object
    kind: str  # simm, u32, shamt, pcrel, lo32, hi32, sys, word (64-bit data)
    col: int
    mnemonic: str


@dataclass
class _TextWord:
    line: _Line
    pc: int
    op: int = 0
    rd: int = 0
    rs1: int = 0
    rs2: int = 0
    imm: _Fix | int = 0
    raw: _Fix | None = None  # a .quad in .text


@dataclass
class _DataFix:
    line: _Line
    offset: int
    size: int
    fix: _Fix
    dot: int  # section offset of the directive (address known in pass 2)


_USAGE = {
    FMT_R: "rd, rs1, rs2",
    FMT_I: "rd, rs1, imm",
    FMT_SHI: "rd, rs1, shamt",
    FMT_LI: "rd, imm",
    FMT_LIH: "rd, imm32",
    FMT_LOAD: "rd, offset(rs1)",
    FMT_STORE: "rs2, offset(rs1)",
    FMT_BRANCH: "rs1, rs2, target",
    FMT_JAL: "[rd,] target",
    FMT_JALR: "rd, rs1, imm | jalr rs1",
    FMT_SYS: "number|name",
    FMT_NONE: "",
}

# Pseudo-instructions: name -> (usage, operand kinds, expansion). An expansion is a list of
# (op, rd, rs1, rs2, imm) where an int is a register number / constant and "$k" is operand k.
_PSEUDO: dict[str, tuple[str, str, list[tuple]]] = {
    "nop": ("", "", [(OPC_ADDI, 0, 0, 0, 0)]),
    "mv": ("rd, rs", "rr", [(OPC_ADDI, "$0", "$1", 0, 0)]),
    "not": ("rd, rs", "rr", [(OPC_XORI, "$0", "$1", 0, -1)]),
    "neg": ("rd, rs", "rr", [(OPC_SUB, "$0", REG_ZERO, "$1", 0)]),
    "seqz": ("rd, rs", "rr", [(OPC_SLTIU, "$0", "$1", 0, 1)]),
    "snez": ("rd, rs", "rr", [(OPC_SLTU, "$0", REG_ZERO, "$1", 0)]),
    "la": ("rd, address", "re", [(OPC_LI, "$0", 0, 0, ("$1", "simm"))]),
    "li64": ("rd, imm64", "re", [(OPC_LI, "$0", 0, 0, ("$1", "lo32")), (OPC_LIH, "$0", 0, 0, ("$1", "hi32"))]),
    "j": ("target", "e", [(OPC_JAL, REG_ZERO, 0, 0, ("$0", "pcrel"))]),
    "call": ("target", "e", [(OPC_JAL, REG_RA, 0, 0, ("$0", "pcrel"))]),
    "ret": ("", "", [(OPC_JALR, REG_ZERO, REG_RA, 0, 0)]),
    "jr": ("rs", "r", [(OPC_JALR, REG_ZERO, "$0", 0, 0)]),
    "beqz": ("rs, target", "re", [(OPC_BEQ, 0, "$0", REG_ZERO, ("$1", "pcrel"))]),
    "bnez": ("rs, target", "re", [(OPC_BNE, 0, "$0", REG_ZERO, ("$1", "pcrel"))]),
    "bltz": ("rs, target", "re", [(OPC_BLT, 0, "$0", REG_ZERO, ("$1", "pcrel"))]),
    "bgez": ("rs, target", "re", [(OPC_BGE, 0, "$0", REG_ZERO, ("$1", "pcrel"))]),
    "bgtz": ("rs, target", "re", [(OPC_BLT, 0, REG_ZERO, "$0", ("$1", "pcrel"))]),
    "blez": ("rs, target", "re", [(OPC_BGE, 0, REG_ZERO, "$0", ("$1", "pcrel"))]),
    "bgt": ("rs1, rs2, target", "rre", [(OPC_BLT, 0, "$1", "$0", ("$2", "pcrel"))]),
    "ble": ("rs1, rs2, target", "rre", [(OPC_BGE, 0, "$1", "$0", ("$2", "pcrel"))]),
    "bgtu": ("rs1, rs2, target", "rre", [(OPC_BLTU, 0, "$1", "$0", ("$2", "pcrel"))]),
    "bleu": ("rs1, rs2, target", "rre", [(OPC_BGEU, 0, "$1", "$0", ("$2", "pcrel"))]),
    "ld": ("rd, offset(rs1)", "rm", [(OPC_LD8, "$0", "$1b", 0, ("$1", "simm"))]),
    "st": ("rs2, offset(rs1)", "rm", [(OPC_ST8, 0, "$1b", "$0", ("$1", "simm"))]),
}

_DATA_SIZES = {".byte": 1, ".short": 2, ".half": 2, ".long": 4, ".quad": 8, ".word64": 8}
_DIRECTIVES = set(_DATA_SIZES) | {
    ".text",
    ".data",
    ".ascii",
    ".asciz",
    ".string",
    ".zero",
    ".space",
    ".align",
    ".equ",
    ".set",
    ".include",
}


@dataclass
class _Symbol:
    line: _Line
    col: int
    section: str | None = None  # "text" / "data" for labels; None for .equ
    offset: int = 0
    node: object = None  # .equ expression
    dot: tuple[str, int] | None = None  # .equ: section and offset where it was defined
    value: int | None = None


@dataclass
class _Assembler:
    include_dirs: tuple[Path, ...]
    section: str = "text"
    text: list[_TextWord] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    data_fixes: list[_DataFix] = field(default_factory=list)
    symbols: dict[str, _Symbol] = field(default_factory=dict)
    include_stack: list[str] = field(default_factory=list)
    data_base: int | None = None
    _resolving: set[str] = field(default_factory=set)

    # -- source handling --
    def source(self, text: str, filename: str, path: Path | None) -> None:
        key = str(path.resolve()) if path is not None else filename
        self.include_stack.append(key)
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = _Line(filename, lineno, raw)
            self.statement(line, _tokenize(line), path)
        self.include_stack.pop()

    def include(self, line: _Line, head: Tok, ops: list[_Operand], path: Path | None) -> None:
        if len(ops) != 1 or len(ops[0].toks) != 1 or ops[0].toks[0].kind != "str":
            raise line.error(ops[0].col if ops else head.col, '.include expects one string: .include "file.s"')
        tok = ops[0].toks[0]
        name = tok.value.decode("utf-8", errors="replace")
        dirs = ([path.parent] if path is not None else []) + list(self.include_dirs)
        target = next((d / name for d in dirs if (d / name).is_file()), None)
        if target is None:
            raise line.error(tok.col, f"cannot include '{name}': no such file")
        key = str(target.resolve())
        if key in self.include_stack:
            raise line.error(tok.col, f"include cycle: '{name}' is already being assembled")
        if len(self.include_stack) >= MAX_INCLUDE_DEPTH:
            raise line.error(tok.col, f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
        try:
            text = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise line.error(tok.col, f"cannot include '{name}': {exc}") from None
        self.source(text, _display_name(target), target)

    # -- one line --
    def statement(self, line: _Line, toks: list[Tok], path: Path | None) -> None:
        i = 0
        while i + 1 < len(toks) and toks[i].kind == "ident" and toks[i + 1].text == ":" and toks[i + 1].kind == "op":
            self.define_label(line, toks[i])
            i += 2
        if i == len(toks):
            return
        head = toks[i]
        if head.kind != "ident":
            raise line.error(head.col, f"expected a label, instruction or directive, got '{head.text}'")
        ops = self.split_operands(line, toks[i + 1 :], head)
        name = head.text.lower()
        if name.startswith(".") and name != ".":
            if name not in _DIRECTIVES:
                raise line.error(head.col, f"unknown directive '{head.text}'")
            self.directive(line, head, name, ops, path)
        else:
            self.instruction(line, head, name, ops)

    def split_operands(self, line: _Line, toks: list[Tok], head: Tok) -> list[_Operand]:
        if not toks:
            return []
        ops: list[_Operand] = []
        cur: list[Tok] = []
        depth = 0
        start_col = comma_col = toks[0].col
        for t in toks:
            if t.kind == "op" and t.text == "(":
                depth += 1
            elif t.kind == "op" and t.text == ")":
                depth -= 1
            if t.kind == "op" and t.text == "," and depth == 0:
                if not cur:
                    raise line.error(t.col, "missing operand before ','")
                ops.append(_Operand(cur, start_col, t.col))
                cur = []
                comma_col = t.col
                continue
            if not cur:
                start_col = t.col
            cur.append(t)
        if not cur:
            raise line.error(comma_col + 1, "missing operand after ','")
        last = cur[-1]
        ops.append(_Operand(cur, cur[0].col, last.col + len(last.text)))
        return ops

    def define_label(self, line: _Line, tok: Tok) -> None:
        name = tok.text
        self.check_new_symbol(line, tok)
        offset = len(self.text) * INSN_SIZE if self.section == "text" else len(self.data)
        self.symbols[name] = _Symbol(line, tok.col, self.section, offset)

    def check_new_symbol(self, line: _Line, tok: Tok) -> None:
        name = tok.text
        if name == ".":
            raise line.error(tok.col, "'.' is the current address and cannot be defined")
        if name.lower() in REG_NUMBERS:
            raise line.error(tok.col, f"'{name}' is a register name and cannot be a symbol")
        prev = self.symbols.get(name)
        if prev is not None:
            what = "label" if prev.section is not None else "symbol"
            raise line.error(
                tok.col, f"duplicate {what} '{name}' (first defined at {prev.line.filename}:{prev.line.lineno})"
            )

    def here(self) -> tuple[str, int]:
        return (self.section, len(self.text) * INSN_SIZE if self.section == "text" else len(self.data))

    # -- operands --
    def reg(self, line: _Line, op: _Operand) -> int:
        if len(op.toks) == 1 and op.toks[0].kind == "ident":
            n = REG_NUMBERS.get(op.toks[0].text.lower())
            if n is not None:
                return n
        raise line.error(op.col, f"bad register '{line.text[op.col - 1 : op.end_col - 1].strip()}'")

    def expr(self, line: _Line, op: _Operand):
        return _ExprParser(op.toks, line, op.end_col).parse()

    def mem(self, line: _Line, op: _Operand):
        """``offset(base)``, ``(base)`` or a bare address: (base register, offset node or 0)."""
        t = op.toks
        if len(t) >= 3 and t[-1].text == ")" and t[-3].text == "(" and t[-2].kind == "ident":
            n = REG_NUMBERS.get(t[-2].text.lower())
            if n is not None:
                off = t[:-3]
                node = _ExprParser(off, line, t[-3].col).parse() if off else 0
                return n, node
            if len(t) > 3:
                raise line.error(t[-2].col, f"bad register '{t[-2].text}'")
        return REG_ZERO, self.expr(line, op)

    def const(self, line: _Line, op: _Operand, what: str) -> int:
        """A value needed in pass 1 (sizes): no labels, only earlier constants."""
        node = self.expr(line, op)

        def lookup(name: str, col: int) -> int:
            sym = self.symbols.get(name)
            if sym is None:
                if name in BUILTIN_SYMBOLS:
                    return BUILTIN_SYMBOLS[name]
                raise line.error(col, f"undefined symbol '{name}' ({what} must be a constant defined before use)")
            if sym.section is not None:
                raise line.error(col, f"{what} must be a constant, not the label '{name}'")
            return self.symbol_value(name, col, line, first_pass=True)

        return _eval(node, lookup, None, line)

    # -- instructions --
    def instruction(self, line: _Line, head: Tok, name: str, ops: list[_Operand]) -> None:
        if self.section != "text":
            raise line.error(head.col, f"instruction '{head.text}' outside .text")
        if name in MNEMONICS:
            self.real_instruction(line, head, name, ops)
        elif name in _PSEUDO:
            usage, kinds, expansion = _PSEUDO[name]
            self.want(line, head, ops, (len(kinds),), usage)
            vals: dict[str, object] = {}
            for k, (kind, op) in enumerate(zip(kinds, ops, strict=True)):
                if kind == "r":
                    vals[f"${k}"] = self.reg(line, op)
                elif kind == "e":
                    vals[f"${k}"] = (self.expr(line, op), op.col)
                else:  # m
                    base, node = self.mem(line, op)
                    vals[f"${k}b"] = base
                    vals[f"${k}"] = (node, op.col)
            for opc, rd, rs1, rs2, imm in expansion:
                regs = [vals[x] if isinstance(x, str) else x for x in (rd, rs1, rs2)]
                if isinstance(imm, tuple):
                    node, col = vals[imm[0]]
                    imm = _Fix(node, imm[1], col, name) if not isinstance(node, int) else node
                self.emit(line, opc, *regs, imm)
        else:
            raise line.error(head.col, f"unknown mnemonic '{head.text}'")

    def want(self, line: _Line, head: Tok, ops: list[_Operand], counts: tuple[int, ...], usage: str) -> None:
        if len(ops) not in counts:
            n = " or ".join(str(c) for c in counts)
            s = "" if counts == (1,) else "s"
            form = f"{head.text.lower()} {usage}".rstrip()
            raise line.error(head.col, f"'{head.text}' takes {n} operand{s} ({form}), got {len(ops)}")

    def emit(self, line: _Line, op: int, rd: int = 0, rs1: int = 0, rs2: int = 0, imm: _Fix | int = 0) -> None:
        self.text.append(_TextWord(line, len(self.text) * INSN_SIZE, op, rd, rs1, rs2, imm))

    def real_instruction(self, line: _Line, head: Tok, name: str, ops: list[_Operand]) -> None:
        op = MNEMONICS[name]
        fmt = OPCODES[op][1]
        usage = _USAGE[fmt]

        def fix(operand: _Operand, kind: str) -> _Fix:
            return _Fix(self.expr(line, operand), kind, operand.col, name)

        if fmt == FMT_R:
            self.want(line, head, ops, (3,), usage)
            self.emit(line, op, self.reg(line, ops[0]), self.reg(line, ops[1]), self.reg(line, ops[2]))
        elif fmt in (FMT_I, FMT_SHI):
            self.want(line, head, ops, (3,), usage)
            kind = "shamt" if fmt == FMT_SHI else "simm"
            self.emit(line, op, self.reg(line, ops[0]), self.reg(line, ops[1]), 0, fix(ops[2], kind))
        elif fmt in (FMT_LI, FMT_LIH):
            self.want(line, head, ops, (2,), usage)
            self.emit(line, op, self.reg(line, ops[0]), 0, 0, fix(ops[1], "simm" if fmt == FMT_LI else "u32"))
        elif fmt in (FMT_LOAD, FMT_STORE):
            self.want(line, head, ops, (2,), usage)
            r = self.reg(line, ops[0])
            base, node = self.mem(line, ops[1])
            imm = node if isinstance(node, int) else _Fix(node, "simm", ops[1].col, name)
            if fmt == FMT_LOAD:
                self.emit(line, op, r, base, 0, imm)
            else:
                self.emit(line, op, 0, base, r, imm)
        elif fmt == FMT_BRANCH:
            self.want(line, head, ops, (3,), usage)
            self.emit(line, op, 0, self.reg(line, ops[0]), self.reg(line, ops[1]), fix(ops[2], "pcrel"))
        elif fmt == FMT_JAL:
            self.want(line, head, ops, (1, 2), usage)
            rd = self.reg(line, ops[0]) if len(ops) == 2 else REG_RA
            self.emit(line, op, rd, 0, 0, fix(ops[-1], "pcrel"))
        elif fmt == FMT_JALR:
            self.want(line, head, ops, (1, 3), usage)
            if len(ops) == 1:
                self.emit(line, op, REG_RA, self.reg(line, ops[0]), 0, 0)
            else:
                self.emit(line, op, self.reg(line, ops[0]), self.reg(line, ops[1]), 0, fix(ops[2], "simm"))
        elif fmt == FMT_SYS:
            self.want(line, head, ops, (1,), usage)
            t = ops[0].toks
            if len(t) == 1 and t[0].kind == "ident" and t[0].text.lower() in SYSCALL_NUMBERS:
                self.emit(line, op, 0, 0, 0, SYSCALL_NUMBERS[t[0].text.lower()])
            else:
                self.emit(line, op, 0, 0, 0, fix(ops[0], "simm"))
        else:
            self.want(line, head, ops, (0,), usage)
            self.emit(line, op)

    # -- directives --
    def directive(self, line: _Line, head: Tok, name: str, ops: list[_Operand], path: Path | None) -> None:
        if name in (".text", ".data"):
            self.want(line, head, ops, (0,), "")
            self.section = name[1:]
        elif name == ".include":
            self.include(line, head, ops, path)
        elif name in (".equ", ".set"):
            self.want(line, head, ops, (2,), "NAME, value")
            t = ops[0].toks
            if len(t) != 1 or t[0].kind != "ident":
                raise line.error(ops[0].col, f"{name} expects a symbol name first")
            self.check_new_symbol(line, t[0])
            self.symbols[t[0].text] = _Symbol(line, t[0].col, None, 0, self.expr(line, ops[1]), self.here())
        elif name in _DATA_SIZES:
            size = _DATA_SIZES[name]
            if not ops:
                raise line.error(head.col, f"'{head.text}' needs at least one value")
            if self.section == "text" and size != 8:
                raise line.error(head.col, f"'{head.text}' not allowed in .text (instructions are 8-byte words)")
            for op in ops:
                fix = _Fix(self.expr(line, op), "word", op.col, head.text)
                if self.section == "text":
                    self.text.append(_TextWord(line, len(self.text) * INSN_SIZE, raw=fix))
                else:
                    self.data_fixes.append(_DataFix(line, len(self.data), size, fix, len(self.data)))
                    self.data += bytes(size)
        elif name in (".ascii", ".asciz", ".string"):
            if self.section == "text":
                raise line.error(head.col, f"'{head.text}' not allowed in .text (instructions are 8-byte words)")
            if not ops:
                raise line.error(head.col, f"'{head.text}' needs at least one string")
            for op in ops:
                if len(op.toks) != 1 or op.toks[0].kind != "str":
                    raise line.error(op.col, f"'{head.text}' expects strings in double quotes")
                self.data += op.toks[0].value
                if name != ".ascii":
                    self.data.append(0)
        elif name in (".zero", ".space"):
            self.want(line, head, ops, (1,), "count")
            n = self.const(line, ops[0], "the size")
            if n < 0 or n > PROGRAM_LIMIT:
                raise line.error(ops[0].col, f"size {n} out of range 0..{PROGRAM_LIMIT}")
            self.pad(line, ops[0].col, n, head.text)
        else:  # .align
            self.want(line, head, ops, (1,), "alignment")
            n = self.const(line, ops[0], "the alignment")
            if n <= 0 or n & (n - 1) or n > PAGE_SIZE:
                raise line.error(ops[0].col, f"alignment {n} is not a power of two 1..{PAGE_SIZE}")
            if self.section == "text":
                n = max(n, INSN_SIZE)
                self.pad(line, ops[0].col, -len(self.text) * INSN_SIZE % n, head.text)
            else:
                self.pad(line, ops[0].col, -len(self.data) % n, head.text)

    def pad(self, line: _Line, col: int, n: int, what: str) -> None:
        if self.section == "data":
            self.data += bytes(n)
            return
        if n % INSN_SIZE:
            raise line.error(col, f"{what} of {n} bytes in .text is not a whole number of 8-byte words")
        for _ in range(n // INSN_SIZE):
            self.text.append(_TextWord(line, len(self.text) * INSN_SIZE, raw=0))

    # -- pass 2 --
    def symbol_value(self, name: str, col: int, line: _Line, first_pass: bool = False) -> int:
        sym = self.symbols.get(name)
        if sym is None:
            if name in BUILTIN_SYMBOLS:
                return BUILTIN_SYMBOLS[name]
            raise line.error(col, f"undefined symbol '{name}'")
        if sym.value is not None:
            return sym.value
        if sym.section is not None:
            assert self.data_base is not None
            sym.value = (TEXT_BASE if sym.section == "text" else self.data_base) + sym.offset
            return sym.value
        if name in self._resolving:
            raise line.error(col, f"circular definition of '{name}'")
        self._resolving.add(name)
        try:
            sec, off = sym.dot
            dot = None if first_pass else (TEXT_BASE if sec == "text" else self.data_base) + off

            def lookup(n: str, c: int) -> int:
                s = self.symbols.get(n)
                if first_pass and s is not None and s.section is not None:
                    raise sym.line.error(c, f"the size must be a constant, not the label '{n}'")
                return self.symbol_value(n, c, sym.line, first_pass)

            value = _eval(sym.node, lookup, dot, sym.line)
        finally:
            self._resolving.discard(name)
        sym.value = value
        return value

    def evaluate(self, fix: _Fix, line: _Line, dot: int) -> int:
        return _eval(fix.node, lambda n, c: self.symbol_value(n, c, line), dot, line)

    def finish(self, filename: str) -> Program:
        text_size = len(self.text) * INSN_SIZE
        self.data_base = page_align_up(TEXT_BASE + text_size)
        if self.data_base + len(self.data) > PROGRAM_LIMIT:
            raise AsmError(filename, 1, 1, f"program too large: text and data must end below {PROGRAM_LIMIT:#x}")
        words = np.zeros(len(self.text), dtype=np.uint64)
        lines = []
        for i, w in enumerate(self.text):
            pc = TEXT_BASE + w.pc
            lines.append((w.line.filename, w.line.lineno))
            if w.raw is not None:
                v = w.raw if isinstance(w.raw, int) else self.evaluate(w.raw, w.line, pc)
                if isinstance(w.raw, _Fix):
                    _check_range(w.line, w.raw, v, -(1 << 63), MASK64)
                words[i] = v & MASK64
                continue
            imm = w.imm if isinstance(w.imm, int) else self.immediate(w.imm, w.line, pc)
            words[i] = encode(w.op, w.rd, w.rs1, w.rs2, imm)
        data = self.data
        for f in self.data_fixes:
            v = self.evaluate(f.fix, f.line, self.data_base + f.dot)
            bits = 8 * f.size
            _check_range(f.line, f.fix, v, -(1 << (bits - 1)), (1 << bits) - 1)
            data[f.offset : f.offset + f.size] = (v & ((1 << bits) - 1)).to_bytes(f.size, "little")
        symbols = {name: self.symbol_value(name, s.col, s.line) for name, s in self.symbols.items()}
        entry = symbols.get(ENTRY_SYMBOL, TEXT_BASE)
        words.setflags(write=False)
        labels = frozenset(name for name, s in self.symbols.items() if s.section is not None)
        return Program(words, bytes(data), entry, symbols, self.data_base, filename, tuple(lines), labels)

    def immediate(self, fix: _Fix, line: _Line, pc: int) -> int:
        v = self.evaluate(fix, line, pc)
        kind = fix.kind
        if kind == "pcrel":
            # targets wrap mod 2**64 like the pc does, so an absolute 0xffff...f8 is pc - 8 away
            off = to_signed64(v - pc) if -(1 << 63) <= v <= MASK64 else v - pc
            if v % INSN_SIZE:
                raise line.error(fix.col, f"branch target {_hex(v)} is not 8-byte aligned")
            if not -(1 << 31) <= off < (1 << 31):
                raise line.error(fix.col, f"branch target {_hex(v)} out of range (offset {off})")
            return off
        if kind in ("lo32", "hi32"):
            _check_range(line, fix, v, -(1 << 63), MASK64)
            v &= MASK64
            return sext32(v) if kind == "lo32" else v >> 32
        if kind == "shamt":
            if not 0 <= v <= 63:
                raise line.error(fix.col, f"shift amount {v} out of range 0..63")
            return v
        hi = (1 << 32) - 1 if kind == "u32" else (1 << 31) - 1
        _check_range(line, fix, v, -(1 << 31), hi)
        return v


def _hex(v: int) -> str:
    return f"{v:#x}" if v >= 0 else f"-{-v:#x}"


def _check_range(line: _Line, fix: _Fix, v: int, lo: int, hi: int) -> None:
    if not lo <= v <= hi:
        hint = " (use li64 for 64-bit constants)" if fix.mnemonic in ("li", "la") else ""
        raise line.error(fix.col, f"immediate {v} out of range for '{fix.mnemonic}' ({lo}..{hi}){hint}")


def _display_name(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def assemble(
    source: str,
    filename: str = "<string>",
    include_dirs: Iterable[str | os.PathLike] = (),
    path: str | os.PathLike | None = None,
) -> Program:
    """Assemble ``source`` into a :class:`Program`.

    Parameters
    ----------
    source : str
        Assembler text (syntax in ``docs/isa.md``).
    filename : str
        Name used in error messages and :attr:`Program.lines`.
    include_dirs : iterable of path
        Where ``.include`` looks after the including file's own directory (the current
        directory is always searched last).
    path : path, optional
        The file ``source`` came from (``.include`` resolves relative to it).

    Raises
    ------
    AsmError
        On any error; the message is ``filename:line:col: what was wrong``.
    """
    dirs = tuple(Path(d) for d in include_dirs) + (Path.cwd(),)
    asm = _Assembler(dirs)
    asm.source(source, filename, Path(path) if path is not None else None)
    return asm.finish(filename)


def assemble_file(path: str | os.PathLike, include_dirs: Iterable[str | os.PathLike] = ()) -> Program:
    """Assemble the file at ``path`` (``.include`` resolves relative to it).

    Raises
    ------
    AsmError
        On an assembler error, or if the file cannot be read (reported at line 1, column 1).
    """
    p = Path(path)
    name = _display_name(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AsmError(name, 1, 1, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AsmError(name, 1, 1, f"cannot read: {exc}") from None
    return assemble(text, name, include_dirs, path=p)
