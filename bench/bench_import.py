"""Lackey import speed (pytest-benchmark).

Run: ``NUMBA_CACHE_DIR=/tmp/nbcache_bench python -m pytest bench/bench_import.py --benchmark-only``

Input: real Valgrind Lackey output of ``ls -l /usr`` (recorded once per session into a temp
dir, about 1M lines), repeated ``REPEAT`` times so one round parses ~8M lines. Reported in
``benchmark.extra_info``:

* ``lines_per_s`` -- end to end: read the text, parse, write the 16-byte records;
* ``kernel_lines_per_s`` -- the numba kernel alone on an in-memory block;
* ``baseline_lines_per_s`` / ``speedup_vs_regex`` -- a plain-Python regex parser on the
  first 200k lines (the obvious way), measured in the same run;
* ``cpu`` -- the CPU model.

``test_compile_time`` measures the kernel's first-call compile time in a subprocess with an
empty numba cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from mmu.trace.format import RECORD_DTYPE
from mmu.trace.lackey import HEX_TABLE, _parse_lackey, import_lackey

REPEAT = 8


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


@pytest.fixture(scope="session")
def lackey_log(tmp_path_factory):
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed")
    d = tmp_path_factory.mktemp("lackey")
    one = d / "ls.log"
    subprocess.run(
        ["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-file={one}", "ls", "-l", "/usr"],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    big = d / f"ls-x{REPEAT}.log"
    raw = one.read_bytes()
    with open(big, "wb") as f:
        for _ in range(REPEAT):
            f.write(raw)
    return big


def regex_baseline(path: Path, max_lines: int = 200_000) -> float:
    """Lines/s of the obvious pure-Python parser (regex per line, list of tuples)."""
    pat = re.compile(rb"^ ?([ILSM]) +([0-9a-fA-F]+),(\d+)\s*$")
    out = []
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            if n >= max_lines:
                break
            if line.startswith(b"=="):
                continue
            m = pat.match(line)
            kind = m.group(1)
            addr, size = int(m.group(2), 16), int(m.group(3))
            if kind == b"M":
                out.append((addr, size, 0))
                out.append((addr, size, 1))
            else:
                out.append((addr, size, {b"I": 2, b"L": 0, b"S": 1}[kind]))
    return max_lines / (time.perf_counter() - t0)


def kernel_rate(path: Path) -> float:
    buf = np.fromfile(path, dtype=np.uint8, count=64 << 20)
    end = int(np.flatnonzero(buf == 10)[-1]) + 1
    out = np.zeros(1 << 20, dtype=RECORD_DTYPE)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        pos = lines = 0
        while pos < end:
            _, pos, _, n_lines = _parse_lackey(buf, pos, end, HEX_TABLE, out["addr"], out["arg"], out["op"], 4096)
            lines += n_lines
        best = max(best, lines / (time.perf_counter() - t0))
    return best


def test_lackey_import(benchmark, lackey_log, tmp_path):
    out = tmp_path / "o.trace"
    summaries = []

    def run():
        summaries.append(import_lackey(lackey_log, out))

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    s = summaries[-1]
    lines_per_s = s.lines / benchmark.stats.stats.min
    baseline = regex_baseline(lackey_log)
    benchmark.extra_info.update(
        {
            "cpu": cpu_model(),
            "lines": s.lines,
            "records": s.records,
            "input_bytes": s.bytes_read,
            "lines_per_s": round(lines_per_s),
            "mb_per_s": round(s.bytes_read / benchmark.stats.stats.min / 1e6, 1),
            "kernel_lines_per_s": round(kernel_rate(lackey_log)),
            "baseline_lines_per_s": round(baseline),
            "speedup_vs_regex": round(lines_per_s / baseline, 1),
        }
    )
    print(f"\nlackey import: {lines_per_s / 1e6:.1f} M lines/s on {cpu_model()}", file=sys.stderr)


def test_compile_time(benchmark):
    sample = Path(__file__).resolve().parent.parent / "tests" / "data" / "lackey_echo.txt"
    code = (
        "import sys, time; t0 = time.perf_counter();"
        "from mmu.trace.lackey import import_lackey;"
        "import_lackey(sys.argv[1], sys.argv[2]);"
        "print(time.perf_counter() - t0)"
    )
    seconds = []

    def run():
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(d, "cache"))
            p = subprocess.run(
                [sys.executable, "-c", code, str(sample), os.path.join(d, "o.trace")],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            seconds.append(float(p.stdout.strip()))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({"cpu": cpu_model(), "first_import_seconds_cold_cache": round(seconds[-1], 2)})
