"""TLB hierarchy kernels: lookups, fills with page-size smashing, SDM invalidations.

One set of kernels serves any hierarchy: the structures of a preset (L1/L2, data /
instruction / unified, any mix of 4K/2M/1G, any entries and ways, true LRU) are described by
a ``geom`` table and their entries live in flat arrays.

Semantics
---------
* Entries are tagged by ``(asid, pcid)``: ``asid`` is the 16-bit VPID/ASID the caller
  supplies (0 for native), ``pcid`` 12 bits. An entry whose attrs hold ``TA_G`` matches any
  PCID of its asid (SDM 4.10.2.4); it stays *associated* with the PCID it was filled under,
  which matters only to flushes that name a PCID and do not keep globals.
* Groups: the level-``L`` group of side ``s`` is the level-``L`` structures whose side is
  ``s`` or unified. Within a group no two structures hold the same page size
  (:func:`make_tlb` checks), so every page size has at most one home.
* Lookup (:func:`tlb_lookup`): the L1 group is probed 4K first, then 2M, then 1G; on a miss
  the L2 group likewise. The first hit wins and becomes most recently used. On an L2 hit the
  translation is re-installed in the L1 group of that side (promotion) at its *original*
  page size (Zen 2: "1-Gbyte pages are smashed into 2-Mbyte entries but installed as
  1-Gbyte entries when reloaded into the L1 TLB", WikiChip Zen 2), smashing again if L1
  cannot hold that size.
* Fill (:func:`tlb_fill`): into the L1 group and the L2 group of the side. A group that
  lacks the page size stores the largest smaller size it holds, the sub-page containing
  ``va`` ("smashing", SDM 4.10.2.3 allows TLB entries for smaller pages); a group that holds
  no size <= the page size is skipped. An existing entry with the same asid, VPN and size
  whose PCID is equal, or that is global, or that the new global entry would shadow, is
  overwritten in place (duplicates beyond the first are dropped), so a lookup never matches
  two entries of one structure and size. Otherwise the first invalid way of the set is used,
  else the least recently used way.
* Each entry remembers the page size of the translation it came from (``orig``), so
  INVLPG / INVPCID type 0 remove *all* smashed pieces of a large page: "If the paging
  structures map the linear address using a page larger than 4 KBytes and there are
  multiple TLB entries for that page, the instruction invalidates all of them" (SDM,
  INVLPG / INVPCID footnote).
* Counters: per lookup, the structure that hits counts a hit; if a probed level misses
  entirely, every structure of that group counts a miss. L2 is probed only on an L1 miss.

State
-----
``tlb = TLBState(geom, plan, route, tag, ctx, frame, attrs, stamp, orig, hidx, stats, clock)``
(a NamedTuple: other modules read its fields by name, e.g. ``tlb.stats``), built by
:func:`make_tlb`; all arrays int64, mutated in place by the kernels.

``geom``  int64[nstruct, TG_LEN]
    Per structure: ``TG_LEVEL`` (1, 2), ``TG_SIDE`` (0 data, 1 instr, 2 unified), ``TG_SIZES``
    (mask: 1 = 4K, 2 = 2M, 4 = 1G), ``TG_ENTRIES``, ``TG_WAYS``, ``TG_NSETS``, ``TG_MASK``
    (nsets - 1 if a power of two, else -1: the set index is ``vpn % nsets`` either way),
    ``TG_BASE`` (first slot in the flat arrays; set ``k`` starts at ``base + k * ways``),
    ``TG_SMASH`` (1 if fills may store pieces of larger pages here), ``TG_HBASE`` / ``TG_HMASK``
    (the structure's region of ``hidx`` and its size - 1; ``TG_HMASK = -1``: no index).
``plan``  int64[2, 2, 8]
    ``plan[side, level-1]``: ``[0]`` = number of probes, ``[1:4]`` = probes in lookup order as
    ``structure << 2 | size_index``; ``[4]`` = number of structures in the group, ``[5:8]``
    their indices (for miss counting).
``route`` int64[2, 2, 3, 2]
    ``route[side, level-1, size_index]`` = (structure, stored size index) a fill of that page
    size goes to, or (-1, -1) when the group holds no size <= it.
``tag``   int64[total]
    ``vpn << 2 | size_index`` with ``vpn = (va mod 2**57) >> (12 + 9 * size_index)``;
    -1 marks an invalid entry.
``ctx``   int64[total]
    ``asid << 12 | pcid``.
``frame`` int64[total]
    Physical base of the stored (possibly smashed) page.
``attrs`` int64[total]
    ``TA_*`` bits given at fill time (``TA_G`` = global).
``stamp`` int64[total]
    LRU stamp: clock value at the last fill or hit (smallest valid = LRU victim).
``orig``  int64[total]
    Page shift (12/21/30) of the translation the entry came from (> stored shift if smashed).
``hidx``  int64[nh]
    Hash index over the tags of structures whose sets have at least ``INDEX_MIN_WAYS`` ways
    (a fully associative 64-entry L1 would otherwise compare 64 tags per probe, and a 4K
    probe precedes every 2M/1G hit). Open addressing, linear probing, load <= 1/4: each
    record is a slot number (-1 = empty), hashed by ``tag[slot]``; every valid slot of an
    indexed structure is in it exactly once (records move by backward-shift deletion).
    The index only speeds lookups up: which entry hits, LRU order and victims are the same
    as with a scan.
``stats`` int64[nstruct, 2]
    ``[s, 0]`` hits, ``[s, 1]`` misses.
``clock`` int64[1]
    LRU clock.

Kernels never raise; they return codes. Addresses are int64 (a high-half canonical address
is a negative int64; only bits 56:0 take part in tags).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from mmu._jit import inner, jit
from mmu.errors import MMUInputError
from mmu.hw.presets import SIDE_NAMES, SIDE_UNIFIED, CPUPreset, TLBStructure, sizes_str
from mmu.hw.pwc import psc_flush_asid, psc_invalidate_pcid
from mmu.x86.bits import TA_G

# geom columns
TG_LEVEL = 0
TG_SIDE = 1
TG_SIZES = 2
TG_ENTRIES = 3
TG_WAYS = 4
TG_NSETS = 5
TG_MASK = 6
TG_BASE = 7
TG_SMASH = 8
TG_HBASE = 9
TG_HMASK = 10
TG_LEN = 12

# plan layout
TP_NPROBE = 0
TP_PROBES = 1
TP_NSTRUCT = 4
TP_STRUCTS = 5
TP_LEN = 8

# tuple positions, for Python code that reads the state
T_GEOM, T_PLAN, T_ROUTE, T_TAG, T_CTX, T_FRAME, T_ATTRS, T_STAMP, T_ORIG, T_HIDX, T_STATS, T_CLOCK = range(12)

# lookup result levels
TLB_MISS = 0
TLB_L1 = 1
TLB_L2 = 2

# invpcid / hw_* return codes
HW_OK = 0
HW_NOP = 1  # e.g. INVLPG of a non-canonical address
HW_GP = 2  # the instruction faults with #GP(0); nothing was invalidated

VA_MASK = (1 << 57) - 1
_MAXSTAMP = 0x7FFFFFFFFFFFFFFF
INDEX_MIN_WAYS = 17  # sets at least this wide get a hash index over their tags
_HMUL = 0x7F4A7C159E3779B9  # odd multiplier < 2**63 (stays int64 in numba)


class TLBState(NamedTuple):
    """A TLB hierarchy's state (see the module docstring for each array's layout)."""

    geom: np.ndarray
    plan: np.ndarray
    route: np.ndarray
    tag: np.ndarray
    ctx: np.ndarray
    frame: np.ndarray
    attrs: np.ndarray
    stamp: np.ndarray
    orig: np.ndarray
    hidx: np.ndarray
    stats: np.ndarray  # int64[nstruct, 2]: hits, misses per structure
    clock: np.ndarray


def make_tlb(spec: CPUPreset | Iterable[TLBStructure]) -> TLBState:
    """Allocate an empty TLB hierarchy.

    Parameters
    ----------
    spec : CPUPreset or iterable of TLBStructure
        The structures (index = position, which also indexes ``stats``).

    Returns
    -------
    tuple
        ``(geom, plan, route, tag, ctx, frame, attrs, stamp, orig, hidx, stats, clock)``, all
        int64, see the module docstring.

    Raises
    ------
    MMUInputError
        If two structures of one group (level, side) hold the same page size, or there are no
        structures.
    """
    structs = tuple(spec.tlbs) if isinstance(spec, CPUPreset) else tuple(spec)
    if not structs:
        raise MMUInputError("a TLB hierarchy needs at least one structure")
    for st in structs:
        if not isinstance(st, TLBStructure):
            raise MMUInputError(f"expected TLBStructure, got {type(st).__name__}")
    n = len(structs)
    geom = np.zeros((n, TG_LEN), dtype=np.int64)
    base = 0
    for s, st in enumerate(structs):
        nsets = st.entries // st.ways
        geom[s, TG_LEVEL] = st.level
        geom[s, TG_SIDE] = st.side
        geom[s, TG_SIZES] = st.sizes
        geom[s, TG_ENTRIES] = st.entries
        geom[s, TG_WAYS] = st.ways
        geom[s, TG_NSETS] = nsets
        geom[s, TG_MASK] = nsets - 1 if nsets & (nsets - 1) == 0 else -1
        geom[s, TG_BASE] = base
        geom[s, TG_HMASK] = -1
        base += st.entries
    hbase = 0
    for s, st in enumerate(structs):
        if st.ways >= INDEX_MIN_WAYS:
            hsize = 1 << (4 * st.entries - 1).bit_length()  # load factor <= 1/4
            geom[s, TG_HBASE] = hbase
            geom[s, TG_HMASK] = hsize - 1
            hbase += hsize

    plan = np.zeros((2, 2, TP_LEN), dtype=np.int64)
    route = np.full((2, 2, 3, 2), -1, dtype=np.int64)
    for side in (0, 1):
        for lv in (1, 2):
            group = [s for s, st in enumerate(structs) if st.level == lv and st.side in (side, SIDE_UNIFIED)]
            home: dict[int, int] = {}
            for s in group:
                for k in range(3):
                    if structs[s].sizes >> k & 1:
                        if k in home:
                            raise MMUInputError(
                                f"'{structs[home[k]].name}' and '{structs[s].name}' both hold "
                                f"{sizes_str(1 << k)} pages for level-{lv} {SIDE_NAMES[side]} lookups"
                            )
                        home[k] = s
            probes = [(home[k] << 2) | k for k in range(3) if k in home]
            plan[side, lv - 1, TP_NPROBE] = len(probes)
            plan[side, lv - 1, TP_PROBES : TP_PROBES + len(probes)] = probes
            plan[side, lv - 1, TP_NSTRUCT] = len(group)
            plan[side, lv - 1, TP_STRUCTS : TP_STRUCTS + len(group)] = group
            for k in range(3):
                fits = [q for q in range(k + 1) if q in home]
                if fits:
                    q = max(fits)
                    route[side, lv - 1, k] = (home[q], q)
                    if q != k:
                        geom[home[q], TG_SMASH] = 1

    tag = np.full(base, -1, dtype=np.int64)
    ctx = np.zeros(base, dtype=np.int64)
    frame = np.zeros(base, dtype=np.int64)
    attrs = np.zeros(base, dtype=np.int64)
    stamp = np.zeros(base, dtype=np.int64)
    orig = np.zeros(base, dtype=np.int64)
    hidx = np.full(max(hbase, 1), -1, dtype=np.int64)
    stats = np.zeros((n, 2), dtype=np.int64)
    clock = np.zeros(1, dtype=np.int64)
    return TLBState(geom, plan, route, tag, ctx, frame, attrs, stamp, orig, hidx, stats, clock)


# --- kernels ------------------------------------------------------------------------------------


@inner
def _set_base(geom, s, vpn):
    m = geom[s, TG_MASK]
    if m >= 0:
        k = vpn & m
    else:
        k = vpn % geom[s, TG_NSETS]
    return geom[s, TG_BASE] + k * geom[s, TG_WAYS]


@jit(inline="always")
def _hslot(key, hmask):
    return ((key * _HMUL) >> 32) & hmask


@jit(inline="always")
def _ctx_ok(c, ck, a, attr):
    return c == ck or ((attr & TA_G) != 0 and (c >> 12) == a)


@jit(inline="always")
def _probe(geom, tag, ctx, attrs, hidx, s, vpn, key, ck, a):
    """Slot of structure ``s`` that translates ``key`` for context ``ck``, or -1.

    Wide sets (``TG_HMASK >= 0``) go through the hash index; narrow ones compare every tag of
    the set without branching (which way hits is unpredictable, so an early exit costs a
    branch mispredict on most lookups), then check the context of the match.
    """
    hm = geom[s, TG_HMASK]
    if hm >= 0:
        hb = geom[s, TG_HBASE]
        h = _hslot(key, hm)
        while True:
            r = hidx[hb + h]
            if r < 0:
                return -1
            if tag[r] == key and _ctx_ok(ctx[r], ck, a, attrs[r]):
                return r
            h = (h + 1) & hm
    base = _set_base(geom, s, vpn)
    end = base + geom[s, TG_WAYS]
    hit = -1
    for i in range(base, end):
        hit = i if tag[i] == key else hit
    if hit >= 0:
        if _ctx_ok(ctx[hit], ck, a, attrs[hit]):
            return hit
        for i in range(base, end):  # rare: the same page cached for another context too
            if tag[i] == key and _ctx_ok(ctx[i], ck, a, attrs[i]):
                return i
    return -1


@inner
def _link(geom, tag, hidx, s, i):
    """Add slot ``i`` (its tag already written) to the hash index of ``s``, if it has one."""
    hm = geom[s, TG_HMASK]
    if hm < 0:
        return
    hb = geom[s, TG_HBASE]
    h = _hslot(tag[i], hm)
    while hidx[hb + h] >= 0:
        h = (h + 1) & hm
    hidx[hb + h] = i


@jit
def _unlink(geom, tag, hidx, s, i):
    """Remove valid slot ``i`` (its tag still in place) from the hash index of ``s``.

    Linear probing with backward-shift deletion, so lookups never need tombstones.
    """
    hm = geom[s, TG_HMASK]
    if hm < 0:
        return
    hb = geom[s, TG_HBASE]
    h = _hslot(tag[i], hm)
    while hidx[hb + h] != i:
        h = (h + 1) & hm
    hole = h
    j = h
    while True:
        j = (j + 1) & hm
        r = hidx[hb + j]
        if r < 0:
            break
        home = _hslot(tag[r], hm)
        # r may move back into the hole unless its home lies cyclically in (hole, j]
        if hole <= j:
            stays = hole < home <= j
        else:
            stays = home > hole or home <= j
        if not stays:
            hidx[hb + hole] = r
            hole = j
    hidx[hb + hole] = -1


@inner
def _kill(geom, tag, hidx, s, i):
    _unlink(geom, tag, hidx, s, i)
    tag[i] = -1


@inner
def _insert(tlb, s, q, v, ck, frame_pa, attr, orig_shift):
    """Store page-size-index ``q`` entry for masked address ``v`` in structure ``s``."""
    geom, plan, route, tag, ctx, frame, attrs, stamp, orig, hidx, stats, clock = tlb
    key = ((v >> (12 + 9 * q)) << 2) | q
    base = _set_base(geom, s, v >> (12 + 9 * q))
    asid = ck >> 12
    g = (attr & TA_G) != 0
    target = -1
    free = -1
    lru = -1
    lru_stamp = _MAXSTAMP
    for i in range(base, base + geom[s, TG_WAYS]):
        t = tag[i]
        if t == -1:
            if free < 0:
                free = i
            continue
        if t == key:
            c = ctx[i]
            if (c >> 12) == asid and (c == ck or g or (attrs[i] & TA_G) != 0):
                if target < 0:
                    target = i
                else:
                    _kill(geom, tag, hidx, s, i)
                continue
        if stamp[i] < lru_stamp:
            lru_stamp = stamp[i]
            lru = i
    if target < 0:
        target = free if free >= 0 else lru
    if tag[target] != key:
        if tag[target] != -1:
            _unlink(geom, tag, hidx, s, target)
        tag[target] = key
        _link(geom, tag, hidx, s, target)
    now = clock[0] + 1
    clock[0] = now
    ctx[target] = ck
    frame[target] = frame_pa
    attrs[target] = attr
    stamp[target] = now
    orig[target] = orig_shift


@jit
def _fill_group(tlb, side, lv, v, ck, frame_pa, k, attr):
    """Fill the level-``lv`` (0-based) group of ``side`` with a page of size index ``k``."""
    route = tlb.route
    s = route[side, lv, k, 0]
    if s < 0:
        return
    q = route[side, lv, k, 1]
    ps = 12 + 9 * k
    qs = 12 + 9 * q
    pmask = (np.int64(1) << ps) - 1
    sub = (frame_pa & ~pmask) + (v & pmask & ~((np.int64(1) << qs) - 1))
    _insert(tlb, s, q, v, ck, sub, attr, ps)


@inner
def _promote(tlb, side, v, i, vpn, shift):
    """Re-install the original translation of L2 slot ``i`` in the L1 group of ``side``."""
    ctx = tlb.ctx
    frame = tlb.frame
    attrs = tlb.attrs
    osh = tlb.orig[i]
    ofr = frame[i] - ((vpn << shift) & ((np.int64(1) << osh) - 1))
    _fill_group(tlb, side, 0, v, ctx[i], ofr, (osh - 12) // 9, attrs[i])


@jit(inline="always")
def tlb_lookup(tlb, va, asid, pcid, side):
    """Translate ``va`` through the TLB hierarchy (the hot path; mutates LRU and counters).

    Inlined into its caller at the numba IR level: passing the state tuple to a real call
    costs more than an L1 hit.

    Parameters
    ----------
    tlb : tuple
        TLB state from :func:`make_tlb`.
    va : int64
        Linear address.
    asid : int64
        16-bit VPID/ASID (0 native).
    pcid : int64
        12-bit PCID (0 when CR4.PCIDE = 0).
    side : int64
        0 = data access, 1 = instruction fetch.

    Returns
    -------
    (level, frame_pa, page_shift, attrs) : tuple of int64
        ``level`` 0 = miss (other fields 0), 1 = L1 hit, 2 = L2 hit (the L1 group of the side
        was filled from the entry). ``frame_pa`` is the physical base of the entry's page
        (``pa = frame_pa + (va & ((1 << page_shift) - 1))``), ``page_shift`` 12/21/30 is the
        stored (possibly smashed) size, ``attrs`` the ``TA_*`` bits stored at fill time.
    """
    level, i, s, shift = tlb_peek(tlb, va, asid, pcid, side)
    return tlb_commit(tlb, va, side, level, i, s, shift)


@jit(inline="always")
def tlb_peek(tlb, va, asid, pcid, side):
    """Where :func:`tlb_lookup` would find ``va``, without changing anything.

    Returns ``(level, slot, structure, page_shift)``: level 0 = miss, 1 = L1 hit, 2 = L2 hit
    (probes in the lookup's order; the first hit wins). A caller that decides from the entry's
    attributes (``tlb.attrs[slot]``) whether the hit is all it needs then applies it with
    :func:`tlb_commit`, which makes the pair exactly one :func:`tlb_lookup`.
    """
    geom, plan, tag, ctx, attrs, hidx = tlb.geom, tlb.plan, tlb.tag, tlb.ctx, tlb.attrs, tlb.hidx
    v = np.int64(va) & VA_MASK
    a = asid & 0xFFFF
    ck = (a << 12) | (pcid & 0xFFF)
    for lv in range(2):
        for j in range(TP_PROBES, TP_PROBES + plan[side, lv, TP_NPROBE]):
            p = plan[side, lv, j]
            s = p >> 2
            q = p & 3
            shift = 12 + 9 * q
            vpn = v >> shift
            i = _probe(geom, tag, ctx, attrs, hidx, s, vpn, (vpn << 2) | q, ck, a)
            if i >= 0:
                return np.int64(lv + 1), i, s, np.int64(shift)
    return np.int64(0), np.int64(-1), np.int64(0), np.int64(0)


@jit(inline="always")
def tlb_commit(tlb, va, side, level, i, s, shift):
    """Apply the outcome :func:`tlb_peek` found: the miss counters of the structures probed in
    vain, the hit's LRU stamp and counter, and an L2 hit's copy into the L1 group. Returns
    what :func:`tlb_lookup` returns."""
    plan, frame, attrs, stamp, stats, clock = tlb.plan, tlb.frame, tlb.attrs, tlb.stamp, tlb.stats, tlb.clock
    missed = 2 if level == 0 else level - 1  # levels whose structures all missed
    for lv in range(missed):
        for j in range(TP_STRUCTS, TP_STRUCTS + plan[side, lv, TP_NSTRUCT]):
            stats[plan[side, lv, j], 1] += 1
    if level == 0:
        return np.int64(0), np.int64(0), np.int64(0), np.int64(0)
    now = clock[0] + 1
    clock[0] = now
    stamp[i] = now
    stats[s, 0] += 1
    fr = frame[i]
    at = attrs[i]
    if level == 2:
        v = np.int64(va) & VA_MASK
        _promote(tlb, side, v, i, v >> shift, shift)
    return level, fr, shift, at


@jit
def tlb_fill(tlb, va, asid, pcid, side, frame_pa, page_shift, attrs):
    """Insert the translation of ``va`` into the L1 and L2 groups of ``side`` (mutates ``tlb``).

    Parameters
    ----------
    tlb : tuple
        TLB state from :func:`make_tlb`.
    va : int64
        Linear address the walk translated.
    asid, pcid : int64
        Context tags.
    side : int64
        0 = data, 1 = instruction.
    frame_pa : int64
        Physical base of the page (low ``page_shift`` bits are ignored).
    page_shift : int64
        12, 21 or 30.
    attrs : int64
        ``TA_*`` bits; ``TA_G`` makes the entry global.

    Returns
    -------
    int64
        0, or -1 if ``page_shift`` is not 12/21/30 (nothing stored).
    """
    if page_shift == 12:
        k = 0
    elif page_shift == 21:
        k = 1
    elif page_shift == 30:
        k = 2
    else:
        return np.int64(-1)
    v = np.int64(va) & VA_MASK
    ck = ((asid & 0xFFFF) << 12) | (pcid & 0xFFF)
    fp = np.int64(frame_pa)
    at = np.int64(attrs)
    _fill_group(tlb, side, 0, v, ck, fp, k, at)
    _fill_group(tlb, side, 1, v, ck, fp, k, at)
    return np.int64(0)


@inner
def _doomed(c, at, a, ck, mode):
    """Does an invalidation remove an entry with context ``c`` and attrs ``at``?

    ``mode`` 0: entries of ``ck`` plus globals of asid ``a`` (INVLPG); 1: non-global entries
    of ``ck`` (INVPCID 0/1, MOV CR3); 2: all entries of ``ck``; 3: all entries of asid ``a``;
    4: non-global entries of asid ``a``; 5: every entry; 6: every non-global entry.
    """
    g = (at & TA_G) != 0
    if mode == 0:
        return (c >> 12) == a and (c == ck or g)
    if mode == 1:
        return c == ck and not g
    if mode == 2:
        return c == ck
    if mode == 3:
        return (c >> 12) == a
    if mode == 4:
        return (c >> 12) == a and not g
    if mode == 5:
        return True
    return not g


@inner
def _inv_addr(tlb, va, asid, pcid, mode):
    """Remove the entries selected by ``mode`` (see :func:`_doomed`) whose original page
    contains ``va``: every smashed piece of a large page, as the SDM's INVLPG/INVPCID
    footnote requires. Returns the number removed."""
    geom, plan, route, tag, ctx, frame, attrs, stamp, orig, hidx, stats, clock = tlb
    v = np.int64(va) & VA_MASK
    a = asid & 0xFFFF
    ck = (a << 12) | (pcid & 0xFFF)
    n = 0
    for s in range(geom.shape[0]):
        if geom[s, TG_SMASH] != 0:
            # pieces of one large page sit in many sets: look at every entry
            base = geom[s, TG_BASE]
            for i in range(base, base + geom[s, TG_ENTRIES]):
                t = tag[i]
                if t == -1 or not _doomed(ctx[i], attrs[i], a, ck, mode):
                    continue
                osh = orig[i]
                if (((t >> 2) << (12 + 9 * (t & 3))) >> osh) == (v >> osh):
                    _kill(geom, tag, hidx, s, i)
                    n += 1
        else:
            for q in range(3):
                if (geom[s, TG_SIZES] >> q) & 1 == 0:
                    continue
                vpn = v >> (12 + 9 * q)
                key = (vpn << 2) | q
                sb = _set_base(geom, s, vpn)
                for i in range(sb, sb + geom[s, TG_WAYS]):
                    if tag[i] == key and _doomed(ctx[i], attrs[i], a, ck, mode):
                        _kill(geom, tag, hidx, s, i)
                        n += 1
    return n


@inner
def _inv_all(tlb, asid, pcid, mode):
    """Remove every entry selected by ``mode`` (see :func:`_doomed`). Returns the number."""
    geom = tlb.geom
    tag = tlb.tag
    ctx = tlb.ctx
    attrs = tlb.attrs
    hidx = tlb.hidx
    a = asid & 0xFFFF
    ck = (a << 12) | (pcid & 0xFFF)
    n = 0
    for s in range(geom.shape[0]):
        base = geom[s, TG_BASE]
        for i in range(base, base + geom[s, TG_ENTRIES]):
            if tag[i] != -1 and _doomed(ctx[i], attrs[i], a, ck, mode):
                _kill(geom, tag, hidx, s, i)
                n += 1
    return n


@jit
def tlb_invlpg(tlb, va, asid, pcid):
    """SDM INVLPG on the TLBs: remove every entry of ``asid`` (any page size, including all
    smashed pieces) for the page containing ``va`` that belongs to ``pcid`` or is global.

    Canonical-address checks are the caller's (see :func:`hw_invlpg`). Returns the number of
    entries removed (mutates ``tlb``).
    """
    return _inv_addr(tlb, va, asid, pcid, 0)


@jit
def tlb_flush_pcid(tlb, asid, pcid, keep_global):
    """Remove the entries of ``(asid, pcid)``; global ones too unless ``keep_global``.

    A global entry belongs to the PCID it was filled under. Returns the number removed.
    """
    return _inv_all(tlb, asid, pcid, 1 if keep_global else 2)


@jit
def tlb_flush_asid(tlb, asid, keep_global):
    """Remove the entries of ``asid`` (all PCIDs); global ones too unless ``keep_global``."""
    return _inv_all(tlb, asid, 0, 4 if keep_global else 3)


@jit
def tlb_flush_all(tlb, keep_global):
    """Remove the entries of every asid; global ones too unless ``keep_global``."""
    return _inv_all(tlb, 0, 0, 6 if keep_global else 5)


@jit
def tlb_invpcid(tlb, asid, kind, pcid, va):
    """SDM INVPCID on the TLBs of ``asid`` (mutates ``tlb``).

    ``kind`` 0: entries of ``pcid`` for the page containing ``va``, except globals (all
    smashed pieces of that page); 1: all entries of ``pcid`` except globals; 2: all entries
    including globals, every PCID; 3: all entries except globals, every PCID.

    Returns
    -------
    int64
        :data:`HW_OK`, or :data:`HW_GP` for a kind outside 0..3 (nothing invalidated).
    """
    if kind == 0:
        _inv_addr(tlb, va, asid, pcid, 1)
    elif kind == 1:
        tlb_flush_pcid(tlb, asid, pcid, True)
    elif kind == 2:
        tlb_flush_asid(tlb, asid, False)
    elif kind == 3:
        tlb_flush_asid(tlb, asid, True)
    else:
        return HW_GP
    return HW_OK


@jit
def tlb_count_valid(tlb, structure_index):
    """Number of valid entries in structure ``structure_index``."""
    geom = tlb.geom
    tag = tlb.tag
    base = geom[structure_index, TG_BASE]
    n = 0
    for i in range(base, base + geom[structure_index, TG_ENTRIES]):
        if tag[i] != -1:
            n += 1
    return n


@inner
def tlb_reset_stats(tlb):
    """Zero the hit/miss counters (mutates ``tlb[T_STATS]``)."""
    tlb.stats[:, :] = 0


@jit
def tlb_lookup_chunk(tlb, vas, asid, pcid, side, out_level):
    """:func:`tlb_lookup` over ``vas`` (int64[n]); hit levels go to ``out_level`` (int64[n]).

    Returns the number of misses. Mutates ``tlb`` and ``out_level``.
    """
    misses = 0
    for j in range(vas.shape[0]):
        lvl, fr, sh, at = tlb_lookup(tlb, vas[j], asid, pcid, side)
        out_level[j] = lvl
        if lvl == 0:
            misses += 1
    return misses


# --- CR3 / CR4 / INVLPG / INVPCID semantics over TLB + PSC (SDM 4.10.4.1) ---------------------------


@inner
def _canonical(va, la57):
    top = np.int64(va) >> (56 if la57 else 47)
    return top == 0 or top == -1


@jit
def hw_mov_cr3(tlb, psc, asid, pcide, new_pcid, no_flush):
    """MOV to CR3 (SDM 4.10.4.1), within ``asid`` (mutates ``tlb`` and ``psc``).

    * ``pcide == 0``: remove non-global TLB entries of PCID 0 and PSC entries of PCID 0
      (``new_pcid`` and ``no_flush`` are ignored; a set bit 63 without PCIDE is the
      caller's #GP to raise).
    * ``pcide == 1`` and ``no_flush == 0`` (source bit 63 clear): the same for ``new_pcid``.
    * ``pcide == 1`` and ``no_flush == 1``: nothing.

    Returns :data:`HW_OK`.
    """
    if not pcide:
        tlb_flush_pcid(tlb, asid, 0, True)
        psc_invalidate_pcid(psc, asid, 0)
    elif not no_flush:
        tlb_flush_pcid(tlb, asid, new_pcid, True)
        psc_invalidate_pcid(psc, asid, new_pcid)
    return HW_OK


@jit
def hw_invlpg(tlb, psc, va, asid, pcid, la57):
    """INVLPG ``va`` with current PCID ``pcid`` (0 when CR4.PCIDE = 0), within ``asid``.

    Removes the TLB entries for the page of ``va`` that belong to ``pcid`` or are global
    (:func:`tlb_invlpg`), and every PSC entry of ``pcid`` regardless of address. The
    canonical check is done here from ``la57`` (bits 63:47, or 63:56 with 5-level paging,
    must equal bit 47 / 56): a non-canonical ``va`` is a NOP.

    Returns :data:`HW_OK`, or :data:`HW_NOP` for a non-canonical address.
    """
    if not _canonical(va, la57):
        return HW_NOP
    tlb_invlpg(tlb, va, asid, pcid)
    psc_invalidate_pcid(psc, asid, pcid)
    return HW_OK


@jit
def hw_invpcid(tlb, psc, asid, kind, pcid, va, la57):
    """INVPCID of type ``kind`` with descriptor ``(pcid, va)``, within ``asid``.

    TLB effect as :func:`tlb_invpcid`. PSC effect: types 0 and 1 remove every PSC entry of
    ``pcid`` (regardless of address); types 2 and 3 remove every PSC entry of ``asid``.

    Returns
    -------
    int64
        :data:`HW_OK`, or :data:`HW_GP` (nothing invalidated) if ``kind`` > 3, if a type 0/1
        descriptor has a PCID outside 0..4095 (descriptor bits 63:12 must be 0), or if a
        type 0 address is not canonical. The caller checks CR4.PCIDE=0 ⇒ PCID 0 for types 0/1.
    """
    if kind < 0 or kind > 3:
        return HW_GP
    if kind <= 1 and (pcid < 0 or pcid > 0xFFF):
        return HW_GP
    if kind == 0 and not _canonical(va, la57):
        return HW_GP
    tlb_invpcid(tlb, asid, kind, pcid, va)
    if kind <= 1:
        psc_invalidate_pcid(psc, asid, pcid)
    else:
        psc_flush_asid(psc, asid)
    return HW_OK


@jit
def hw_cr4_change(tlb, psc, asid, pge_changed, pcide_cleared):
    """MOV to CR4 that changes PGE or clears PCIDE: remove every TLB entry of ``asid``
    including globals, and every PSC entry of ``asid`` (all PCIDs). Otherwise nothing.

    Returns :data:`HW_OK`.
    """
    if pge_changed or pcide_cleared:
        tlb_flush_asid(tlb, asid, False)
        psc_flush_asid(psc, asid)
    return HW_OK


@jit
def hw_cr4_flush_current(tlb, psc, asid, pcid):
    """MOV to CR4 that changes PAE or sets SMEP: "invalidates all TLB entries and all entries
    in all paging-structure caches for the current PCID". Global entries associated with
    ``pcid`` are removed too (the SDM does not except them). Returns :data:`HW_OK`.
    """
    tlb_flush_pcid(tlb, asid, pcid, False)
    psc_invalidate_pcid(psc, asid, pcid)
    return HW_OK


# --- Python layer ---------------------------------------------------------------------------------


def tlb_entries(tlb: tuple, structure_index: int) -> list[list[tuple[int, int, int, int, int, int, int]]]:
    """Contents of one structure, for tests and views (Python layer, no JIT).

    Returns
    -------
    list of list of tuple
        One list per set, least recently used first; each entry is
        ``(asid, pcid, vpn, page_shift, frame_pa, attrs, orig_shift)`` with ``vpn`` the page
        number at the stored ``page_shift`` of ``va mod 2**57``.
    """
    geom, tag, ctx, frame, attrs, stamp, orig = (
        tlb[i] for i in (T_GEOM, T_TAG, T_CTX, T_FRAME, T_ATTRS, T_STAMP, T_ORIG)
    )
    s = int(structure_index)
    ways = int(geom[s, TG_WAYS])
    base = int(geom[s, TG_BASE])
    out = []
    for k in range(int(geom[s, TG_NSETS])):
        idx = [i for i in range(base + k * ways, base + (k + 1) * ways) if tag[i] != -1]
        idx.sort(key=lambda i: int(stamp[i]))
        out.append(
            [
                (
                    int(ctx[i]) >> 12,
                    int(ctx[i]) & 0xFFF,
                    int(tag[i]) >> 2,
                    12 + 9 * (int(tag[i]) & 3),
                    int(frame[i]),
                    int(attrs[i]),
                    int(orig[i]),
                )
                for i in idx
            ]
        )
    return out


def tlb_stats(tlb: tuple) -> np.ndarray:
    """A copy of the per-structure ``[hits, misses]`` counters, int64[nstruct, 2]."""
    return tlb[T_STATS].copy()
