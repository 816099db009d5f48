"""Cold 4-level page walks per second (no TLB, no PSC): the raw walker kernel."""

from __future__ import annotations

import numpy as np

import mmu
from mmu.x86.walk import MAX_LEVELS, TR_COLS, make_ctl, walk_many

N_PAGES = 1 << 16  # 256 MiB of 4 KiB pages: 128 page tables, so walks touch many lines
N_WALKS = 1 << 20


def _build(n_pages: int) -> tuple[mmu.PhysicalMemory, int, np.ndarray]:
    mem = mmu.PhysicalMemory(frames=n_pages // 256 + 64)
    pml4 = mem.alloc_frame()
    base = 0x7F00_0000_0000
    tables: dict[tuple[int, int], int] = {}
    for p in range(n_pages):
        va = base + p * 4096
        table = pml4
        for level in (4, 3, 2):
            idx = (va >> (12 + 9 * (level - 1))) & 511
            key = (table, idx)
            if key not in tables:
                nxt = mem.alloc_frame()
                mem.write_u64(table + 8 * idx, nxt | 0x7)
                tables[key] = nxt
            table = tables[key]
        mem.write_u64(table + 8 * ((va >> 12) & 511), ((0x100000 + p) << 12) | 0x67)
    rng = np.random.default_rng(7)
    vas = (base + rng.integers(0, n_pages, N_WALKS) * 4096 + rng.integers(0, 4096, N_WALKS)).astype(np.int64)
    return mem, pml4, vas


def test_cold_walks(benchmark):
    mem, cr3, vas = _build(N_PAGES)
    trail = np.zeros((MAX_LEVELS, TR_COLS), dtype=np.int64)
    out_pa = np.zeros(len(vas), dtype=np.int64)
    out_st = np.zeros(len(vas), dtype=np.int64)
    ctl = np.int64(make_ctl(user=True))
    args = (mem.state, np.int64(cr3), vas, 0, ctl, np.int64(0), np.int64(52), trail, out_pa, out_st)
    walk_many(*args)  # compile + warm

    refs = benchmark.pedantic(walk_many, args=args, rounds=5, warmup_rounds=1)
    assert refs == 4 * len(vas) and (out_st == 0).all()
    benchmark.extra_info["walks_per_s"] = len(vas) / benchmark.stats.stats.mean
