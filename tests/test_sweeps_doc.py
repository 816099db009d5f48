"""docs/sweeps.md's worked example: its ratios are what the sweep it shows computes."""

from __future__ import annotations

import re
from pathlib import Path

from mmu.sweep import SweepTable, plan, run_sweep, spec_from_cli

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "sweeps.md").read_text()


def test_crossover_example(tmp_path):
    cmd = re.search(r"\$ mmu sweep (traces/programs/gups\.s:\S+) --modes (\S+) \\\n\s+--cost (\S+) --cost (\S+)", DOC)
    assert cmd, "the example's command is in docs/sweeps.md"
    program, modes, exit_costs, dram_costs = cmd.groups()
    spec = spec_from_cli([str(ROOT / program)], modes, [], [exit_costs, dram_costs], 100_000_000)
    tasks = plan(spec)
    assert len(tasks) == 2 and sum(len(t.prices) for t in tasks) == 40
    assert "40 runs in crossover.csv" in DOC and "2 simulations; 38 rows re-priced or shared" in DOC
    run_sweep(tasks, SweepTable(tmp_path / "c.csv"), workers=1)
    rows = SweepTable(tmp_path / "c.csv").ordered()
    cycles = {(r["mode"], r["cost.exit"], r["cost.ref_dram"]): int(r["cycles"]) for r in rows}
    quoted = re.search(r"at\s+`ref_dram = 200`: (.*?):", DOC, re.S)
    assert quoted, "the example's ratios are in docs/sweeps.md"
    pairs = re.findall(r"([\d.]+) \(exit ([\d,]+)\)|([\d.]+) \(([\d,]+)\)", quoted.group(1))
    assert len(pairs) == 5
    for a, b, c, d in pairs:
        ratio, exit_cost = (a, b) if a else (c, d)
        key = exit_cost.replace(",", "")
        assert f"{cycles[('shadow', key, '200')] / cycles[('nested', key, '200')]:.2f}" == ratio, key
