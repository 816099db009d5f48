"""Nested mode replay: the guest cannot tell it from native (invariant 1); host caches and host
page sizes change costs only; the VMM's exits are the ones nested paging takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmu.engine import Machine, MachineConfig
from mmu.memory import mem_read
from mmu.modes.vmm import vm_hpa
from mmu.trace.format import TraceReader

TRACES = Path(__file__).resolve().parent.parent / "traces"
SHIPPED = sorted(TRACES.glob("*.trace"))
N = 60_000  # records of each shipped trace (the cross-mode checks run every configuration)


def _run(records: np.ndarray, **cfg) -> tuple[Machine, np.ndarray]:
    m = Machine(MachineConfig(**cfg))
    out = np.zeros(len(records), dtype=np.uint64)
    n = m.run(records, out)
    return m, out[:n]


def guest_tables(m: Machine) -> dict[int, int]:
    """Every non-zero guest page-table entry reachable from a process root: {gpa: value}.

    Read as the guest would see its own memory: natively the physical memory, in a VM the
    host page that backs each guest frame.
    """
    nested = m.config.mode != "native"

    def read(gpa: int) -> int:
        pa = int(vm_hpa(m.vm, np.int64(gpa))) if nested else gpa
        return 0 if pa < 0 else int(mem_read(m.mem.state, np.int64(pa)))

    procs, ometa = m.osst.procs, m.osst.ometa
    out: dict[int, int] = {}

    def walk(table: int, level: int) -> None:
        for i in range(512):
            e = read(table + 8 * i)
            if e:
                out[table + 8 * i] = e
                if level > 1 and e & 1 and not (level <= 3 and e & 0x80):
                    walk(e & 0x000F_FFFF_FFFF_F000, level - 1)

    for row in range(int(ometa[1])):
        walk(int(procs[row, 1]), int(ometa[3]))
    return out


def _guest_visible(m: Machine, out: np.ndarray) -> tuple:
    s = m.result()
    faults = (s["guest_page_faults"], s["guest_page_faults_not_present"], s["guest_page_faults_protection"])
    return out.tolist(), faults, s["bad_accesses"], guest_tables(m)


NESTED_CONFIGS = [
    {"mode": "nested"},
    {"mode": "nested", "host_page": "2m", "ept_ad": True},
    {"mode": "nested", "host_page": "1g", "ept_levels": 5},
    {"mode": "nested", "npt": True},
    {"mode": "nested", "ntlb_entries": 0, "host_psc": False},
    {"mode": "nested", "prepopulate_mb": 64},
    {"mode": "nested", "psc": False, "ntlb_entries": 0, "host_psc": False},
]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_guest_cannot_tell_nested_from_native(path):
    records = np.array(TraceReader(path).memmap()[:N])
    m, out = _run(records)
    native = _guest_visible(m, out)
    assert native[1][0] > 0 and len(native[3]) > 0  # the trace exercises faults and tables
    for cfg in NESTED_CONFIGS:
        mn, outn = _run(records, **cfg)
        assert _guest_visible(mn, outn) == native, cfg


def test_host_caches_cut_references_not_results():
    records = np.array(TraceReader(TRACES / "gups-64m.trace").memmap()[:N])
    cold, out_cold = _run(records, mode="nested", ntlb_entries=0, host_psc=False)
    warm, out_warm = _run(records, mode="nested")
    assert np.array_equal(out_cold, out_warm)
    c, w = cold.result(), warm.result()
    assert w["walks"] == c["walks"]
    assert w["mode_stats"]["walk_refs_guest"] == c["mode_stats"]["walk_refs_guest"]
    assert w["mode_stats"]["walk_refs_host"] < c["mode_stats"]["walk_refs_host"]
    assert w["mode_stats"]["ntlb"]["hits"] > 0 and c["mode_stats"]["ntlb"]["hits"] == 0
    assert w["cycles"] < c["cycles"]


def test_host_large_pages_cut_walk_references_and_cycles():
    records = np.array(TraceReader(TRACES / "gups-64m.trace").memmap()[:N])
    small = _run(records, mode="nested", prepopulate_mb=128)[0].result()
    large = _run(records, mode="nested", host_page="2m", prepopulate_mb=128)[0].result()
    assert large["mode_stats"]["walk_refs_host"] < small["mode_stats"]["walk_refs_host"]
    assert large["cycles"] < small["cycles"]
    assert large["mode_stats"]["ept_table_bytes"] < small["mode_stats"]["ept_table_bytes"]


def test_lazy_backing_exits_once_per_host_page():
    records = np.array(TraceReader(TRACES / "ls-usr.trace").memmap()[:N])
    m, _ = _run(records, mode="nested")
    s = m.result()
    backed_pages = int(m.vm.vmeta[8])  # V_BACKED_PAGES
    assert s["exits"]["ept_violation"]["count"] == backed_pages == s["vm_exits"]
    assert s["cycles_breakdown"]["vm_exits"] == s["exits"]["ept_violation"]["cycles"] > 0
    pre = _run(records, mode="nested", prepopulate_mb=64)[0].result()
    assert pre["vm_exits"] == 0


def test_nested_walks_cost_more_than_native_without_caches():
    records = np.array(TraceReader(TRACES / "gups-64m.trace").memmap()[:N])
    native = _run(records)[0].result()
    nested = _run(records, mode="nested", ntlb_entries=0, host_psc=False, prepopulate_mb=128)[0].result()
    assert nested["tlb_misses"] == native["tlb_misses"]
    assert nested["refs_per_walk"] > 3 * native["refs_per_walk"]


def test_nested_is_deterministic():
    records = np.array(TraceReader(TRACES / "gzip.trace").memmap()[:N])
    a = _run(records, mode="nested", host_page="2m")[0].result()
    b = _run(records, mode="nested", host_page="2m")[0].result()
    for k in ("elapsed_s", "accesses_per_s", "compile_s"):
        a.pop(k), b.pop(k)
    assert a == b


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"host_page": "4m"}, "host page size"),
        ({"ept_levels": 3}, "EPT levels"),
        ({"ntlb_entries": -1}, "NTLB"),
        ({"prepopulate_mb": -5}, "prepopulate"),
    ],
)
def test_bad_nested_config(cfg, match):
    from mmu.errors import MMUInputError

    with pytest.raises(MMUInputError, match=match):
        Machine(MachineConfig(mode="nested", **cfg))


def test_every_cache_off_gives_cold_2d_walks():
    """With the guest PSCs, the nested TLB and the host PSCs off, and memory prepopulated, each
    2D walk reads (4+1)(4+1)-1 = 24 entries: the cold figure of Bhargava et al."""
    records = np.array(TraceReader(TRACES / "gups-64m.trace").memmap()[:N])
    s = _run(records, mode="nested", psc=False, ntlb_entries=0, host_psc=False, prepopulate_mb=128)[0].result()
    assert s["walks"] > 1000
    # a guest #PF ends a walk early; every other walk reads all 24 entries
    full = s["walks"] - s["guest_page_faults"]
    short = s["walk_refs"] - 24 * full
    assert 5 * s["guest_page_faults"] <= short < 24 * s["guest_page_faults"]
    native = _run(records, psc=False)[0].result()
    assert native["walk_refs"] - 4 * (native["walks"] - native["guest_page_faults"]) < 4 * native["guest_page_faults"]
