"""Cycles are a function of event counts: re-pricing a run equals running it with those costs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmu.engine import MachineConfig, replay
from mmu.errors import MMUInputError
from mmu.guest.asm import assemble_file
from mmu.guest.run import run_program
from mmu.stats import price, reprice

TRACES = Path(__file__).resolve().parent.parent / "traces"
PROGRAMS = TRACES / "programs"

COSTS = {"exit": 700, "ref_dram": 350, "shadow_fault": 4000, "sw_walk_step": 90, "spte_write": 3, "sync_entry": 55}
CYCLE_KEYS = ("cycles", "cycles_per_access", "translation_cycles", "cycles_breakdown", "exits", "cost")


def _cycles(s: dict) -> dict:
    return {k: s[k] for k in CYCLE_KEYS}


@pytest.mark.parametrize("mode", ["native", "shadow", "nested"])
def test_repriced_trace_equals_a_full_run(mode):
    trace = TRACES / "ls-usr.trace"
    ran = replay(trace, MachineConfig(mode=mode))
    full = replay(trace, MachineConfig(mode=mode, cost_overrides=COSTS))
    again = reprice(ran, COSTS)
    assert _cycles(again) == _cycles(full)
    assert again["cycles"] != ran["cycles"]  # the costs moved the figure
    assert ran["cost"]["exit"] == 2000, "re-pricing returns a copy; the original keeps its costs"


def test_repriced_program_equals_a_full_run():
    prog = assemble_file(PROGRAMS / "forkwait.s")
    ran = run_program(prog, [6, 2], MachineConfig(mode="shadow"))
    full = run_program(prog, [6, 2], MachineConfig(mode="shadow", cost_overrides=COSTS))
    assert _cycles(reprice(ran, COSTS)) == _cycles(full)
    # shadow's variable handler work is counted in units, by exit reason
    work = {w for e in ran["exits"].values() for w in e["work"]}
    assert {"sw_walk_step", "sp_alloc", "spte_write"} <= work


def test_price_is_the_documented_sum():
    s = replay(TRACES / "gzip.trace", MachineConfig(mode="shadow"))
    c = s["cost"]
    b = s["cycles_breakdown"]
    assert b["tlb"] == s["tlb_l1_hits"] * c["tlb_l1"] + (s["tlb_l2_hits"] + s["tlb_misses"]) * c["tlb_l2"]
    src = s["walk_ref_sources"]
    assert b["walk"] == src["l2"] * c["ref_l2"] + src["llc"] * c["ref_llc"] + src["dram"] * c["ref_dram"]
    hidden = s["exits"]["hidden_fault"]
    units = sum(n * c[w] for w, n in hidden["work"].items())
    assert hidden["cycles"] == hidden["count"] * (c["exit"] + c["shadow_fault"]) + units
    assert s["cycles"] == s["accesses"] * c["base"] + b["tlb"] + b["walk"] + b["guest_page_faults"] + b["vm_exits"]
    assert price(dict(s), c)["cycles"] == s["cycles"]


def test_reprice_refuses_geometry_and_unknown_names():
    s = replay(TRACES / "gzip.trace", MachineConfig(mode="native"))
    with pytest.raises(MMUInputError, match="geometry"):
        reprice(s, {"l2_lines": 64})
    assert reprice(s, {"l2_lines": s["cost"]["l2_lines"]})["cycles"] == s["cycles"]
    with pytest.raises(MMUInputError, match="unknown cost parameter 'exits'"):
        reprice(s, {"exits": 1})
    with pytest.raises(MMUInputError, match=">= 0"):
        reprice(s, {"exit": -1})
