"""Cycle-cost model: named parameters, each with a default and a written source.

Kernels take the model as one ``int64[N_COST]`` array indexed by the ``K_*``
constants below (configuration is passed as an argument, never read from module
globals, so numba's on-disk cache stays valid when a user changes a cost).

What is charged (docs/cost-model.md explains the model and its limits):

* every access: ``K_BASE`` cycles of non-translation work (a normalisation, so that
  slowdowns have a denominator; it is the same in every mode);
* an L1 TLB hit: ``K_TLB_L1`` (0: the L1 TLB lookup overlaps the L1D access);
* an L2 TLB hit: ``K_TLB_L2``;
* each page-walk memory reference: ``K_REF_L2`` if its 64-byte line is in the
  walk-line cache modelling the L2, ``K_REF_LLC`` if in the one modelling the LLC,
  else ``K_REF_DRAM``;
* a guest page fault handled by the guest kernel: ``K_GUEST_PF``;
* VM exits (shadow and nested modes): ``K_EXIT`` round trip plus handler work
  (``K_EPT_FAULT`` for an EPT violation that backs a guest page; the ``K_SHADOW_FAULT`` ..
  ``K_PF_INJECT`` fixed work per shadow exit reason, plus the variable work shadow kernels
  count: software walk steps, shadow pages allocated, entries written, entries resynced,
  VMM-issued TLB flushes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmu.errors import MMUInputError

K_BASE = 0
K_TLB_L1 = 1
K_TLB_L2 = 2
K_REF_L2 = 3
K_REF_LLC = 4
K_REF_DRAM = 5
K_GUEST_PF = 6
K_EXIT = 7
K_SW_WALK_STEP = 8
K_EMULATE = 9
K_L2_LINES = 10  # geometry of the walk-line caches (lines, ways)
K_L2_WAYS = 11
K_LLC_LINES = 12
K_LLC_WAYS = 13
K_EPT_FAULT = 14  # VMM work on an EPT violation that backs a guest page (beyond the exit itself)
# shadow paging: fixed handler work per exit reason, and variable work the kernels count
K_SHADOW_FAULT = 15  # page-fault exit handled by the shadow MMU (hidden fault, A/D, unsync)
K_CR3_EXIT = 16  # MOV CR3 exit: root-cache lookup, VMCS update
K_INVLPG_EXIT = 17  # INVLPG exit
K_PF_INJECT = 18  # reflecting a true fault into the guest (event injection)
K_SP_ALLOC = 19  # allocating and zeroing a shadow page, hashing it
K_SPTE_WRITE = 20  # writing or zapping one shadow entry with its reverse map
K_SYNC_ENTRY = 21  # comparing one guest entry with its shadow during a resync
K_VMM_FLUSH = 22  # one VM-wide TLB flush requested by the VMM (INVVPID single context)
K_CR3_READ_EXIT = 23  # MOV from CR3 exit: return the guest's CR3 (no MMU work)
N_COST = 24

_NAMES = {
    "base": K_BASE,
    "tlb_l1": K_TLB_L1,
    "tlb_l2": K_TLB_L2,
    "ref_l2": K_REF_L2,
    "ref_llc": K_REF_LLC,
    "ref_dram": K_REF_DRAM,
    "guest_pf": K_GUEST_PF,
    "exit": K_EXIT,
    "sw_walk_step": K_SW_WALK_STEP,
    "emulate": K_EMULATE,
    "l2_lines": K_L2_LINES,
    "l2_ways": K_L2_WAYS,
    "llc_lines": K_LLC_LINES,
    "llc_ways": K_LLC_WAYS,
    "ept_fault": K_EPT_FAULT,
    "shadow_fault": K_SHADOW_FAULT,
    "cr3_exit": K_CR3_EXIT,
    "invlpg_exit": K_INVLPG_EXIT,
    "pf_inject": K_PF_INJECT,
    "sp_alloc": K_SP_ALLOC,
    "spte_write": K_SPTE_WRITE,
    "sync_entry": K_SYNC_ENTRY,
    "vmm_flush": K_VMM_FLUSH,
    "cr3_read_exit": K_CR3_READ_EXIT,
}

# Sources, cited by key in docs/cost-model.md.
SRC_NEHALEM_GUIDE = (
    "Intel, Performance Analysis Guide for Intel Core i7 and Xeon 5500 processors: L1 ~4, L2 ~10, "
    "L3 ~40 cycles, local DRAM ~60 ns (quoted in stackoverflow.com/questions/4087280)"
)
SRC_D2L = "Dive into Deep Learning, 'CPU cache latencies': L1 ~4 cycles, L2 12-17, unshared L3 42"
SRC_HASWELL_TLB = (
    "news.mynavi.jp Haswell measurement (2013): L2 TLB hit ~12 cycles; L2 TLB miss with page tables in cache ~20 cycles"
)
SRC_MINOR_FAULT = (
    "ddumbying.vercel.app/experiments/pagefault-latency: anonymous minor fault, Linux 6.6, Core i7 "
    "11th gen, median 3,241 cycles (min 1,842)"
)
SRC_SPLITX = (
    "SplitX (Landau, Ben-Yehuda, Gordon): VM exit direct cost ~2,000 cycles on Nehalem X5570 with KVM, EPT+VPID"
)
SRC_SVM_LKML = "LKML 2020 (lkml.iu.edu 2012.2/00527): AMD SVM VMRUN round trip ~1,344-1,376 cycles"


@dataclass(frozen=True)
class CostParam:
    name: str
    value: int
    source: str


def _skylake() -> list[CostParam]:
    return [
        CostParam("base", 1, "normalisation: one cycle of non-translation work per access (assumption)"),
        CostParam("tlb_l1", 0, "L1 DTLB lookup overlaps the L1D access (load-to-use latency includes it)"),
        CostParam("tlb_l2", 12, SRC_HASWELL_TLB + " (Skylake-specific figure not found)"),
        CostParam("ref_l2", 12, SRC_D2L),
        CostParam("ref_llc", 42, SRC_D2L),
        CostParam("ref_dram", 200, SRC_NEHALEM_GUIDE + "; 60 ns at ~3.3 GHz"),
        CostParam("guest_pf", 3200, SRC_MINOR_FAULT),
        CostParam("exit", 2000, SRC_SPLITX),
        CostParam("sw_walk_step", 40, "assumption: one software page-table read in the VMM (~L3 hit)"),
        CostParam("emulate", 1500, "assumption: instruction decode + emulation of a page-table store"),
        CostParam("l2_lines", 1024, "assumption: 64 KiB of the 256 KiB L2 holds page-table lines"),
        CostParam("l2_ways", 4, "assumption: Skylake L2 is 4-way (7-cpu.com/cpu/Skylake.html)"),
        CostParam("llc_lines", 16384, "assumption: 1 MiB of LLC holds page-table lines"),
        CostParam("llc_ways", 16, "assumption"),
        CostParam(
            "ept_fault",
            1500,
            "synthesis in shared/reference/x86-paging-and-ept.md 6.7: a KVM-handled exit that needs a host "
            "allocation costs ~2,500-5,000+ cycles with handler work; exit + 1,500 lands in that range",
        ),
        CostParam(
            "shadow_fault",
            1500,
            "assumption, same order as ept_fault: KVM's shadow page-fault path (mmu_lock, gfn->pfn "
            "lookup, FNAME(fetch)); the software guest walk is charged separately per step",
        ),
        CostParam("cr3_exit", 500, "assumption: prev_roots lookup and VMCS CR3 update in kvm_mmu_new_pgd"),
        CostParam(
            "cr3_read_exit",
            50,
            "assumption: handle_cr (vmx.c) copies the cached guest CR3 into a register; no MMU work",
        ),
        CostParam("invlpg_exit", 300, "assumption: shadow walk of one address plus INVVPID"),
        CostParam("pf_inject", 500, "assumption: event injection of #PF into the guest (VMCS entry fields)"),
        CostParam("sp_alloc", 600, "assumption: allocate and clear a 4 KiB shadow page (64 lines), hash it"),
        CostParam("spte_write", 20, "assumption: one shadow-entry store with its reverse-map update"),
        CostParam("sync_entry", 10, "assumption: read one guest entry and compare it with its shadow"),
        CostParam(
            "vmm_flush",
            200,
            "assumption: INVVPID single-context instruction (the misses it "
            "causes afterwards are simulated, not assumed)",
        ),
    ]


def _zen2() -> list[CostParam]:
    params = {p.name: p for p in _skylake()}
    params["exit"] = CostParam("exit", 1360, SRC_SVM_LKML)
    params["l2_lines"] = CostParam(
        "l2_lines", 2048, "assumption: 128 KiB of the 512 KiB L2 (7-cpu.com/cpu/Zen2.html) holds PT lines"
    )
    params["l2_ways"] = CostParam("l2_ways", 8, "7-cpu.com/cpu/Zen2.html: L2 8-way")
    return list(params.values())


COST_PRESETS = {"skylake": _skylake, "zen2": _zen2}


def cost_params(preset: str = "skylake") -> list[CostParam]:
    """The named cost parameters of ``preset`` with their sources."""
    try:
        return COST_PRESETS[preset]()
    except KeyError:
        raise MMUInputError(
            f"unknown cost preset {preset!r}; choose one of: {', '.join(sorted(COST_PRESETS))}"
        ) from None


# Parameters that shape the simulation (the walk-line caches' geometry), not only its price.
GEOMETRY = ("l2_lines", "l2_ways", "llc_lines", "llc_ways")
COST_NAMES = tuple(_NAMES)


def check_override(name: str, value: int) -> None:
    """MMUInputError unless ``name`` is a cost parameter and ``value`` a valid setting of it."""
    if name not in _NAMES:
        raise MMUInputError(f"unknown cost parameter {name!r}; known: {', '.join(sorted(_NAMES))}")
    if int(value) < 0:
        raise MMUInputError(f"cost parameter {name} must be >= 0, not {value}")


def cost_array(preset: str = "skylake", overrides: dict[str, int] | None = None) -> np.ndarray:
    """The int64[N_COST] array kernels take, from ``preset`` plus ``overrides`` by name."""
    arr = np.zeros(N_COST, dtype=np.int64)
    for p in cost_params(preset):
        arr[_NAMES[p.name]] = p.value
    for name, value in (overrides or {}).items():
        check_override(name, value)
        arr[_NAMES[name]] = int(value)
    return arr


def cost_dict(arr: np.ndarray) -> dict[str, int]:
    """The cost parameters of an int64[N_COST] array, by name (the stats object's ``cost``)."""
    return {name: int(arr[k]) for name, k in _NAMES.items()}
