"""One stats schema for every mode.

Kernels count into one ``int64[N_STATS]`` array indexed by the ``S_*`` constants;
:func:`stats_dict` turns it (plus the hardware structures' own counters) into the
JSON object ``mmu replay --json`` prints. Keys present in every mode:

``mode, accesses, cycles, tlb_misses, walks, walk_refs, guest_page_faults,
vm_exits, exits, elapsed_s`` plus per-level TLB and PSC hit counts.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mmu.errors import MMUInputError

S_ACCESSES = 0  # access records replayed
S_READS = 1
S_WRITES = 2
S_FETCHES = 3
S_TRANSLATIONS = 4  # page translations (an access that crosses a page needs two)
S_TLB_L1_HITS = 6
S_TLB_L2_HITS = 7
S_TLB_MISSES = 8
S_WALKS = 9  # hardware page walks (TLB misses, plus re-walks to set D)
S_WALK_REFS = 10  # paging-structure entries read by hardware walks
S_REF_L2_HITS = 11
S_REF_LLC_HITS = 12
S_REF_DRAM = 13
S_GUEST_PF = 14  # #PF delivered to the guest kernel
S_GUEST_PF_NOT_PRESENT = 15
S_GUEST_PF_PROTECTION = 16
S_SPURIOUS_PF = 17  # #PF from a stale TLB entry; the PTE already allowed the access
S_BAD_ACCESSES = 18  # accesses the guest kernel could not satisfy (non-canonical, kernel range)
S_PT_FRAMES = 19  # page-table frames the guest kernel allocated
S_DATA_FRAMES = 20  # data frames the guest kernel allocated
S_PROCESSES = 21
S_CR3_LOADS = 22
S_DIRTY_REWALKS = 23  # writes through a TLB entry with D=0 (re-walk to set D)
S_SPLIT = 24  # accesses that cross a 4 KiB boundary
S_EVENTS = 29  # OS event records (switch, mmap, ...)
S_VM_EXITS = 30
# slots 5, 25-28 and 31 held cycle totals; cycles are now priced after the run (price())
S_EXIT_BASE = 32  # S_EXIT_BASE + reason: exits by reason
N_EXIT_REASONS = 16
S_MODE_BASE = S_EXIT_BASE + N_EXIT_REASONS  # mode-specific counters
N_MODE_STATS = 32
S_OS_BASE = S_MODE_BASE + N_MODE_STATS  # guest OS counters beyond the frame counts
S_THP_MAPPED = S_OS_BASE + 0  # 2 MiB pages the guest kernel mapped (transparent huge pages)
S_THP_FALLBACKS = S_OS_BASE + 1  # huge-page faults that found no free aligned block (mapped 4 KiB)
S_THP_SPLITS = S_OS_BASE + 2  # huge mappings split into 512 entries (partial munmap, shared COW)
S_PT_FREED = S_OS_BASE + 3  # page-table frames freed by munmap (exit frees the rest)
S_ZERO_PAGE_MAPS = S_OS_BASE + 4  # read faults that mapped the shared zero page (do_anonymous_page)
S_ZERO_HUGE_MAPS = S_OS_BASE + 5  # read faults that mapped the huge zero page (do_huge_pmd_anonymous_page)
S_ZERO_PAGE_COW = S_OS_BASE + 6  # write faults on a zero-page mapping: a fresh zeroed frame (wp_page_copy)
N_OS_STATS = 8
# Handler work whose amount varies per exit (a resync compares N entries, a fill allocates
# shadow pages ...), counted in units by exit reason: S_WORK_BASE + reason * N_WORK + U_*.
# Kernels count units only; cycles are units times the cost parameter of the same name, so a
# run can be re-priced under other costs without running it again (:func:`price`).
S_WORK_BASE = S_OS_BASE + N_OS_STATS
U_SW_WALK_STEP = 0  # a guest or shadow entry the VMM reads walking in software
U_SP_ALLOC = 1  # a shadow page allocated, zeroed and hashed
U_SPTE_WRITE = 2  # a shadow entry written or zapped, with its reverse map
U_SYNC_ENTRY = 3  # a guest entry compared with its shadow during a resync
U_VMM_FLUSH = 4  # a VM-wide TLB flush the VMM requests
N_WORK = 8
WORK_NAMES: dict[int, str] = {  # each is also the name of the cost parameter that prices it
    U_SW_WALK_STEP: "sw_walk_step",
    U_SP_ALLOC: "sp_alloc",
    U_SPTE_WRITE: "spte_write",
    U_SYNC_ENTRY: "sync_entry",
    U_VMM_FLUSH: "vmm_flush",
}
N_STATS = S_WORK_BASE + N_EXIT_REASONS * N_WORK
# nested mode
S_WALK_REFS_GUEST = S_MODE_BASE + 0  # guest-dimension entries read by 2D walks
S_WALK_REFS_HOST = S_MODE_BASE + 1  # host-dimension (EPT/NPT) entries read by 2D walks

# shadow mode
S_SH_CREATED = S_MODE_BASE + 2  # shadow pages created
S_SH_ZAPPED = S_MODE_BASE + 3  # shadow pages zapped (unshadowed)
S_SH_UNSYNCED = S_MODE_BASE + 4  # shadow pages made unsync
S_SH_RESYNCED = S_MODE_BASE + 5  # unsync shadow pages resynchronised (whole pages)
S_SH_SYNC_ENTRIES = S_MODE_BASE + 6  # guest entries compared while resynchronising
S_SH_PREFETCHED = S_MODE_BASE + 7  # shadow entries filled by prefetch
S_SH_FLOODED = S_MODE_BASE + 8  # shadow pages zapped by write-flooding detection
S_SH_ROOT_HITS = S_MODE_BASE + 9  # CR3 loads whose shadow root was in the root cache
S_SH_ROOT_MISSES = S_MODE_BASE + 10
S_SH_VMM_FLUSHES = S_MODE_BASE + 11  # VM-wide TLB/PSC flushes the VMM issued
S_SH_LIVE = S_MODE_BASE + 12  # shadow pages live now
S_SH_PEAK = S_MODE_BASE + 13
S_SH_SW_WALK_STEPS = S_MODE_BASE + 14  # guest/shadow entries the VMM read walking in software
S_SH_SPTE_WRITES = S_MODE_BASE + 15  # shadow entries written or zapped
S_SH_EMULATED = S_MODE_BASE + 16  # emulated writes to write-tracked guest tables
S_SH_WP_SPTES = S_MODE_BASE + 17  # shadow entries made read-only to write-protect a frame
S_SH_LARGE_SPTES = S_MODE_BASE + 18  # large (2M/1G) shadow entries installed
S_SH_LPAGE_REFUSED = S_MODE_BASE + 19  # large shadow entries refused: a guest table lies in the region
S_SH_RECLAIMED = S_MODE_BASE + 20  # shadow pages zapped to stay under the cap (n_max_mmu_pages)
S_SH_PREFAULTS = S_MODE_BASE + 21  # shadow fills done when the guest returned from a reflected #PF (--prefault)

# Exit reasons (index into S_EXIT_BASE..): one list for every mode that exits.
EXIT_EPT_VIOLATION = 0  # nested: a guest frame's first touch; the VMM backs it
EXIT_EPT_MISCONFIG = 1
EXIT_HIDDEN_FAULT = 2  # shadow: the guest maps it, the shadow did not: fill and resume
EXIT_TRACING_WRITE = 3  # shadow: a write to a write-tracked guest table, emulated
EXIT_CR3_LOAD = 4  # shadow: MOV CR3 traps; root-cache lookup (and resync on a flushing load)
EXIT_INVLPG = 5  # shadow: INVLPG traps; resync the entry, INVVPID the address
EXIT_PF_INJECT = 6  # shadow: a true guest fault, reflected into the guest as #PF
EXIT_AD_DIRTY = 7  # shadow: first write to a clean page; the VMM sets the guest's D
EXIT_WP_UNSYNC = 8  # shadow: a store to a write-protected leaf table, which goes unsync
EXIT_CR3_READ = 9  # shadow: MOV from CR3 traps (CR3-store exiting is on without EPT)
EXIT_UNPROTECT_RETRY = 10  # shadow: a non-page-table instruction (rep stos) hit a tracked frame: unshadow it, retry
EXIT_REASONS: dict[int, str] = {
    EXIT_EPT_VIOLATION: "ept_violation",
    EXIT_EPT_MISCONFIG: "ept_misconfig",
    EXIT_HIDDEN_FAULT: "hidden_fault",
    EXIT_TRACING_WRITE: "tracing_write",
    EXIT_CR3_LOAD: "cr3_load",
    EXIT_INVLPG: "invlpg",
    EXIT_PF_INJECT: "pf_inject",
    EXIT_AD_DIRTY: "ad_dirty",
    EXIT_WP_UNSYNC: "wp_unsync",
    EXIT_CR3_READ: "cr3_read",
    EXIT_UNPROTECT_RETRY: "unprotect_retry",
}


def new_stats() -> np.ndarray:
    """A zeroed stats array."""
    return np.zeros(N_STATS, dtype=np.int64)


# The cost parameter of each exit reason's fixed handler work (beyond the exit round trip).
EXIT_HANDLER_COST: dict[str, str] = {
    "ept_violation": "ept_fault",
    "hidden_fault": "shadow_fault",
    "tracing_write": "emulate",
    "cr3_load": "cr3_exit",
    "invlpg": "invlpg_exit",
    "pf_inject": "pf_inject",
    "ad_dirty": "shadow_fault",
    "wp_unsync": "shadow_fault",
    "cr3_read": "cr3_read_exit",
    "unprotect_retry": "shadow_fault",
}


def with_tlb_hits(stats: np.ndarray, l1_hits: int, l2_hits: int) -> np.ndarray:
    """A copy of ``stats`` with the TLB hit counts (kept by the TLB itself) and translations filled."""
    s = stats.copy()
    s[S_TLB_L1_HITS] = l1_hits
    s[S_TLB_L2_HITS] = l2_hits
    s[S_TRANSLATIONS] = l1_hits + l2_hits + int(s[S_TLB_MISSES])
    return s


def price(result: dict[str, Any], cost: dict[str, int]) -> dict[str, Any]:
    """Fill every cycle field of the stats object ``result`` (in place, and return it) from its
    event counts and the cost parameters ``cost`` (by name, :func:`mmu.hw.cost.cost_dict`).

    Kernels count events only; cycles are a linear function of the counts (docs/cost-model.md):
    ``cycles = base*accesses + tlb + walk + guest #PF + exits``. An exit costs the round trip
    plus its reason's fixed handler work (:data:`EXIT_HANDLER_COST`) plus the variable work the
    kernels counted in units (``exits.<reason>.work``, each unit priced by the cost parameter of
    the same name). Nothing else enters, so a run is re-priced exactly by calling this again.
    """
    c = cost
    tlb = result["tlb_l1_hits"] * c["tlb_l1"] + (result["tlb_l2_hits"] + result["tlb_misses"]) * c["tlb_l2"]
    src = result["walk_ref_sources"]
    walk = src["l2"] * c["ref_l2"] + src["llc"] * c["ref_llc"] + src["dram"] * c["ref_dram"]
    pf = result["guest_page_faults"] * c["guest_pf"]
    total_exit = 0
    for name, e in result["exits"].items():
        fixed = c["exit"] + (c[EXIT_HANDLER_COST[name]] if name in EXIT_HANDLER_COST else 0)
        e["cycles"] = e["count"] * fixed + sum(units * c[w] for w, units in e["work"].items())
        total_exit += e["cycles"]
    translation = tlb + walk + pf + total_exit
    base = result["accesses"] * c["base"]
    acc = result["accesses"]
    result["cycles"] = base + translation
    result["cycles_per_access"] = round(result["cycles"] / acc, 4) if acc else 0.0
    result["translation_cycles"] = translation
    result["cycles_breakdown"] = {
        "base": base,
        "tlb": tlb,
        "walk": walk,
        "guest_page_faults": pf,
        "vm_exits": total_exit,
    }
    return result


def _per_1000(x: int, n: int) -> float:
    return round(1000.0 * x / n, 3) if n else 0.0


def stats_dict(
    mode: str,
    stats: np.ndarray,
    *,
    elapsed_s: float,
    tlb_levels: dict[str, dict[str, int]] | None = None,
    psc_levels: dict[str, dict[str, int]] | None = None,
    exit_names: dict[int, str] | None = None,
    mode_stats: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
    cost: dict[str, int],
) -> dict[str, Any]:
    """The JSON-ready stats object of one run (the schema every mode shares), priced with ``cost``
    (cost parameters by name; :func:`price`). ``stats`` holds event counts only, with the TLB
    hits filled in (:func:`with_tlb_hits`)."""
    s = [int(x) for x in stats]
    acc = s[S_ACCESSES]
    exits: dict[str, dict[str, int]] = {}
    for reason, name in (EXIT_REASONS if exit_names is None else exit_names).items():
        n = s[S_EXIT_BASE + reason]
        row = S_WORK_BASE + reason * N_WORK
        work = {w: s[row + k] for k, w in WORK_NAMES.items() if s[row + k]}
        if n or work:
            exits[name] = {"count": n, "cycles": 0, "work": work}
    out: dict[str, Any] = {
        "mode": mode,
        "accesses": acc,
        "reads": s[S_READS],
        "writes": s[S_WRITES],
        "fetches": s[S_FETCHES],
        "translations": s[S_TRANSLATIONS],
        "split_accesses": s[S_SPLIT],
        "cycles": 0,  # the cycle fields are filled by price()
        "cycles_per_access": 0.0,
        "translation_cycles": 0,
        "cycles_breakdown": {},
        "tlb_l1_hits": s[S_TLB_L1_HITS],
        "tlb_l2_hits": s[S_TLB_L2_HITS],
        "tlb_misses": s[S_TLB_MISSES],
        "tlb_misses_per_1000": _per_1000(s[S_TLB_MISSES], acc),
        "walks": s[S_WALKS],
        "walk_refs": s[S_WALK_REFS],
        "refs_per_walk": round(s[S_WALK_REFS] / s[S_WALKS], 3) if s[S_WALKS] else 0.0,
        "walk_ref_sources": {"l2": s[S_REF_L2_HITS], "llc": s[S_REF_LLC_HITS], "dram": s[S_REF_DRAM]},
        "dirty_rewalks": s[S_DIRTY_REWALKS],
        "guest_page_faults": s[S_GUEST_PF],
        "guest_page_faults_not_present": s[S_GUEST_PF_NOT_PRESENT],
        "guest_page_faults_protection": s[S_GUEST_PF_PROTECTION],
        "spurious_page_faults": s[S_SPURIOUS_PF],
        "bad_accesses": s[S_BAD_ACCESSES],
        "pt_frames": s[S_PT_FRAMES],
        "pt_frames_freed": s[S_PT_FREED],
        "huge_pages": {"mapped": s[S_THP_MAPPED], "fallbacks": s[S_THP_FALLBACKS], "splits": s[S_THP_SPLITS]},
        "zero_page": {"maps": s[S_ZERO_PAGE_MAPS], "huge_maps": s[S_ZERO_HUGE_MAPS], "cow": s[S_ZERO_PAGE_COW]},
        "data_frames": s[S_DATA_FRAMES],
        "processes": s[S_PROCESSES],
        "cr3_loads": s[S_CR3_LOADS],
        "events": s[S_EVENTS],
        "vm_exits": s[S_VM_EXITS],
        "vm_exits_per_1000": _per_1000(s[S_VM_EXITS], acc),
        "exits": exits,
        "tlb": tlb_levels or {},
        "psc": psc_levels or {},
        "elapsed_s": round(float(elapsed_s), 4),
        "accesses_per_s": round(acc / elapsed_s) if elapsed_s > 0 else 0,
    }
    if mode_stats:
        out["mode_stats"] = mode_stats
    if extra:
        out.update(extra)
    out["cost"] = dict(cost)
    return price(out, cost)


def reprice(result: dict[str, Any], overrides: dict[str, int]) -> dict[str, Any]:
    """A copy of the stats object ``result`` priced with its own costs plus ``overrides`` (by name).

    Exact: it equals a run made with those costs, since kernels count events and only
    :func:`price` turns them into cycles. The cache-geometry parameters (``l2_lines`` ...) shape
    the simulation itself and cannot be re-priced: changing one raises MMUInputError.
    """
    import copy

    from mmu.hw.cost import GEOMETRY, check_override

    cost = dict(result["cost"])
    for name, value in overrides.items():
        check_override(name, value)
        if name in GEOMETRY and int(value) != cost[name]:
            raise MMUInputError(
                f"cost parameter {name} sets the geometry of the simulated caches: it needs a run of its own, "
                "not a re-pricing"
            )
        cost[name] = int(value)
    out = copy.deepcopy(result)
    out["cost"] = cost
    return price(out, cost)


def to_json(obj: Any) -> str:
    """Stable JSON text for a stats object."""
    return json.dumps(obj, indent=2, sort_keys=False)


def to_csv_row(obj: dict[str, Any]) -> dict[str, Any]:
    """Flatten a stats object into one CSV row (nested dicts joined with '.')."""
    row: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        else:
            row[prefix] = v

    walk("", obj)
    return row
