"""Cold compile time of each entry point, and of ``mmu cache warm``, with an empty numba cache.

Each measurement runs in a fresh subprocess with its own empty ``NUMBA_CACHE_DIR`` (so nothing
is loaded from an earlier compile), and times the compile alone (imports excluded); the
``warm`` case times the whole ``mmu cache warm`` command (process start and imports included),
on every core. One round each: a round takes tens of seconds.

Run: ``python -m pytest bench/bench_compile.py -q`` (figures in docs/performance.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_COMPILE = """
import json, sys
from mmu.kernels import compile_group
print(json.dumps(compile_group(sys.argv[1:])))
"""


def _env(tmp_path: Path) -> dict[str, str]:
    cache = tmp_path / "numba-cache"
    cache.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, NUMBA_CACHE_DIR=str(cache))


@pytest.mark.parametrize(
    "names",
    [("replay_kernel",), ("cpu_slice", "cpu_event"), ("warm_translate",), ("guest_op_kernel",)],
    ids=lambda n: "+".join(n),
)
def test_cold_compile_entry_point(benchmark, tmp_path, names):
    """One entry point with everything it calls, alone in one process (no cache)."""

    def run() -> list[tuple[str, float]]:
        env = _env(tmp_path / str(time.perf_counter_ns()))
        out = subprocess.run(
            [sys.executable, "-c", _COMPILE, *names], env=env, capture_output=True, text=True, check=True, cwd=ROOT
        )
        return json.loads(out.stdout)

    timings = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["compile_s"] = {name: round(sec, 2) for name, sec in timings}


def test_cold_cache_warm_all_cores(benchmark, tmp_path):
    """``mmu cache warm``: every kernel, on every core, as the first ``mmu demo`` and CI do."""

    def run() -> None:
        env = _env(tmp_path / str(time.perf_counter_ns()))
        subprocess.run(
            [sys.executable, "-m", "mmu", "cache", "warm"], env=env, check=True, cwd=ROOT, capture_output=True
        )

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["cores"] = os.cpu_count()
