"""The warm probe's view: what a machine's caches would serve for one translation.

``mmu walk --trace T --index N`` draws record N's translation as the cold walk (every reference
numbered). At that trace position the machine is warm; :func:`mmu.modes.probe.probe_machine`
runs the engine's own hardware path on copies of its state, and :func:`probe` turns what it
found into the view's :class:`~mmu.report.walkview.WarmWalk`: the TLB hit or the level the walk
starts at, each reference issued with where its line came from, and (nested) the grid rows the
nested TLB translated. This module renders only; it simulates nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmu.memory import mem_read
from mmu.modes.nested import HW_EPT_MISCONFIG, HW_EPT_VIOLATION
from mmu.modes.probe import PROBE_RELOAD, SOURCE_NAMES, W_DIM, W_HPA, W_LEVEL, W_SOURCE, probe_machine
from mmu.report.walkview import WarmRef, WarmWalk
from mmu.x86.bits import WALK_GP, WALK_OK, WALK_PF
from mmu.x86.nested import DIM_HOST


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
    p = probe_machine(m, va, access, user)
    top = p.top
    if p.probe == PROBE_RELOAD:
        return WarmWalk(
            record=record, mode=mode, outcome="not_predicted", top_level=top,
            note="the VMM reloads a zapped shadow root before the guest resumes (it builds a new one), "
            "so what the warm hardware would do is not predicted",
        )  # fmt: skip
    tlb_hit = m.preset.tlbs[p.tlb_hit].name if p.tlb_hit is not None else None
    c = p.psc_hit
    start = (c + 1 if c is not None else top) if p.walked else 0
    psc_hit = next(q.name for q in m.preset.pscs if q.entry_level == c + 2) if c is not None else None
    warm_refs = _rows(p.refs, mode == "nested", start, p.mem)
    ntlb_rows: set[int] = set()
    if mode == "nested":
        ntlb_rows = _ntlb_rows(warm_refs, p.status == WALK_OK)
    status = p.status
    return WarmWalk(
        record=record,
        mode=mode,
        outcome=_outcome(mode, status),
        top_level=top,
        tlb_hit=tlb_hit,
        dirty_rewalk=p.dirty_rewalk,
        psc_hit=psc_hit,
        start_level=start,
        refs=tuple(warm_refs),
        ntlb_rows=frozenset(ntlb_rows),
        addr=p.addr if status == WALK_OK else None,
        gpa=p.gpa if mode != "native" and status in (WALK_OK, HW_EPT_VIOLATION, HW_EPT_MISCONFIG) else None,
        code=p.code,
        note=_note(p.pending_flush),
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


def _note(pending_flush: bool) -> str:
    if pending_flush:
        return "the VMM's pending flush of the VM's TLB entries and PSCs runs first, before the guest resumes"
    return ""
