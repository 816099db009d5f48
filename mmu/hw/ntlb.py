"""Caches of the nested (host) dimension: the nested TLB and the host paging-structure caches.

Bhargava et al. (ASPLOS'08) cut the 24-reference 2D walk with two structures, modelled here:

* the **nested TLB (NTLB)**: gpa -> hpa translations of whole host pages (guest-physical
  mappings, SDM 28.3.1), consulted before every host-dimension walk; a hit costs no memory
  reference. Built from the TLB kernels (:mod:`mmu.hw.tlb`) with one unified structure that
  holds 4K, 2M and 1G host pages; its ``attrs`` are the EPT rights (``PERM_R/W/X`` bits, XU
  bit 10) plus ``NT_DIRTY`` once the leaf's EPT D flag is known to be set.
* the **host paging-structure caches (nested PSC)**: gpa bits -> hpa of the next EPT/NPT table,
  the page-walk-cache extension to the nested dimension, built from :mod:`mmu.hw.pwc` with the
  rights ANDed down to the cached entry.

Host caches are tagged by nothing but the VM (one EPTP per run); INVEPT single-context /
global therefore flushes them whole (:func:`host_cache_flush`), and an EPT violation drops
the NTLB entries of the faulting gpa (SDM 28.3.3.1).

``hcache = (ntlb, npsc, hmeta)``; ``hmeta[H_ENABLED]`` = 0 turns both off (the walker then
behaves exactly like the cold :func:`mmu.x86.ept.host_translate`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mmu._jit import inner, jit
from mmu.hw.presets import SIDE_UNIFIED, PSCCache, TLBStructure
from mmu.hw.pwc import PSCState, make_psc, psc_fill, psc_flush_all, psc_flush_asid, psc_lookup
from mmu.hw.tlb import (
    HW_GP,
    HW_OK,
    TG_BASE,
    TG_ENTRIES,
    TLBState,
    _inv_addr,
    _kill,
    make_tlb,
    tlb_fill,
    tlb_flush_all,
    tlb_flush_asid,
    tlb_invlpg,
    tlb_lookup,
)
from mmu.x86.bits import ACC_READ, ACC_WRITE, PF_P
from mmu.x86.ept import (
    EPT_OK,
    EPT_VIOLATION,
    EQ_FETCH,
    EQ_READ,
    EQ_WRITE,
    NPT_CTL,
    NPT_FAULT,
    PERM_R,
    PERM_W,
    PERM_X,
    PERM_XU,
    ept_walk_core,
    host_translate,
    npt_walk_core,
    perm_qual,
)
from mmu.x86.walk import TR_ATTRS, TR_LEVEL, TR_NEXT, error_code_bits

NT_DIRTY = 1 << 3  # in NTLB attrs: the EPT/NPT leaf's D flag is set
H_ENABLED = 0
H_NTLB_ON = 1
H_NPSC_ON = 2
H_LEN = 4

SRC_NTLB = (
    "assumption: Bhargava et al. (ASPLOS'08) evaluate a small NTLB; its size is not confirmed in our "
    "sources -- 16 entries, fully associative"
)
SRC_NPSC = "assumption: the host-dimension PSCs mirror the guest-dimension sizes of the preset"


class HostCache(NamedTuple):
    """A VM's nested TLB and host paging-structure caches."""

    ntlb: TLBState  # gpa -> hpa of whole host pages (mmu.hw.tlb layout)
    npsc: PSCState  # gpa bits -> next EPT/NPT table (mmu.hw.pwc layout)
    meta: np.ndarray  # int64[H_LEN]: H_ENABLED, H_NTLB_ON, H_NPSC_ON


def make_host_cache(
    preset,
    ntlb_entries: int = 16,
    ntlb_ways: int = 16,
    enabled: bool = True,
    npsc: bool = True,
    host_shift: int | None = None,
):
    """NTLB + host PSCs for a VM on ``preset`` (host PSC sizes copy the preset's PSCs).

    ``host_shift`` (12/21/30): the VM's one host page size, so the NTLB probes one size only;
    None holds all three sizes.
    """
    sizes = 7 if host_shift is None else 1 << ((host_shift - 12) // 9)
    ntlb = make_tlb([TLBStructure("NTLB", 1, SIDE_UNIFIED, sizes, max(1, ntlb_entries), max(1, ntlb_ways), SRC_NTLB)])
    caches = [PSCCache(f"host {c.name}", c.entry_level, c.entries, c.ways, SRC_NPSC) for c in preset.pscs]
    hmeta = np.zeros(H_LEN, dtype=np.int64)
    hmeta[H_ENABLED] = 1 if enabled else 0
    hmeta[H_NTLB_ON] = 1 if (enabled and ntlb_entries > 0) else 0
    hmeta[H_NPSC_ON] = 1 if (enabled and npsc) else 0
    return HostCache(ntlb, make_psc(caches), hmeta)


_COLD: list = []


def cold_host_cache():
    """A disabled host cache (shared): every host translation through it is a cold walk."""
    if not _COLD:
        from mmu.hw.presets import get_preset

        _COLD.append(make_host_cache(get_preset("toy"), ntlb_entries=1, ntlb_ways=1, enabled=False, npsc=False))
    return _COLD[0]


@inner
def host_cache_flush(hcache):
    """INVEPT (single-context or global: one VM here): drop every NTLB and host-PSC entry."""
    tlb_flush_all(hcache.ntlb, False)
    psc_flush_all(hcache.npsc)


@inner
def host_cache_drop(hcache, gpa):
    """Drop the NTLB entries that translate ``gpa`` (an EPT violation invalidates them)."""
    tlb_invlpg(hcache.ntlb, gpa, 0, 0)


@inner
def _need_bit(access, mbec, user_mode):
    if access == ACC_READ:
        return PERM_R
    if access == ACC_WRITE:
        return PERM_W
    return PERM_XU if (mbec and user_mode) else PERM_X


@jit(inline="always")
def host_translate_cached(
    hmem, hcache, hroot, hlevels, ept_ad, npt, gpa, access, user_mode, mbec, xonly, maxphyaddr, htrail
):
    """:func:`mmu.x86.ept.host_translate` behind the NTLB and the host PSCs.

    Returns the same tuple ``(status, code, hpa, page_shift, perms, nrefs)``; ``htrail`` rows
    ``0..nrefs-1`` are the host entries actually read (none on an NTLB hit).
    """
    hmeta = hcache.meta
    if hmeta[H_ENABLED] == 0 or (gpa >> (12 + 9 * hlevels)) != 0:
        return host_translate(
            hmem, hroot, hlevels, ept_ad, npt, gpa, access, user_mode, mbec, xonly, maxphyaddr, htrail
        )
    ntlb = hcache.ntlb
    npsc = hcache.npsc
    need = _need_bit(access, mbec and not npt, user_mode)
    if hmeta[H_NTLB_ON] != 0:
        lvl, frame, shift, perms = tlb_lookup(ntlb, gpa, 0, 0, 0)
        if lvl > 0:
            dirty_ok = access != ACC_WRITE or not (ept_ad or npt) or (perms & NT_DIRTY) != 0
            if (perms & need) != 0 and dirty_ok:
                return (
                    np.int64(EPT_OK),
                    np.int64(0),
                    frame | (gpa & ((np.int64(1) << shift) - 1)),
                    shift,
                    perms & ~NT_DIRTY,
                    np.int64(0),
                )
            # Not allowed by the cached rights, or D must be set: walk (the walk decides).
            tlb_invlpg(ntlb, gpa, 0, 0)
    z = np.int64(0)
    la57 = hlevels == 5
    level = hlevels
    table = hroot
    upper = np.int64(PERM_R | PERM_W | PERM_X | PERM_XU)
    if hmeta[H_NPSC_ON] != 0:
        nl, t, pattrs = psc_lookup(npsc, gpa, 0, 0, la57)
        if nl > 0:
            level = nl
            table = t
            upper = pattrs
    if npt:
        status, q, hpa, shift, perms, n = npt_walk_core(hmem, table, level, gpa, access, maxphyaddr, htrail, True)
    else:
        status, q, hpa, shift, perms, n = ept_walk_core(
            hmem, table, level, gpa, access, ept_ad, mbec, user_mode, maxphyaddr, htrail, True, xonly
        )
    if status != EPT_OK:
        return status, q, hpa, shift, perms & upper, n
    if (upper & need) == 0:
        # A cached upper entry forbids the access: the fault the full walk would report.
        perms &= upper
        if npt:
            return np.int64(NPT_FAULT), np.int64(error_code_bits(PF_P, access, NPT_CTL)), z, z, z, n
        if access == ACC_READ:
            qa = EQ_READ
        elif access == ACC_WRITE:
            qa = EQ_WRITE
        else:
            qa = EQ_FETCH
        return np.int64(EPT_VIOLATION), np.int64(qa | perm_qual(perms)), z, z, perms, n
    perms &= upper
    # Fill: the NTLB with the whole host page, the host PSCs with the non-leaf entries walked.
    if hmeta[H_NTLB_ON] != 0:
        flags = perms
        if access == ACC_WRITE and (ept_ad or npt):
            flags |= NT_DIRTY
        tlb_fill(ntlb, gpa, 0, 0, 0, hpa & ~((np.int64(1) << shift) - 1), shift, flags)
    if hmeta[H_NPSC_ON] != 0:
        for i in range(n - 1):
            psc_fill(npsc, gpa, 0, 0, la57, htrail[i, TR_LEVEL], htrail[i, TR_NEXT], htrail[i, TR_ATTRS] & upper)
    return status, q, hpa, shift, perms, n


# --- VMX invalidations (SDM vol. 3C 28.3.3: INVEPT, INVVPID) ----------------------------------
INVEPT_SINGLE = 1
INVEPT_GLOBAL = 2
INVVPID_ADDRESS = 0
INVVPID_SINGLE = 1
INVVPID_ALL = 2
INVVPID_SINGLE_KEEP_GLOBALS = 3


@inner
def _flush_nonzero_asids(tlb, psc):
    """Drop every TLB and PSC entry tagged with a VPID other than 0 (the guests')."""
    geom = tlb.geom
    tag = tlb.tag
    ctx = tlb.ctx
    hidx = tlb.hidx
    for s in range(geom.shape[0]):
        base = geom[s, TG_BASE]
        for i in range(base, base + geom[s, TG_ENTRIES]):
            if tag[i] != -1 and (ctx[i] >> 12) != 0:
                _kill(geom, tag, hidx, s, i)
    ptag = psc.tag
    pctx = psc.ctx
    for i in range(ptag.shape[0]):
        if ptag[i] != -1 and (pctx[i] >> 12) != 0:
            ptag[i] = -1


@jit
def hw_invept(tlb, psc, hcache, kind):
    """INVEPT: drop guest-physical mappings (nested TLB, host PSCs) and the combined mappings
    (gva -> hpa TLB entries and guest PSC entries of every VPID) derived through the EPT.

    This model runs one EPTP, so single-context (1) and global (2) invalidate the same set.
    Returns HW_OK, or HW_GP for another ``kind``.
    """
    if kind != INVEPT_SINGLE and kind != INVEPT_GLOBAL:
        return HW_GP
    host_cache_flush(hcache)
    _flush_nonzero_asids(tlb, psc)
    return HW_OK


@jit
def hw_invvpid(tlb, psc, kind, vpid, va):
    """INVVPID: drop linear and combined mappings of ``vpid`` (never guest-physical ones).

    kind 0: the page containing ``va`` (every PCID, globals too); 1: everything of ``vpid``;
    2: everything of every VPID except 0; 3: everything of ``vpid`` except globals. PSC entries
    of the VPID go in every case (the SDM allows invalidating more than required). VPID 0 is
    invalid for kinds 0, 1 and 3. Returns HW_OK or HW_GP.
    """
    if kind == INVVPID_ALL:
        _flush_nonzero_asids(tlb, psc)
        return HW_OK
    if vpid == 0 or kind < 0 or kind > 3:
        return HW_GP
    if kind == INVVPID_ADDRESS:
        _inv_addr(tlb, va, vpid, 0, 3)
    elif kind == INVVPID_SINGLE:
        tlb_flush_asid(tlb, vpid, False)
    else:
        tlb_flush_asid(tlb, vpid, True)
    psc_flush_asid(psc, vpid)
    return HW_OK
