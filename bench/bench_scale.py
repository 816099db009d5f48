"""Replay at scale: peak memory of ``mmu replay`` must not grow with the trace's length.

Two traces of the same kind of stream -- 8-byte reads and writes (50/50) at random addresses
in a 64 MiB working set, so the guest's memory is bounded -- one of 10^7 records and one of
``MMU_BENCH_SCALE_RECORDS`` (default 10^8; 10^9 needs 16 GB of disk in the temp dir and
about 15 minutes on a 2-core VM), each replayed natively by ``python -m mmu replay FILE --json``
in a subprocess. The peak RSS of each process is read with ``os.wait4`` (the child's own
``ru_maxrss``) and put in ``extra_info``; the larger replay must stay within 10% of the smaller
one. Run with ``python -m pytest bench/bench_scale.py -q`` (set ``TMPDIR`` to a roomy disk for
10^9). Figures: docs/performance.md, "Replay at scale".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from mmu.trace.format import RECORD_DTYPE, TraceWriter

SMALL = 10_000_000
LARGE = int(float(os.environ.get("MMU_BENCH_SCALE_RECORDS", "1e8")))
BASE = 0x1000_0000
WORKING_SET = 64 << 20
PIECE = 1 << 22  # records generated and written at a time


def write_stream(path, n: int, seed: int = 1) -> None:
    """``n`` records of 8-byte reads/writes at random 8-byte-aligned addresses in the working set."""
    rng = np.random.default_rng(seed)
    with TraceWriter(path, {"source": "bench", "notes": "random 8-byte accesses in 64 MiB"}) as w:
        done = 0
        while done < n:
            k = min(PIECE, n - done)
            r = np.zeros(k, dtype=RECORD_DTYPE)
            r["addr"] = BASE + (rng.integers(0, WORKING_SET // 8, k, dtype=np.uint64) << np.uint64(3))
            r["arg"] = 8
            r["pid"] = 1
            r["op"] = rng.integers(0, 2, k, dtype=np.uint8)
            w.write(r, validate=False)
            done += k


def replay_peak(path) -> tuple[dict, int, float]:
    """Replay ``path`` in a fresh interpreter: (stats, peak RSS in bytes, wall seconds)."""
    cmd = [sys.executable, "-m", "mmu", "replay", str(path), "--json"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)  # reaps the child: its own rusage, not a running max
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        assert p.returncode == 0, err.read().decode()
        stats = json.loads(out.read())
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return stats, peak, wall


@pytest.fixture(scope="module")
def small_peak(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "small.trace"
    write_stream(path, SMALL)
    replay_peak(path)  # the kernels are in the cache before anything is measured
    stats, peak, _ = replay_peak(path)
    path.unlink()
    assert stats["accesses"] == SMALL
    return peak


def test_replay_memory_does_not_grow_with_length(benchmark, tmp_path_factory, small_peak):
    path = tmp_path_factory.mktemp("scale") / "large.trace"
    try:
        write_stream(path, LARGE)
        result = {}

        def run():
            result["stats"], result["peak"], result["wall"] = replay_peak(path)

        benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    finally:
        path.unlink(missing_ok=True)
    stats, peak = result["stats"], result["peak"]
    assert stats["accesses"] == LARGE
    benchmark.extra_info.update(
        {
            "records_small": SMALL,
            "records_large": LARGE,
            "peak_rss_mib_small": round(small_peak / 2**20, 1),
            "peak_rss_mib_large": round(peak / 2**20, 1),
            "peak_ratio": round(peak / small_peak, 3),
            "accesses_per_s": round(LARGE / result["wall"]),
        }
    )
    assert peak <= 1.10 * small_peak, (peak, small_peak)
