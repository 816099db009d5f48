"""Shadow paging: the guest cannot tell it from native mode (invariant 1), no shadow entry grants
more than the guest's, each KVM refinement can be switched off and shows in the stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmu.engine import Machine, MachineConfig
from mmu.errors import MMUInputError
from mmu.guest.asm import assemble_file
from mmu.guest.run import run_program
from mmu.trace.format import OP_FETCH, OP_READ, OP_WRITE, RECORD_DTYPE, TraceReader
from tests.invariants.shadow import check_shadow
from tests.test_nested_replay import guest_tables

TRACES = Path(__file__).resolve().parent.parent / "traces"
SHIPPED = sorted(TRACES.glob("*.trace"))
N = 60_000  # records of each shipped trace used by the cross-mode checks

SHADOW_CONFIGS = [
    {},
    {"unsync": False},
    {"prefetch": 0},
    {"roots": 0},
    {"flood_threshold": 0},
    {"prefetch": 64, "roots": 11, "flood_threshold": 1},
    {"prefault": True, "unsync": False},
]


def _run(records: np.ndarray, **cfg) -> tuple[Machine, np.ndarray]:
    m = Machine(MachineConfig(**cfg))
    m.log_faults()
    out = np.zeros(len(records), dtype=np.uint64)
    n = m.run(records, out)
    return m, out[:n]


def _visible(m: Machine, out: np.ndarray) -> tuple:
    s = m.result()
    return out.tolist(), m.faults(), s["bad_accesses"], s["spurious_page_faults"], guest_tables(m)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
@pytest.mark.parametrize("pcide", [True, False], ids=["pcid", "no-pcid"])
def test_guest_cannot_tell_shadow_from_native(path, pcide):
    records = np.array(TraceReader(path).memmap()[:N])
    native = _visible(*_run(records, pcide=pcide))
    assert len(native[1]) > 0 and len(native[4]) > 0  # the trace exercises faults and tables
    for cfg in SHADOW_CONFIGS:
        m, out = _run(records, mode="shadow", pcide=pcide, **cfg)
        assert _visible(m, out) == native, cfg
        check_shadow(m)


def test_shadow_stats_schema_and_exit_accounting():
    records = np.array(TraceReader(TRACES / "gzip.trace").memmap()[:N])
    s = _run(records, mode="shadow")[0].result()
    assert s["mode"] == "shadow"
    assert s["vm_exits"] == sum(e["count"] for e in s["exits"].values())
    assert s["cycles_breakdown"]["vm_exits"] == sum(e["cycles"] for e in s["exits"].values())
    # no ad_dirty exit here: the guest kernel maps every page it makes writable dirty already
    # (do_anonymous_page, wp_page_copy); a page first read maps the zero page, read-only
    assert {"hidden_fault", "pf_inject", "cr3_load", "invlpg"} <= set(s["exits"])
    assert "ad_dirty" not in s["exits"]
    for e in s["exits"].values():
        assert e["cycles"] >= e["count"] * 2000  # at least the exit round trip (skylake preset)
    ms = s["mode_stats"]
    assert ms["shadow_pages"]["live"] == ms["shadow_pages"]["created"] - ms["shadow_pages"]["zapped"] > 0
    assert ms["shadow_table_bytes"] == 4096 * ms["shadow_pages"]["live"] == s["vmm_memory_bytes"]
    assert s["exits"]["pf_inject"]["count"] == s["guest_page_faults"]


def test_shadow_walks_are_as_short_as_native():
    """A TLB-miss-heavy trace: shadow walks read one entry per level, like native ones."""
    records = np.array(TraceReader(TRACES / "gups-64m.trace").memmap()[:N])
    native = _run(records)[0].result()
    shadow = _run(records, mode="shadow")[0].result()
    assert abs(shadow["refs_per_walk"] - native["refs_per_walk"]) < 0.1
    nested = _run(records, mode="nested", prepopulate_mb=128, ntlb_entries=0, host_psc=False)[0].result()
    assert nested["refs_per_walk"] > 3 * shadow["refs_per_walk"]


# --- the refinements, each switched off ---------------------------------------------------------


def _one(m: Machine, va: int, op: int = OP_READ, pid: int = 1) -> int:
    rec = np.zeros(1, dtype=RECORD_DTYPE)
    rec[0] = (va, 8, pid, op, 0)
    out = np.zeros(1, dtype=np.uint64)
    m.run(rec, out)
    return int(out[0])


def _pt_heavy(pages: int = 600, procs: int = 6, rounds: int = 3) -> np.ndarray:
    """Several processes, each touching fresh pages between context switches: every first touch
    is a demand fault whose PTE store hits a shadowed leaf table."""
    recs = []
    for r in range(rounds):
        for p in range(procs):
            base = 0x10_0000_0000 + p * (1 << 30)
            for k in range(r * pages // rounds, (r + 1) * pages // rounds):
                recs.append((base + k * 4096, 8, p + 1, OP_WRITE))
                recs.append((base + k * 4096 + 64, 8, p + 1, OP_READ))
    a = np.zeros(len(recs), dtype=RECORD_DTYPE)
    for i, (addr, size, pid, op) in enumerate(recs):
        a[i] = (addr, size, pid, op, 0)
    return a


def test_unsync_turns_tracing_writes_into_unsync_exits():
    recs = _pt_heavy()
    on = _run(recs, mode="shadow", pcide=True)[0].result()
    off = _run(recs, mode="shadow", pcide=True, unsync=False)[0].result()
    assert on["mode_stats"]["shadow_pages"]["unsynced"] > 0
    assert off["mode_stats"]["shadow_pages"]["unsynced"] == 0
    assert off["exits"]["tracing_write"]["count"] > 10 * on["exits"].get("tracing_write", {"count": 1})["count"]
    assert off["vm_exits"] > on["vm_exits"]


def test_unsync_pages_are_resynced_at_flushing_cr3_loads():
    recs = _pt_heavy()
    s = _run(recs, mode="shadow", pcide=False)[0].result()
    assert s["mode_stats"]["shadow_pages"]["resynced"] > 0
    # a resync compares the present entries only (kvm_sync_spte skips empty ones)
    assert 0 < s["mode_stats"]["resync_entries"] < 512 * s["mode_stats"]["shadow_pages"]["resynced"]
    # with PCIDs only a process's first CR3 load flushes; a root-cache miss resyncs anyway
    # (kvm_mmu_load -> kvm_mmu_sync_roots), so with 6 processes and 3 previous roots every
    # switch resyncs as without PCIDs, and with 7 previous roots the switches hit and do not
    pcid = _run(recs, mode="shadow", pcide=True)[0].result()
    assert pcid["mode_stats"]["shadow_pages"]["resynced"] == s["mode_stats"]["shadow_pages"]["resynced"]
    big = _run(recs, mode="shadow", pcide=True, roots=7)[0].result()
    assert big["mode_stats"]["root_cache"]["misses"] == 6
    assert big["mode_stats"]["shadow_pages"]["resynced"] < s["mode_stats"]["shadow_pages"]["resynced"]


def test_a_flushing_cr3_load_resyncs_only_pages_below_the_new_root():
    # KVM's kvm_mmu_sync_roots: unsync pages of another process's tables stay unsync
    m = Machine(MachineConfig(mode="shadow", pcide=True))
    base = 0x10_0000_0000
    _one(m, base, OP_WRITE)  # process 1: its leaf table gets shadowed
    _one(m, base + 4096, OP_WRITE)  # the demand fault's PTE store: the leaf page goes unsync
    resynced = lambda: m.result()["mode_stats"]["shadow_pages"]["resynced"]  # noqa: E731
    assert m.result()["mode_stats"]["shadow_pages"]["unsynced"] == 1 and resynced() == 0
    _one(m, base, OP_READ, pid=2)  # process 2's first CR3 load flushes: 1's page is not below it
    assert resynced() == 0
    check_shadow(m, include_unsync=True)
    _one(m, base + 4096, OP_READ, pid=1)  # back to 1 with the PCID kept: no flush, no resync
    assert resynced() == 0
    m.flush_tlb()  # a flushing load of 1's own root
    assert resynced() == 1
    check_shadow(m, include_unsync=True)


def test_shadow_page_cap_reclaims_the_oldest_pages():
    # 200 leaf tables (one per 2 MiB region), touched twice: under a 64-page cap the VMM zaps
    # the oldest shadow pages and refills them on the second pass; the guest sees no difference
    rows = [
        (0x10_0000_0000 + k * (1 << 21) + 64 * p, 8, 1, OP_READ if p else OP_WRITE) for p in (0, 1) for k in range(200)
    ]
    recs = np.zeros(len(rows), dtype=RECORD_DTYPE)
    for i, (addr, size, pid, op) in enumerate(rows):
        recs[i] = (addr, size, pid, op, 0)
    native, nout = _run(recs, mode="native")
    capped, cout = _run(recs, mode="shadow", shadow_pages=64)
    free, _ = _run(recs, mode="shadow")
    assert _visible(native, nout) == _visible(capped, cout)
    c, f = capped.result(), free.result()
    sp = c["mode_stats"]["shadow_pages"]
    assert sp["peak"] <= 64 < f["mode_stats"]["shadow_pages"]["peak"]
    assert sp["reclaimed"] > 0 and f["mode_stats"]["shadow_pages"]["reclaimed"] == 0
    assert c["mode_stats"]["policy"]["max_pages"] == 64
    assert c["exits"]["hidden_fault"]["count"] > f["exits"]["hidden_fault"]["count"]
    check_shadow(capped)


def test_shadow_page_cap_below_kvms_minimum_is_refused():
    with pytest.raises(MMUInputError, match="at least 64"):
        Machine(MachineConfig(mode="shadow", shadow_pages=10))


def test_root_cache_hits_and_misses():
    recs = _pt_heavy(pages=60, procs=3, rounds=4)
    three = _run(recs, mode="shadow")[0].result()["mode_stats"]["root_cache"]
    none = _run(recs, mode="shadow", roots=0)[0].result()["mode_stats"]["root_cache"]
    assert three["misses"] == 3 and three["hits"] == 3 * 4 - 3
    assert none["hits"] == 0 and none["misses"] == 12
    six = _run(_pt_heavy(pages=60, procs=6, rounds=2), mode="shadow")[0].result()
    assert six["mode_stats"]["root_cache"]["misses"] == 12  # 6 processes cycle through 4 roots
    assert six["mode_stats"]["vmm_tlb_flushes"] >= 12


def test_prefetch_fills_neighbours_of_accessed_entries():
    """The guest installs accessed PTEs for 8 neighbouring pages at once (as fork's copies or a
    fault-around would); the first access fills its entry and prefetches the other 7."""
    results = {}
    for prefetch in (8, 0):
        m = Machine(MachineConfig(mode="shadow", prefetch=prefetch))
        frames = [_one(m, 0x7000_0000 + k * 4096) >> 12 for k in range(8)]  # backed data frames
        _one(m, 0x40_0000)  # builds the page table of 0x400000..0x5fffff
        pte0 = _leaf_pte(m, 0, 0x40_0000)
        for k in range(1, 8):
            m.guest_store(pte0 + 8 * k, (frames[k] << 12) | 0x67)  # P, RW, US, A, D
        before = m.result()["exits"]["hidden_fault"]["count"]
        got = [_one(m, 0x40_0000 + k * 4096) >> 12 for k in range(1, 8)]
        assert got == frames[1:]
        s = m.result()
        results[prefetch] = (s["exits"]["hidden_fault"]["count"] - before, s["mode_stats"]["prefetched_sptes"])
        check_shadow(m)
    assert results[8] == (1, 6)
    assert results[0] == (7, 0)


def test_write_flooding_zaps_upper_level_shadow_pages():
    # One process; repeatedly store to its page directory without a walk in between
    # (detect_write_flooding: the third emulated write zaps the page).
    m = Machine(MachineConfig(mode="shadow"))
    a = np.zeros(1, dtype=RECORD_DTYPE)
    a[0] = (0x40_0000, 8, 1, OP_READ, 0)
    m.run(a)
    pd = _pde(m, 0, 0x40_0000) & ~0xFFF
    tracing = m.result()["exits"].get("tracing_write", {"count": 0})["count"]
    for k in range(3):
        m.guest_store(pd + 8 * (100 + k), 0)
    s = m.result()
    assert s["mode_stats"]["shadow_pages"]["flooded"] == 1
    assert s["exits"]["tracing_write"]["count"] == tracing + 3
    m.run(a)  # the page directory is shadowed again; the guest still sees its mapping
    check_shadow(m)
    # the current root is on the path of every write-protection fault, which clears its count
    # (shadow_page_table_clear_flood): stores to the current PML4 are never flooded
    root = int(m.osst.procs[0, 1])
    for k in range(3):
        m.guest_store(root + 8 * (100 + k), 0)
    s = m.result()
    assert s["mode_stats"]["shadow_pages"]["flooded"] == 1
    assert s["exits"]["tracing_write"]["count"] == tracing + 6
    off = Machine(MachineConfig(mode="shadow", flood_threshold=0))
    off.run(a)
    pd = _pde(off, 0, 0x40_0000) & ~0xFFF
    for k in range(10):
        off.guest_store(pd + 8 * (100 + k), 0)
    assert off.result()["mode_stats"]["shadow_pages"]["flooded"] == 0


# --- guest page-table edits: hypothesis sequences vs native ------------------------------------

VAS = (
    [0x40_0000 + k * 0x1000 for k in range(6)]
    + [0x7F00_0000_0000 + k * 0x1000 for k in range(3)]
    + [0x4000_0000 + k * 0x20_0000 for k in range(3)]
)
LEAF_BITS = [0x7, 0x5, 0x27, 0x67, 0x3, 0x0, 0x7 | (1 << 63), 0x65, 0x1]


def _leaf_pte(m: Machine, row: int, va: int) -> int | None:
    """Guest-physical address of the PTE mapping ``va`` in process ``row`` (4 KiB pages only)."""
    table = int(m.osst.procs[row, 1])
    for level in (4, 3, 2):
        e = m.read_guest(table + 8 * ((va >> (12 + 9 * (level - 1))) & 511))
        if not e & 1 or (level <= 3 and e & 0x80):
            return None
        table = e & 0x000F_FFFF_FFFF_F000
    return table + 8 * ((va >> 12) & 511)


def _pde(m: Machine, row: int, va: int) -> int | None:
    table = int(m.osst.procs[row, 1])
    for level in (4, 3):
        e = m.read_guest(table + 8 * ((va >> (12 + 9 * (level - 1))) & 511))
        if not e & 1:
            return None
        table = e & 0x000F_FFFF_FFFF_F000
    return table + 8 * ((va >> 21) & 511)


op_strategy = st.one_of(
    st.tuples(st.just("acc"), st.integers(1, 3), st.integers(0, len(VAS) - 1), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("edit"), st.integers(0, len(VAS) - 1), st.integers(0, len(LEAF_BITS) - 1), st.integers(0, 31)),
    st.tuples(st.just("invlpg"), st.integers(0, len(VAS) - 1), st.just(0), st.just(0)),
)
upper_strategy = st.tuples(st.just("upper"), st.integers(0, len(VAS) - 1), st.integers(0, 4), st.integers(0, 1))


def _drive(ops, shadow_cfg, upper: bool) -> dict:
    """Apply ``ops`` to a native and a shadow guest; the guest must see the same at every step.

    Returns the shadow machine's stats."""
    pcide = not upper
    native = Machine(MachineConfig(pcide=pcide))
    shadow = Machine(MachineConfig(mode="shadow", pcide=pcide, **shadow_cfg))
    machines = (native, shadow)
    for m in machines:
        m.log_faults()
    frames: list[int] = []  # data frames the guest has mapped (edits may point PTEs at them)
    rec = np.zeros(1, dtype=RECORD_DTYPE)
    out = np.zeros(1, dtype=np.uint64)
    for kind, a, b, c in ops:
        if kind == "acc":
            rec[0] = (VAS[b] + 8 * c, 8, a, (OP_READ, OP_WRITE, OP_FETCH)[c], 0)
            seen = []
            for m in machines:
                m.run(rec, out)
                seen.append(int(out[0]))
            assert seen[0] == seen[1], (kind, a, b, c)
            if seen[0] != 2**64 - 1:
                frames.append(seen[0] >> 12)
            continue
        row = int(native.osst.ometa[0])
        if row < 0:
            continue
        if kind == "edit":
            pte = _leaf_pte(native, row, VAS[a])
            if pte is None or not frames:
                continue
            value = (frames[c % len(frames)] << 12) | LEAF_BITS[b]
            for m in machines:
                m.guest_store(pte, value)
                if not upper:
                    m.invlpg(VAS[a])
                else:
                    m.flush_tlb()
        elif kind == "invlpg":
            for m in machines:
                m.invlpg(VAS[a])
        elif kind == "upper":
            pde = _pde(native, row, VAS[a])
            if pde is None:
                continue
            others = [_pde(native, row, v) for v in VAS]
            tables = [native.read_guest(p) for p in others if p is not None and native.read_guest(p) & 1]
            if b == 4:
                # a 2 MiB guest page: over frames in use (page tables among them), or beyond them
                value = ((REGION if c else 0) << 12) | 0xE7
            else:
                value = 0 if b == 0 or not tables else tables[b % len(tables)]
            for m in machines:
                m.guest_store(pde, value)
                m.flush_tlb()
            check_shadow(shadow, include_unsync=True)
        check_shadow(shadow)
    assert native.faults() == shadow.faults()
    assert guest_tables(native) == guest_tables(shadow)
    ns, ss = native.result(), shadow.result()
    assert ns["bad_accesses"] == ss["bad_accesses"]
    return ss


def _cfg_id(cfg: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in cfg.items()) or "kvm"


@pytest.mark.parametrize("shadow_cfg", SHADOW_CONFIGS[:4] + SHADOW_CONFIGS[-1:], ids=_cfg_id)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_strategy, min_size=5, max_size=60))
def test_pte_edits_with_invlpg_match_native(shadow_cfg, ops):
    _drive(ops, shadow_cfg, upper=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(st.one_of(op_strategy, upper_strategy), min_size=5, max_size=60),
    unsync=st.booleans(),
    host_page=st.sampled_from(["4k", "2m"]),
)
def test_upper_level_edits_with_flush_match_native(ops, unsync, host_page):
    """PDE edits (other tables, not present, 2 MiB pages) flushed by a CR3 reload, on 4 KiB or
    2 MiB host pages: large shadow entries appear only where no guest table lies."""
    _drive(ops, {"unsync": unsync, "host_page": host_page}, upper=True)


def test_edit_sequences_exercise_the_shadow_mmu():
    """A fixed random sequence: the edits trap, unsync, resync and zap as they should."""
    import random

    rng = random.Random(7)
    ops = []
    for _ in range(400):
        kind = rng.choice(["acc", "acc", "acc", "edit", "invlpg", "upper"])
        if kind == "acc":
            ops.append(("acc", rng.randint(1, 3), rng.randrange(len(VAS)), rng.choice([0, 1, 2])))
        elif kind == "edit":
            ops.append(("edit", rng.randrange(len(VAS)), rng.randrange(len(LEAF_BITS)), rng.randrange(32)))
        elif kind == "invlpg":
            ops.append(("invlpg", rng.randrange(len(VAS)), 0, 0))
        else:
            ops.append(("upper", rng.randrange(len(VAS)), rng.randrange(4), 0))
    s = _drive([o for o in ops if o[0] != "upper"], {}, upper=False)
    assert {"invlpg", "wp_unsync", "hidden_fault", "pf_inject"} <= set(s["exits"])
    assert s["mode_stats"]["shadow_pages"]["unsynced"] > 0
    s = _drive(ops, {"unsync": False}, upper=True)
    assert {"tracing_write", "cr3_load"} <= set(s["exits"])
    assert s["mode_stats"]["shadow_pages"]["zapped"] > 0 or s["mode_stats"]["vmm_tlb_flushes"] > 0


# --- stale translations: what the guest sees without INVLPG -------------------------------------


@pytest.mark.parametrize("unsync", [True, False])
def test_edit_without_invlpg_sees_old_or_new_frame(unsync):
    """x86 lets a TLB keep a translation until INVLPG: a guest that skips it may see the old frame
    or the new one. Shadow paging with an unsync leaf table keeps the old one until the guest's
    INVLPG; with write-tracked tables the VMM zaps the entry at the store, so the new one shows."""
    va, other = 0x40_0000, 0x40_1000
    results = {}
    for mode in ("native", "shadow"):
        m = Machine(MachineConfig(mode=mode, unsync=unsync))
        old = _one(m, va) >> 12
        new = _one(m, other) >> 12
        pte = _leaf_pte(m, 0, va)
        m.guest_store(pte, (new << 12) | 0x67)
        stale = _one(m, va) >> 12
        assert stale in (old, new)
        m.invlpg(va)
        assert _one(m, va) >> 12 == new  # after INVLPG every mode sees the new frame
        results[mode] = (old, new, stale)
    old, new, _ = results["native"]
    assert results["native"][2] == old  # the native TLB still held it
    assert results["shadow"][2] == (old if unsync else new)


def test_shadow_flags_are_checked():
    for cfg, match in (
        ({"prefetch": 3}, "power of two"),
        ({"roots": 12}, "0..11"),
        ({"flood_threshold": -1}, "flood"),
        ({"host_page": "4m"}, "host page size"),
    ):
        with pytest.raises(MMUInputError, match=match):
            Machine(MachineConfig(mode="shadow", **cfg))


# --- guest large pages and the large-page coupling -------------------------------------------------

BIG = 0x2_0000_0000  # a 2 MiB guest page's virtual address (PDE index 0 of its own PD)
REGION = 64 * 512  # guest frame of the 2 MiB region it maps (128 MiB), beyond the frames in use


def _map_large(m: Machine, va: int, gfn: int, bits: int = 0xE7) -> int:
    """The guest maps ``va`` with a 2 MiB page at guest frame ``gfn`` (P, RW, US, A, D, PS);
    returns the PDE's address."""
    _one(m, va + (1 << 21))  # builds the PML4E/PDPTE/PD on the way (demand fault next door)
    pde = _pde(m, 0, va)
    m.guest_store(pde, (gfn << 12) | bits)
    m.invlpg(va)
    return pde


@pytest.mark.parametrize("host_page", ["4k", "2m"])
def test_guest_large_page_gets_a_large_shadow_entry_when_the_host_page_allows(host_page):
    vas = [BIG + k * 0x1_1000 for k in range(20)]
    seen = {}
    for mode in ("native", "shadow"):
        m = Machine(MachineConfig(mode=mode, host_page=host_page))
        _map_large(m, BIG, REGION)
        seen[mode] = [_one(m, v, OP_WRITE) for v in vas]
        if mode == "shadow":
            s = m.result()["mode_stats"]
            check_shadow(m)
            if host_page == "2m":
                assert s["large_sptes"] == 1 and s["large_sptes_refused"] == 0
                assert m.result()["walks"] < 20
            else:
                assert s["large_sptes"] == 0  # split by a direct shadow page into 4 KiB entries
    assert seen["native"] == seen["shadow"] == [(REGION << 12) + (v - BIG) for v in vas]


def test_a_guest_table_inside_a_large_region_forces_4k_shadow_entries():
    """KVM's large-page coupling: once a frame in the 2 MiB region holds a shadowed guest page
    table, the large shadow entry is write-protected (kvm_mmu_slot_gfn_write_protect, 4K..1G):
    reads through it take no exit; the first write faults and splits it into 4 KiB entries."""
    native = Machine(MachineConfig())
    shadow = Machine(MachineConfig(mode="shadow", host_page="2m"))
    out = {}
    for m in (native, shadow):
        _map_large(m, BIG, REGION)
        first = _one(m, BIG + 0x5000)
        # the guest makes frame REGION + 7 (inside the large page) the page table of another range
        pde = _pde(m, 0, 0x4000_0000) if _pde(m, 0, 0x4000_0000) else None
        _one(m, 0x4000_0000)
        pde = _pde(m, 0, 0x4000_0000)
        m.guest_store((REGION + 7) << 12, (m.read_guest(_leaf_pte(m, 0, 0x4000_0000)) & ~0xFFF) | 0x67)
        m.guest_store(pde, ((REGION + 7) << 12) | 0x67)
        m.flush_tlb()
        via_table = _one(m, 0x4000_0000)  # walks through the new table: it gets shadowed
        exits = m.result()["vm_exits"]
        again = [_one(m, BIG + k * 0x3000) for k in range(8)]
        reads = m.result()["vm_exits"] - exits
        wrote = _one(m, BIG + 0x9000, OP_WRITE)
        writes = m.result()["vm_exits"] - exits - reads
        out[m.config.mode] = (first, via_table, again, wrote)
        if m is shadow:
            assert (reads, writes) == (0, 1)
    assert out["native"] == out["shadow"]
    s = shadow.result()["mode_stats"]
    assert s["large_sptes"] == 1 and s["large_sptes_refused"] == 1
    check_shadow(shadow, include_unsync=True)


def test_prefault_removes_the_hidden_fault_after_each_guest_fault():
    """PVM's prefault (SOSP 2023): the VMM fills the shadow entry as the guest returns from a
    reflected #PF, so a demand fault costs one exit (pf_inject), not two. On pfstorm, hidden
    faults per guest page fault fall from above 1 to about 0; the guest sees the same."""
    prog = assemble_file(TRACES / "programs" / "pfstorm.s")
    runs = {pf: run_program(prog, [64, 4], MachineConfig(mode="shadow", prefault=pf)) for pf in (False, True)}
    off, on = runs[False], runs[True]
    assert on["console"] == off["console"] and on["guest_page_faults"] == off["guest_page_faults"] > 200
    faults = on["guest_page_faults"]
    assert off["exits"]["hidden_fault"]["count"] > faults
    assert on["exits"]["hidden_fault"]["count"] < 0.3 * faults  # first touches that never fault in the guest
    assert on["mode_stats"]["prefaulted"] == faults == on["exits"]["pf_inject"]["count"]
    assert on["mode_stats"]["policy"]["prefault"] and not off["mode_stats"]["policy"]["prefault"]
    assert on["cycles"] < off["cycles"]


# --- the command line ------------------------------------------------------------------------------


def test_cli_replay_shadow_with_policy_flags():
    import json

    from tests.test_cli_replay import REQUIRED, run

    r = run("replay", TRACES / "gzip.trace", "--mode", "shadow", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert REQUIRED <= set(s) and s["mode"] == "shadow"
    assert s["mode_stats"]["policy"] == {
        "unsync": True,
        "prefetch": 8,
        "roots": 3,
        "flood_threshold": 3,
        "max_pages": 0,
        "prefault": False,
    }
    r = run(
        "replay", TRACES / "gzip.trace", "--mode", "shadow", "--json", "--no-unsync", "--prefetch", "0",
        "--roots", "0", "--flood-threshold", "0", "--prefault",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)
    assert t["mode_stats"]["policy"] == {
        "unsync": False,
        "prefetch": 0,
        "roots": 0,
        "flood_threshold": 0,
        "max_pages": 0,
        "prefault": True,
    }
    assert t["mode_stats"]["prefaulted"] > 0 == s["mode_stats"]["prefaulted"]
    assert t["mode_stats"]["shadow_pages"]["unsynced"] == 0 < s["mode_stats"]["shadow_pages"]["unsynced"]
    assert t["exits"]["tracing_write"]["count"] > s["exits"]["tracing_write"]["count"]
    r = run("replay", TRACES / "gzip.trace", "--mode", "shadow")
    assert r.exit_code == 0 and "Shadow MMU" in r.stdout and "shadow pages" in r.stdout
    r = run("replay", TRACES / "gzip.trace", "--mode", "shadow", "--shadow-pages", "64", "--json")
    capped = json.loads(r.stdout)["mode_stats"]
    assert capped["policy"]["max_pages"] == 64 and capped["shadow_pages"]["peak"] <= 64


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--prefetch", "5"], "power of two"),
        (["--roots", "99"], "0..11"),
        (["--host-page", "8k"], "host page size"),
        (["--shadow-pages", "10"], "at least 64"),
    ],
)
def test_cli_shadow_bad_flags_fail_cleanly(args, fragment):
    from clicheck import assert_clean_failure, run

    assert_clean_failure(run("replay", TRACES / "gzip.trace", "--mode", "shadow", *args), fragment)


def test_cli_compare_defaults_to_all_three_modes():
    import json

    from clicheck import run

    r = run("compare", TRACES / "gzip.trace", "--json", "-q")
    assert r.exit_code == 0, r.output
    assert [s["mode"] for s in json.loads(r.stdout)] == ["native", "shadow", "nested"]
    r = run("compare", TRACES / "gzip.trace", "-q", "--host-page", "2m")
    assert r.exit_code == 0, r.output
    assert "shadow pages live/created" in r.stdout and "ept 2m" in r.stdout.replace("\n", " ")
