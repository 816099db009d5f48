"""`mmu sweep` end to end: cores used, and cost values that cost no simulation.

* ``test_sweep_workers``: a 16-run grid (4 modes x 4 STLB sizes, every run its own simulation)
  on a GUPS-like trace of 4M accesses over 256 MiB, with ``--workers 1`` and ``--workers 2``.
  The kernels are compiled before the first round (``mmu cache warm``), so the figure is the
  sweep, not the compiler. Target (issue 16): >= 1.8x faster with 2 workers on 2 cores.
* ``test_cost_sweep``: 6 exit costs x 3 modes against the 3 modes alone: cycles are re-priced
  from the counts, so the 18-row sweep should take about the time of 3 replays.

Each round is a whole ``python -m mmu sweep`` process writing a fresh table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmu.trace.format import RECORD_DTYPE, write_trace

N = 4_000_000
BASE = 0x7F00_0000_0000


@pytest.fixture(scope="module")
def gups_trace(tmp_path_factory) -> Path:
    rng = np.random.default_rng(16)
    r = np.zeros(N, dtype=RECORD_DTYPE)
    r["addr"] = BASE + rng.integers(0, (256 << 20) // 8, N) * 8
    r["arg"] = 8
    r["pid"] = 1
    r["op"] = (rng.random(N) < 0.5).astype(np.uint8)
    path = tmp_path_factory.mktemp("sweep") / "gups-256m-4m.trace"
    write_trace(path, r, {"source": "bench_sweep: uniform 8-byte accesses over 256 MiB, half writes"})
    subprocess.run([sys.executable, "-m", "mmu", "cache", "warm"], check=True, capture_output=True)
    return path


def _sweep(tmp_path: Path, *args: str) -> None:
    out = tmp_path / "t.csv"
    out.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "mmu", "sweep", *args, "-o", str(out), "-q"], check=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_sweep_workers(benchmark, gups_trace, tmp_path, workers):
    grid = [str(gups_trace), "--modes", "native,shadow,nested,nested:2m", "--param", "stlb=512,1024,1536,2048"]
    benchmark.pedantic(_sweep, args=(tmp_path, *grid, "--workers", str(workers)), rounds=3, warmup_rounds=0)
    benchmark.extra_info["runs"] = 16
    benchmark.extra_info["workers"] = workers


@pytest.mark.parametrize("costs", [0, 6])
def test_cost_sweep(benchmark, gups_trace, tmp_path, costs):
    grid = [str(gups_trace), "--modes", "native,shadow,nested", "--workers", "1"]
    if costs:
        grid += ["--cost", "exit=500,1000,1500,2000,3000,4000"]
    benchmark.pedantic(_sweep, args=(tmp_path, *grid), rounds=3, warmup_rounds=0)
    benchmark.extra_info["rows"] = 3 * max(costs, 1)
