"""The guest-ISA reference interpreter (``tests/reference/guest_cpu.py``) fed from an assembled program.

The reference imports nothing from ``mmu``; this adapter hands it the program's raw parts
(text bytes, data bytes, symbols) as plain values.
"""

from __future__ import annotations

from mmu.guest.asm import Program
from tests.reference import guest_cpu


def image(prog: Program) -> guest_cpu.Image:
    """``prog`` as the reference's plain input."""
    return guest_cpu.Image(prog.text_bytes, bytes(prog.data), dict(prog.symbols))


def run(prog: Program, args=(), **kw) -> guest_cpu.RunResult:
    """:func:`tests.reference.guest_cpu.run` of ``prog``."""
    return guest_cpu.run(image(prog), args, **kw)


def Machine(prog: Program, args=(), **kw) -> guest_cpu.Machine:  # noqa: N802 (stands in for the class)
    """A reference :class:`~tests.reference.guest_cpu.Machine` loaded with ``prog``."""
    return guest_cpu.Machine(image(prog), args, **kw)
