"""Paging-structure caches (PSCs, SDM 4.10.3): PML5E, PML4E, PDPTE and PDE caches.

A PSC entry lets the walker skip the upper levels of a walk: it maps the upper bits of a
linear address to the physical address of the next paging structure plus the rights
combined from the root down to the cached entry (R/W AND, U/S AND, XD OR, and the entry's
PWT/PCD, as ``TA_*`` bits of :mod:`mmu.x86.bits`). Entries are tagged by ``(asid, pcid)``,
never global (leaf entries are never cached here, SDM 4.10.3.1).

State
-----
``psc = (geom, tag, ctx, table, attrs, stamp, stats, clock)``, built by :func:`make_psc`.
Caches are rows ``c = 0..3`` = PDE, PDPTE, PML4E, PML5E (``c = entry_level - 2``); the
entries of all caches live in flat arrays, cache ``c`` at ``[base_c, base_c + entries_c)``,
set ``k`` of cache ``c`` at ``base_c + k * ways_c``.

``geom``  int64[4, PG_LEN]
    ``PG_ENTRIES``, ``PG_WAYS``, ``PG_NSETS``, ``PG_MASK`` (nsets - 1 if a power of two, else -1),
    ``PG_BASE``. ``entries == 0``: the cache is absent.
``tag``   int64[total]
    ``VA[top:shift]`` with shift 21/30/39/48 for c = 0/1/2/3 and top 47 (4-level) or 56
    (5-level, ``la57``); -1 marks an invalid entry. Set index = tag mod nsets.
``ctx``   int64[total]
    ``asid << 12 | pcid``.
``table`` int64[total]
    Physical address of the paging structure the cached entry references.
``attrs`` int64[total]
    Combined rights (``TA_*`` bits) as given at fill time.
``stamp`` int64[total]
    LRU stamp (clock value of the last fill or hit); smallest = least recently used.
``stats`` int64[4, 2]
    Per cache: ``[c, 0]`` hits, ``[c, 1]`` misses (a cache probed by :func:`psc_lookup` that
    did not hit; caches after the hit and absent caches are not probed).
``clock`` int64[1]
    LRU clock shared by the four caches.

Kernels mutate the arrays in place and never raise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from mmu._jit import inner, jit
from mmu.errors import MMUInputError
from mmu.hw.presets import PSC_NAMES, CPUPreset, PSCCache

PG_ENTRIES = 0
PG_WAYS = 1
PG_NSETS = 2
PG_MASK = 3
PG_BASE = 4
PG_LEN = 8

NCACHES = 4
PSC_FILLED = 0
PSC_IGNORED = 1  # cache absent, PML5E under 4-level paging, or a bad entry level

_VA_MASK_48 = (1 << 48) - 1
_VA_MASK_57 = (1 << 57) - 1


class PSCState(NamedTuple):
    """The paging-structure caches' state (see :func:`make_psc`)."""

    geom: np.ndarray
    tag: np.ndarray
    ctx: np.ndarray
    table: np.ndarray
    attrs: np.ndarray
    stamp: np.ndarray
    stats: np.ndarray  # int64[NCACHES, 2]: hits, misses per cache
    clock: np.ndarray


def make_psc(spec: CPUPreset | Iterable[PSCCache]) -> PSCState:
    """Allocate empty paging-structure caches.

    Parameters
    ----------
    spec : CPUPreset or iterable of PSCCache
        The caches; a level not listed is absent. At most one cache per entry level.

    Returns
    -------
    tuple
        ``(geom, tag, ctx, table, attrs, stamp, stats, clock)``, see the module docstring.
    """
    caches = spec.pscs if isinstance(spec, CPUPreset) else tuple(spec)
    geom = np.zeros((NCACHES, PG_LEN), dtype=np.int64)
    seen: set[int] = set()
    for c in caches:
        if not isinstance(c, PSCCache):
            raise MMUInputError(f"expected PSCCache, got {type(c).__name__}")
        if c.entry_level in seen:
            raise MMUInputError(f"two caches for the {PSC_NAMES[c.entry_level]}")
        seen.add(c.entry_level)
        row = geom[c.entry_level - 2]
        if c.entries:
            row[PG_ENTRIES] = c.entries
            row[PG_WAYS] = c.ways
            nsets = c.entries // c.ways
            row[PG_NSETS] = nsets
            row[PG_MASK] = nsets - 1 if nsets & (nsets - 1) == 0 else -1
    base = 0
    for r in range(NCACHES):
        geom[r, PG_BASE] = base
        base += int(geom[r, PG_ENTRIES])
    total = max(base, 1)
    tag = np.full(total, -1, dtype=np.int64)
    ctx = np.zeros(total, dtype=np.int64)
    table = np.zeros(total, dtype=np.int64)
    attrs = np.zeros(total, dtype=np.int64)
    stamp = np.zeros(total, dtype=np.int64)
    stats = np.zeros((NCACHES, 2), dtype=np.int64)
    clock = np.zeros(1, dtype=np.int64)
    return PSCState(geom, tag, ctx, table, attrs, stamp, stats, clock)


@inner
def _psc_set_base(geom, c, t):
    m = geom[c, PG_MASK]
    if m >= 0:
        k = t & m
    else:
        k = t % geom[c, PG_NSETS]
    return geom[c, PG_BASE] + k * geom[c, PG_WAYS]


@jit(inline="always")
def psc_lookup(psc, va, asid, pcid, la57):
    """Deepest paging-structure-cache hit for ``va`` (SDM 4.10.3.2 order).

    Inlined into its caller (numba IR level), like :func:`mmu.hw.tlb.tlb_lookup`: it runs on
    every TLB miss, and passing the state tuple to a real call costs about as much as the probe.

    Probes the PDE cache, then PDPTE, then PML4E, then (only if ``la57``) PML5E; the first hit
    wins. Updates LRU and the per-cache hit/miss counters (mutates ``psc``).

    Parameters
    ----------
    psc : tuple
        PSC state from :func:`make_psc`.
    va : int64
        Linear address (sign-extended canonical addresses are negative int64).
    asid, pcid : int64
        16-bit VPID/ASID and 12-bit PCID of the current context.
    la57 : bool or int
        5-level paging (tags cover VA[56:*] instead of VA[47:*]).

    Returns
    -------
    (next_level, table_pa, attrs) : (int64, int64, int64)
        ``next_level`` is the level of the table the walk reads next (1 = page table after a
        PDE-cache hit, 2 = page directory, 3 = PDPT, 4 = PML4 after a PML5E-cache hit), or -1
        with ``table_pa = attrs = 0`` on a complete miss.
    """
    geom, tag, ctx, table, attrs, stamp, stats, clock = psc
    v = np.int64(va) & (_VA_MASK_57 if la57 else _VA_MASK_48)
    ck = ((asid & 0xFFFF) << 12) | (pcid & 0xFFF)
    ncache = 4 if la57 else 3
    for c in range(ncache):
        if geom[c, PG_ENTRIES] == 0:
            continue
        t = v >> (21 + 9 * c)
        base = _psc_set_base(geom, c, t)
        for i in range(base, base + geom[c, PG_WAYS]):
            if tag[i] == t and ctx[i] == ck:
                now = clock[0] + 1
                clock[0] = now
                stamp[i] = now
                stats[c, 0] += 1
                return c + 1, table[i], attrs[i]
        stats[c, 1] += 1
    return np.int64(-1), np.int64(0), np.int64(0)


@jit
def psc_fill(psc, va, asid, pcid, la57, entry_level, table_pa, attrs):
    """Cache a non-leaf paging-structure entry (mutates ``psc``).

    The caller fills only from entries with P=1, no reserved bit set and A=1 (SDM 4.10.3.1).
    An entry with the same ``(asid, pcid, tag)`` is overwritten; otherwise the first invalid
    way of the set is used, else the least recently used one.

    Parameters
    ----------
    psc : tuple
        PSC state from :func:`make_psc`.
    va : int64
        A linear address translated through the entry.
    asid, pcid : int64
        Context tags.
    la57 : bool or int
        5-level paging.
    entry_level : int64
        5, 4, 3 or 2: the level of the cached entry (PML5E, PML4E, PDPTE, PDE).
    table_pa : int64
        Physical address of the table the entry references.
    attrs : int64
        Rights combined from the root down to and including this entry (``TA_*`` bits).

    Returns
    -------
    int64
        :data:`PSC_FILLED`, or :data:`PSC_IGNORED` if the cache is absent, ``entry_level`` is
        5 under 4-level paging, or ``entry_level`` is out of range.
    """
    geom, tag, ctx, table, attr_a, stamp, stats, clock = psc
    c = entry_level - 2
    if c < 0 or c > 3 or (c == 3 and not la57) or geom[c, PG_ENTRIES] == 0:
        return PSC_IGNORED
    v = np.int64(va) & (_VA_MASK_57 if la57 else _VA_MASK_48)
    ck = ((asid & 0xFFFF) << 12) | (pcid & 0xFFF)
    t = v >> (21 + 9 * c)
    base = _psc_set_base(geom, c, t)
    target = -1
    free = -1
    lru = -1
    lru_stamp = np.int64(0x7FFFFFFFFFFFFFFF)
    for i in range(base, base + geom[c, PG_WAYS]):
        ti = tag[i]
        if ti == -1:
            if free < 0:
                free = i
        elif ti == t and ctx[i] == ck:
            target = i
            break
        elif stamp[i] < lru_stamp:
            lru_stamp = stamp[i]
            lru = i
    if target < 0:
        target = free if free >= 0 else lru
    now = clock[0] + 1
    clock[0] = now
    tag[target] = t
    ctx[target] = ck
    table[target] = np.int64(table_pa)
    attr_a[target] = np.int64(attrs)
    stamp[target] = now
    return PSC_FILLED


@jit
def psc_invalidate_pcid(psc, asid, pcid):
    """Remove every entry of ``(asid, pcid)`` regardless of address (INVLPG, INVPCID 0/1, MOV CR3).

    Returns the number of entries removed (mutates ``psc``).
    """
    tag = psc.tag
    ctx = psc.ctx
    ck = ((asid & 0xFFFF) << 12) | (pcid & 0xFFF)
    n = 0
    for i in range(tag.shape[0]):
        if tag[i] != -1 and ctx[i] == ck:
            tag[i] = -1
            n += 1
    return n


@jit
def psc_flush_asid(psc, asid):
    """Remove every entry of ``asid``, all PCIDs. Returns the number removed (mutates ``psc``)."""
    tag = psc.tag
    ctx = psc.ctx
    a = asid & 0xFFFF
    n = 0
    for i in range(tag.shape[0]):
        if tag[i] != -1 and (ctx[i] >> 12) == a:
            tag[i] = -1
            n += 1
    return n


@jit
def psc_flush_all(psc):
    """Remove every entry of every context. Returns the number removed (mutates ``psc``)."""
    tag = psc.tag
    n = 0
    for i in range(tag.shape[0]):
        if tag[i] != -1:
            tag[i] = -1
            n += 1
    return n


@jit
def psc_count_valid(psc, c):
    """Valid entries in cache row ``c`` (0 = PDE, 1 = PDPTE, 2 = PML4E, 3 = PML5E)."""
    geom = psc.geom
    tag = psc.tag
    base = geom[c, PG_BASE]
    n = 0
    for i in range(base, base + geom[c, PG_ENTRIES]):
        if tag[i] != -1:
            n += 1
    return n


@jit
def psc_reset_stats(psc):
    """Zero the hit/miss counters (mutates ``psc.stats``)."""
    psc.stats[:, :] = 0


def psc_entries(psc: tuple, entry_level: int) -> list[list[tuple[int, int, int, int, int]]]:
    """Contents of one cache, for tests and walk views (Python layer, no JIT).

    Returns
    -------
    list of list of tuple
        One list per set, least recently used first; each entry is
        ``(asid, pcid, tag, table_pa, attrs)``.
    """
    geom, tag, ctx, table, attrs, stamp = psc[:6]
    c = int(entry_level) - 2
    out: list[list[tuple[int, int, int, int, int]]] = []
    ways = int(geom[c, PG_WAYS])
    base = int(geom[c, PG_BASE])
    for k in range(int(geom[c, PG_NSETS])):
        idx = [i for i in range(base + k * ways, base + (k + 1) * ways) if tag[i] != -1]
        idx.sort(key=lambda i: int(stamp[i]))
        out.append([(int(ctx[i]) >> 12, int(ctx[i]) & 0xFFF, int(tag[i]), int(table[i]), int(attrs[i])) for i in idx])
    return out
