"""End-to-end replay speed on two synthetic traces of known TLB behaviour, and on the shipped traces.

* ``l1_hits``: ~97% of accesses hit the L1 DTLB (32 hot pages), the rest spread over
  1,024 pages that stay in the STLB.
* ``stlb_hits``: uniform over 1,024 pages: most accesses miss the 64-entry L1 DTLB and
  hit the 1,536-entry STLB.

Each round replays the trace on a machine that already replayed it once (page tables
built, TLBs warm), so the figure is steady-state replay, not demand paging.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmu.engine import Machine, MachineConfig
from mmu.trace.format import RECORD_DTYPE

N = 4_000_000
BASE = 0x7F00_0000_0000


def _trace(kind: str) -> np.ndarray:
    rng = np.random.default_rng(11)
    if kind == "l1_hits":
        pages = rng.integers(0, 32, N)
        far = rng.random(N) < 0.03
        pages[far] = rng.integers(32, 1024, int(far.sum()))
    else:
        pages = rng.integers(0, 1024, N)
    r = np.zeros(N, dtype=RECORD_DTYPE)
    r["addr"] = BASE + pages * 4096 + rng.integers(0, 512, N) * 8
    r["arg"] = 8
    r["pid"] = 1
    r["op"] = (rng.random(N) < 0.3).astype(np.uint8)
    return r


@pytest.mark.parametrize("mode", ["native", "shadow"])
@pytest.mark.parametrize("kind", ["l1_hits", "stlb_hits"])
def test_native_replay(benchmark, kind, mode):
    """Steady-state replay; in shadow mode the hardware walks the shadow tables (no exits once
    the shadow is built), so this is the price of the shadow path itself."""
    recs = _trace(kind)

    def setup():
        m = Machine(MachineConfig(mode=mode))
        m.run(recs)
        return (m,), {}

    def run(m):
        m.run(recs)
        return m

    m = benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1)
    s = m.result()
    benchmark.extra_info["accesses_per_s"] = N / benchmark.stats.stats.mean
    benchmark.extra_info["l1_hit_rate"] = s["tlb_l1_hits"] / s["translations"]
    benchmark.extra_info["stlb_hit_rate"] = s["tlb_l2_hits"] / s["translations"]


TRACES = sorted((__import__("pathlib").Path(__file__).resolve().parent.parent / "traces").glob("*.trace"))


@pytest.mark.parametrize("mode", ["native", "shadow", "nested"])
@pytest.mark.parametrize("path", TRACES, ids=[p.name for p in TRACES])
def test_shipped_trace_replay(benchmark, path, mode):
    """A full replay of a shipped trace on a fresh machine (demand paging and exits included)."""
    from mmu.trace.format import TraceReader

    recs = np.array(TraceReader(path).memmap())
    Machine(MachineConfig(mode=mode)).run(recs[:10])  # compile / load kernels outside the timing

    def setup():
        return (Machine(MachineConfig(mode=mode)),), {}

    def run(m):
        m.run(recs)
        return m

    m = benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1)
    benchmark.extra_info["accesses_per_s"] = m.result()["accesses"] / benchmark.stats.stats.mean


E2E_N = 20_000_000


@pytest.fixture(scope="module")
def l1_trace_20m(tmp_path_factory):
    """A 20M-record trace file of the ``l1_hits`` kind (97% L1 DTLB hits), 320 MB."""
    from mmu.trace.format import TraceWriter

    path = tmp_path_factory.mktemp("e2e") / "l1-20m.trace"
    rng = np.random.default_rng(11)
    with TraceWriter(path) as w:
        for _ in range(E2E_N // N):
            pages = rng.integers(0, 32, N)
            far = rng.random(N) < 0.03
            pages[far] = rng.integers(32, 1024, int(far.sum()))
            r = np.zeros(N, dtype=RECORD_DTYPE)
            r["addr"] = BASE + pages * 4096 + rng.integers(0, 512, N) * 8
            r["arg"] = 8
            r["pid"] = 1
            r["op"] = (rng.random(N) < 0.3).astype(np.uint8)
            w.write(r)
    return path


def test_end_to_end_replay_process(benchmark, l1_trace_20m):
    """``mmu replay FILE --json`` on a 20M-record file, the whole process (interpreter start,
    imports, loading the cached kernels, reading and validating the file, the replay)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "mmu", "replay", str(l1_trace_20m), "--json"]
    subprocess.run(cmd, check=True, capture_output=True)  # the kernels are in the cache

    def run():
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    stats = __import__("json").loads(out)
    benchmark.extra_info["accesses_per_s"] = stats["accesses"] / benchmark.stats.stats.median
    benchmark.extra_info["kernel_elapsed_s"] = stats["elapsed_s"]


def test_end_to_end_replay_in_process(benchmark, l1_trace_20m):
    """``mmu.replay(FILE)`` on the same file in a warm process (reading and validation included)."""
    from mmu.replayfile import replay

    replay(l1_trace_20m, MachineConfig(mode="native"))

    stats = benchmark.pedantic(lambda: replay(l1_trace_20m, MachineConfig(mode="native")), rounds=3)
    benchmark.extra_info["accesses_per_s"] = stats["accesses"] / benchmark.stats.stats.median
