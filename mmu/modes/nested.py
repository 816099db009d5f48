"""Nested mode (Intel EPT / AMD NPT): the hardware walks the guest's tables through the host's.

:func:`hw_translate_nested` is the hardware path of a vCPU with EPT (or NPT) and VPID:

    TLB (combined gva -> hpa, tagged VPID + PCID)
      -> guest paging-structure caches (gva bits -> gpa of the next guest table)
      -> 2D walk (:func:`mmu.hw.walk2d.nested_walk_core`) whose every host translation
         goes through the nested TLB and the host paging-structure caches (:mod:`mmu.hw.ntlb`)

The TLB is filled with the page size ``min(guest page, host page)``. A TLB hit is used by the
same rules as natively (stale rights fault, a write through a clean entry re-walks). An EPT
violation (or NPF) is returned to the engine, which runs the VMM's handler (a VM exit).
"""

from __future__ import annotations

import numpy as np

from mmu._jit import jit
from mmu.hw.pwc import psc_fill
from mmu.hw.tlb import tlb_fill, tlb_invlpg
from mmu.hw.walk2d import nested_walk_core
from mmu.modes.native import (
    C_ASID,
    C_MAXPHYADDR,
    C_PKRU,
    FRONT_FAULT,
    FRONT_HIT,
    count_walk_ref,
    tlb_then_psc,
)
from mmu.modes.vmm import V_EPT_AD, V_LEVELS, V_NPT, V_ROOT, vm_gpa_of
from mmu.stats import (
    S_WALK_REFS,
    S_WALK_REFS_GUEST,
    S_WALK_REFS_HOST,
    S_WALKS,
)
from mmu.x86.bits import ACC_FETCH, CTL_LA57, WALK_GP, WALK_OK, WALK_PF
from mmu.x86.nested import (
    DIM_GUEST,
    NESTED_EPT_MISCONFIG,
    NESTED_EPT_VIOLATION,
    NESTED_NPF,
    NESTED_OK,
    NESTED_PF,
    RF_DIM,
    RF_HPA,
)
from mmu.x86.walk import TR_ATTRS, TR_LEVEL, TR_NEXT, is_canonical

# Outcomes of hw_translate_nested beyond WALK_OK / WALK_PF / WALK_GP.
HW_EPT_VIOLATION = 3  # (or AMD NPF) the VMM must handle it: gpa in the result
HW_EPT_MISCONFIG = 4


@jit
def hw_translate_nested(hmem, vm, hcache, tlb, psc, ptc, stats, cfg, gcr3, pcid, va, access, ctl, gtrail, htrail, refs):
    """Translate guest-virtual ``va`` on a vCPU with nested paging.

    Parameters
    ----------
    hmem : tuple
        Host memory: the guest's tables (at the hpa their gpa maps to) and the EPT/NPT.
    vm : tuple
        VM state (:mod:`mmu.modes.vmm`): host root, levels, EPT A/D, NPT flag, reverse maps.
    hcache : tuple
        Nested TLB and host PSCs.
    tlb, psc, ptc : tuple
        Combined TLB, guest-dimension PSCs (holding gpas), walk-line caches.
    stats : int64[N_STATS]
    cfg : int64[C_LEN]
    gcr3, pcid : int
        Guest CR3 (its table address is a gpa) and current PCID.
    va : int64
    access, ctl : int
    gtrail, htrail, refs : int64 arrays
        Scratch of the 2D walk (``GT_COLS``, ``HT_COLS`` and ``RF_COLS`` wide).

    Returns
    -------
    (status, code, hpa, gpa)
        WALK_OK: the host- and guest-physical addresses. WALK_PF: ``code`` is the guest #PF
        error code. HW_EPT_VIOLATION: ``code`` the exit qualification (NPF: EXITINFO1), ``gpa``
        the guest-physical address whose translation failed. HW_EPT_MISCONFIG, WALK_GP.
    """
    z = np.int64(0)
    la57 = (ctl & CTL_LA57) != 0
    if not is_canonical(va, la57):
        return WALK_GP, z, z, z
    asid = cfg[C_ASID]
    side = 1 if access == ACC_FETCH else 0
    outcome, value, next_level, table, pattrs = tlb_then_psc(tlb, psc, stats, cfg, gcr3, pcid, va, access, ctl)
    if outcome == FRONT_HIT:
        return WALK_OK, z, value, vm_gpa_of(vm, value)
    if outcome == FRONT_FAULT:
        return WALK_PF, value, z, z
    maxphy = cfg[C_MAXPHYADDR]
    vmeta = vm.vmeta
    npt = vmeta[V_NPT] != 0
    st, code, qual, gpa, hpa, pshift, nr, ng, attrs, _perms = nested_walk_core(
        hmem, vmeta[V_ROOT], vmeta[V_LEVELS], vmeta[V_EPT_AD] != 0, npt, table, next_level, pattrs, va,
        access, ctl, cfg[C_PKRU], maxphy, gtrail, htrail, refs, 0, False, True, hcache,
    )  # fmt: skip
    stats[S_WALKS] += 1
    stats[S_WALK_REFS] += nr
    for i in range(nr):
        if refs[i, RF_DIM] == DIM_GUEST:
            stats[S_WALK_REFS_GUEST] += 1
        else:
            stats[S_WALK_REFS_HOST] += 1
        count_walk_ref(ptc, stats, refs[i, RF_HPA])
    if st == NESTED_OK:
        tlb_fill(tlb, va, asid, pcid, side, hpa & ~((np.int64(1) << pshift) - 1), pshift, attrs)
        for i in range(ng - 1):
            psc_fill(psc, va, asid, pcid, la57, gtrail[i, TR_LEVEL], gtrail[i, TR_NEXT], gtrail[i, TR_ATTRS])
        return WALK_OK, z, hpa, gpa
    tlb_invlpg(tlb, va, asid, pcid)
    if st == NESTED_PF:
        return WALK_PF, code, z, z
    if st == NESTED_EPT_VIOLATION or st == NESTED_NPF:
        return HW_EPT_VIOLATION, qual, z, gpa
    if st == NESTED_EPT_MISCONFIG:
        return HW_EPT_MISCONFIG, qual, z, gpa
    return WALK_GP, z, z, z
