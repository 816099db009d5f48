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

from typing import Any

import numpy as np

from mmu._jit import jit
from mmu.errors import MMUInputError
from mmu.guest.os import O_CUR, P_PCID, os_cr3
from mmu.memory import mem_read
from mmu.modes.native import C_ASID, C_CTL, count_walk_ref, hw_translate
from mmu.modes.nested import HW_EPT_MISCONFIG, HW_EPT_VIOLATION, hw_translate_nested
from mmu.modes.shadow import SM_LEVELS, SM_RELOAD, sh_before_entry, sh_pending, sh_root_hpa
from mmu.modes.vmm import MODE_SHADOW, V_MODE, vm_gpa_of
from mmu.report.walkview import WarmRef, WarmWalk
from mmu.stats import S_DIRTY_REWALKS, S_REF_L2_HITS, S_REF_LLC_HITS, S_WALK_REFS, S_WALKS, new_stats
from mmu.x86.bits import CTL_LA57, CTL_USER, CTL_WP, WALK_GP, WALK_OK, WALK_PF
from mmu.x86.ept import HT_COLS
from mmu.x86.nested import DIM_GUEST, DIM_HOST, GT_COLS, MAX_REFS, RF_COLS, RF_DIM, RF_HPA, RF_LEVEL
from mmu.x86.walk import MAX_LEVELS, TR_COLS, TR_ENTRY_PA, TR_LEVEL, check_walk_args, to_int64

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
def warm_translate(
    mem, halloc, vm, hcache, sh, tlb, psc, ptc, lines, stats, cfg, cr3, pcid, va, access, ctl, scratch, out
):
    """One hardware translation attempt of ``va``, recording every reference it issues.

    Every state argument must be a copy the caller can throw away (all are mutated exactly as
    the engine mutates the machine's own).

    Parameters
    ----------
    mem, halloc, vm, hcache, sh, tlb, psc, ptc : tuples
        Copies of the machine's state (``hcache`` None outside nested mode, which compiles the
        1D path only; ``sh`` a dummy outside shadow mode).
    lines : tuple
        A second copy of the walk-line caches as they were before the translation: the issued
        references are replayed through it to learn where each one's line came from.
    stats : int64[N_STATS]
        A copy of the machine's stats (mutated).
    cfg : int64[C_LEN]
    cr3, pcid : int64
        The current process's CR3 (root | PCID) and PCID.
    va : int64
    access, ctl : int64
        ACC_* and the CTL_* bits of the access (CPL included).
    scratch : tuple
        ``(trail, gtrail, htrail, refs, sstats)``: the walk scratch arrays of
        :class:`mmu.engine.Machine` (copies) and an int64[N_STATS] scratch for the line
        classification.
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
    trail, gtrail, htrail, refs, sstats = scratch
    z = np.int64(0)
    n0 = stats[S_WALK_REFS]
    gpa = z
    if hcache is not None:
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
        shadow = vm[1][V_MODE] == MODE_SHADOW
        if shadow:
            if sh[7][SM_RELOAD] != 0:
                return np.int64(PROBE_RELOAD), z, z, z, z, z
            if sh_pending(sh):
                # a flush the VMM requested: done before the guest resumes (allocates nothing
                # without a reload)
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
    """A deep copy of a state value: tuples of arrays (nested), arrays, None."""
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(_clone(a) for a in x)
    return np.array(x, copy=True)


def _hit_index(before: np.ndarray, after: np.ndarray) -> int | None:
    """The row whose hit counter (column 0) grew, if any."""
    grew = np.flatnonzero(after[:, 0] > before[:, 0])
    return int(grew[0]) if grew.size else None


def probe(machine: Any, va: int, access: str, user: bool, record: int) -> WarmWalk:
    """What ``machine``'s hardware would do translating ``va`` in its current process now.

    Parameters
    ----------
    machine : mmu.engine.Machine
        Any mode; its current process is the one translating (the trace view switches to the
        record's process first, as the replay would). Not changed.
    va : int
        Virtual address, 0 <= va < 2**64.
    access : {"r", "w", "x"}
    user : bool
        CPL 3 (the replay's accesses are all user accesses).
    record : int
        The trace position, for the view's words only.

    Returns
    -------
    WarmWalk
        The TLB and PSC outcome, every reference issued with where its line came from, the
        grid rows the nested TLB translated, and the outcome of the attempt.
    """
    m = machine
    mode = m.config.mode
    row = int(m.osst[2][O_CUR])
    if row < 0:
        raise MMUInputError("no process has run yet: nothing to probe")
    acc = check_walk_args(access, m.config.maxphyaddr, 0)
    ctl = int(m.cfg[C_CTL]) | (CTL_USER if user else 0)
    cr3 = int(os_cr3(m.osst, np.int64(row)))
    pcid = int(m.osst[0][row, P_PCID])
    top = int(m.sh[7][SM_LEVELS]) if mode == "shadow" else (5 if ctl & CTL_LA57 else 4)
    tlb, psc, hcache = _clone(m.tlb), _clone(m.psc), _clone(m.hcache)
    stats = m.stats.copy()
    scratch = (
        np.zeros((MAX_LEVELS, TR_COLS), dtype=np.int64),
        np.zeros((MAX_LEVELS, GT_COLS), dtype=np.int64),
        np.zeros((MAX_LEVELS, HT_COLS), dtype=np.int64),
        np.zeros((MAX_REFS, RF_COLS), dtype=np.int64),
        new_stats(),
    )
    out = np.zeros((MAX_REFS, W_COLS), dtype=np.int64)
    mem = _clone(m.mem.state)
    res = warm_translate(
        mem, _clone(m.mem.alloc.state), _clone(m.vm), hcache, _clone(m.sh), tlb, psc, _clone(m.ptc),
        _clone(m.ptc), stats, m.cfg.copy(), np.int64(cr3), np.int64(pcid), np.int64(to_int64(va)),
        np.int64(acc), np.int64(ctl), scratch, out,
    )  # fmt: skip
    probe_st, status, code, addr, gpa, n = (int(x) for x in res)
    if probe_st == PROBE_RELOAD:
        return WarmWalk(
            record=record, mode=mode, outcome="not_predicted", top_level=top,
            note="the VMM reloads a zapped shadow root before the guest resumes (it builds a new one), "
            "so what the warm hardware would do is not predicted",
        )  # fmt: skip
    hit = _hit_index(m.tlb[-2], tlb[-2])
    tlb_hit = m.preset.tlbs[hit].name if hit is not None else None
    walked = int(stats[S_WALKS] - m.stats[S_WALKS]) > 0
    c = _hit_index(m.psc[-2], psc[-2])
    start = (c + 1 if c is not None else top) if walked else 0
    psc_hit = next(p.name for p in m.preset.pscs if p.entry_level == c + 2) if c is not None and walked else None
    warm_refs = _rows(out[:n], mode == "nested", start, mem)
    ntlb_rows: set[int] = set()
    if mode == "nested":
        ntlb_rows = _ntlb_rows(warm_refs, status == WALK_OK)
    return WarmWalk(
        record=record,
        mode=mode,
        outcome=_outcome(mode, status),
        top_level=top,
        tlb_hit=tlb_hit,
        dirty_rewalk=int(stats[S_DIRTY_REWALKS] - m.stats[S_DIRTY_REWALKS]) > 0,
        psc_hit=psc_hit,
        start_level=start,
        refs=tuple(warm_refs),
        ntlb_rows=frozenset(ntlb_rows),
        addr=addr if status == WALK_OK else None,
        gpa=gpa if mode != "native" and status in (WALK_OK, HW_EPT_VIOLATION, HW_EPT_MISCONFIG) else None,
        code=code,
        note=_note(m, mode),
    )


def _rows(out: np.ndarray, nested: bool, start: int, mem: tuple) -> list[WarmRef]:
    """The issued references as :class:`WarmRef`, each with the grid row it belongs to.

    1D walks: a reference's row is its level. 2D walks: host references belong to the row of
    the guest entry they translate (the next guest reference); trailing host references
    translate the data gpa (row 0) after a guest leaf, else the next guest entry's gpa.
    """
    refs = [
        (int(d), int(lv), int(hpa), SOURCE_NAMES[int(s)]) for d, lv, hpa, s in out[:, [W_DIM, W_LEVEL, W_HPA, W_SOURCE]]
    ]
    if not nested:
        return [WarmRef(i + 1, "g", lv, hpa, src, lv) for i, (_d, lv, hpa, src) in enumerate(refs)]
    rows = [0] * len(refs)
    pending: list[int] = []
    last_guest: tuple[int, int] | None = None  # (level, hpa)
    for i, (d, lv, hpa, _src) in enumerate(refs):
        if d == DIM_HOST:
            pending.append(i)
            continue
        for k in pending:
            rows[k] = lv
        rows[i] = lv
        pending = []
        last_guest = (lv, hpa)
    if pending:
        if last_guest is None:
            row = start
        else:
            level, hpa = last_guest
            v = int(mem_read(mem, np.int64(hpa)))
            leaf = bool(v & 1) and (level == 1 or (level <= 3 and bool(v & 0x80)))
            row = 0 if leaf else level - 1
        for k in pending:
            rows[k] = row
    return [
        WarmRef(i + 1, "h" if d == DIM_HOST else "g", lv, hpa, src, rows[i]) for i, (d, lv, hpa, src) in enumerate(refs)
    ]


def _ntlb_rows(refs: list[WarmRef], translated: bool) -> set[int]:
    """Grid rows whose gpa the nested TLB translated: a guest entry read with no host reference
    before it, and the data row of a completed walk with no host reference after the last guest
    entry."""
    rows: set[int] = set()
    host_rows = {r.row for r in refs if r.dim == "h"}
    for r in refs:
        if r.dim == "g" and r.row not in host_rows:
            rows.add(r.row)
    if translated and refs and 0 not in host_rows:
        rows.add(0)
    return rows


def _outcome(mode: str, status: int) -> str:
    if status == WALK_OK:
        return "ok"
    if status == WALK_GP:
        return "gp"
    if mode == "nested":
        if status == HW_EPT_VIOLATION:
            return "ept_violation"
        if status == HW_EPT_MISCONFIG:
            return "ept_misconfig"
    if mode == "shadow" and status == WALK_PF:
        return "shadow_pf"
    return "pf"


def _note(m: Any, mode: str) -> str:
    if mode == "shadow" and sh_pending(m.sh):
        return "the VMM's pending flush of the VM's TLB entries and PSCs runs first, before the guest resumes"
    return ""
