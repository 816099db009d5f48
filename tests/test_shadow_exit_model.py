"""The shadow MMU's exits and counters equal those of an independent model of KVM
(``tests/reference/kvm_shadow.py``), fed the guest events the engine logged.

A :class:`Pair` runs a shadow :class:`~mmu.engine.Machine` with its event log on and feeds each
step's events to the model, then compares exits by reason and the shadow counters exactly, so a
failure names the first step where they part. Accesses that hit the TLB are no event; for those
the harness checks that the model's shadow tables map them too (no exit either way).

Scenario tests assert KVM's expected values (issue 13) against the model and the engine; the
hypothesis and shipped-program/trace tests demand engine == model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmu.engine import HOST_PAGES, Machine, MachineConfig
from mmu.trace.format import OP_FETCH, OP_READ, OP_WRITE, RECORD_DTYPE, TraceReader
from tests.reference.kvm_shadow import KvmConfig, KvmShadowModel

TRACES = Path(__file__).resolve().parent.parent / "traces"
OPS = {0: OP_READ, 1: OP_WRITE, 2: OP_FETCH}
COMPARED = (
    "exits", "shadow_pages", "root_cache", "prefetched_sptes", "resync_entries", "vmm_sw_walk_steps",
    "emulated_writes", "large_sptes", "large_sptes_refused",
)  # fmt: skip


def model_config(c: MachineConfig) -> KvmConfig:
    return KvmConfig(
        levels=5 if c.la57 else 4, wp=c.wp, nxe=c.nxe, pcide=c.pcide, maxphyaddr=c.maxphyaddr,
        unsync=c.unsync, prefetch=c.prefetch, roots=c.roots, flood_threshold=c.flood_threshold,
        max_pages=c.shadow_pages, host_shift=HOST_PAGES[c.host_page],
    )  # fmt: skip


def engine_view(m: Machine) -> dict:
    """The engine's counters in the model's shape (exits with a zero count left out)."""
    r = m.result()
    ms = r["mode_stats"]
    view = {k: ms[k] for k in COMPARED if k in ms}
    view["exits"] = {k: v["count"] for k, v in r["exits"].items() if v["count"]}
    return view


def model_view(model: KvmShadowModel) -> dict:
    s = model.stats()
    return {k: s[k] for k in COMPARED}


def diff(engine: dict, model: dict) -> dict:
    """The counters that differ, as {name: (engine, model)}."""
    out = {}
    for k in COMPARED:
        e, m = engine.get(k), model.get(k)
        if isinstance(m, dict):
            for kk in sorted(set(e or {}) | set(m)):
                ev, mv = (e or {}).get(kk, 0), m.get(kk, 0)
                if ev != mv:
                    out[f"{k}.{kk}"] = (ev, mv)
        elif e != m:
            out[k] = (e, m)
    return out


class Pair:
    """A shadow machine and the KVM model fed its events, compared after every step."""

    def __init__(self, **cfg):
        self.m = Machine(MachineConfig(mode="shadow", **cfg))
        self.m.log_events(1 << 20)
        self.model = KvmShadowModel(model_config(self.m.config))
        self.steps: list[str] = []
        self.rec = np.zeros(1, dtype=RECORD_DTYPE)
        self.out = np.zeros(1, dtype=np.uint64)

    def _feed(self, what: str) -> list:
        events = self.m.events()
        self.m.clear_events()
        for ev in events:
            self.model.feed(ev)
        self.steps.append(what)
        return events

    def access(self, va: int, access: int = 0, pid: int = 1) -> int:
        """One user access of process ``pid``; its guest-physical address (2**64-1 if none)."""
        self.rec[0] = (va, 8, pid, OPS[access], 0)
        self.m.run(self.rec, self.out)
        events = self._feed(f"access {va:#x} {'rwx'[access]} pid {pid}")
        if not any(e[0] == "access" for e in events) and va >> 47 == 0:
            assert self.model.maps(va, access), f"a TLB hit the model would not let through: {self.steps[-1]}"
        return int(self.out[0])

    def store(self, gpa: int, value: int) -> None:
        self.m.guest_store(gpa, value)
        self._feed(f"store {gpa:#x} <- {value:#x}")

    def invlpg(self, va: int) -> None:
        self.m.invlpg(va)
        self._feed(f"invlpg {va:#x}")

    def flush(self) -> None:
        self.m.flush_tlb()
        self._feed("flush")

    def run(self, records: np.ndarray, what: str = "records") -> None:
        self.m.run(records)
        self._feed(what)

    def differences(self) -> dict:
        return diff(engine_view(self.m), model_view(self.model))

    def check(self) -> None:
        """Engine == model, and the guest saw the faults the model predicts."""
        d = self.differences()
        assert not d, f"engine != model after step {len(self.steps)} ({self.steps[-1]}): {d}"
        assert self.model.pf == self.model.seen_pf, "guest page faults differ from the model's"
        assert not self.model.notes, self.model.notes

    # guest table helpers (process row 0 unless told)
    def root(self, row: int = 0) -> int:
        return int(self.m.osst.procs[row, 1])

    def entry(self, va: int, level: int, row: int = 0) -> int:
        """Guest-physical address of the level-``level`` entry of ``va`` (tables must exist)."""
        table = self.root(row)
        for lv in range(4, level, -1):
            e = self.m.read_guest(table + 8 * ((va >> (12 + 9 * (lv - 1))) & 511))
            assert e & 1, f"no table at level {lv - 1} for {va:#x}"
            table = e & 0x000F_FFFF_FFFF_F000
        return table + 8 * ((va >> (12 + 9 * (level - 1))) & 511)

    def exits(self) -> dict:
        return engine_view(self.m)["exits"]

    def mstat(self, *path):
        v = engine_view(self.m)
        for p in path:
            v = v.get(p, 0) if isinstance(v, dict) else v
        return v


def both(pair: Pair, *path):
    """A counter as (engine, model)."""
    e = engine_view(pair.m)
    mo = model_view(pair.model)
    for p in path:
        e = e.get(p, 0) if isinstance(e, dict) else e
        mo = mo.get(p, 0) if isinstance(mo, dict) else mo
    return e, mo
