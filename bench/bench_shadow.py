"""Shadow paging under a page-table-update-heavy workload: VM exits handled per second.

Eight processes without PCIDs take turns touching fresh pages: every first touch is a guest
page fault whose PTE store hits a shadowed (write-protected or unsync) leaf table, and every
context switch is a flushing CR3 load that resynchronises the unsync tables. The figure is
simulated exits per second of wall time (``exits_per_s``), with the exit mix in extra_info.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmu.engine import Machine, MachineConfig
from mmu.trace.format import OP_READ, OP_WRITE, RECORD_DTYPE

PROCS = 8
PAGES = 4096  # fresh pages per process
SLICE = 64  # pages a process touches before the next switch


def _trace() -> np.ndarray:
    n = PROCS * PAGES * 2
    r = np.zeros(n, dtype=RECORD_DTYPE)
    i = 0
    for start in range(0, PAGES, SLICE):
        for p in range(PROCS):
            base = 0x10_0000_0000 + p * (1 << 32)
            pages = np.arange(start, start + SLICE)
            k = 2 * SLICE
            r["addr"][i : i + k : 2] = base + pages * 4096
            r["addr"][i + 1 : i + k : 2] = base + pages * 4096 + 128
            r["op"][i : i + k : 2] = OP_WRITE
            r["op"][i + 1 : i + k : 2] = OP_READ
            r["pid"][i : i + k] = p + 1
            i += k
    r["arg"] = 8
    return r


@pytest.mark.parametrize("unsync", [True, False], ids=["unsync", "no-unsync"])
def test_shadow_exits_per_second(benchmark, unsync):
    recs = _trace()
    cfg = MachineConfig(mode="shadow", pcide=False, unsync=unsync)
    Machine(cfg).run(recs[:10])  # compile / load kernels outside the timing

    def setup():
        return (Machine(cfg),), {}

    def run(m):
        m.run(recs)
        return m

    m = benchmark.pedantic(run, setup=setup, rounds=3, warmup_rounds=1)
    s = m.result()
    benchmark.extra_info["exits"] = s["vm_exits"]
    benchmark.extra_info["exits_per_s"] = s["vm_exits"] / benchmark.stats.stats.mean
    benchmark.extra_info["accesses_per_s"] = s["accesses"] / benchmark.stats.stats.mean
    benchmark.extra_info["exit_mix"] = {k: v["count"] for k, v in s["exits"].items()}
    benchmark.extra_info["resynced_pages"] = s["mode_stats"]["shadow_pages"]["resynced"]
