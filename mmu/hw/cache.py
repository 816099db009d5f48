"""A set-associative LRU cache of 64-byte lines for page-walk memory references.

Page walks read paging-structure entries through the data-cache hierarchy. The
simulator does not model data caches for the program's own accesses (traces carry
no timing), so it keeps one cache that holds only the lines that walks touched.
Each walk reference costs ``hit`` cycles if its line is present and ``miss`` cycles
otherwise (see :mod:`mmu.hw.cost` for the latencies and their sources).

State of one cache, ``LineCache(tags, stamps, meta)`` (the machine's two are ``ptc = WalkCaches(l2, llc)``):

``tags``   int64[sets, ways]  line address (pa >> 6) or -1
``stamps`` int64[sets, ways]  LRU time stamps
``meta``   int64[4]           [clock, hits, misses, 0]

A cache with zero sets (``make_line_cache(0, ...)``) always misses.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mmu._jit import inner

LC_CLOCK = 0
LC_HITS = 1
LC_MISSES = 2


class LineCache(NamedTuple):
    """One walk-line cache: ``tags``/``stamps`` int64[sets, ways], ``meta`` (``LC_*`` counters)."""

    tags: np.ndarray
    stamps: np.ndarray
    meta: np.ndarray


class WalkCaches(NamedTuple):
    """The machine's walk-line caches (``ptc``): an L2-like and an LLC-like one."""

    l2: LineCache
    llc: LineCache


def make_line_cache(lines: int, ways: int) -> LineCache:
    """Build an empty cache of ``lines`` 64-byte lines, ``ways``-way set associative."""
    lines = int(lines)
    ways = max(1, int(ways))
    if lines < 0 or (lines and lines % ways):
        raise ValueError(f"a line cache of {lines} lines cannot be {ways}-way set associative")
    sets = lines // ways
    tags = np.full((sets, ways), -1, dtype=np.int64)
    stamps = np.zeros((sets, ways), dtype=np.int64)
    return LineCache(tags, stamps, np.zeros(4, dtype=np.int64))


@inner
def line_access(lc, pa):
    """Touch the line holding ``pa``; return True on a hit. Fills on a miss (LRU victim)."""
    tags = lc.tags
    stamps = lc.stamps
    meta = lc.meta
    sets = tags.shape[0]
    if sets == 0:
        meta[LC_MISSES] += 1
        return False
    line = pa >> 6
    s = line % sets
    meta[LC_CLOCK] += 1
    now = meta[LC_CLOCK]
    victim = 0
    oldest = stamps[s, 0]
    for w in range(tags.shape[1]):
        if tags[s, w] == line:
            stamps[s, w] = now
            meta[LC_HITS] += 1
            return True
        if stamps[s, w] < oldest:
            oldest = stamps[s, w]
            victim = w
    tags[s, victim] = line
    stamps[s, victim] = now
    meta[LC_MISSES] += 1
    return False
