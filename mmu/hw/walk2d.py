"""The hardware's 2D (nested) walker: the rules of :mod:`mmu.x86.nested`, run with the nested TLB
and the host paging-structure caches (:mod:`mmu.hw.ntlb`) serving the host translations.

With both caches disabled (:func:`mmu.hw.ntlb.cold_host_cache`) every walk is the cold
(n + 1)(m + 1) - 1 references of the architecture; :func:`walk_nested` (public API
``mmu.walk_nested``) walks that way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmu._jit import inner, jit
from mmu.hw.ntlb import cold_host_cache, host_translate_cached
from mmu.memory import PhysicalMemory, mem_find
from mmu.x86.bits import (
    ACC_FETCH,
    ACC_READ,
    ACC_WRITE,
    CTL_LA57,
    CTL_NXE,
    PF_P,
    PF_RSVD,
    TA_D,
    TA_RW,
    TA_US,
)
from mmu.x86.ept import (
    EPT_OK,
    EQ_GLA_VALID,
    EQ_WRITE,
    HT_COLS,
    HT_PFN,
    PERM_W,
    host_root_and_mode,
    perm_qual,
)
from mmu.x86.nested import (
    DIM_GUEST,
    GT_COLS,
    GT_ENTRY_HPA,
    GT_HPERMS,
    GT_ROW,
    MAX_REFS,
    NESTED_EPT_MISCONFIG,
    NESTED_EPT_VIOLATION,
    NESTED_GP,
    NESTED_NPF,
    NESTED_OK,
    NESTED_PF,
    RF_COLS,
    RF_DIM,
    RF_HPA,
    RF_LEVEL,
    _copy_host_refs,
    host_fault_code,
)
from mmu.x86.walk import (
    _A,
    _D,
    _LOW52,
    _U0,
    _XD,
    ENTRY_NOT_PRESENT,
    ENTRY_RESERVED,
    MAX_LEVELS,
    TR_ATTRS,
    TR_ENTRY_PA,
    TR_LEVEL,
    TR_NEXT,
    access_fault,
    check_walk_args,
    entry_step,
    error_code_bits,
    is_canonical,
    make_ctl,
    to_int64,
)


@inner
def nested_walk_core(
    hmem,
    hroot,
    hlevels,
    ept_ad,
    npt,
    gtable_gpa,
    glevel,
    attrs_in,
    gva,
    access,
    ctl,
    pkru,
    maxphyaddr,
    gtrail,
    htrail,
    refs_out,
    nref0,
    mbec,
    xonly,
    hcache,
):
    """2D walk of ``gva`` from the guest table at gpa ``gtable_gpa`` of ``glevel``.

    Parameters
    ----------
    hmem : tuple
        Host PhysicalMemory state: holds the guest tables (at the hpa their gpa maps to) and
        the EPT/NPT tables. Mutated: host A/D flags, and guest A/D flags on success.
    hroot : int
        hpa of the host root table (EPTP[51:12] or nCR3[51:12]).
    hlevels : int
        Host walk length, 4 or 5.
    ept_ad : bool
        EPTP bit 6 (ignored by NPT, which always maintains nested A/D).
    npt : bool
        AMD nested paging instead of EPT.
    gtable_gpa : int
        gpa of the first guest table to read (CR3's root, or a table a guest PSC returned).
    glevel : int
        Its level (5..1).
    attrs_in : int
        Guest rights combined above that table (``TA_RW | TA_US`` from the root).
    gva : int64
        Guest linear address (canonical; :func:`nested_walk` checks).
    access, ctl, pkru
        As for :func:`mmu.x86.walk.access_fault` (the guest's control state).
    maxphyaddr : int
        MAXPHYADDR of guest and host.
    gtrail : int64[MAX_LEVELS, GT_COLS]
        Out: one row per guest entry read (``TR_*`` columns with gpas, plus ``GT_ENTRY_HPA``,
        ``GT_HPERMS`` and ``GT_ROW``).
    htrail : int64[MAX_LEVELS, HT_COLS]
        Scratch for the host walks: holds the last one (``TR_*`` columns) and the frame -> row
        memo of :func:`mmu.x86.ept.ept_walk_core` (reset here). ``TR_COLS`` columns also work
        (no memo, slower).
    refs_out : int64[MAX_REFS, RF_COLS]
        Out: rows ``nref0..nrefs-1`` = (dimension, level, hpa) of every entry read, in order.
    nref0 : int
        First row of ``refs_out`` to fill.
    mbec : bool
        Mode-based execute control for EPT.
    xonly : bool
        Execute-only EPT entries are supported.
    hcache : tuple
        Nested TLB and host paging-structure caches (:mod:`mmu.hw.ntlb`); with
        ``hcache.meta[H_ENABLED] == 0`` every host translation is a cold walk.

    Returns
    -------
    (status, error_code, qual, gpa, hpa, page_shift, nrefs, ng, attrs, perms) : tuple of int64
        status NESTED_*; error_code: guest #PF error code (NESTED_PF); qual: exit qualification
        (NESTED_EPT_VIOLATION) or EXITINFO1 (NESTED_NPF); gpa: the final gpa on success, the gpa
        whose translation failed on an EPT/NPT fault, 0 on #PF; hpa and page_shift valid on
        success; nrefs: rows of ``refs_out`` in use; ng: rows of ``gtrail``; attrs: guest
        combined TA_* rights; perms: EPT rights (PERM_*) of the data page on success.
    """
    nxe = (ctl & CTL_NXE) != 0
    addr_mask = np.uint64(((1 << maxphyaddr) - 1) & ~0xFFF)
    rsvd = _LOW52 & ~np.uint64((1 << maxphyaddr) - 1)
    if not nxe:
        rsvd |= _XD
    # SDM 28.2.3.2 / APM 15.25.5: guest paging-structure accesses are writes with EPT A/D or NPT.
    pw_access = ACC_WRITE if (ept_ad or npt) else ACC_READ
    z = np.int64(0)
    if htrail.shape[1] >= HT_COLS:
        for i in range(htrail.shape[0]):
            htrail[i, HT_PFN] = -1
    attrs = np.int64(attrs_in)
    base = np.int64(gtable_gpa)
    level = glevel
    nr = np.int64(nref0)
    ng = np.int64(0)
    while True:
        shift = 12 + 9 * (level - 1)
        entry_gpa = base + ((gva >> shift) & 511) * 8
        hs, hq, entry_hpa, hshift, hperms, hn = host_translate_cached(
            hmem, hcache, hroot, hlevels, ept_ad, npt, entry_gpa, pw_access, False, mbec, xonly, maxphyaddr, htrail
        )
        nr = _copy_host_refs(htrail, hn, refs_out, nr)
        if hs != EPT_OK:
            return hs, z, host_fault_code(hs, hq, True, ept_ad), entry_gpa, z, z, nr, ng, attrs, z
        row = mem_find(hmem, entry_hpa >> 12)
        e = hmem[0][row, (entry_hpa >> 3) & 511] if row >= 0 else _U0
        refs_out[nr, RF_DIM] = DIM_GUEST
        refs_out[nr, RF_LEVEL] = level
        refs_out[nr, RF_HPA] = entry_hpa
        nr += 1
        gtrail[ng, TR_ENTRY_PA] = entry_gpa
        gtrail[ng, TR_LEVEL] = level
        gtrail[ng, GT_ENTRY_HPA] = entry_hpa
        gtrail[ng, GT_HPERMS] = hperms
        gtrail[ng, GT_ROW] = row
        ng += 1
        kind, leaf, attrs = entry_step(e, level, rsvd, nxe, ctl, attrs)
        if kind == ENTRY_NOT_PRESENT:
            return np.int64(NESTED_PF), error_code_bits(0, access, ctl), z, z, z, z, nr, ng, attrs, z
        if kind == ENTRY_RESERVED:
            code = error_code_bits(PF_P | PF_RSVD, access, ctl)
            return np.int64(NESTED_PF), code, z, z, z, z, nr, ng, attrs, z
        if leaf:
            page_shift = shift
            frame = np.int64(e & addr_mask) & ~((np.int64(1) << page_shift) - 1)
            gtrail[ng - 1, TR_NEXT] = frame
            gtrail[ng - 1, TR_ATTRS] = attrs
            code = access_fault(attrs, access, ctl, pkru)
            if code != 0:
                return np.int64(NESTED_PF), code, z, z, z, z, nr, ng, attrs, z
            # The guest A/D updates are guest-physical writes: check EPT write permission of each
            # one that changes memory (top down) before anything is written.
            data = hmem[0]
            for i in range(ng):
                # (a present entry was read, so its frame is backed: ``GT_ROW`` >= 0)
                v = data[gtrail[i, GT_ROW], (gtrail[i, GT_ENTRY_HPA] >> 3) & 511]
                need = (v & _A) == _U0 or (i == ng - 1 and access == ACC_WRITE and (v & _D) == _U0)
                if need and (gtrail[i, GT_HPERMS] & PERM_W) == 0:
                    q = EQ_WRITE | perm_qual(gtrail[i, GT_HPERMS]) | EQ_GLA_VALID
                    return np.int64(NESTED_EPT_VIOLATION), z, q, gtrail[i, TR_ENTRY_PA], z, z, nr, ng, attrs, z
            gpa = frame | (gva & ((np.int64(1) << page_shift) - 1))
            user_addr = (attrs & TA_US) != 0
            hs, hq, hpa, hshift, hperms, hn = host_translate_cached(
                hmem, hcache, hroot, hlevels, ept_ad, npt, gpa, access, user_addr, mbec, xonly, maxphyaddr, htrail
            )
            nr = _copy_host_refs(htrail, hn, refs_out, nr)
            if hs != EPT_OK:
                return hs, z, host_fault_code(hs, hq, False, ept_ad), gpa, z, z, nr, ng, attrs, z
            for i in range(ng):
                row_i = gtrail[i, GT_ROW]
                col_i = (gtrail[i, GT_ENTRY_HPA] >> 3) & 511
                v = data[row_i, col_i]
                nv = v | _A
                if i == ng - 1 and access == ACC_WRITE:
                    nv |= _D
                if nv != v:
                    data[row_i, col_i] = nv
            if access == ACC_WRITE:
                attrs |= TA_D
            if hshift < page_shift:
                page_shift = hshift
            return np.int64(NESTED_OK), z, z, gpa, hpa, np.int64(page_shift), nr, ng, attrs, hperms
        base = np.int64(e & addr_mask)
        gtrail[ng - 1, TR_NEXT] = base
        gtrail[ng - 1, TR_ATTRS] = attrs
        level -= 1


@jit
def nested_walk(
    hmem,
    eptp_root,
    ept_levels,
    ept_ad,
    npt,
    gcr3,
    gva,
    access,
    ctl,
    pkru,
    maxphyaddr,
    gtrail,
    htrail,
    refs_out,
    hcache,
    mbec=False,
    xonly=True,
):
    """2D walk of ``gva`` from the guest CR3 (cold when ``hcache`` is disabled, see :mod:`mmu.hw.ntlb`).

    ``eptp_root`` is the hpa of the host root (EPTP[51:12] or nCR3[51:12]), ``ept_levels`` the
    host walk length (4 or 5, for NPT too), ``gcr3`` the guest CR3. Returns the tuple of
    :func:`nested_walk_core`; status NESTED_GP (no references) for a non-canonical gva.
    """
    z = np.int64(0)
    la57 = (ctl & CTL_LA57) != 0
    if not is_canonical(gva, la57):
        return np.int64(NESTED_GP), z, z, z, z, z, z, z, z, z
    root = gcr3 & (((np.int64(1) << maxphyaddr) - 1) & ~np.int64(0xFFF))
    top = 5 if la57 else 4
    rights = TA_RW | TA_US
    # A literal ``npt`` makes numba compile one core per host kind, each without the other
    # kind's walker (measured: a 4+4 EPT walk 285 -> 220 ns).
    if npt:
        return nested_walk_core(
            hmem, eptp_root, ept_levels, False, True, root, top, rights, gva, access, ctl, pkru,
            maxphyaddr, gtrail, htrail, refs_out, 0, False, True, hcache,
        )  # fmt: skip
    return nested_walk_core(
        hmem, eptp_root, ept_levels, ept_ad, False, root, top, rights, gva, access, ctl, pkru,
        maxphyaddr, gtrail, htrail, refs_out, 0, mbec, xonly, hcache,
    )  # fmt: skip


@jit
def nested_walk_many(
    hmem,
    eptp_root,
    ept_levels,
    ept_ad,
    npt,
    gcr3,
    gvas,
    access,
    ctl,
    pkru,
    maxphyaddr,
    gtrail,
    htrail,
    refs_out,
    out_hpa,
    out_status,
    hcache,
):
    """:func:`nested_walk` over ``gvas`` (int64[n]) in one call: no caches, every walk cold.

    Writes the hpa (or -1) to ``out_hpa`` and the status to ``out_status`` (int64[n] each);
    returns the total number of entries read. Sets A/D flags like :func:`nested_walk`.
    """
    refs = 0
    for i in range(gvas.shape[0]):
        r = nested_walk(
            hmem,
            eptp_root,
            ept_levels,
            ept_ad,
            npt,
            gcr3,
            gvas[i],
            access,
            ctl,
            pkru,
            maxphyaddr,
            gtrail,
            htrail,
            refs_out,
            hcache,
        )
        refs += r[6]
        out_status[i] = r[0]
        out_hpa[i] = r[4] if r[0] == NESTED_OK else -1
    return refs


# --- Python layer ---------------------------------------------------------------------------

_ACCESS = {"r": ACC_READ, "w": ACC_WRITE, "x": ACC_FETCH}
_FAULTS = {
    NESTED_PF: "pf",
    NESTED_GP: "gp",
    NESTED_EPT_VIOLATION: "ept_violation",
    NESTED_EPT_MISCONFIG: "ept_misconfig",
    NESTED_NPF: "npf",
}


@dataclass(frozen=True)
class NestedWalkResult:
    """Outcome of :func:`walk_nested`.

    Attributes
    ----------
    fault : None | "pf" | "gp" | "ept_violation" | "ept_misconfig" | "npf"
        ``"npf"`` (AMD #VMEXIT(NPF)) only with ``npt=True``.
    error_code : int
        Guest #PF error code (SDM 4.7); 0 unless ``fault == "pf"``.
    exit_qualification : int
        EPT-violation exit qualification (SDM Table 27-7), or with ``npt`` the #NPF EXITINFO1
        (a #PF error code plus bit 32 final gpa / bit 33 guest page table); 0 otherwise.
    gpa : int | None
        The final gpa on success; on an EPT/NPT fault the gpa whose translation failed (the
        VMCS guest-physical-address field / EXITINFO2); None on #PF and #GP.
    hpa : int | None
        Host-physical address on success.
    page_size : int
        min(guest page size, host page size) on success; 0 on a fault.
    refs : list of (str, int, int)
        (dimension "g" or "h", level, hpa) of each entry read, in the order the hardware reads them.
    attrs : int
        Guest combined TA_* rights (see mmu.x86.bits).
    ept_perms : int
        Rights (``PERM_*`` bits of mmu.x86.ept) the host tables give the data page, on success.
    """

    fault: str | None
    error_code: int
    exit_qualification: int
    gpa: int | None
    hpa: int | None
    page_size: int
    refs: list[tuple[str, int, int]] = field(default_factory=list)
    attrs: int = 0
    ept_perms: int = 0


def walk_nested(
    hmem: PhysicalMemory,
    eptp: int,
    gcr3: int,
    gva: int,
    access: str = "r",
    user: bool = False,
    wp: bool = True,
    nxe: bool = True,
    smep: bool = False,
    smap: bool = False,
    ac: bool = False,
    la57: bool = False,
    ept_levels: int | None = None,
    ept_ad: bool | None = None,
    npt: bool = False,
    maxphyaddr: int = 52,
    pke: bool = False,
    pkru: int = 0,
    mbec: bool = False,
    execute_only: bool = True,
) -> NestedWalkResult:
    """Translate ``gva`` through the guest tables at ``gcr3`` and the EPT (or NPT) at ``eptp``.

    A cold 2D walk as the processor does it (no TLB, no paging-structure caches). Sets, in
    ``hmem``, the EPT A/D flags of each gpa translation that succeeds (when EPT A/D is on; NPT
    always), and the guest A/D flags when the whole access succeeds.

    Parameters
    ----------
    hmem : PhysicalMemory
        Host memory: the guest's memory (at the hpas the EPT maps it to) and the EPT.
    eptp : int
        EPTP value (bits 51:12 root, 5:3 walk length - 1, 6 A/D enable) or, with ``npt``, nCR3.
    gcr3 : int
        Guest CR3 (bits (M-1):12: gpa of the guest PML4, or PML5 with ``la57``).
    gva : int
        Guest linear address, 0 <= gva < 2**64 (or a negative int64 spelling of one).
    access : {"r", "w", "x"}
        Data read, data write, instruction fetch.
    user, wp, nxe, smep, smap, ac, la57, pke, pkru
        The guest's CPL=3, CR0.WP, EFER.NXE, CR4.SMEP/SMAP, EFLAGS.AC, CR4.LA57/PKE, PKRU.
    ept_levels : {4, 5}, optional
        Host walk length; overrides EPTP bits 5:3 (default: from the EPTP, 4 for a bare root
        or for NPT).
    ept_ad : bool, optional
        EPT A/D enable; overrides EPTP bit 6 (ignored with ``npt``).
    npt : bool
        AMD nested paging: ``eptp`` is nCR3 and the host tables have the ordinary format.
    maxphyaddr : int
        MAXPHYADDR of guest and host, 32..52.
    mbec : bool
        Mode-based execute control for EPT (bit 10 = execute for user-mode addresses).
    execute_only : bool
        The processor supports execute-only EPT entries (else they are misconfigurations).
    """
    check_walk_args(access, maxphyaddr, pkru)
    root, levels, ad = host_root_and_mode(eptp, ept_levels, ept_ad, npt, int(maxphyaddr))
    ctl = make_ctl(user=user, wp=wp, nxe=nxe, smep=smep, smap=smap, ac=ac, la57=la57, pke=pke)
    gtrail = np.zeros((MAX_LEVELS, GT_COLS), dtype=np.int64)
    htrail = np.zeros((MAX_LEVELS, HT_COLS), dtype=np.int64)
    refs_out = np.zeros((MAX_REFS, RF_COLS), dtype=np.int64)
    hmem.reserve(0)
    status, code, qual, gpa, hpa, shift, n, _ng, attrs, perms = nested_walk(
        hmem.state,
        np.int64(root),
        np.int64(levels),
        ad,
        bool(npt),
        np.int64(to_int64(gcr3)),
        np.int64(to_int64(gva)),
        _ACCESS[access],
        np.int64(ctl),
        np.int64(pkru),
        np.int64(maxphyaddr),
        gtrail,
        htrail,
        refs_out,
        cold_host_cache(),
        bool(mbec),
        bool(execute_only),
    )
    refs = [("gh"[int(d)], int(lv), int(pa)) for d, lv, pa in refs_out[: int(n)]]
    status = int(status)
    if status == NESTED_OK:
        return NestedWalkResult(None, 0, 0, int(gpa), int(hpa), 1 << int(shift), refs, int(attrs), int(perms))
    fault = _FAULTS[status]
    if status == NESTED_PF:
        return NestedWalkResult(fault, int(code), 0, None, None, 0, refs, int(attrs))
    if status == NESTED_GP:
        return NestedWalkResult(fault, 0, 0, None, None, 0, [])
    return NestedWalkResult(fault, 0, int(qual), int(gpa), None, 0, refs, int(attrs))
