"""The guest ISA: a small 64-bit RISC with fixed 8-byte instructions (see ``docs/isa.md``).

Everything a program, an assembler or an interpreter must agree on lives here: the
instruction encoding, the opcode table, the registers and their ABI names, the system
call numbers and ABI, the process memory layout, the random-number generator and the
signals that kill a process. ``docs/isa.md`` states the semantics; the tests hold the
interpreter to a reference written from that document (``tests/reference/guest_cpu.py``).

Encoding (one little-endian 64-bit word per instruction)::

    bit  63          32 31      23 22   18 17   13 12    8 7      0
         +-------------+----------+-------+-------+-------+--------+
         |    imm32    | reserved |  rs2  |  rs1  |  rd   | opcode |
         +-------------+----------+-------+-------+-------+--------+

``imm32`` is a signed 32-bit immediate (sign-extended to 64 bits when used, except by
``lih``). A word is a valid instruction iff its opcode is in the table and every bit its
format does not use is zero (:data:`USED_MASK`); anything else is an illegal instruction.
The all-zero word is illegal (opcode 0), so zero-filled memory never executes.

The tables are also numpy arrays indexed by opcode (:data:`FORMAT_TABLE`,
:data:`USED_MASK_TABLE`) for a numba interpreter.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MASK64 = (1 << 64) - 1
INSN_SIZE = 8

# --- fields ------------------------------------------------------------------------------------
OP_MASK = 0xFF
RD_SHIFT = 8
RS1_SHIFT = 13
RS2_SHIFT = 18
REG_MASK = 0x1F
IMM_SHIFT = 32

F_OPCODE = 0xFF
F_RD = REG_MASK << RD_SHIFT
F_RS1 = REG_MASK << RS1_SHIFT
F_RS2 = REG_MASK << RS2_SHIFT
F_IMM = 0xFFFF_FFFF << IMM_SHIFT
F_IMM_ALIGNED8 = 0xFFFF_FFF8 << IMM_SHIFT  # branch/jal offsets: multiples of 8
F_IMM_SHAMT = 0x3F << IMM_SHIFT  # shift immediates: 0..63
RESERVED_MASK = 0x1FF << 23  # bits 31..23, always zero

# --- registers ---------------------------------------------------------------------------------
NREGS = 32
REG_ZERO = 0  # r0 reads as 0; writes to it are discarded
REG_A0 = 1  # a0..a5 = r1..r6: arguments and results (syscalls: a0..a4 in, a0 [a1] out)
REG_A1 = 2
REG_FP = 29
REG_SP = 30
REG_RA = 31

#: ABI name of each register (index = register number).
ABI_NAMES: tuple[str, ...] = (
    ("zero",)
    + tuple(f"a{i}" for i in range(6))  # r1..r6
    + tuple(f"t{i}" for i in range(9))  # r7..r15
    + tuple(f"s{i}" for i in range(13))  # r16..r28
    + ("fp", "sp", "ra")  # r29, r30, r31
)
assert len(ABI_NAMES) == NREGS

#: Every accepted register name (lower case) -> number: r0..r31 and the ABI names.
REG_NUMBERS: dict[str, int] = {f"r{i}": i for i in range(NREGS)}
REG_NUMBERS.update({name: i for i, name in enumerate(ABI_NAMES)})

# --- formats -----------------------------------------------------------------------------------
FMT_INVALID = 0
FMT_R = 1  # op rd, rs1, rs2
FMT_I = 2  # op rd, rs1, imm
FMT_SHI = 3  # op rd, rs1, shamt (0..63)
FMT_LI = 4  # li rd, imm        (rd = sext(imm))
FMT_LIH = 5  # lih rd, imm32    (rd = rd[31:0] | imm32 << 32)
FMT_LOAD = 6  # op rd, imm(rs1)
FMT_STORE = 7  # op rs2, imm(rs1)
FMT_BRANCH = 8  # op rs1, rs2, target  (imm = target - pc, multiple of 8)
FMT_JAL = 9  # jal rd, target       (imm = target - pc, multiple of 8)
FMT_JALR = 10  # jalr rd, rs1, imm
FMT_SYS = 11  # syscall number     (number in imm)
FMT_NONE = 12  # halt

#: Bits each format uses; a valid word has no bit set outside its format's mask.
FORMAT_USED: dict[int, int] = {
    FMT_R: F_OPCODE | F_RD | F_RS1 | F_RS2,
    FMT_I: F_OPCODE | F_RD | F_RS1 | F_IMM,
    FMT_SHI: F_OPCODE | F_RD | F_RS1 | F_IMM_SHAMT,
    FMT_LI: F_OPCODE | F_RD | F_IMM,
    FMT_LIH: F_OPCODE | F_RD | F_IMM,
    FMT_LOAD: F_OPCODE | F_RD | F_RS1 | F_IMM,
    FMT_STORE: F_OPCODE | F_RS1 | F_RS2 | F_IMM,
    FMT_BRANCH: F_OPCODE | F_RS1 | F_RS2 | F_IMM_ALIGNED8,
    FMT_JAL: F_OPCODE | F_RD | F_IMM_ALIGNED8,
    FMT_JALR: F_OPCODE | F_RD | F_RS1 | F_IMM,
    FMT_SYS: F_OPCODE | F_IMM,
    FMT_NONE: F_OPCODE,
}

# --- opcodes -----------------------------------------------------------------------------------
# ALU, register form 0x01..0x0F; the immediate form of each is opcode | 0x10. The low nibble
# (ALU function) is the same in both forms.
ALU_ADD = 0x1
ALU_SUB = 0x2
ALU_MUL = 0x3
ALU_DIV = 0x4
ALU_DIVU = 0x5
ALU_REM = 0x6
ALU_REMU = 0x7
ALU_AND = 0x8
ALU_OR = 0x9
ALU_XOR = 0xA
ALU_SHL = 0xB
ALU_SHR = 0xC
ALU_SAR = 0xD
ALU_SLT = 0xE
ALU_SLTU = 0xF
ALU_IMM = 0x10  # opcode bit: second operand is the sign-extended immediate

OPC_ILLEGAL = 0x00
OPC_ADD, OPC_SUB, OPC_MUL, OPC_DIV, OPC_DIVU, OPC_REM, OPC_REMU = range(0x01, 0x08)
OPC_AND, OPC_OR, OPC_XOR, OPC_SHL, OPC_SHR, OPC_SAR, OPC_SLT, OPC_SLTU = range(0x08, 0x10)
OPC_ADDI, OPC_SUBI, OPC_MULI, OPC_DIVI, OPC_DIVUI, OPC_REMI, OPC_REMUI = range(0x11, 0x18)
OPC_ANDI, OPC_ORI, OPC_XORI, OPC_SHLI, OPC_SHRI, OPC_SARI, OPC_SLTI, OPC_SLTIU = range(0x18, 0x20)
OPC_LI = 0x20
OPC_LIH = 0x21
# Loads 0x30..0x36 and stores 0x38..0x3B: access size = 1 << (opcode & 3).
OPC_LD1, OPC_LD2, OPC_LD4, OPC_LD8 = 0x30, 0x31, 0x32, 0x33  # zero-extending
OPC_LD1S, OPC_LD2S, OPC_LD4S = 0x34, 0x35, 0x36  # sign-extending
OPC_ST1, OPC_ST2, OPC_ST4, OPC_ST8 = 0x38, 0x39, 0x3A, 0x3B
OPC_BEQ, OPC_BNE, OPC_BLT, OPC_BGE, OPC_BLTU, OPC_BGEU = range(0x40, 0x46)
OPC_JAL = 0x48
OPC_JALR = 0x49
OPC_SYSCALL = 0x50
OPC_HALT = 0x51

_ALU_NAMES = ("add", "sub", "mul", "div", "divu", "rem", "remu", "and", "or", "xor", "shl", "shr", "sar", "slt", "sltu")

#: opcode -> (mnemonic, format), for every valid opcode.
OPCODES: dict[int, tuple[str, int]] = {}
for _i, _name in enumerate(_ALU_NAMES, start=1):
    OPCODES[_i] = (_name, FMT_R)
    _imm_name = "sltiu" if _name == "sltu" else _name + "i"  # RISC-V's spelling
    OPCODES[_i | ALU_IMM] = (_imm_name, FMT_SHI if _i in (ALU_SHL, ALU_SHR, ALU_SAR) else FMT_I)
OPCODES.update(
    {
        OPC_LI: ("li", FMT_LI),
        OPC_LIH: ("lih", FMT_LIH),
        OPC_LD1: ("ld1", FMT_LOAD),
        OPC_LD2: ("ld2", FMT_LOAD),
        OPC_LD4: ("ld4", FMT_LOAD),
        OPC_LD8: ("ld8", FMT_LOAD),
        OPC_LD1S: ("ld1s", FMT_LOAD),
        OPC_LD2S: ("ld2s", FMT_LOAD),
        OPC_LD4S: ("ld4s", FMT_LOAD),
        OPC_ST1: ("st1", FMT_STORE),
        OPC_ST2: ("st2", FMT_STORE),
        OPC_ST4: ("st4", FMT_STORE),
        OPC_ST8: ("st8", FMT_STORE),
        OPC_BEQ: ("beq", FMT_BRANCH),
        OPC_BNE: ("bne", FMT_BRANCH),
        OPC_BLT: ("blt", FMT_BRANCH),
        OPC_BGE: ("bge", FMT_BRANCH),
        OPC_BLTU: ("bltu", FMT_BRANCH),
        OPC_BGEU: ("bgeu", FMT_BRANCH),
        OPC_JAL: ("jal", FMT_JAL),
        OPC_JALR: ("jalr", FMT_JALR),
        OPC_SYSCALL: ("syscall", FMT_SYS),
        OPC_HALT: ("halt", FMT_NONE),
    }
)
del _i, _name, _imm_name

#: mnemonic -> opcode (real instructions only; pseudo-instructions live in the assembler).
MNEMONICS: dict[str, int] = {name: op for op, (name, _fmt) in OPCODES.items()}

#: int8[256]: format of each opcode (FMT_INVALID for unused opcodes).
FORMAT_TABLE = np.zeros(256, dtype=np.int8)
#: uint64[256]: bits a valid word with that opcode may have set (0 for unused opcodes).
USED_MASK_TABLE = np.zeros(256, dtype=np.uint64)
for _op, (_n, _fmt) in OPCODES.items():
    FORMAT_TABLE[_op] = _fmt
    USED_MASK_TABLE[_op] = np.uint64(FORMAT_USED[_fmt])
del _op, _n, _fmt


def access_size(op: int) -> int:
    """Bytes moved by load/store opcode ``op`` (1, 2, 4 or 8)."""
    return 1 << (op & 3)


# --- encoding ----------------------------------------------------------------------------------
class Insn(NamedTuple):
    """A decoded instruction. ``imm`` is the signed 32-bit immediate as a Python int."""

    op: int
    rd: int = 0
    rs1: int = 0
    rs2: int = 0
    imm: int = 0

    @property
    def mnemonic(self) -> str:
        return OPCODES[self.op][0]

    @property
    def format(self) -> int:
        return OPCODES[self.op][1]


def sext32(value: int) -> int:
    """The low 32 bits of ``value`` as a signed integer."""
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value & 0x8000_0000 else value


def to_signed64(value: int) -> int:
    """The low 64 bits of ``value`` as a signed integer."""
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


def encode(op: int, rd: int = 0, rs1: int = 0, rs2: int = 0, imm: int = 0) -> int:
    """The instruction word for the given fields.

    Raises
    ------
    ValueError
        If ``op`` is not a valid opcode, a register is not 0..31, ``imm`` is not a 32-bit
        value (``-2**31 .. 2**32 - 1``; ``lih`` takes any 32-bit pattern, the others a
        signed value), or a field the format does not use is nonzero (the word would be
        illegal).
    """
    if op not in OPCODES:
        raise ValueError(f"not an opcode: {op:#x}")
    name, fmt = OPCODES[op]
    for field, r in (("rd", rd), ("rs1", rs1), ("rs2", rs2)):
        if not 0 <= r < NREGS:
            raise ValueError(f"{name}: {field} = {r} is not a register number 0..31")
    lo = -(1 << 31)
    hi = (1 << 32) - 1 if fmt == FMT_LIH else (1 << 31) - 1
    if not lo <= imm <= hi:
        raise ValueError(f"{name}: immediate {imm} out of range {lo}..{hi}")
    word = op | rd << RD_SHIFT | rs1 << RS1_SHIFT | rs2 << RS2_SHIFT | (imm & 0xFFFF_FFFF) << IMM_SHIFT
    extra = word & ~FORMAT_USED[fmt] & MASK64
    if extra:
        raise ValueError(f"{name}: fields outside its format are set (bits {extra:#x})")
    return word


def decode(word: int) -> Insn | None:
    """The fields of instruction ``word`` (an unsigned 64-bit value), or None if it is illegal."""
    op = word & OP_MASK
    entry = OPCODES.get(op)
    if entry is None or word & ~FORMAT_USED[entry[1]] & MASK64:
        return None
    return Insn(
        op,
        (word >> RD_SHIFT) & REG_MASK,
        (word >> RS1_SHIFT) & REG_MASK,
        (word >> RS2_SHIFT) & REG_MASK,
        sext32(word >> IMM_SHIFT),
    )


def is_valid(word: int) -> bool:
    """True if ``word`` decodes to an instruction."""
    return decode(word) is not None


# --- system calls ------------------------------------------------------------------------------
# ``syscall N``: the number is the immediate; arguments in a0..a4 (r1..r5); result in a0
# (wait also returns the child's status in a1). Every other register is preserved.
SYS_EXIT = 0  # exit(status)                  -> does not return
SYS_WRITE = 1  # write(ptr, len)              -> len, or -1 if a byte is not readable
SYS_MMAP = 2  # mmap(len, prot)               -> address, or -1
SYS_MUNMAP = 3  # munmap(addr, len)           -> 0, or -1
SYS_FORK = 4  # fork()                        -> child pid in the parent, 0 in the child, -1
SYS_WAIT = 5  # wait()                        -> a0 = pid, a1 = status of an exited child; -1
SYS_YIELD = 6  # yield()                      -> 0
SYS_GETPID = 7  # getpid()                    -> pid
SYS_GETARG = 8  # getarg(i, default)          -> i-th command-line argument, or default
SYS_RAND = 9  # rand()                        -> next xorshift64 value of this process

SYSCALL_NAMES: dict[int, str] = {
    SYS_EXIT: "exit",
    SYS_WRITE: "write",
    SYS_MMAP: "mmap",
    SYS_MUNMAP: "munmap",
    SYS_FORK: "fork",
    SYS_WAIT: "wait",
    SYS_YIELD: "yield",
    SYS_GETPID: "getpid",
    SYS_GETARG: "getarg",
    SYS_RAND: "rand",
}
SYSCALL_NUMBERS: dict[str, int] = {name: n for n, name in SYSCALL_NAMES.items()}

#: Returned in a0 by a failed system call (and by an unknown syscall number): -1 mod 2**64.
SYS_ERROR = MASK64

# mmap protection bits (same values as the trace format's PROT_* flags). On the x86 page
# tables they map to: present = prot != 0, R/W = PROT_WRITE, XD = not PROT_EXEC. So any
# nonzero prot is readable (x86 has no write-only or execute-only pages).
PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
PROT_EXEC = 4
PROT_THP = 8  # transparent huge pages allowed (a hint; no effect on semantics)
PROT_MASK = PROT_READ | PROT_WRITE | PROT_EXEC | PROT_THP

# --- process memory layout (48-bit canonical user half) -----------------------------------------
PAGE_SIZE = 4096
PAGE_SHIFT = 12
USER_TOP = 0x0000_8000_0000_0000  # first address above the user half
TEXT_BASE = 0x0040_0000  # text (R+X) starts here; data (R+W) at the next page after text
MMAP_BASE = 0x7000_0000_0000  # mmap region [MMAP_BASE, MMAP_END): first fit, lowest address
MMAP_END = 0x7FFF_0000_0000
STACK_TOP = 0x7FFF_FFFF_F000  # initial sp; the stack is [STACK_TOP - STACK_SIZE, STACK_TOP), R+W
STACK_SIZE = 1 << 20
PROGRAM_LIMIT = 1 << 31  # text and data end below 2 GiB, so every label fits `li`'s immediate

# --- processes ---------------------------------------------------------------------------------
INIT_PID = 1  # the first process; pids are handed out in order and never reused
MAX_PID = 0xFFFF  # the trace format's pid is 16 bits: fork fails (-1) after pid 65535
DEFAULT_QUANTUM = 10_000  # instructions per time slice (round robin)
DEFAULT_SEED = 0x9E37_79B9_7F4A_7C15  # rand() state of the first process (must be nonzero)

# A process killed by a fault exits with status -signal (Python's returncode convention).
SIGILL = 4  # illegal instruction
SIGBUS = 7  # misaligned load, store or instruction fetch
SIGSEGV = 11  # access to an unmapped page or without permission
SIGNAL_NAMES = {SIGILL: "illegal instruction", SIGBUS: "bus error", SIGSEGV: "segmentation fault"}


def xorshift64(state: int) -> int:
    """The next state of Marsaglia's xorshift64 generator (shifts 13, 7, 17); rand() returns it.

    Parameters
    ----------
    state : int
        Current state, ``1 .. 2**64 - 1``.
    """
    state ^= (state << 13) & MASK64
    state ^= state >> 7
    state ^= (state << 17) & MASK64
    return state


def page_align_up(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`PAGE_SIZE`."""
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


#: Names the assembler predefines (a program's own symbols take precedence).
BUILTIN_SYMBOLS: dict[str, int] = {
    **{f"SYS_{name.upper()}": n for n, name in SYSCALL_NAMES.items()},
    "PROT_NONE": PROT_NONE,
    "PROT_READ": PROT_READ,
    "PROT_WRITE": PROT_WRITE,
    "PROT_EXEC": PROT_EXEC,
    "PROT_THP": PROT_THP,
    "PAGE_SIZE": PAGE_SIZE,
    "TEXT_BASE": TEXT_BASE,
    "MMAP_BASE": MMAP_BASE,
    "MMAP_END": MMAP_END,
    "STACK_TOP": STACK_TOP,
    "STACK_SIZE": STACK_SIZE,
}
