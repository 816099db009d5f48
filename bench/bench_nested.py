"""Cold 2D walks per second (no TLB, no PSC, no NTLB): the raw nested walker kernel.

Guest: 4-level tables mapping ``N_PAGES`` 4 KiB pages. Host: a 4-level EPT (or NPT) mapping all of
guest RAM with 4 KiB pages, so every walk makes the full 24 references. The same guest
translation made natively (a 1D walk over equivalent tables) is timed in the same process as the
baseline, and the ratio is reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import mmu
from mmu.hw.ntlb import cold_host_cache
from mmu.hw.walk2d import nested_walk_many
from mmu.x86.ept import HT_COLS
from mmu.x86.nested import GT_COLS, MAX_REFS, RF_COLS
from mmu.x86.walk import MAX_LEVELS, TR_COLS, make_ctl, walk_many

N_PAGES = 1 << 16  # 256 MiB of guest pages
N_WALKS = 1 << 20
GVA_BASE = 0x7F00_0000_0000
HBASE = 0x10_0000_0000  # guest RAM gpa g lives at hpa HBASE + g
DATA_GPA = 0x100_0000  # guest data pages from gpa 16 MiB up


def _radix(entries: dict[int, int], alloc, root: int, va: int, leaf_value: int, flags: int) -> None:
    """Put a 4-level 4 KiB mapping of ``va`` into ``entries`` ({table address: value}), tables from ``alloc``."""
    table = root
    for level in (4, 3, 2):
        epa = table + 8 * ((va >> (12 + 9 * (level - 1))) & 511)
        if epa not in entries:
            entries[epa] = alloc() | flags
        table = entries[epa] & 0x000F_FFFF_FFFF_F000
    entries[table + 8 * ((va >> 12) & 511)] = leaf_value


def build(npt: bool):
    """Host memory with guest tables (through an EPT or NPT) and the native twin; returns the setup."""
    hmem = mmu.PhysicalMemory(frames=2 * (N_PAGES // 512) + 256)
    # guest tables: gpa frames from 0x1000 up (gCR3 = 0x1000)
    gnext = [0x1000]

    def galloc() -> int:
        gnext[0] += 0x1000
        return gnext[0]

    guest: dict[int, int] = {}
    for p in range(N_PAGES):
        _radix(guest, galloc, 0x1000, GVA_BASE + p * 4096, (DATA_GPA + p * 4096) | 0x67, 0x7)
    # host tables: hpa frames from 0x1000 up; map gpa [0, DATA_GPA + N_PAGES pages) with 4 KiB pages
    hnext = [0x1000]

    def halloc() -> int:
        hnext[0] += 0x1000
        return hnext[0]

    host: dict[int, int] = {}
    leaf_flags = 0x7 if npt else 0x7 | 6 << 3  # NPT: P|RW|US; EPT: RWX, write-back
    gpages = sorted({gpa >> 12 for gpa in guest} | {0x1000 >> 12}) + [(DATA_GPA >> 12) + p for p in range(N_PAGES)]
    for gfn in gpages:
        _radix(host, halloc, 0x1000, gfn << 12, (HBASE + (gfn << 12)) | leaf_flags, 0x7)
    for pa, value in host.items():
        hmem.write_u64(pa, value)
    for gpa, value in guest.items():
        hmem.write_u64(HBASE + gpa, value)
    # the native twin: the same guest tables with gpa == pa
    nmem = mmu.PhysicalMemory(frames=N_PAGES // 512 + 64)
    for gpa, value in guest.items():
        nmem.write_u64(gpa, value)
    rng = np.random.default_rng(7)
    gvas = (GVA_BASE + rng.integers(0, N_PAGES, N_WALKS) * 4096 + rng.integers(0, 4096, N_WALKS)).astype(np.int64)
    return hmem, nmem, gvas


@pytest.mark.parametrize("npt", [False, True], ids=["ept", "npt"])
def test_cold_nested_walks(benchmark, npt):
    hmem, nmem, gvas = build(npt)
    ctl = np.int64(make_ctl(user=True))
    gtrail = np.zeros((MAX_LEVELS, GT_COLS), dtype=np.int64)
    htrail = np.zeros((MAX_LEVELS, HT_COLS), dtype=np.int64)
    refs_out = np.zeros((MAX_REFS, RF_COLS), dtype=np.int64)
    out_hpa = np.zeros(len(gvas), dtype=np.int64)
    out_st = np.zeros(len(gvas), dtype=np.int64)
    ept_ad = False
    root = np.int64(0x1000)  # EPTP[51:12] or nCR3[51:12]
    args = (hmem.state, root, np.int64(4), ept_ad, npt, np.int64(0x1000), gvas, 0, ctl, np.int64(0), np.int64(52))
    args += (gtrail, htrail, refs_out, out_hpa, out_st, cold_host_cache())
    nested_walk_many(*args)  # compile + warm (sets every A/D flag once)

    # baseline: the same guest walks made natively (1D), timed in this process
    trail = np.zeros((MAX_LEVELS, TR_COLS), dtype=np.int64)
    nargs = (nmem.state, np.int64(0x1000), gvas, 0, ctl, np.int64(0), np.int64(52), trail, out_hpa, out_st)
    walk_many(*nargs)
    t0 = time.perf_counter()
    walk_many(*nargs)
    native_s = time.perf_counter() - t0

    refs = benchmark.pedantic(nested_walk_many, args=args, rounds=5, warmup_rounds=1)
    assert refs == 24 * len(gvas) and (out_st == 0).all()
    assert (out_hpa == HBASE + DATA_GPA + (gvas - GVA_BASE)).all()
    walks_per_s = len(gvas) / benchmark.stats.stats.mean
    benchmark.extra_info["walks_per_s"] = walks_per_s
    benchmark.extra_info["refs_per_walk"] = 24
    benchmark.extra_info["native_1d_walks_per_s"] = len(gvas) / native_s
    benchmark.extra_info["ratio_to_native_1d"] = walks_per_s * native_s / len(gvas)


_COMPILE_SNIPPET = """
import time
t0 = time.perf_counter()
import mmu
from mmu.x86.ept import EptBuilder, NptBuilder
mem = mmu.PhysicalMemory()
ept = EptBuilder(mem)
ept.map(0, 1 << 32, size=1 << 21, page_size=1 << 21)
r = mmu.walk_nested(mem, ept.eptp, 0x1000, 0x1234)
t1 = time.perf_counter()
npt = NptBuilder(mem)
npt.map(0, 1 << 32, size=1 << 21, page_size=1 << 21)
mmu.walk_nested(mem, npt.ncr3, 0x1000, 0x1234, npt=True)
print(t1 - t0, time.perf_counter() - t1)
"""


def test_compile_time(benchmark):
    """First call of ``mmu.walk_nested`` (EPT, then NPT) in a fresh process with an empty cache."""
    seconds = []

    def run():
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(d, "cache"))
            p = subprocess.run(
                [sys.executable, "-c", _COMPILE_SNIPPET], env=env, capture_output=True, text=True, check=True
            )
            seconds.append([float(x) for x in p.stdout.split()])

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["first_call_seconds_ept"] = round(seconds[-1][0], 2)
    benchmark.extra_info["first_call_seconds_npt_after_ept"] = round(seconds[-1][1], 2)
