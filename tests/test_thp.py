"""Transparent huge pages, process-row reuse and page-table freeing in the guest OS model.

The guest's own state is checked by an independent walker of its tables
(tests/invariants/guest_os.py) after every step; the modes are checked to agree on every
access's guest-physical address and every guest page fault.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmu
from mmu.engine import Machine, MachineConfig
from mmu.errors import MMUInputError
from mmu.guest.asm import assemble_file
from mmu.guest.isa import PROT_THP
from mmu.guest.os import MAX_PROCS, P_ROOT
from mmu.guest.run import run_program
from mmu.memory import (
    A_LIMIT,
    A_NEXT,
    ALIGN_ROOM,
    FrameAllocator,
    alloc_block,
    alloc_frame,
    alloc_room,
    free_block,
    free_frame,
)
from mmu.replayfile import replay
from mmu.stats import EXIT_CR3_LOAD, EXIT_INVLPG, S_EXIT_BASE
from mmu.trace.format import OP_EXIT, OP_FORK, OP_MMAP, OP_MUNMAP, OP_SWITCH, RECORD_DTYPE
from tests.guest_ref import run as ref_run
from tests.invariants.guest_os import check_guest_os
from tests.invariants.shadow import check_shadow

MODES = ["native", "nested", "shadow"]
PROGRAMS = "traces/programs"
HUGE = 1 << 21
BASE = 0x7000_0000_0000  # 1 GiB aligned
RW = 3  # PROT_READ | PROT_WRITE


# --- the frame allocator's 2 MiB blocks ------------------------------------------------------------


def test_alloc_block_aligns_and_keeps_the_skipped_frames():
    a = FrameAllocator(1, 1 << 20)
    s = a.state
    assert alloc_frame(s) == 1
    head = int(alloc_block(s))
    assert head == 512 and a.live == 1 + 512
    # frames 2..511 were skipped to align: they are free, lowest first
    assert [int(alloc_frame(s)) for _ in range(3)] == [2, 3, 4]
    assert int(alloc_block(s)) == 1024  # the bump pointer was already aligned
    assert free_block(s, np.int64(head))
    assert a.live == 4 + 512
    assert int(alloc_block(s)) == head  # a freed block is reused whole
    assert a.peak == 4 + 1024


def test_alloc_block_fails_cleanly_at_the_limit_and_without_room():
    a = FrameAllocator(1, 1100)
    assert int(alloc_block(a.state)) == 512
    assert int(alloc_block(a.state)) == -1  # 1024 + 512 > 1100
    b = FrameAllocator(5, 1 << 20, free_capacity=16)
    assert not alloc_room(b.state, ALIGN_ROOM)
    assert int(alloc_block(b.state)) == -1  # 507 skipped frames do not fit the free list
    assert b.live == 0
    b.reserve_frees(ALIGN_ROOM)
    assert int(alloc_block(b.state)) == 512


def test_reserve_frees_keeps_free_blocks():
    a = FrameAllocator(1, 1 << 20, free_capacity=16)
    a.reserve_frees(ALIGN_ROOM + 8)
    heads = [int(alloc_block(a.state)) for _ in range(3)]
    for h in heads:
        assert free_block(a.state, np.int64(h))
    for f in range(5):
        assert free_frame(a.state, np.int64(f + 1))
    a.reserve_frees(10 * a.state.afree.shape[0])  # grows the array: both stacks must survive
    assert sorted(int(alloc_block(a.state)) for _ in range(3)) == sorted(heads)
    assert int(alloc_frame(a.state)) == 5


# --- helpers ---------------------------------------------------------------------------------------


def _rec(op: int, pid: int, addr: int = 0, arg: int = 0, flags: int = 0) -> tuple[int, int, int, int, int]:
    return (op, pid, addr, arg, flags)


def _records(rows: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    r = np.zeros(len(rows), dtype=RECORD_DTYPE)
    for i, (op, pid, addr, arg, flags) in enumerate(rows):
        r["op"][i], r["pid"][i], r["addr"][i], r["arg"][i], r["flags"][i] = op, pid, addr, arg, flags
    return r


def _touch(pid: int, va: int, write: bool = True) -> tuple[int, int, int, int, int]:
    return _rec(1 if write else 0, pid, va, 8)


class Run:
    """One machine per mode fed the same records, step by step, with the gPA of every access."""

    def __init__(self, modes=MODES, **config):
        self.machines = {m: Machine(MachineConfig(mode=m, **config)) for m in modes}
        for m in self.machines.values():
            m.log_faults()
        self.gpas: dict[str, list[int]] = {m: [] for m in modes}

    def step(self, rows, check: bool = True) -> None:
        recs = _records(rows)
        for mode, m in self.machines.items():
            out = np.zeros(max(2, len(recs)), dtype=np.uint64)
            n = m.run(recs, out=out)
            self.gpas[mode] += [int(x) for x in out[:n]]
            if check:
                check_guest_os(m)

    def agree(self) -> dict:
        ref_mode = next(iter(self.machines))
        ref = self.machines[ref_mode]
        keys = (
            "guest_page_faults", "pt_frames", "pt_frames_freed", "data_frames", "huge_pages", "zero_page", "processes",
        )  # fmt: skip
        want = {k: ref.result()[k] for k in keys}
        for mode, m in self.machines.items():
            assert self.gpas[mode] == self.gpas[ref_mode], f"{mode}: guest-physical addresses differ"
            assert m.faults() == ref.faults(), f"{mode}: guest page faults differ"
            got = m.result()
            assert {k: got[k] for k in keys} == want, mode
            if mode == "shadow":
                check_shadow(m)
        return want


def _mmap(pid: int, addr: int, pages: int, prot: int = RW):
    return _rec(OP_MMAP, pid, addr, pages, prot)


# --- transparent huge pages -------------------------------------------------------------------------


def test_a_fault_in_an_aligned_anonymous_range_maps_2m():
    r = Run(thp="always")
    r.step([_mmap(1, BASE, 1024), _touch(1, BASE + 5 * 4096 + 8)])
    r.step([_touch(1, BASE + k * 4096, write=False) for k in range(0, 512, 37)])  # no more faults
    got = r.agree()
    assert got["guest_page_faults"] == 1
    assert got["huge_pages"] == {"mapped": 1, "fallbacks": 0, "splits": 0}
    assert got["data_frames"] == 512
    m = r.machines["native"]
    root = int(m.osst.procs[int(m.osst.pid2slot[1]), P_ROOT])
    w = mmu.walk(m.mem, root, BASE + 0x1234, "r", user=True)
    assert w.page_size == HUGE and len(w.refs) == 3  # PML4E, PDPTE, PDE (the leaf)
    # 4 KiB pages of the same 2 MiB are consecutive frames of one aligned block
    assert r.gpas["native"][1] - r.gpas["native"][0] == 0 - (5 * 4096 + 8)
    assert r.gpas["native"][0] % HUGE == 5 * 4096 + 8


@pytest.mark.parametrize(
    ("policy", "prot", "huge"), [("madvise", RW | PROT_THP, 1), ("madvise", RW, 0), ("never", RW | PROT_THP, 0)]
)
def test_madvise_policy_maps_huge_only_mappings_that_ask(policy, prot, huge):
    r = Run(modes=["native"], thp=policy)
    r.step([_mmap(1, BASE, 512, prot), _touch(1, BASE)])
    assert r.machines["native"].result()["huge_pages"]["mapped"] == huge


def test_processes_without_mappings_get_huge_pages_only_with_always():
    for policy, huge in (("madvise", 0), ("always", 1)):
        r = Run(modes=["native"], thp=policy)
        r.step([_touch(1, 0x40_0000_0000)])
        assert r.machines["native"].result()["huge_pages"]["mapped"] == huge


def test_unknown_thp_policy_is_a_clear_error():
    with pytest.raises(MMUInputError, match="unknown THP policy 'sometimes'"):
        Machine(MachineConfig(thp="sometimes"))


def test_thp_off_maps_4k_pages():
    r = Run(thp="never")
    r.step([_mmap(1, BASE, 1024), _touch(1, BASE), _touch(1, BASE + 4096)])
    got = r.agree()
    assert got["huge_pages"]["mapped"] == 0 and got["guest_page_faults"] == 2


@pytest.mark.parametrize(
    ("start_page", "pages", "touch_page", "huge"),
    [
        (0, 512, 0, 1),  # exactly one aligned 2 MiB
        (1, 1023, 1, 0),  # no aligned 2 MiB lies wholly inside the mapping
        (0, 511, 0, 0),
        (256, 1024, 600, 1),  # [256, 1280) holds the aligned [512, 1024)
        (256, 1024, 300, 0),  # ... but page 300's aligned 2 MiB starts below the mapping
    ],
)
def test_only_a_mapping_covering_the_whole_aligned_range_gets_a_huge_page(start_page, pages, touch_page, huge):
    r = Run(modes=["native"], thp="always")
    r.step([_mmap(1, BASE + 4096 * start_page, pages), _touch(1, BASE + 4096 * touch_page)])
    assert r.machines["native"].result()["huge_pages"]["mapped"] == huge


def test_an_existing_page_table_keeps_the_range_4k():
    # page 0 is its own mapping, so [0, 512) gets 4 KiB pages and a page table; [512, 1024)
    # lies in one (read-only) anonymous mapping and a read there gets the huge zero page; a
    # later fault in [0, 512) finds the table there and maps 4 KiB (no khugepaged collapse)
    r = Run(thp="always")
    r.step([_mmap(1, BASE, 1, RW), _mmap(1, BASE + 4096, 1023, 1), _touch(1, BASE)])
    r.step([_touch(1, BASE + 4096 * 700, write=False)])
    assert r.agree()["zero_page"]["huge_maps"] == 1
    r.step([_touch(1, BASE + 4096 * 3, write=False)])
    got = r.agree()
    assert got["zero_page"] == {"maps": 1, "huge_maps": 1, "cow": 0} and got["huge_pages"]["mapped"] == 0
    assert got["guest_page_faults"] == 3


def test_fork_shares_a_huge_page_and_cow_splits_it():
    r = Run(thp="always")
    r.step([_mmap(1, BASE, 512), _touch(1, BASE)])
    r.step([_rec(OP_FORK, 1, 0, 2), _rec(OP_SWITCH, 2), _touch(2, BASE + 4096 * 9)])
    got = r.agree()
    assert got["huge_pages"] == {"mapped": 1, "fallbacks": 0, "splits": 1}
    # the child's page 9 is a private copy; its other pages still map the parent's block
    child = r.gpas["native"][-1]
    assert child // HUGE != r.gpas["native"][0] // HUGE
    r.step([_touch(2, BASE + 4096 * 10, write=False)])
    assert r.gpas["native"][-1] == (r.gpas["native"][0] & ~(HUGE - 1)) + 10 * 4096 + 0
    # the parent writes: its frames are still shared with the child's split table -> split too
    r.step([_rec(OP_SWITCH, 1), _touch(1, BASE + 4096 * 10)])
    assert r.agree()["huge_pages"]["splits"] == 2
    # the child exits; the parent's remaining shared frames return to one owner
    r.step([_rec(OP_EXIT, 2), _rec(OP_SWITCH, 1), _touch(1, BASE + 4096 * 11)])
    r.agree()


def test_last_owner_of_a_huge_page_gets_it_back_writable_whole():
    r = Run(thp="always")
    r.step([_mmap(1, BASE, 512), _touch(1, BASE), _rec(OP_FORK, 1, 0, 2), _rec(OP_EXIT, 2)])
    r.step([_rec(OP_SWITCH, 1), _touch(1, BASE + 4096 * 100)])
    got = r.agree()
    assert got["huge_pages"]["splits"] == 0
    assert got["guest_page_faults"] == 2  # the first touch, then one write-protect fault


@pytest.mark.parametrize("mode", MODES)
def test_munmap_of_part_of_a_huge_page_splits_it(mode):
    r = Run(modes=[mode], thp="always")
    r.step([_mmap(1, BASE, 1024), _touch(1, BASE), _touch(1, BASE + HUGE)])
    r.step([_rec(OP_MUNMAP, 1, BASE + 4096 * 10, 20)])
    m = r.machines[mode]
    res = m.result()
    assert res["huge_pages"] == {"mapped": 2, "fallbacks": 0, "splits": 1}
    r.step([_touch(1, BASE + 4096 * 9, write=False), _touch(1, BASE + 4096 * 30, write=False)])
    assert m.result()["guest_page_faults"] == res["guest_page_faults"]  # still mapped
    r.step([_touch(1, BASE + 4096 * 15, write=False)], check=False)
    assert m.result()["bad_accesses"] == 1  # unmapped: SIGSEGV, not a stale translation


def test_munmap_of_huge_pages_flushes_per_2m_like_linux():
    # Only 2 MiB leaves cleared: Linux flushes with a 2 MiB stride (one INVLPG each), where the
    # same range in 4 KiB pages (1024 pages > 33) takes a full flush.
    for thp, invlpg, flushes in (("always", 2, 0), ("never", 0, 1)):
        r = Run(modes=["shadow"], thp=thp)
        r.step([_mmap(1, BASE, 1024), _mmap(1, BASE + 4 * HUGE, 1)])
        pages = (0, 512) if thp == "always" else range(1024)
        r.step([_touch(1, BASE + k * 4096) for k in pages])
        m = r.machines["shadow"]
        before = m.stats.copy()
        r.step([_rec(OP_MUNMAP, 1, BASE, 1024)])
        d = m.stats - before
        assert int(d[S_EXIT_BASE + EXIT_INVLPG]) == invlpg
        assert int(d[S_EXIT_BASE + EXIT_CR3_LOAD]) == flushes


def test_no_aligned_block_falls_back_to_4k():
    r = Run(modes=["native"], thp="always")
    m = r.machines["native"]
    m.galloc.state.ameta[A_LIMIT] = int(m.galloc.state.ameta[A_NEXT]) + 600  # the guest has 600 frames left
    r.step([_mmap(1, BASE, 1024), _touch(1, BASE)])
    res = m.result()
    assert res["huge_pages"] == {"mapped": 0, "fallbacks": 1, "splits": 0}
    assert res["data_frames"] == 1


# --- page tables freed by munmap ------------------------------------------------------------------


@pytest.mark.parametrize("thp", ["never", "always"])
def test_munmap_frees_the_tables_of_the_gap(thp):
    far = BASE + (1 << 30)  # another page directory
    r = Run(thp=thp)
    r.step([_mmap(1, BASE, 4), _mmap(1, far, 4), _touch(1, BASE), _touch(1, far)])
    before = r.machines["native"].result()["pt_frames_freed"]
    assert before == 0
    r.step([_rec(OP_MUNMAP, 1, far, 4)])  # its PT and PD go; the PDPT and PML4 are shared
    assert r.agree()["pt_frames_freed"] == 2
    r.step([_rec(OP_MUNMAP, 1, BASE + 4096, 1)])  # part of a mapping: nothing to free
    assert r.agree()["pt_frames_freed"] == 2
    r.step([_rec(OP_MUNMAP, 1, BASE, 4)])  # the last mapping: PT, PD, PDPT (not the root)
    assert r.agree()["pt_frames_freed"] == 5


def test_a_table_shared_by_two_mappings_stays_until_both_go():
    r = Run(thp="never")
    r.step([_mmap(1, BASE, 4), _mmap(1, BASE + 8 * 4096, 4), _touch(1, BASE), _touch(1, BASE + 8 * 4096)])
    r.step([_rec(OP_MUNMAP, 1, BASE, 4)])
    assert r.agree()["pt_frames_freed"] == 0
    r.step([_rec(OP_MUNMAP, 1, BASE + 8 * 4096, 4)])
    assert r.agree()["pt_frames_freed"] == 3


def test_freed_tables_leave_no_stale_walk_cache():
    # The paging-structure caches hold the freed PD/PT; the munmap's INVLPG drops them, so the
    # next touch walks the new tables (checked against a cold walk by agreement of the modes).
    r = Run(thp="never")
    r.step([_mmap(1, BASE, 4), _touch(1, BASE), _rec(OP_MUNMAP, 1, BASE, 4)])
    r.step([_mmap(1, BASE, 4), _touch(1, BASE + 4096), _touch(1, BASE)])
    got = r.agree()
    assert got["pt_frames_freed"] == 3 and got["guest_page_faults"] == 3


# --- process rows -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "shadow"])
def test_exited_processes_rows_are_reused(mode):
    n = MAX_PROCS + 300
    rows = [_mmap(1, BASE, 4), _touch(1, BASE)]
    for child in range(2, n + 2):
        rows += [_rec(OP_FORK, 1, 0, child), _touch(child, BASE + 4096), _rec(OP_EXIT, child), _touch(1, BASE)]
    m = Machine(MachineConfig(mode=mode))
    m.run(_records(rows))
    res = m.result()
    assert res["processes"] == n + 1
    check_guest_os(m)
    if mode == "shadow":
        check_shadow(m)


def test_too_many_live_processes_is_a_clear_error():
    rows = [_mmap(1, BASE, 1), _touch(1, BASE)] + [_rec(OP_FORK, 1, 0, c) for c in range(2, MAX_PROCS + 2)]
    m = Machine(MachineConfig())
    with pytest.raises(MMUInputError, match=r"record \d+: more than 4096 processes alive at once"):
        m.run(_records(rows))


# --- random sequences: the checker after every step, every mode agrees -----------------------------

_PAGES = st.sampled_from([1, 3, 100, 512, 700, 1024, 1536])


@st.composite
def _programs(draw):
    """A random guest workload as a list of steps (each a list of records)."""
    steps = []
    maps: dict[int, list[tuple[int, int]]] = {1: []}
    alive = [1]
    next_pid = 2
    slot = 0
    for _ in range(draw(st.integers(4, 14))):
        kind = draw(st.sampled_from(["mmap", "touch", "touch", "touch", "fork", "munmap", "exit"]))
        pid = draw(st.sampled_from(alive))
        if kind == "mmap" or not maps[pid]:
            pages = draw(_PAGES)
            offset = draw(st.sampled_from([0, 0, 7]))
            addr = BASE + slot * (8 << 20) + offset * 4096
            slot += 1
            prot = draw(st.sampled_from([RW, RW, 1, RW | PROT_THP]))
            steps.append([_mmap(pid, addr, pages, prot)])
            maps[pid].append((addr, pages))
            continue
        if kind == "touch":
            addr, pages = draw(st.sampled_from(maps[pid]))
            ks = draw(st.lists(st.integers(0, pages - 1), min_size=1, max_size=6))
            w = draw(st.booleans())
            steps.append([_touch(pid, addr + 4096 * k, w) for k in ks])
        elif kind == "fork" and len(alive) < 4:
            steps.append([_rec(OP_FORK, pid, 0, next_pid)])
            maps[next_pid] = list(maps[pid])
            alive.append(next_pid)
            next_pid += 1
        elif kind == "munmap":
            addr, pages = draw(st.sampled_from(maps[pid]))
            a = draw(st.integers(0, pages - 1))
            b = draw(st.integers(a + 1, pages))
            steps.append([_rec(OP_MUNMAP, pid, addr + 4096 * a, b - a)])
            maps[pid].remove((addr, pages))
            if a > 0:
                maps[pid].append((addr, a))
            if b < pages:
                maps[pid].append((addr + 4096 * b, pages - b))
        elif kind == "exit" and pid != 1:
            steps.append([_rec(OP_EXIT, pid)])
            alive.remove(pid)
            del maps[pid]
    return steps


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(program=_programs(), thp=st.sampled_from(["never", "madvise", "always"]))
def test_random_workloads_keep_the_guest_os_consistent_in_every_mode(program, thp):
    r = Run(thp=thp)
    for step in program:
        r.step(step)
    r.agree()


# --- programs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_programs_see_no_difference_with_thp(mode):
    prog = assemble_file(f"{PROGRAMS}/gups.s")
    ref = ref_run(prog, [18, 3000])
    off = run_program(prog, [18, 3000], MachineConfig(mode=mode))
    on = run_program(prog, [18, 3000], MachineConfig(mode=mode, thp="always"))
    assert on["console"] == off["console"] == ref.text
    assert on["huge_pages"]["mapped"] == 1  # the 2 MiB table
    assert on["guest_page_faults"] < off["guest_page_faults"]
    assert on["tlb_misses"] < off["tlb_misses"]


@pytest.mark.parametrize(
    "name,args", [("forkwait.s", [6, 600]), ("pfstorm.s", [600, 3]), ("mmapchurn.s", [300, 8, 1200])]
)
def test_os_heavy_programs_with_thp_match_the_reference(name, args, tmp_path):
    prog = assemble_file(f"{PROGRAMS}/{name}")
    ref = ref_run(prog, args)
    results = {}
    for mode in MODES:
        got = run_program(prog, args, MachineConfig(mode=mode, thp="always"), record_path=tmp_path / f"{mode}.trace")
        assert got["console"] == ref.text and got["exit_code"] == ref.exit_code, mode
        results[mode] = got
    keys = ("guest_page_faults", "data_frames", "pt_frames", "pt_frames_freed", "huge_pages")
    assert len({tuple(str(r[k]) for k in keys) for r in results.values()}) == 1
    # the recording replays to the same stats (given the same --thp)
    again = replay(tmp_path / "shadow.trace", MachineConfig(mode="shadow", thp="always"))
    for k in (*keys, "cycles", "exits"):
        assert again[k] == results["shadow"][k], k


# --- the command line -------------------------------------------------------------------------------


def test_cli_thp_policy_flows_into_the_stats_and_bad_values_fail_cleanly():
    import json

    from typer.testing import CliRunner

    from mmu.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["run", f"{PROGRAMS}/gups.s", "--json", "--", "18", "1000", "1"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert got["thp"] == "madvise" and got["huge_pages"]["mapped"] == 1  # the program asked (PROT_THP)
    out = runner.invoke(app, ["run", f"{PROGRAMS}/gups.s", "--json", "--thp", "never", "--", "18", "1000", "1"])
    assert json.loads(out.stdout)["huge_pages"]["mapped"] == 0
    out = runner.invoke(app, ["replay", "traces/ls-usr.trace", "--thp", "sometimes"])
    assert out.exit_code == 2
    assert "unknown THP policy 'sometimes'; choose never, madvise or always" in out.output
    assert "Traceback" not in out.output


def test_cli_compare_takes_a_thp_policy_per_mode():
    import json

    from typer.testing import CliRunner

    from mmu.cli import app
    from mmu.report.compare import mode_label

    out = CliRunner().invoke(
        app, ["compare", f"{PROGRAMS}/gups.s", "--modes", "native,native+thp", "--json", "--", "18", "1000"]
    )
    assert out.exit_code == 0, out.output
    plain, huge = json.loads(out.stdout)
    assert (plain["thp"], huge["thp"]) == ("madvise", "always")
    assert plain["huge_pages"]["mapped"] == 0 and huge["huge_pages"]["mapped"] == 1
    assert (mode_label(plain), mode_label(huge)) == ("native", "native (thp always)")
