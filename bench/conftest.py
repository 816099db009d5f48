"""Shared helpers for the speed benchmarks (pytest-benchmark).

Run with ``python -m pytest bench -q`` (they are not part of the test suite).
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@pytest.fixture(autouse=True)
def _machine_info(benchmark):
    benchmark.extra_info["cpu"] = cpu_model()
    yield
