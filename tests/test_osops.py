"""The guest kernel's OS operations (mmu.guest.osops): copy-on-write, munmap, exit, first fit.

Programs run in the executor are checked against the reference interpreter (the guest's
view), and the kernel's own state (frames, tables, TLB) is checked through the machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmu.engine import Machine, MachineConfig
from mmu.guest.asm import assemble
from mmu.guest.cpu import cpu_event
from mmu.guest.osops import EV_PROT_GIVEN, EV_PROT_SHIFT, rc_count
from mmu.guest.run import run_program
from mmu.memory import A_NEXT
from mmu.stats import S_CR3_LOADS, S_GUEST_PF_PROTECTION
from mmu.trace.format import OP_EXIT, OP_FORK, OP_MMAP, OP_MUNMAP, OP_SWITCH, RECORD_DTYPE
from tests.guest_ref import run

MODES = ["native", "nested", "shadow"]

PRINT = """
# print_hex a0 (16 hex digits and a newline)
print_hex:
        la      t0, hexbuf
        li      t1, 60
ph.loop:
        shr     t2, a0, t1
        andi    t2, t2, 15
        addi    t3, t2, 48
        slti    t4, t2, 10
        bnez    t4, ph.digit
        addi    t3, t2, 87
ph.digit:
        st1     t3, 0(t0)
        addi    t0, t0, 1
        subi    t1, t1, 4
        bge     t1, zero, ph.loop
        li      t3, 10
        st1     t3, 0(t0)
        mv      t5, a0
        la      a0, hexbuf
        li      a1, 17
        syscall write
        mv      a0, t5
        ret
        .data
hexbuf: .zero   24
        .text
"""


def same_as_reference(src: str, mode: str, args=()):
    prog = assemble(src)
    ref = run(prog, args)
    got = run_program(prog, args, MachineConfig(mode=mode))
    assert got["console"] == ref.text
    assert got["exit_code"] == ref.exit_code
    assert got["faults"] == [f.message for f in ref.faults]
    assert got["instructions"] == ref.instructions
    return got


@pytest.mark.parametrize("mode", MODES)
def test_cow_isolates_parent_and_child(mode):
    # The parent fills 3 pages, forks; the child overwrites them and exits with what it read;
    # the parent then reads its own values back (copy-on-write must have kept them).
    src = (
        """
_start: li      a0, 12288
        li      a1, 3
        syscall mmap
        mv      s0, a0
        li      t0, 111
        st8     t0, 0(s0)
        li      t0, 222
        st8     t0, 4096(s0)
        li      t0, 333
        st8     t0, 8192(s0)
        syscall fork
        bnez    a0, parent
        ld8     s1, 0(s0)            # child: sees the parent's values
        li      t0, 7
        st8     t0, 0(s0)            # copy-on-write faults
        st8     t0, 4096(s0)
        ld8     s2, 0(s0)
        add     a0, s1, s2           # 111 + 7
        syscall exit
parent: syscall wait
        mv      a0, a1
        call    print_hex            # the child's status
        li      t0, 5
        st8     t0, 8192(s0)         # the last owner: R/W restored, no copy
        ld8     a0, 0(s0)
        call    print_hex
        ld8     a0, 4096(s0)
        call    print_hex
        ld8     a0, 8192(s0)
        call    print_hex
        li      a0, 0
        syscall exit
"""
        + PRINT
    )
    got = same_as_reference(src, mode)
    assert got["console"].split() == [f"{118:016x}", f"{111:016x}", f"{222:016x}", f"{5:016x}"]
    # two copy-on-write copies in the child, one write-enable in the parent
    assert got["guest_page_faults_protection"] >= 3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pages", [4, 40])  # INVLPG per page; full flush above 33 pages
def test_access_after_munmap_faults(mode, pages):
    # Touch every page (TLB entries now cached), munmap, touch again: SIGSEGV at the first page.
    src = f"""
_start: li      a0, {pages * 4096}
        li      a1, 3
        syscall mmap
        mv      s0, a0
        li      t0, 0
loop:   shli    t1, t0, 12
        add     t1, t1, s0
        st8     t0, 0(t1)
        ld8     t2, 0(t1)
        addi    t0, t0, 1
        slti    t3, t0, {pages}
        bnez    t3, loop
        mv      a0, s0
        li      a1, {pages * 4096}
        syscall munmap
        ld8     a0, {(pages - 1) * 4096}(s0)
        li      a0, 0
        syscall exit
"""
    got = same_as_reference(src, mode)
    assert got["exit_code"] == -11


def _event(m: Machine, op: int, pid: int, addr: int = 0, arg: int = 0) -> int:
    m._grow()
    m.galloc.reserve_frees(m.galloc.live + 1)
    return int(cpu_event(m.state, np.int64(op), np.int64(pid), np.int64(addr), np.int64(arg)))


def _writes(pid: int, base: int, pages: int) -> np.ndarray:
    r = np.zeros(pages, dtype=RECORD_DTYPE)
    r["addr"] = base + 4096 * np.arange(pages)
    r["arg"] = 8
    r["pid"] = pid
    r["op"] = 1
    return r


@pytest.mark.parametrize("mode", MODES)
def test_exit_frees_every_frame(mode):
    # Two processes share 8 pages copy-on-write; both exit: every table and data frame they
    # used is back in the guest allocator.
    m = Machine(MachineConfig(mode=mode))
    live0 = m.galloc.live
    base = 0x7000_0000_0000
    rw = (3 | EV_PROT_GIVEN) << EV_PROT_SHIFT
    assert _event(m, OP_MMAP, 1, base, 8 | rw) == 0
    assert _event(m, OP_SWITCH, 1) == 0
    m.run(_writes(1, base, 8))
    assert _event(m, OP_FORK, 1, 0, 2) == 0
    assert _event(m, OP_SWITCH, 2) == 0
    m.run(_writes(2, base, 3))  # three copy-on-write copies
    assert m.stats[S_GUEST_PF_PROTECTION] == 3
    assert _event(m, OP_EXIT, 2) == 0
    assert _event(m, OP_SWITCH, 1) == 0
    m.run(_writes(1, base, 8))  # last owner now: R/W restored in place for the 5 shared pages
    assert _event(m, OP_MUNMAP, 1, base, 2) == 0
    assert _event(m, OP_EXIT, 1) == 0
    assert m.galloc.live == live0
    assert int(m.osst.ometa[4]) == 0  # no frame left in the reference-count table


def test_shared_frames_are_counted():
    m = Machine(MachineConfig())
    base = 0x7000_0000_0000
    _event(m, OP_MMAP, 1, base, 2)
    _event(m, OP_SWITCH, 1)
    m.run(_writes(1, base, 2))
    _event(m, OP_FORK, 1, 0, 2)
    _event(m, OP_FORK, 1, 0, 3)
    counts = [int(rc_count(m.osst, np.int64(g))) for g in range(1, m.galloc.state.ameta[A_NEXT])]
    assert sorted(counts)[-2:] == [3, 3]  # both data frames have three owners
    loads = int(m.stats[S_CR3_LOADS])
    _event(m, OP_EXIT, 3)  # not current: the kernel switches to it first
    assert int(m.stats[S_CR3_LOADS]) == loads + 2  # the switch, then the exit's flush


@pytest.mark.parametrize("mode", ["native", "shadow"])
def test_mmap_first_fit_matches_reference(mode):
    # map a, b, c; unmap b; a smaller mapping reuses b's hole, a larger one goes after c
    src = (
        """
_start: li      a0, 8192
        li      a1, 3
        syscall mmap
        mv      s0, a0
        li      a0, 12288
        li      a1, 1
        syscall mmap
        mv      s1, a0
        li      a0, 4096
        li      a1, 0
        syscall mmap
        mv      s2, a0
        mv      a0, s1
        li      a1, 12288
        syscall munmap
        li      a0, 4000
        li      a1, 3
        syscall mmap
        call    print_hex
        li      a0, 16384
        li      a1, 3
        syscall mmap
        call    print_hex
        li      a0, 4096
        li      a1, 3
        syscall mmap
        call    print_hex
        ld8     t0, 0(s2)            # PROT_NONE: SIGSEGV
        li      a0, 0
        syscall exit
"""
        + PRINT
    )
    got = same_as_reference(src, mode)
    assert got["exit_code"] == -11
