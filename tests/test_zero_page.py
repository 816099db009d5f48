"""The guest OS maps like Linux: Accessed/Dirty bits on the PTEs it writes, the shared zero page on
read faults, copy-on-write from it, and what fork does to the entries (mm/memory.c:
``do_anonymous_page``, ``do_wp_page`` -> ``wp_page_copy``, ``copy_present_pte``; mm/huge_memory.c:
``do_huge_pmd_anonymous_page``, ``__split_huge_zero_page_pmd``, ``copy_huge_pmd``).

Every scenario runs in the three modes through the harness of tests/test_thp.py, which checks the
guest OS's bookkeeping after every step (tests/invariants/guest_os.py) and that the modes agree on
every guest-physical address and guest page fault; here the guest's leaf entries are compared
word for word across the modes too.

Addresses: ``BASE`` = 0x7000_0000_0000 (PML4 index 224, PDPT 0, PD 0, PT 0); ``BASE + k*4096`` is
PT index k of the same table.
"""

from __future__ import annotations

import numpy as np

from mmu.guest import os as G
from mmu.memory import A_FREE_TOP
from mmu.stats import EXIT_INVLPG, S_EXIT_BASE
from mmu.trace.format import MAP_FILE, OP_EXIT, OP_FORK, OP_MUNMAP, OP_SWITCH
from tests.test_thp import BASE, RW, Run, _mmap, _rec, _touch

P, W, US, A, D, PS = 1, 2, 4, 0x20, 0x40, 0x80
XD = 1 << 63
ADDR = 0x000F_FFFF_FFFF_F000
ADDR_2M = 0x000F_FFFF_FFE0_0000


def _entry(m, pid: int, va: int) -> tuple[int, int]:
    """(level, entry) of the leaf that maps ``va`` in process ``pid``, read as the guest sees it."""
    table = int(m.osst.procs[int(m.osst.pid2slot[pid]), G.P_ROOT])
    for level in (4, 3, 2, 1):
        e = m.read_guest(table + ((va >> (12 + 9 * (level - 1))) & 511) * 8)
        if not e & P or level == 1 or (level == 2 and e & PS):
            return level, e
        table = e & ADDR
    raise AssertionError("unreachable")


def _leaf(r: Run, pid: int, va: int) -> int:
    """The leaf entry of ``va``, the same word in every mode."""
    words = {mode: _entry(m, pid, va) for mode, m in r.machines.items()}
    assert len(set(words.values())) == 1, words
    return next(iter(words.values()))[1]


def _zero(r: Run) -> int:
    return int(r.machines["native"].osst.ometa[G.O_ZERO_PFN])


def _invlpgs(r: Run) -> int:
    return int(r.machines["shadow"].stats[S_EXIT_BASE + EXIT_INVLPG])


def test_a_read_fault_maps_the_zero_page_read_only_and_young():
    r = Run()
    r.step([_mmap(1, BASE, 16), _touch(1, BASE + 8, write=False), _touch(1, BASE + 4096 * 5, write=False)])
    got = r.agree()
    z = _zero(r)
    assert z > 0
    for k in (0, 5):
        e = _leaf(r, 1, BASE + 4096 * k)
        assert e & ADDR == z << 12
        assert e & (P | W | US | A | D) == P | US | A  # PAGE_COPY: read-only, accessed, clean
        assert e & XD  # the mapping is not executable
    assert got["zero_page"] == {"maps": 2, "huge_maps": 0, "cow": 0}
    assert got["guest_page_faults"] == 2 and got["data_frames"] == 1  # one frame: the zero page


def test_a_write_to_the_zero_page_copies_on_write_to_a_fresh_frame_with_one_invlpg():
    r = Run()
    r.step([_mmap(1, BASE, 16), _touch(1, BASE, write=False)])
    before = _invlpgs(r)
    r.step([_touch(1, BASE + 16)])
    got = r.agree()
    e = _leaf(r, 1, BASE)
    assert e & ADDR not in (0, _zero(r) << 12)
    assert e & (P | W | US | A | D) == P | W | US | A | D
    assert got["zero_page"] == {"maps": 1, "huge_maps": 0, "cow": 1}
    assert got["guest_page_faults"] == 2 and got["data_frames"] == 2
    assert _invlpgs(r) - before == 1  # ptep_clear_flush of the old translation
    code = r.machines["native"].faults()[-1][1]
    assert code & 0b111 == 0b111  # present, write, user: a protection fault
    assert r.machines["native"].result()["dirty_rewalks"] == 0  # the kernel set D already


def test_a_write_fault_first_maps_a_young_dirty_writable_frame():
    r = Run()
    r.step([_mmap(1, BASE, 16), _touch(1, BASE)])
    got = r.agree()
    e = _leaf(r, 1, BASE)
    assert e & (P | W | US | A | D) == P | W | US | A | D
    assert got["zero_page"] == {"maps": 0, "huge_maps": 0, "cow": 0}
    assert got["guest_page_faults"] == 1 and got["data_frames"] == 1
    assert _zero(r) == -1  # never needed, never allocated


def test_a_read_only_mapping_gets_the_zero_page_and_a_write_to_it_fails():
    r = Run()
    r.step([_mmap(1, BASE, 4, 1), _touch(1, BASE, write=False), _touch(1, BASE)])
    r.agree()
    assert r.machines["native"].result()["bad_accesses"] == 1
    assert _leaf(r, 1, BASE) & ADDR == _zero(r) << 12


def test_a_file_mapping_is_filled_never_the_zero_page():
    # a replayed MAP_FILE mapping (the executor's text and data): a read fault fills a frame,
    # young; a write fault's frame is young and dirty (finish_fault -> set_pte_range)
    r = Run()
    r.step([_mmap(1, BASE, 4, RW | MAP_FILE), _touch(1, BASE, write=False), _touch(1, BASE + 4096)])
    got = r.agree()
    assert got["zero_page"]["maps"] == 0 and got["data_frames"] == 2
    assert _leaf(r, 1, BASE) & (P | W | US | A | D) == P | W | US | A
    assert _leaf(r, 1, BASE + 4096) & (P | W | US | A | D) == P | W | US | A | D


def test_fork_write_protects_both_sides_makes_the_child_old_and_shares_the_zero_page():
    r = Run()
    r.step([_mmap(1, BASE, 16), _touch(1, BASE), _touch(1, BASE + 4096, write=False)])
    r.step([_rec(OP_FORK, 1, 0, 2)])
    r.agree()
    parent, child = _leaf(r, 1, BASE), _leaf(r, 2, BASE)
    assert parent & ADDR == child & ADDR
    assert parent & (W | A | D) == A | D  # copy_present_pte: ptep_set_wrprotect keeps A and D
    assert child & (W | A | D) == D  # pte_wrprotect + pte_mkold
    zp, zc = _leaf(r, 1, BASE + 4096), _leaf(r, 2, BASE + 4096)
    assert zp & ADDR == zc & ADDR == _zero(r) << 12
    assert zp & (W | A) == A and zc & (W | A) == 0  # the child's copy is old too
    # a write in the child to the zero page: a fresh zeroed frame, not a copy of a shared one
    r.step([_rec(OP_SWITCH, 2), _touch(2, BASE + 4096 + 8)])
    got = r.agree()
    assert got["zero_page"]["cow"] == 1
    assert _leaf(r, 1, BASE + 4096) & ADDR == _zero(r) << 12  # the parent still maps the zero page


def test_the_zero_page_is_never_freed():
    r = Run()
    r.step([_mmap(1, BASE, 64), *[_touch(1, BASE + 4096 * k, write=False) for k in range(40)]])
    z = _zero(r)
    r.step([_rec(OP_MUNMAP, 1, BASE, 64)])  # above the flush ceiling: a full flush
    r.step([_rec(OP_FORK, 1, 0, 2), _rec(OP_SWITCH, 2), _mmap(2, BASE, 4), _touch(2, BASE, write=False)])
    r.step([_rec(OP_EXIT, 2), _rec(OP_EXIT, 1)])
    for m in r.machines.values():
        ameta, free = m.galloc.state
        assert z not in {int(x) for x in free[: int(ameta[A_FREE_TOP])]}
        assert int(m.osst.ometa[G.O_ZERO_PFN]) == z
    r.step([_mmap(3, BASE, 4), _touch(3, BASE, write=False)])
    got = r.agree()
    assert _leaf(r, 3, BASE) & ADDR == z << 12
    assert got["data_frames"] == 1  # the zero page, allocated once


def test_thp_read_maps_the_huge_zero_page_and_a_write_splits_it_to_4k_zero_entries():
    r = Run(thp="always")
    r.step([_mmap(1, BASE, 1024), _touch(1, BASE + 4096 * 7, write=False)])
    got = r.agree()
    level, e = _entry(r.machines["native"], 1, BASE)
    hz = int(r.machines["native"].osst.ometa[G.O_HZERO_PFN])
    assert level == 2 and e & ADDR_2M == hz << 12 and hz % 512 == 0
    assert e & (P | W | US | A | D | PS) == P | US | A | PS
    assert got["zero_page"] == {"maps": 0, "huge_maps": 1, "cow": 0}
    assert got["huge_pages"]["mapped"] == 0 and got["data_frames"] == 512
    before = _invlpgs(r)
    r.step([_touch(1, BASE + 4096 * 7)])
    got = r.agree()
    # do_huge_pmd_wp_page falls back: the PMD becomes 512 read-only entries of the 4 KiB zero
    # page (INVLPG), then wp_page_copy gives the written page a fresh frame (INVLPG)
    assert got["huge_pages"]["splits"] == 1 and got["zero_page"]["cow"] == 1
    assert _invlpgs(r) - before == 2
    e7, e8 = _leaf(r, 1, BASE + 4096 * 7), _leaf(r, 1, BASE + 4096 * 8)
    assert e7 & (P | W | A | D) == P | W | A | D and e7 & ADDR != _zero(r) << 12
    assert e8 & ADDR == _zero(r) << 12 and e8 & (P | W | A) == P | A
    assert got["data_frames"] == 512 + 1 + 1  # the huge zero page, the zero page, the copy


def test_fork_shares_the_huge_zero_page_without_owners():
    r = Run(thp="always")
    r.step([_mmap(1, BASE, 1024), _touch(1, BASE, write=False)])
    r.step([_rec(OP_FORK, 1, 0, 2), _rec(OP_EXIT, 1), _rec(OP_SWITCH, 2), _touch(2, BASE + 8, write=False)])
    got = r.agree()
    level, e = _entry(r.machines["native"], 2, BASE)
    assert level == 2 and e & (A | W) == A  # copy_huge_pmd made it old; the CPU's read set A
    assert got["guest_page_faults"] == 1 and got["data_frames"] == 512


def test_the_result_reports_the_zero_page_counters():
    r = Run(modes=["native"])
    r.step([_mmap(1, BASE, 4), _touch(1, BASE, write=False), _touch(1, BASE)])
    s = r.machines["native"].result()
    assert s["zero_page"] == {"maps": 1, "huge_maps": 0, "cow": 1}
    assert np.int64(s["guest_page_faults_protection"]) == 1
