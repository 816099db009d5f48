"""TLB hierarchy: hand-decoded scenarios, then kernel == reference on random op sequences.

The reference is ``tests/reference/tlb_ref.py`` (OrderedDict LRU per set, written from SDM
vol. 3A 4.10). Address comments decode a linear address as
``PML4 index / PDPT index / PD index / PT index / offset`` (9/9/9/9/12 bits).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference.tlb_ref import RefHW, RefPSC, RefTLB

from mmu.errors import MMUInputError
from mmu.hw.presets import (
    SIDE_DATA,
    SIDE_INSTR,
    SIDE_UNIFIED,
    SZ_2M,
    SZ_4K,
    SZ_ALL,
    TLBStructure,
    get_preset,
    list_presets,
)
from mmu.hw.pwc import make_psc, psc_entries, psc_fill, psc_lookup
from mmu.hw.tlb import (
    _HMUL,
    HW_GP,
    HW_NOP,
    HW_OK,
    T_GEOM,
    T_HIDX,
    T_STATS,
    T_TAG,
    TG_BASE,
    TG_ENTRIES,
    TG_HBASE,
    TG_HMASK,
    hw_cr4_change,
    hw_cr4_flush_current,
    hw_invlpg,
    hw_invpcid,
    hw_mov_cr3,
    make_tlb,
    tlb_count_valid,
    tlb_entries,
    tlb_fill,
    tlb_flush_all,
    tlb_flush_asid,
    tlb_flush_pcid,
    tlb_invlpg,
    tlb_invpcid,
    tlb_lookup,
    tlb_lookup_chunk,
)
from mmu.x86.bits import TA_D, TA_G, TA_RW, TA_US

K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30
RW_US = TA_RW | TA_US


def _va(pml4=0, pdpt=0, pd=0, pt=0, off=0):
    return (pml4 << 39) | (pdpt << 30) | (pd << 21) | (pt << 12) | off


# a hierarchy with 3-set (non power of two) arrays and an L1 that holds 1G while L2 does not,
# so promotion re-installs a smashed 1G page as 1G (the Zen 2 rule)
ODD = (
    TLBStructure("L1 D", 1, SIDE_DATA, SZ_ALL, 6, 2),
    TLBStructure("L1 I", 1, SIDE_INSTR, SZ_4K, 3, 1),
    TLBStructure("L2 U", 2, SIDE_UNIFIED, SZ_4K | SZ_2M, 12, 4),
)
# wide fully associative arrays (>= INDEX_MIN_WAYS ways) are looked up through a hash index
FA = (
    TLBStructure("L1 D", 1, SIDE_DATA, SZ_ALL, 20, 20),
    TLBStructure("L1 I", 1, SIDE_INSTR, SZ_4K | SZ_2M, 17, 17),
    TLBStructure("L2 U", 2, SIDE_UNIFIED, SZ_4K | SZ_2M, 24, 2),
)
# L1 that holds 1G (fully associative, 2 entries) above an L2 that smashes 1G into 2M
PROMOTE = (
    TLBStructure("L1 D", 1, SIDE_DATA, SZ_ALL, 2, 2),
    TLBStructure("L2 D", 2, SIDE_DATA, SZ_4K | SZ_2M, 8, 2),
)


# --- presets ------------------------------------------------------------------------------------


def test_presets_listed_and_unknown_rejected():
    assert {"skylake", "zen2", "toy"} <= set(list_presets())
    with pytest.raises(MMUInputError, match=r"unknown CPU preset 'k6'; choose one of: .*skylake"):
        get_preset("k6")


def test_preset_geometry_and_sources():
    skl = get_preset("Skylake")
    stlb = next(s for s in skl.tlbs if s.name == "STLB 4K+2M")
    assert (stlb.entries, stlb.ways, stlb.sets, stlb.sizes) == (1536, 12, 128, SZ_4K | SZ_2M)
    assert all(s.source for s in skl.tlbs) and all(c.source for c in skl.pscs)
    assert "unconfirmed" in next(s for s in skl.tlbs if s.name == "STLB 1G").source
    assert all("assumption" in c.source for c in skl.pscs if c.entries)
    zen2 = get_preset("zen2")
    l2 = next(s for s in zen2.tlbs if s.name == "L2 DTLB")
    assert l2.ways == 12 and l2.sets == 170  # 2048 documented, see its source string
    for name in list_presets():
        make_tlb(get_preset(name))  # every preset builds


def test_bad_geometry_rejected():
    with pytest.raises(MMUInputError, match="multiple of 4 ways"):
        TLBStructure("x", 1, SIDE_DATA, SZ_4K, 6, 4)
    clash = (
        TLBStructure("a", 2, SIDE_DATA, SZ_4K, 4, 2),
        TLBStructure("b", 2, SIDE_UNIFIED, SZ_4K | SZ_2M, 4, 2),
    )
    with pytest.raises(MMUInputError, match="both hold 4K pages"):
        make_tlb(clash)


# --- scenarios ----------------------------------------------------------------------------------


def test_l1_4k_hit_then_counters():
    t = make_tlb(get_preset("skylake"))
    va = _va(0, 0, 1, 2, 0x345)  # PML4 0 / PDPT 0 / PD 1 / PT 2 / offset 0x345
    assert tlb_lookup(t, va, 0, 0, 0) == (0, 0, 0, 0)
    assert tlb_fill(t, va, 0, 0, 0, 0xABCD_E000, 12, RW_US | TA_D) == 0
    assert tlb_lookup(t, va, 0, 0, 0) == (1, 0xABCD_E000, 12, RW_US | TA_D)
    assert tlb_lookup(t, va, 0, 0, 1) == (2, 0xABCD_E000, 12, RW_US | TA_D)  # ITLB miss, STLB hit
    assert tlb_lookup(t, va, 0, 0, 1) == (1, 0xABCD_E000, 12, RW_US | TA_D)  # promoted into ITLB
    stats = t[T_STATS]
    # L1 DTLB 4K/2M/1G: one miss each (first lookup), one hit for 4K
    assert stats[:3].tolist() == [[1, 1], [0, 1], [0, 1]]
    # L1 ITLB 4K/2M: one miss each, then a 4K hit; STLB 4K+2M: one miss, one hit; STLB 1G one miss
    assert stats[3:].tolist() == [[1, 1], [0, 1], [1, 1], [0, 1]]


def test_bad_page_shift_is_rejected_by_code():
    t = make_tlb(get_preset("toy"))
    assert tlb_fill(t, 0, 0, 0, 0, 0, 13, 0) == -1
    assert sum(tlb_count_valid(t, s) for s in range(3)) == 0


def test_lru_victim_is_least_recently_used():
    # toy L1 DTLB: 4 entries, 2 ways -> 2 sets; 4K VPNs 0, 2, 4 all map to set 0
    t = make_tlb(get_preset("toy"))
    a, b, c = _va(pt=0), _va(pt=2), _va(pt=4)  # PT indices 0, 2, 4 of PD 0
    tlb_fill(t, a, 0, 0, 0, 0x1000, 12, RW_US)
    tlb_fill(t, b, 0, 0, 0, 0x2000, 12, RW_US)
    assert tlb_lookup(t, a, 0, 0, 0)[0] == 1  # a becomes MRU, b is LRU
    tlb_fill(t, c, 0, 0, 0, 0x3000, 12, RW_US)
    assert [e[2] for e in tlb_entries(t, 0)[0]] == [0, 4]  # LRU first: a then c; b evicted
    assert tlb_lookup(t, b, 0, 0, 0)[0] == 2  # still in the unified L2 (4 sets of 2)


def test_refill_overwrites_instead_of_duplicating():
    t = make_tlb(get_preset("toy"))
    va = _va(pt=3)
    for frame in (0x5000, 0x6000, 0x7000):
        tlb_fill(t, va, 0, 0, 0, frame, 12, RW_US)
    assert tlb_count_valid(t, 0) == 1 and tlb_count_valid(t, 2) == 1
    assert tlb_lookup(t, va, 0, 0, 0) == (1, 0x7000, 12, RW_US)
    # a global fill under another PCID replaces the PCID-0 entry (a lookup would match both)
    tlb_fill(t, va, 0, 7, 0, 0x8000, 12, RW_US | TA_G)
    assert tlb_count_valid(t, 0) == 1
    assert tlb_lookup(t, va, 0, 3, 0) == (1, 0x8000, 12, RW_US | TA_G)


def test_non_power_of_two_sets():
    t = make_tlb(ODD)
    # L2 U: 12 entries / 4 ways = 3 sets; 4K VPNs 0, 3, 6, 9, 12 all go to set 0
    for k, vpn in enumerate((0, 3, 6, 9, 12)):
        tlb_fill(t, vpn << 12, 0, 0, 0, (k + 1) << 12, 12, RW_US)
    sets = tlb_entries(t, 2)
    assert [len(s) for s in sets] == [4, 0, 0]
    assert [e[2] for e in sets[0]] == [3, 6, 9, 12]  # VPN 0 was LRU and is gone
    # L1 D: 3 sets of 2; same VPNs -> set 0 keeps only the last two
    assert [e[2] for e in tlb_entries(t, 0)[0]] == [9, 12]


def test_smashing_into_smaller_pages():
    t = make_tlb(get_preset("toy"))
    # 1G page: PML4 0 / PDPT 1, va inside it at PD 3 / PT 5 / offset 0x10
    va = _va(0, 1, 3, 5, 0x10)
    tlb_fill(t, va, 0, 0, SIDE_DATA, 0x40_0000_0000, 30, RW_US)
    # L1 DTLB (4K+2M) stores the 2M piece containing va; L2 (all sizes) stores the 1G page
    l1 = [e for s in tlb_entries(t, 0) for e in s]
    assert l1 == [(0, 0, va >> 21, 21, 0x40_0000_0000 + 3 * M2, RW_US, 30)]
    l2 = [e for s in tlb_entries(t, 2) for e in s]
    assert l2 == [(0, 0, va >> 30, 30, 0x40_0000_0000, RW_US, 30)]
    assert tlb_lookup(t, va, 0, 0, 0) == (1, 0x40_0000_0000 + 3 * M2, 21, RW_US)
    # the ITLB holds only 4K: an instruction-side lookup promotes the 4K piece
    assert tlb_lookup(t, va, 0, 0, SIDE_INSTR) == (2, 0x40_0000_0000, 30, RW_US)
    l1i = [e for s in tlb_entries(t, 1) for e in s]
    assert l1i == [(0, 0, va >> 12, 12, 0x40_0000_0000 + 3 * M2 + 5 * K4, RW_US, 30)]


def test_promotion_reinstalls_original_page_size():
    t = make_tlb(PROMOTE)
    va = _va(0, 2, 7, 1, 0x8)  # PDPT 2: a 1G page; PD 7 inside it
    tlb_fill(t, va, 0, 0, 0, 0x80_0000_0000, 30, RW_US)
    assert tlb_lookup(t, va, 0, 0, 0) == (1, 0x80_0000_0000, 30, RW_US)
    tlb_fill(t, _va(pt=1), 0, 0, 0, 0x1000, 12, RW_US)  # evict the 1G entry from the 2-entry L1
    tlb_fill(t, _va(pt=2), 0, 0, 0, 0x2000, 12, RW_US)
    # L2 holds the 2M piece for PD 7; its hit re-installs the whole 1G page in L1
    assert tlb_lookup(t, va, 0, 0, 0) == (2, 0x80_0000_0000 + 7 * M2, 21, RW_US)
    other = _va(0, 2, 300, 0, 0)  # another 2M inside the same 1G page
    assert tlb_lookup(t, other, 0, 0, 0) == (1, 0x80_0000_0000, 30, RW_US)


def test_global_entries_and_pcid_tags():
    t = make_tlb(get_preset("toy"))
    p = make_psc(get_preset("toy"))
    kern, user = _va(256, 0, 0, 1), _va(1, 0, 0, 1)  # PML4 256 (kernel half) / PML4 1
    kern = kern - (1 << 48)  # sign-extend: canonical high-half address, negative as int64
    tlb_fill(t, kern, 0, 1, 0, 0x9000, 12, TA_RW | TA_G)
    tlb_fill(t, user, 0, 1, 0, 0xA000, 12, RW_US)
    assert tlb_lookup(t, kern, 0, 2, 0)[0] == 1  # global: any PCID of asid 0
    assert tlb_lookup(t, kern, 1, 1, 0)[0] == 0  # but not another asid (VPID)
    assert tlb_lookup(t, user, 0, 2, 0)[0] == 0  # non-global: PCID 1 only
    hw_mov_cr3(t, p, 0, 1, 1, 1)  # PCIDE=1, bit 63 set: no invalidation
    assert tlb_lookup(t, user, 0, 1, 0)[0] == 1
    hw_mov_cr3(t, p, 0, 1, 1, 0)  # PCIDE=1, bit 63 clear: PCID 1 non-global entries go
    assert tlb_lookup(t, user, 0, 1, 0)[0] == 0
    assert tlb_lookup(t, kern, 0, 1, 0)[0] == 1
    hw_cr4_change(t, p, 0, False, False)  # neither PGE nor PCIDE 1->0 changed: nothing
    assert tlb_lookup(t, kern, 0, 1, 0)[0] == 1
    hw_cr4_change(t, p, 0, True, False)  # PGE toggled: everything of asid 0, globals too
    assert tlb_lookup(t, kern, 0, 1, 0)[0] == 0


def test_mov_cr3_without_pcide_flushes_pcid0_only():
    t = make_tlb(get_preset("toy"))
    p = make_psc(get_preset("toy"))
    tlb_fill(t, _va(pt=1), 0, 0, 0, 0x1000, 12, RW_US)
    tlb_fill(t, _va(pt=2), 0, 5, 0, 0x2000, 12, RW_US)
    tlb_fill(t, _va(pt=3), 1, 0, 0, 0x3000, 12, RW_US)  # another asid
    psc_fill(p, _va(pt=1), 0, 0, False, 2, 0x7000, RW_US)
    hw_mov_cr3(t, p, 0, 0, 5, 1)  # PCIDE=0: new_pcid and no_flush ignored
    assert tlb_lookup(t, _va(pt=1), 0, 0, 0)[0] == 0
    assert tlb_lookup(t, _va(pt=2), 0, 5, 0)[0] == 1
    assert tlb_lookup(t, _va(pt=3), 1, 0, 0)[0] == 1
    assert psc_lookup(p, _va(pt=1), 0, 0, False)[0] == -1


def test_invlpg_removes_every_piece_of_a_smashed_page():
    t = make_tlb(get_preset("zen2"))
    p = make_psc(get_preset("zen2"))
    page = 0xC0_0000_0000
    a, b = _va(0, 3, 0, 0), _va(0, 3, 17, 0)  # two 2M regions of the 1G page PML4 0 / PDPT 3
    tlb_fill(t, a, 0, 0, 0, page, 30, RW_US)
    tlb_fill(t, b, 0, 0, 0, page, 30, RW_US)
    l2 = 2  # L2 DTLB: stores 2M pieces of the 1G page
    assert tlb_count_valid(t, l2) == 2 and tlb_count_valid(t, 0) == 1
    psc_fill(p, a, 0, 0, False, 3, 0x5000, RW_US)
    # INVLPG of a third address inside the same 1G page: both pieces and the L1 1G entry go,
    # and every PSC entry of the PCID goes regardless of address
    assert hw_invlpg(t, p, _va(0, 3, 400, 9, 0x77), 0, 0, False) == HW_OK
    assert tlb_count_valid(t, l2) == 0 and tlb_count_valid(t, 0) == 0
    assert psc_lookup(p, a, 0, 0, False)[0] == -1


def test_invlpg_noncanonical_is_nop():
    t = make_tlb(get_preset("toy"))
    p = make_psc(get_preset("toy"))
    va = 1 << 50  # bits 63:47 not a sign extension of bit 47: non-canonical with 4-level paging
    tlb_fill(t, va, 0, 0, 0, 0x1000, 12, RW_US)
    assert hw_invlpg(t, p, va, 0, 0, False) == HW_NOP
    assert tlb_lookup(t, va, 0, 0, 0)[0] == 1
    assert hw_invlpg(t, p, va, 0, 0, True) == HW_OK  # canonical with 5-level paging
    assert tlb_lookup(t, va, 0, 0, 0)[0] == 0


def test_invpcid_types():
    toy = get_preset("toy")

    def setup():
        t, p = make_tlb(toy), make_psc(toy)
        tlb_fill(t, _va(pt=1), 0, 1, 0, 0x1000, 12, RW_US)  # PCID 1
        tlb_fill(t, _va(pt=2), 0, 1, 0, 0x2000, 12, RW_US)  # PCID 1, other page
        tlb_fill(t, _va(pt=3), 0, 2, 0, 0x3000, 12, RW_US)  # PCID 2
        tlb_fill(t, _va(pt=1, pd=1), 0, 1, 0, 0x4000, 12, RW_US | TA_G)  # global, PCID 1
        return t, p

    def alive(t):
        probes = [(_va(pt=1), 1), (_va(pt=2), 1), (_va(pt=3), 2), (_va(pt=1, pd=1), 1)]
        return [tlb_lookup(t, va, 0, pc, 0)[0] != 0 for va, pc in probes]

    for kind, expect in (
        (0, [False, True, True, True]),
        (1, [False, False, True, True]),
        (2, [False, False, False, False]),
        (3, [False, False, False, True]),
    ):
        t, p = setup()
        assert hw_invpcid(t, p, 0, kind, 1, _va(pt=1, off=0x123), False) == HW_OK
        assert alive(t) == expect, kind
    t, p = setup()
    assert hw_invpcid(t, p, 0, 4, 1, 0, False) == HW_GP
    assert hw_invpcid(t, p, 0, 1, 4096, 0, False) == HW_GP
    assert hw_invpcid(t, p, 0, 0, 1, 1 << 50, False) == HW_GP
    assert alive(t) == [True] * 4


def test_cr4_flush_current_removes_current_pcid_including_its_globals():
    t = make_tlb(get_preset("toy"))
    p = make_psc(get_preset("toy"))
    tlb_fill(t, _va(pt=1), 0, 1, 0, 0x1000, 12, RW_US | TA_G)
    tlb_fill(t, _va(pt=2), 0, 2, 0, 0x2000, 12, RW_US)
    hw_cr4_flush_current(t, p, 0, 1)
    assert tlb_lookup(t, _va(pt=1), 0, 1, 0)[0] == 0
    assert tlb_lookup(t, _va(pt=2), 0, 2, 0)[0] == 1


@numba.njit
def _kernel_uses_tlb(tlb, psc, vas):
    # the way the engine calls these: from inside another kernel, plain ints and tuples
    hits = 0
    for j in range(vas.shape[0]):
        lvl, fr, sh, at = tlb_lookup(tlb, vas[j], 0, 0, 0)
        if lvl == 0:
            tlb_fill(tlb, vas[j], 0, 0, 0, vas[j] & ~0xFFF, 12, 3)
            nl, tpa, ta = psc_lookup(psc, vas[j], 0, 0, False)
            if nl == -1:
                psc_fill(psc, vas[j], 0, 0, False, 2, 0x1000, 3)
        else:
            hits += 1
    hw_invlpg(tlb, psc, vas[0], 0, 0, False)
    hw_mov_cr3(tlb, psc, 0, 1, 0, 0)
    hw_invpcid(tlb, psc, 0, 3, 0, 0, False)
    hw_cr4_change(tlb, psc, 0, True, False)
    return hits


def test_callable_from_other_kernels():
    t = make_tlb(get_preset("skylake"))
    p = make_psc(get_preset("skylake"))
    vas = (np.arange(200, dtype=np.int64) % 50) << 12
    assert _kernel_uses_tlb(t, p, vas) == 150
    assert sum(tlb_count_valid(t, s) for s in range(7)) == 0


def test_lookup_chunk():
    t = make_tlb(get_preset("zen2"))
    vas = np.array([0x1000, 0x1008, 0x2000], dtype=np.int64)
    tlb_fill(t, 0x1000, 0, 0, 0, 0x5000, 12, RW_US)
    out = np.zeros(3, dtype=np.int64)
    assert tlb_lookup_chunk(t, vas, 0, 0, 0, out) == 1
    assert out.tolist() == [1, 1, 0]


# --- kernel == reference on random op sequences --------------------------------------------------

_G1 = st.sampled_from([0, 1, 2, 5])
_M2 = st.sampled_from([0, 1, 3, 130])
_P4 = st.sampled_from([0, 1, 2, 128, 256, 384])
_HIGH = st.sampled_from([0, 0, 0, -(1 << 47), 1 << 50])  # low half, high half, non-canonical (4-level)
VAS = st.builds(
    lambda h, g, m, p, o: h + g * G1 + m * M2 + p * K4 + o, _HIGH, _G1, _M2, _P4, st.sampled_from([0, 0x123, 0xFFF])
)
ASIDS = st.sampled_from([0, 1])
PCIDS = st.sampled_from([0, 1, 2, 4095])
SIDES = st.sampled_from([0, 1])
FRAMES = st.integers(0, (1 << 28) - 1).map(lambda k: k << 12)
ATTRS = st.integers(0, 0x1FF)
BOOLS = st.booleans()

_MAIN = ["lookup"] * 12 + ["fill"] * 9 + ["psc_lookup"] * 3 + ["psc_fill"] * 3
_INVAL = [
    "invlpg",
    "hw_invlpg",
    "invpcid",
    "tlb_invpcid",
    "cr3",
    "cr3",
    "cr4",
    "cr4_cur",
    "flush_pcid",
    "flush_asid",
    "flush_all",
]


@st.composite
def op_lists(draw, max_ops=60, max_pool=10, inval_weight=3):
    """Op sequences over a small pool of addresses and (asid, pcid) contexts, so lookups hit,
    sets fill up and invalidations find something to remove."""
    pool = draw(st.lists(VAS, min_size=1, max_size=max_pool))
    near = st.sampled_from(pool)
    far = st.one_of(near.map(lambda v: v ^ K4), near.map(lambda v: v ^ M2), VAS)
    va = st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2]).flatmap(lambda k: near if k else far)
    ctxs = draw(
        st.lists(st.tuples(st.sampled_from([0, 0, 1]), st.sampled_from([0, 1, 2, 4095])), min_size=2, max_size=3)
    )
    ctx = st.sampled_from(ctxs)
    asid = ctx.map(lambda c: c[0])
    pcid = st.one_of(ctx.map(lambda c: c[1]), ctx.map(lambda c: c[1]), st.sampled_from([0, 1, 2, 4095]))
    shift = st.sampled_from([12, 12, 21, 30])
    attrs = st.builds(lambda a, g: (a & ~TA_G) | (TA_G if g else 0), ATTRS, st.sampled_from([0, 0, 0, 1]))
    args = {
        "lookup": st.tuples(va, ctx, SIDES).map(lambda t: (t[0], *t[1], t[2])),
        "fill": st.tuples(va, ctx, SIDES, FRAMES, shift, attrs).map(lambda t: (t[0], *t[1], *t[2:])),
        "invlpg": st.tuples(va, asid, pcid),
        "hw_invlpg": st.tuples(va, asid, pcid, BOOLS),
        "invpcid": st.tuples(asid, st.integers(0, 4), st.sampled_from([0, 1, 1, 2, 4096]), va, BOOLS),
        "tlb_invpcid": st.tuples(asid, st.integers(0, 3), pcid, va),
        "cr3": st.tuples(asid, BOOLS, pcid, BOOLS),
        "cr4": st.tuples(asid, BOOLS, BOOLS),
        "cr4_cur": st.tuples(asid, pcid),
        "flush_pcid": st.tuples(asid, pcid, BOOLS),
        "flush_asid": st.tuples(asid, BOOLS),
        "flush_all": st.tuples(BOOLS),
        "psc_fill": st.tuples(va, ctx, BOOLS, st.sampled_from([1, 2, 2, 3, 3, 4, 4, 5, 6]), FRAMES, ATTRS).map(
            lambda t: (t[0], *t[1], *t[2:])
        ),
        "psc_lookup": st.tuples(va, ctx, BOOLS).map(lambda t: (t[0], *t[1], t[2])),
    }
    kinds = _MAIN + ["inval"] * inval_weight
    n = draw(st.integers(max_ops // 3, max_ops))
    ops = []
    filled = []  # (va, asid, pcid) of fills so far: INVLPG / INVPCID aim at them half the time
    for _ in range(n):
        kind = draw(st.sampled_from(kinds))
        if kind == "inval":
            kind = draw(st.sampled_from(_INVAL))
        op = (kind, *draw(args[kind]))
        if kind == "fill":
            filled.append(op[1:4])
        elif filled and kind in ("invlpg", "hw_invlpg", "invpcid", "tlb_invpcid") and draw(BOOLS):
            fva, fasid, fpcid = draw(st.sampled_from(filled))
            other = draw(st.sampled_from([fpcid, 0, 1, 2]))
            if kind in ("invlpg", "hw_invlpg"):
                op = (kind, fva, fasid, other, *op[4:])
            else:
                op = (kind, fasid, op[2], other, fva, *op[5:])
        ops.append(op)
    return ops


SPECS = {
    "toy": get_preset("toy"),
    "odd": ODD,
    "promote": PROMOTE,
    "fa": FA,
    "skylake": get_preset("skylake"),
    "zen2": get_preset("zen2"),
}


class Twin:
    """Kernel state and reference state driven by the same operations."""

    def __init__(self, spec):
        structs = spec.tlbs if hasattr(spec, "tlbs") else spec
        caches = get_preset("toy").pscs if not hasattr(spec, "pscs") else spec.pscs
        self.structs = structs
        self.tlb = make_tlb(structs)
        self.psc = make_psc(caches)
        self.ref = RefHW(RefTLB(structs), RefPSC(caches))

    def apply(self, op):
        name, *a = op
        t, p, r = self.tlb, self.psc, self.ref
        if name == "lookup":
            return tlb_lookup(t, *a), r.tlb.lookup(*a)
        if name == "fill":
            return tlb_fill(t, *a), r.tlb.fill(*a)
        if name == "invlpg":
            return tlb_invlpg(t, *a), r.tlb.invlpg(*a)
        if name == "hw_invlpg":
            return hw_invlpg(t, p, *a), r.invlpg(*a)
        if name == "invpcid":
            return hw_invpcid(t, p, *a), r.invpcid(*a)
        if name == "tlb_invpcid":
            return tlb_invpcid(t, *a), r.tlb.invpcid(*a)
        if name == "cr3":
            return hw_mov_cr3(t, p, *a), r.mov_cr3(*a)
        if name == "cr4":
            return hw_cr4_change(t, p, *a), r.cr4_change(*a)
        if name == "cr4_cur":
            return hw_cr4_flush_current(t, p, *a), r.cr4_flush_current(*a)
        if name == "flush_pcid":
            return tlb_flush_pcid(t, *a), r.tlb.flush_pcid(*a)
        if name == "flush_asid":
            return tlb_flush_asid(t, *a), r.tlb.flush_asid(*a)
        if name == "flush_all":
            return tlb_flush_all(t, *a), r.tlb.flush_all(*a)
        if name == "psc_fill":
            return psc_fill(p, *a), r.psc.fill(*a)
        if name == "psc_lookup":
            return psc_lookup(p, *a), r.psc.lookup(*a)
        raise AssertionError(name)

    def check_state(self):
        for s, st_ in enumerate(self.structs):
            got = tlb_entries(self.tlb, s)
            assert got == self.ref.tlb.snapshot(s), st_.name
            assert all(len(x) <= st_.ways for x in got)
            assert tlb_count_valid(self.tlb, s) == self.ref.tlb.count(s) <= st_.entries
        assert self.tlb[T_STATS].tolist() == self.ref.tlb.stats()
        for lvl in (2, 3, 4, 5):
            got = psc_entries(self.psc, lvl)
            want = self.ref.psc.snapshot(lvl)
            assert got == (want if want else [[] for _ in got])
        assert self.psc.stats.tolist() == self.ref.psc.stats()
        check_index(self.tlb)


def _hslot(key, hmask):
    x = (key * _HMUL) % (1 << 64)
    x -= (x >> 63) << 64  # as int64
    return (x >> 32) & hmask


def check_index(tlb):
    """The hash index of every indexed structure holds exactly its valid slots, each one
    reachable from its home bucket without crossing an empty bucket."""
    geom, tag, hidx = tlb[T_GEOM], tlb[T_TAG], tlb[T_HIDX]
    for s in range(geom.shape[0]):
        hm = int(geom[s, TG_HMASK])
        if hm < 0:
            continue
        hb, base = int(geom[s, TG_HBASE]), int(geom[s, TG_BASE])
        table = [int(r) for r in hidx[hb : hb + hm + 1]]
        valid = [i for i in range(base, base + int(geom[s, TG_ENTRIES])) if tag[i] != -1]
        assert sorted(r for r in table if r >= 0) == valid
        for h, r in enumerate(table):
            if r < 0:
                continue
            j = _hslot(int(tag[r]), hm)
            while j != h:
                assert table[j] >= 0, (s, r)
                j = (j + 1) & hm


@pytest.mark.parametrize("name", ["toy", "odd", "promote", "fa"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=op_lists())
def test_kernel_matches_reference_small(name, ops):
    twin = Twin(SPECS[name])
    for op in ops:
        got, want = twin.apply(op)
        assert tuple(np.atleast_1d(got).tolist()) == tuple(np.atleast_1d(want).tolist()), op
        twin.check_state()  # contents and LRU order of every set, after every op


@pytest.mark.parametrize("name", ["skylake", "zen2"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=op_lists(max_ops=200, max_pool=40, inval_weight=1))
def test_kernel_matches_reference_presets(name, ops):
    twin = Twin(SPECS[name])
    for op in ops:
        got, want = twin.apply(op)
        assert tuple(np.atleast_1d(got).tolist()) == tuple(np.atleast_1d(want).tolist()), op
    twin.check_state()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["toy", "zen2", "promote", "fa"]),
    fills=st.lists(
        st.tuples(VAS, ASIDS, PCIDS, SIDES, FRAMES, st.sampled_from([12, 21, 30]), ATTRS), min_size=1, max_size=40
    ),
    data=st.data(),
    kind=st.sampled_from(["invlpg", "invpcid0", "invpcid1", "invpcid2", "invpcid3", "cr3", "cr3_pcide0"]),
)
def test_no_stale_translation_survives_invalidation(name, fills, data, kind):
    """After an invalidation, no entry the SDM says it removes is left, in any structure."""
    # aim the invalidation at something that was filled (or near it, or anywhere)
    target = data.draw(st.sampled_from(fills))
    va = data.draw(st.sampled_from([target[0], target[0] ^ K4, target[0] ^ M2, target[0] ^ (M2 * 5)]))
    asid = data.draw(st.sampled_from([target[1], 1 - target[1]]))
    pcid = data.draw(st.sampled_from([target[2], target[2], 0, 2]))
    twin = Twin(SPECS[name])
    t, p = twin.tlb, twin.psc
    for f in fills:
        tlb_fill(t, *f)
    canonical = RefHW.canonical(va, False)

    def contains(e):  # the original page of entry e contains va
        _, _, vpn, shift, _, _, orig = e
        start = ((vpn << shift) >> orig) << orig
        return start <= va % (1 << 57) < start + (1 << orig)

    if kind == "invlpg":
        hw_invlpg(t, p, va, asid, pcid, False)
        doomed = lambda e: canonical and e[0] == asid and (e[1] == pcid or e[5] & TA_G) and contains(e)  # noqa: E731
    elif kind == "invpcid0":
        hw_invpcid(t, p, asid, 0, pcid, va, False)
        doomed = lambda e: canonical and e[0] == asid and e[1] == pcid and not e[5] & TA_G and contains(e)  # noqa: E731
    elif kind == "invpcid1":
        hw_invpcid(t, p, asid, 1, pcid, va, False)
        doomed = lambda e: e[0] == asid and e[1] == pcid and not e[5] & TA_G  # noqa: E731
    elif kind == "invpcid2":
        hw_invpcid(t, p, asid, 2, pcid, va, False)
        doomed = lambda e: e[0] == asid  # noqa: E731
    elif kind == "invpcid3":
        hw_invpcid(t, p, asid, 3, pcid, va, False)
        doomed = lambda e: e[0] == asid and not e[5] & TA_G  # noqa: E731
    elif kind == "cr3":
        hw_mov_cr3(t, p, asid, 1, pcid, 0)
        doomed = lambda e: e[0] == asid and e[1] == pcid and not e[5] & TA_G  # noqa: E731
    else:
        hw_mov_cr3(t, p, asid, 0, pcid, 0)
        doomed = lambda e: e[0] == asid and e[1] == 0 and not e[5] & TA_G  # noqa: E731
    for s in range(len(twin.structs)):
        left = [e for sets in tlb_entries(t, s) for e in sets if doomed(e)]
        assert not left, (kind, twin.structs[s].name, left)
    if kind == "invlpg" and canonical:
        # nothing for va can be found any more, on either side, at any level
        for side in (0, 1):
            assert tlb_lookup(t, va, asid, pcid, side)[0] == 0


def test_fully_associative_and_12_way_eviction():
    zen2 = make_tlb(get_preset("zen2"))
    for k in range(65):  # 65 4K pages: the 64-entry fully associative L1 DTLB drops page 0
        tlb_fill(zen2, k << 12, 0, 0, 0, (k + 1) << 12, 12, RW_US)
    assert tlb_count_valid(zen2, 0) == 64
    assert tlb_lookup(zen2, 0, 0, 0, 0) == (2, 1 << 12, 12, RW_US)  # from the L2 DTLB
    skl = make_tlb(get_preset("skylake"))
    stlb = 5  # STLB 4K+2M: 128 sets x 12 ways; VPNs k * 128 all land in set 0
    for k in range(13):
        tlb_fill(skl, (k * 128) << 12, 0, 0, 0, (k + 1) << 12, 12, RW_US)
    assert [e[2] for e in tlb_entries(skl, stlb)[0]] == [k * 128 for k in range(1, 13)]
    assert tlb_lookup(skl, 0, 0, 0, 0)[0] == 0  # gone from the L1 DTLB (16 sets x 4) and the STLB


def test_hash_index_under_churn():
    """Many more pages than entries through the indexed fully associative arrays: evictions,
    overwrites and invalidations keep the index exact, and results match the reference."""
    rng = np.random.default_rng(5)
    twin = Twin(FA)
    pages = [int(p) for p in rng.integers(0, 1 << 20, 60)]
    full = 0
    for step in range(3000):
        va = (pages[int(rng.integers(0, 60))] << 12) + int(rng.integers(0, 4096))
        pcid = int(rng.integers(0, 2))
        r = rng.random()
        if r < 0.45:
            op = ("lookup", va, 0, pcid, int(rng.integers(0, 2)))
        elif r < 0.9:
            attrs = RW_US | (TA_G if rng.random() < 0.1 else 0)
            op = ("fill", va, 0, pcid, int(rng.integers(0, 2)), va & ~0xFFF, [12, 12, 21, 30][step % 4], attrs)
        elif r < 0.97:
            op = ("invlpg", va, 0, pcid)
        else:
            op = ("flush_pcid", 0, pcid, bool(rng.integers(0, 2)))
        got, want = twin.apply(op)
        assert tuple(np.atleast_1d(got).tolist()) == tuple(np.atleast_1d(want).tolist()), (step, op)
        if step % 10 == 0:
            twin.check_state()
            full += [tlb_count_valid(twin.tlb, s) == st_.entries for s, st_ in enumerate(FA[:2])].count(True)
    twin.check_state()
    assert full > 100  # the fully associative L1s spent much of the run full (evicting)
