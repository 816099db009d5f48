"""The warm probe: what a machine's caches would serve for one translation, without changing it.

``mmu walk --trace T --index N`` draws record N's translation as the cold walk (every reference
numbered). At that trace position the machine is warm: its TLB, paging-structure caches,
walk-line caches and (nested) nested TLB and host PSCs hold what records 0..N-1 left there.
:func:`probe` answers what the hardware would actually do for the translation:

* a TLB hit (no walk), or the level the walk starts at (a PSC hit skips the levels above it);
* nested: for every gpa the 2D walk translates, a nested-TLB hit (no host reference) or the
  host level its host walk starts at (a host-PSC hit skips the levels above);
* for every reference issued, where its line came from: the L2-like or LLC-like walk-line
  cache, or memory (:func:`mmu.modes.native.count_walk_ref`).

The report (:mod:`mmu.report.warm`) draws what this module returns; it simulates nothing itself.
It runs the hardware path the engine runs (:func:`mmu.modes.native.hw_translate`,
:func:`mmu.modes.nested.hw_translate_nested`; shadow paging: the VMM's pending flush, then
``hw_translate`` over the shadow tables, as :func:`mmu.modes.dispatch.translate_access` does) in
one kernel, :func:`warm_translate`, on copies of every array it may write: memory (the walk sets
A/D flags), the TLB, the PSCs, the walk-line caches, the host caches, the shadow MMU and the
stats. Nothing of the machine changes. The probe covers the first hardware attempt of the
translation: when it ends in a fault or a VM exit, what the guest's or the VMM's handler does
next (and the walks of the retry) is not part of it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mmu._jit import jit
from mmu.errors import MMUInputError
from mmu.guest.os import O_CUR, P_PCID, os_cr3
from mmu.modes.native import C_ASID, C_CTL, count_walk_ref, hw_translate
from mmu.modes.nested import hw_translate_nested
from mmu.modes.shadow import SM_LEVELS, sh_before_entry, sh_needs_root, sh_pending, sh_root_hpa
from mmu.modes.vmm import MODE_NESTED, MODE_SHADOW, V_MODE, vm_gpa_of
from mmu.state import Scratch
from mmu.stats import S_DIRTY_REWALKS, S_REF_L2_HITS, S_REF_LLC_HITS, S_WALK_REFS, S_WALKS, new_stats
from mmu.x86.bits import CTL_LA57, CTL_USER, CTL_WP, WALK_OK
from mmu.x86.nested import DIM_GUEST, MAX_REFS, RF_DIM, RF_HPA, RF_LEVEL
from mmu.x86.walk import TR_ENTRY_PA, TR_LEVEL, check_walk_args, to_int64

# Columns of the probe's ``out`` rows: one per reference issued, in order.
W_DIM = 0  # DIM_GUEST (the 1D walk's entries too) or DIM_HOST
W_LEVEL = 1
W_HPA = 2
W_SOURCE = 3  # SRC_L2 / SRC_LLC / SRC_MEM
W_COLS = 4
SRC_L2 = 0
SRC_LLC = 1
SRC_MEM = 2
SOURCE_NAMES = ("L2", "LLC", "mem")

# Probe statuses (the first value :func:`warm_translate` returns).
PROBE_DONE = 0
PROBE_RELOAD = 1  # shadow: the VMM must first load a new root (it allocates): not probed


@jit
def warm_translate(c, lines, sstats, cr3, pcid, va, access, ctl, out):
    """One hardware translation attempt of ``va``, recording every reference it issues.

    Every state argument must be a copy the caller can throw away (all are mutated exactly as
    the engine mutates the machine's own).

    Parameters
    ----------
    c : mmu.state.MachineState
        A copy of the machine (every array of it; mutated exactly as the engine mutates the
        machine's own).
    lines : tuple
        A second copy of the walk-line caches as they were before the translation: the issued
        references are replayed through it to learn where each one's line came from.
    sstats : int64[N_STATS]
        Scratch for that line classification.
    cr3, pcid : int64
        The current process's CR3 (root | PCID) and PCID.
    va : int64
    access, ctl : int64
        ACC_* and the CTL_* bits of the access (CPL included).
    out : int64[MAX_REFS, W_COLS]
        Out: rows ``0..n-1`` = (dimension, level, hpa, source) of each reference issued.

    Returns
    -------
    (probe, status, code, addr, gpa, n) : tuple of int64
        ``probe`` PROBE_*; ``status`` WALK_OK / WALK_PF / WALK_GP or HW_EPT_VIOLATION /
        HW_EPT_MISCONFIG (nested), or WALK_PF for a shadow #PF (a VM exit); ``code`` the #PF
        error code or exit qualification; ``addr`` the (host-)physical address on success;
        ``gpa`` the guest-physical address (nested and shadow: of the data on success, of the
        failed translation on an exit); ``n`` the references issued.
    """
    mem, halloc, vm, hcache, sh, tlb, psc, ptc = c.mem, c.halloc, c.vm, c.hcache, c.sh, c.tlb, c.psc, c.ptc
    stats, cfg = c.stats, c.cfg
    trail, gtrail, htrail, refs = c.scratch.trail, c.scratch.gtrail, c.scratch.htrail, c.scratch.refs
    z = np.int64(0)
    n0 = stats[S_WALK_REFS]
    gpa = z
    if vm.vmeta[V_MODE] == MODE_NESTED:
        status, code, addr, gpa = hw_translate_nested(
            mem, vm, hcache, tlb, psc, ptc, stats, cfg, cr3, pcid, va, access, ctl, gtrail, htrail, refs
        )
        n = stats[S_WALK_REFS] - n0
        for i in range(n):
            out[i, W_DIM] = refs[i, RF_DIM]
            out[i, W_LEVEL] = refs[i, RF_LEVEL]
            out[i, W_HPA] = refs[i, RF_HPA]
    else:
        hcr3 = cr3
        hctl = ctl
        shadow = vm.vmeta[V_MODE] == MODE_SHADOW
        if shadow:
            if sh_needs_root(sh):
                return np.int64(PROBE_RELOAD), z, z, z, z, z
            if sh_pending(sh):
                # a flush the VMM requested, zapped previous roots to free: done before the guest
                # resumes (allocates nothing without a new current root)
                sh_before_entry(mem, halloc, vm, sh, tlb, psc, stats, ctl, cfg[C_ASID])
            # The hardware walks the shadow tables, with CR0.WP forced on (as KVM runs it).
            hcr3 = sh_root_hpa(sh) | pcid
            hctl = ctl | CTL_WP
        status, code, addr = hw_translate(mem, tlb, psc, ptc, stats, cfg, hcr3, pcid, va, access, hctl, trail)
        if shadow and status == WALK_OK:
            gpa = vm_gpa_of(vm, addr)
        n = stats[S_WALK_REFS] - n0
        for i in range(n):
            out[i, W_DIM] = DIM_GUEST
            out[i, W_LEVEL] = trail[i, TR_LEVEL]
            out[i, W_HPA] = trail[i, TR_ENTRY_PA]
    for i in range(n):
        l2 = sstats[S_REF_L2_HITS]
        llc = sstats[S_REF_LLC_HITS]
        count_walk_ref(lines, sstats, out[i, W_HPA])
        if sstats[S_REF_L2_HITS] != l2:
            out[i, W_SOURCE] = SRC_L2
        elif sstats[S_REF_LLC_HITS] != llc:
            out[i, W_SOURCE] = SRC_LLC
        else:
            out[i, W_SOURCE] = SRC_MEM
    return np.int64(PROBE_DONE), np.int64(status), np.int64(code), np.int64(addr), np.int64(gpa), np.int64(n)


def _clone(x: Any) -> Any:
    """A deep copy of a state value: (named) tuples of arrays, nested; arrays; None."""
    if x is None:
        return None
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_clone(a) for a in x))
    if isinstance(x, tuple):
        return tuple(_clone(a) for a in x)
    return np.array(x, copy=True)


def _hit_index(before: np.ndarray, after: np.ndarray) -> int | None:
    """The row whose hit counter (column 0) grew, if any."""
    grew = np.flatnonzero(after[:, 0] > before[:, 0])
    return int(grew[0]) if grew.size else None


class Probe(NamedTuple):
    """What one warm hardware translation attempt did (all machine facts; no rendering)."""

    probe: int  # PROBE_DONE, or PROBE_RELOAD (shadow: not probed)
    top: int  # the level the walk would start at with no PSC hit
    status: int  # WALK_OK / WALK_PF / WALK_GP, HW_EPT_VIOLATION / HW_EPT_MISCONFIG (nested)
    code: int  # #PF error code or exit qualification
    addr: int  # (host-)physical address on success
    gpa: int  # guest-physical address (nested, shadow)
    refs: np.ndarray  # int64[n, W_COLS]: every reference issued, in order
    tlb_hit: int | None  # the preset's TLB structure that hit, by index
    psc_hit: int | None  # the PSC that hit, by index (only when a walk ran)
    walked: bool
    dirty_rewalk: bool
    mem: tuple  # the memory copy after the attempt (A/D flags as the walk set them)
    pending_flush: bool  # shadow: the VMM's pending flush ran first


def probe_machine(machine: Any, va: int, access: str, user: bool) -> Probe:
    """Run one hardware translation attempt of ``va`` on copies of ``machine``'s state.

    ``machine`` (:class:`mmu.engine.Machine`, any mode) is not changed; its current process
    translates. ``access`` is "r", "w" or "x"; ``user`` selects CPL 3.
    """
    m = machine
    mode = m.config.mode
    row = int(m.osst.ometa[O_CUR])
    if row < 0:
        raise MMUInputError("no process has run yet: nothing to probe")
    acc = check_walk_args(access, m.config.maxphyaddr, 0)
    ctl = int(m.cfg[C_CTL]) | (CTL_USER if user else 0)
    cr3 = int(os_cr3(m.osst, np.int64(row)))
    pcid = int(m.osst.procs[row, P_PCID])
    top = int(m.sh.smeta[SM_LEVELS]) if mode == "shadow" else (5 if ctl & CTL_LA57 else 4)
    c = _clone(m.state)
    # The walk scratch is fresh (nothing in it outlives a translation).
    c = c._replace(scratch=Scratch(*(np.zeros_like(a) for a in c.scratch)))
    out = np.zeros((MAX_REFS, W_COLS), dtype=np.int64)
    res = warm_translate(
        c, _clone(m.ptc), new_stats(), np.int64(cr3), np.int64(pcid), np.int64(to_int64(va)), np.int64(acc),
        np.int64(ctl), out,
    )  # fmt: skip
    tlb, psc, stats, mem = c.tlb, c.psc, c.stats, c.mem
    probe_st, status, code, addr, gpa, n = (int(x) for x in res)
    if probe_st == PROBE_RELOAD:
        return Probe(probe_st, top, status, code, addr, gpa, out[:0], None, None, False, False, mem, False)
    hit = _hit_index(m.tlb.stats, tlb.stats)
    walked = int(stats[S_WALKS] - m.stats[S_WALKS]) > 0
    psc_hit = _hit_index(m.psc.stats, psc.stats) if walked else None
    dirty = int(stats[S_DIRTY_REWALKS] - m.stats[S_DIRTY_REWALKS]) > 0
    pending = mode == "shadow" and bool(sh_pending(m.sh))
    return Probe(probe_st, top, status, code, addr, gpa, out[:n].copy(), hit, psc_hit, walked, dirty, mem, pending)
