"""Plain-Python reference of the TLBs and paging-structure caches (SDM vol. 3A 4.10).

Written from the SDM text and the model rules in ``mmu/hw/tlb.py``'s docstring, not from the
kernels: every set is an ``OrderedDict`` whose order *is* the LRU order (first = least
recently used), every entry a small dataclass, and every invalidation is the SDM sentence
applied to each entry in turn. Only the preset dataclasses are shared with the simulator.

Model rules in one place:

* A TLB entry belongs to (asid, pcid); a global entry (``TA_G``) is used for any PCID of its
  asid (SDM 4.10.2.4) but stays associated with the PCID it was created under.
* Lookup: L1 structures of the side (own side or unified) for 4K, 2M, 1G in that order, then
  L2 the same way. First hit wins, becomes MRU. An L2 hit copies the *original* translation
  into L1 (WikiChip Zen 2: smashed 1G pages are re-installed as 1G in L1).
* Fill: L1 group then L2 group of the side. A group stores the largest page size it supports
  that is not larger than the page ("smashing"), the piece that contains va; no such size,
  no entry. An entry a lookup of the new one would collide with (same asid, vpn, size, and
  same pcid or either global) is replaced; else the LRU entry of a full set is evicted.
* Counters: hit for the structure that hit; on a level that misses, a miss for every
  structure of that level's group.
* INVLPG: entries of the asid whose (original) page contains va, with pcid == current or
  global (SDM 4.10.4.1 and its footnote on multiple entries for one large page).
* PSC: four caches by entry level, tags VA[47 or 56 : 21/30/39/48], looked up PDE first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

TA_G = 1 << 4
SHIFTS = (12, 21, 30)
SIZE_BIT = {12: 1, 21: 2, 30: 4}
UNIFIED = 2


@dataclass
class Entry:
    asid: int
    pcid: int
    vpn: int  # page number of the stored page (address mod 2**57 >> shift)
    shift: int  # stored page size
    frame: int  # physical base of the stored page
    attrs: int
    orig: int  # page size of the translation it came from

    @property
    def is_global(self) -> bool:
        return bool(self.attrs & TA_G)

    def as_tuple(self) -> tuple[int, int, int, int, int, int, int]:
        return (self.asid, self.pcid, self.vpn, self.shift, self.frame, self.attrs, self.orig)


def _lin(va: int) -> int:
    """The 57 low bits of a linear address (the tag space of the model)."""
    return va % (1 << 57)


class RefTLB:
    """The TLB hierarchy described by a list of ``TLBStructure``."""

    def __init__(self, structures):
        self.structs = list(structures)
        self.sets = [[OrderedDict() for _ in range(st.entries // st.ways)] for st in self.structs]
        self.hits = [0] * len(self.structs)
        self.misses = [0] * len(self.structs)

    # -- helpers ------------------------------------------------------------------------------
    def _group(self, side: int, level: int) -> list[int]:
        return [i for i, st in enumerate(self.structs) if st.level == level and st.side in (side, UNIFIED)]

    def _set_of(self, i: int, vpn: int) -> OrderedDict:
        return self.sets[i][vpn % len(self.sets[i])]

    # -- lookup -------------------------------------------------------------------------------
    def lookup(self, va: int, asid: int, pcid: int, side: int) -> tuple[int, int, int, int]:
        lin = _lin(va)
        for level in (1, 2):
            group = self._group(side, level)
            for shift in SHIFTS:
                for i in group:
                    if not self.structs[i].sizes & SIZE_BIT[shift]:
                        continue
                    vpn = lin >> shift
                    od = self._set_of(i, vpn)
                    for key, e in od.items():
                        if e.vpn == vpn and e.shift == shift and e.asid == asid and (e.pcid == pcid or e.is_global):
                            od.move_to_end(key)
                            self.hits[i] += 1
                            if level == 2:
                                # copy the whole original translation up to L1
                                orig_base = e.frame - ((e.vpn << e.shift) % (1 << e.orig))
                                self._fill_group(side, 1, lin, e.asid, e.pcid, orig_base, e.orig, e.attrs)
                            return level, e.frame, e.shift, e.attrs
            for i in group:
                self.misses[i] += 1
        return 0, 0, 0, 0

    # -- fill ---------------------------------------------------------------------------------
    def fill(self, va, asid, pcid, side, frame, shift, attrs) -> int:
        if shift not in SHIFTS:
            return -1
        lin = _lin(va)
        self._fill_group(side, 1, lin, asid, pcid, frame, shift, attrs)
        self._fill_group(side, 2, lin, asid, pcid, frame, shift, attrs)
        return 0

    def _fill_group(self, side, level, lin, asid, pcid, frame, shift, attrs):
        group = self._group(side, level)
        fits = [(s, i) for i in group for s in SHIFTS if s <= shift and self.structs[i].sizes & SIZE_BIT[s]]
        if not fits:
            return
        stored, i = max(fits)
        page_base = frame - frame % (1 << shift)
        piece = (lin % (1 << shift)) - (lin % (1 << stored))
        new = Entry(asid, pcid, lin >> stored, stored, page_base + piece, attrs, shift)
        od = self._set_of(i, new.vpn)
        for key in [
            k
            for k, e in od.items()
            if e.asid == asid
            and e.vpn == new.vpn
            and e.shift == stored
            and (e.pcid == pcid or e.is_global or new.is_global)
        ]:
            del od[key]
        if len(od) >= self.structs[i].ways:
            od.popitem(last=False)
        od[(asid, pcid, new.vpn, stored)] = new

    # -- invalidation -------------------------------------------------------------------------
    def _remove(self, pred) -> int:
        n = 0
        for sets in self.sets:
            for od in sets:
                for key in [k for k, e in od.items() if pred(e)]:
                    del od[key]
                    n += 1
        return n

    @staticmethod
    def _page_contains(e: Entry, lin: int) -> bool:
        start = (e.vpn << e.shift) >> e.orig << e.orig
        return start <= lin < start + (1 << e.orig)

    def invlpg(self, va, asid, pcid) -> int:
        lin = _lin(va)
        return self._remove(
            lambda e: e.asid == asid and (e.pcid == pcid or e.is_global) and self._page_contains(e, lin)
        )

    def flush_pcid(self, asid, pcid, keep_global) -> int:
        return self._remove(lambda e: e.asid == asid and e.pcid == pcid and not (keep_global and e.is_global))

    def flush_asid(self, asid, keep_global) -> int:
        return self._remove(lambda e: e.asid == asid and not (keep_global and e.is_global))

    def flush_all(self, keep_global) -> int:
        return self._remove(lambda e: not (keep_global and e.is_global))

    def invpcid(self, asid, kind, pcid, va) -> int:
        if kind == 0:  # individual address, except globals
            lin = _lin(va)
            self._remove(
                lambda e: e.asid == asid and e.pcid == pcid and not e.is_global and self._page_contains(e, lin)
            )
        elif kind == 1:  # single context, except globals
            self.flush_pcid(asid, pcid, True)
        elif kind == 2:  # all contexts including globals
            self.flush_asid(asid, False)
        elif kind == 3:  # all contexts except globals
            self.flush_asid(asid, True)
        else:
            return 2
        return 0

    # -- observation --------------------------------------------------------------------------
    def count(self, i: int) -> int:
        return sum(len(od) for od in self.sets[i])

    def snapshot(self, i: int) -> list[list[tuple]]:
        return [[e.as_tuple() for e in od.values()] for od in self.sets[i]]

    def stats(self) -> list[list[int]]:
        return [[h, m] for h, m in zip(self.hits, self.misses, strict=True)]


class RefPSC:
    """PML5E/PML4E/PDPTE/PDE caches (SDM 4.10.3), keyed by entry level 5/4/3/2."""

    def __init__(self, caches):
        self.geo = {c.entry_level: (c.entries, c.ways) for c in caches if c.entries}
        self.sets = {lvl: [OrderedDict() for _ in range(e // w)] for lvl, (e, w) in self.geo.items()}
        self.hits = {lvl: 0 for lvl in (2, 3, 4, 5)}
        self.misses = {lvl: 0 for lvl in (2, 3, 4, 5)}

    @staticmethod
    def _tag(va, la57, entry_level):
        width = 57 if la57 else 48
        # a PDE covers 2 MiB (bits 20:0 below the tag), each level up 9 more bits
        return (va % (1 << width)) >> (21 + 9 * (entry_level - 2))

    def lookup(self, va, asid, pcid, la57):
        order = (2, 3, 4, 5) if la57 else (2, 3, 4)
        for lvl in order:
            if lvl not in self.geo:
                continue
            t = self._tag(va, la57, lvl)
            sets = self.sets[lvl]
            od = sets[t % len(sets)]
            key = (asid, pcid, t)
            if key in od:
                od.move_to_end(key)
                self.hits[lvl] += 1
                table, attrs = od[key]
                # the walk continues at the table the cached entry references: level lvl - 1
                return lvl - 1, table, attrs
            self.misses[lvl] += 1
        return -1, 0, 0

    def fill(self, va, asid, pcid, la57, entry_level, table, attrs):
        if entry_level not in (2, 3, 4, 5) or (entry_level == 5 and not la57) or entry_level not in self.geo:
            return 1
        t = self._tag(va, la57, entry_level)
        sets = self.sets[entry_level]
        od = sets[t % len(sets)]
        key = (asid, pcid, t)
        if key in od:
            del od[key]
        elif len(od) >= self.geo[entry_level][1]:
            od.popitem(last=False)
        od[key] = (table, attrs)
        return 0

    def _remove(self, pred):
        n = 0
        for sets in self.sets.values():
            for od in sets:
                for key in [k for k in od if pred(k)]:
                    del od[key]
                    n += 1
        return n

    def invalidate_pcid(self, asid, pcid):
        return self._remove(lambda k: k[0] == asid and k[1] == pcid)

    def flush_asid(self, asid):
        return self._remove(lambda k: k[0] == asid)

    def flush_all(self):
        return self._remove(lambda k: True)

    def snapshot(self, entry_level):
        if entry_level not in self.geo:
            return []
        return [[(k[0], k[1], k[2], v[0], v[1]) for k, v in od.items()] for od in self.sets[entry_level]]

    def stats(self):
        return [[self.hits[lvl], self.misses[lvl]] for lvl in (2, 3, 4, 5)]


class RefHW:
    """SDM 4.10.4.1 operations over a RefTLB and a RefPSC, within one asid (VPID)."""

    def __init__(self, tlb: RefTLB, psc: RefPSC):
        self.tlb = tlb
        self.psc = psc

    @staticmethod
    def canonical(va, la57):
        bits = 57 if la57 else 48
        lo = va % (1 << 64)
        upper = lo >> (bits - 1)
        return upper == 0 or upper == (1 << (64 - bits + 1)) - 1

    def mov_cr3(self, asid, pcide, new_pcid, no_flush):
        if not pcide:
            # "invalidates all TLB entries associated with PCID 000H except those for global
            # pages ... and all entries in all paging-structure caches associated with PCID 000H"
            self.tlb.flush_pcid(asid, 0, True)
            self.psc.invalidate_pcid(asid, 0)
        elif not no_flush:
            self.tlb.flush_pcid(asid, new_pcid, True)
            self.psc.invalidate_pcid(asid, new_pcid)
        return 0

    def invlpg(self, va, asid, pcid, la57):
        if not self.canonical(va, la57):
            return 1
        self.tlb.invlpg(va, asid, pcid)
        self.psc.invalidate_pcid(asid, pcid)
        return 0

    def invpcid(self, asid, kind, pcid, va, la57):
        if kind not in (0, 1, 2, 3):
            return 2
        if kind in (0, 1) and not 0 <= pcid < 4096:
            return 2
        if kind == 0 and not self.canonical(va, la57):
            return 2
        self.tlb.invpcid(asid, kind, pcid, va)
        if kind in (0, 1):
            self.psc.invalidate_pcid(asid, pcid)
        else:
            self.psc.flush_asid(asid)
        return 0

    def cr4_change(self, asid, pge_changed, pcide_cleared):
        if pge_changed or pcide_cleared:
            self.tlb.flush_asid(asid, False)
            self.psc.flush_asid(asid)
        return 0

    def cr4_flush_current(self, asid, pcid):
        self.tlb.flush_pcid(asid, pcid, False)
        self.psc.invalidate_pcid(asid, pcid)
        return 0
