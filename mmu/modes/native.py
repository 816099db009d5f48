"""Native mode: the hardware walks the guest's own page tables.

:func:`hw_translate` is the hardware translation path every mode reuses for its
one-dimensional walks (native: guest tables; shadow: shadow tables):

    TLB (L1, then L2)  ->  paging-structure caches  ->  walk the remaining levels

with the SDM's rules for what a TLB hit may be used for: a hit whose cached rights
forbid the access raises #PF from the stale entry and invalidates it (SDM 4.10.4.3:
a "spurious" fault after rights were raised without INVLPG); a write through an
entry whose D flag is 0 re-walks so that D is set in memory (SDM 4.8).

Walk references are classified by two walk-line caches (L2-like and LLC-like); the
cost model turns the counts into cycles after the run (:func:`mmu.stats.price`).
"""

from __future__ import annotations

import numpy as np

from mmu._jit import inner
from mmu.hw.cache import line_access
from mmu.hw.pwc import psc_fill, psc_lookup
from mmu.hw.tlb import tlb_fill, tlb_invlpg, tlb_lookup
from mmu.stats import (
    S_DIRTY_REWALKS,
    S_REF_DRAM,
    S_REF_L2_HITS,
    S_REF_LLC_HITS,
    S_TLB_MISSES,
    S_WALK_REFS,
    S_WALKS,
)
from mmu.x86.bits import ACC_FETCH, ACC_WRITE, CTL_LA57, TA_D, TA_RW, TA_US, WALK_GP, WALK_OK, WALK_PF
from mmu.x86.walk import TR_ATTRS, TR_ENTRY_PA, TR_LEVEL, TR_NEXT, access_fault, is_canonical, walk_core

# Columns of the per-run configuration array ``cfg`` (int64).
C_CTL = 0  # CTL_* bits of the guest (CPL is or-ed in per access)
C_PKRU = 1
C_MAXPHYADDR = 2
C_ASID = 3  # VPID/ASID tag for TLB entries (0 = native)
C_EMIT = 4  # 1: record the guest-physical address of every access
C_LEN = 8


@inner
def count_walk_ref(ptc, stats, pa):
    """Classify one page-walk reference at ``pa`` by where its line is (walk-line caches L2, LLC)."""
    if line_access(ptc.l2, pa):
        stats[S_REF_L2_HITS] += 1
    elif line_access(ptc.llc, pa):
        stats[S_REF_LLC_HITS] += 1
    else:
        stats[S_REF_DRAM] += 1


FRONT_HIT = 0  # the TLB translated the access: value = physical address
FRONT_FAULT = 1  # the TLB entry's rights forbid it: value = #PF error code (entry dropped)
FRONT_WALK = 2  # a walk is needed, from (next_level, table, pattrs)


@inner
def tlb_then_psc(tlb, psc, stats, cfg, cr3, pcid, va, access, ctl):
    """The front of every hardware translation: the TLB, then where a walk would start.

    A hit is used by the SDM's rules: rights the cached entry forbids raise #PF from the
    entry, which the fault invalidates (SDM 4.10.4.1/4.10.4.3); a write through an entry whose
    D flag is 0 walks again so that D gets set (SDM 4.8). On a miss (or that re-walk) the
    paging-structure caches give the deepest table to start from, else the root at ``cr3``.

    Returns ``(outcome, value, next_level, table, pattrs)`` (see ``FRONT_*``).
    """
    la57 = (ctl & CTL_LA57) != 0
    asid = cfg[C_ASID]
    side = 1 if access == ACC_FETCH else 0
    level, frame, shift, attrs = tlb_lookup(tlb, va, asid, pcid, side)
    z = np.int64(0)
    if level > 0:
        code = access_fault(attrs, access, ctl, cfg[C_PKRU])
        if code != 0:
            tlb_invlpg(tlb, va, asid, pcid)
            return FRONT_FAULT, np.int64(code), z, z, z
        if access != ACC_WRITE or (attrs & TA_D) != 0:
            return FRONT_HIT, frame | (va & ((np.int64(1) << shift) - 1)), z, z, z
        stats[S_DIRTY_REWALKS] += 1
    else:
        stats[S_TLB_MISSES] += 1
    next_level, table, pattrs = psc_lookup(psc, va, asid, pcid, la57)
    if next_level < 0:
        maxphy = cfg[C_MAXPHYADDR]
        table = cr3 & (((np.int64(1) << maxphy) - 1) & ~np.int64(0xFFF))
        next_level = 5 if la57 else 4
        pattrs = TA_RW | TA_US
    return FRONT_WALK, z, next_level, table, pattrs


@inner
def hw_translate(mem, tlb, psc, ptc, stats, cfg, cr3, pcid, va, access, ctl, trail):
    """Translate ``va`` as the hardware does: TLB, then PSC, then a (partial) walk.

    Parameters
    ----------
    mem : tuple
        Memory holding the tables the hardware walks (guest tables in native mode).
    tlb, psc, ptc : tuple
        TLB hierarchy, paging-structure caches, walk-line caches (mutated: fills, LRU, counters).
    stats : int64[N_STATS]
        Mutated: TLB-miss, walk and walk-reference counters (TLB hits are counted by the
        TLB structures themselves; cycles are derived from the counts afterwards).
    cfg : int64[C_LEN]
    cr3, pcid : int
        Root table and current PCID.
    va : int64
    access : int
        ACC_READ / ACC_WRITE / ACC_FETCH.
    ctl : int
        CTL_* bits for this access (CPL included).
    trail : int64[5, 4]
        Scratch for the walk.

    Returns
    -------
    (status, error_code, pa)
        WALK_OK with the physical address; WALK_PF with the #PF error code; WALK_GP.
    """
    la57 = (ctl & CTL_LA57) != 0
    if not is_canonical(va, la57):
        return WALK_GP, 0, 0
    asid = cfg[C_ASID]
    side = 1 if access == ACC_FETCH else 0
    outcome, value, next_level, table, pattrs = tlb_then_psc(tlb, psc, stats, cfg, cr3, pcid, va, access, ctl)
    if outcome == FRONT_HIT:
        return WALK_OK, 0, value
    if outcome == FRONT_FAULT:
        return WALK_PF, value, 0
    maxphy = cfg[C_MAXPHYADDR]
    status, code, pa, shift, attrs, n = walk_core(
        mem, table, next_level, pattrs, va, access, ctl, cfg[C_PKRU], maxphy, trail, True, trail[0, :0], False
    )
    stats[S_WALKS] += 1
    stats[S_WALK_REFS] += n
    for i in range(n):
        count_walk_ref(ptc, stats, trail[i, TR_ENTRY_PA])
    if status != WALK_OK:
        tlb_invlpg(tlb, va, asid, pcid)
        return WALK_PF, code, 0
    tlb_fill(tlb, va, asid, pcid, side, pa & ~((np.int64(1) << shift) - 1), shift, attrs)
    for i in range(n - 1):
        psc_fill(psc, va, asid, pcid, la57, trail[i, TR_LEVEL], trail[i, TR_NEXT], trail[i, TR_ATTRS])
    return WALK_OK, 0, pa
