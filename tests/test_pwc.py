"""Paging-structure caches (SDM 4.10.3): scenarios, then kernel == reference on random ops.

Address comments decode a linear address as ``PML5 / PML4 / PDPT / PD / PT / offset`` indices
(9 bits each, 12-bit offset); 4-level addresses omit the PML5 index.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference.tlb_ref import RefHW, RefPSC, RefTLB

from mmu.errors import MMUInputError
from mmu.hw.presets import PSC_PDE, PSC_PDPTE, PSC_PML4E, PSC_PML5E, PSCCache, get_preset
from mmu.hw.pwc import (
    PSC_FILLED,
    PSC_IGNORED,
    make_psc,
    psc_count_valid,
    psc_entries,
    psc_fill,
    psc_flush_all,
    psc_flush_asid,
    psc_invalidate_pcid,
    psc_lookup,
    psc_reset_stats,
)
from mmu.hw.tlb import hw_cr4_change, hw_invlpg, hw_invpcid, hw_mov_cr3, make_tlb
from mmu.x86.bits import TA_PCD, TA_RW, TA_US, TA_XD

RW_US = TA_RW | TA_US


def _va(pml4=0, pdpt=0, pd=0, pt=0, off=0, pml5=0):
    return (pml5 << 48) | (pml4 << 39) | (pdpt << 30) | (pd << 21) | (pt << 12) | off


def _toy():
    return make_psc(get_preset("toy"))


def test_deepest_hit_wins_in_sdm_order():
    p = _toy()
    va = _va(1, 2, 3, 4, 0x56)  # PML4 1 / PDPT 2 / PD 3 / PT 4 / offset 0x56
    psc_fill(p, va, 0, 0, False, PSC_PML4E, 0xA000, RW_US)  # PML4E -> PDPT at 0xA000
    psc_fill(p, va, 0, 0, False, PSC_PDPTE, 0xB000, TA_US)  # PDPTE -> PD at 0xB000, R/W ANDed away
    psc_fill(p, va, 0, 0, False, PSC_PDE, 0xC000, TA_US | TA_XD)  # PDE -> PT at 0xC000
    assert psc_lookup(p, va, 0, 0, False) == (1, 0xC000, TA_US | TA_XD)  # PDE cache: next is the PT
    # same PDPT entry, other PD entry: PDE cache misses, PDPTE cache hits -> walk reads the PD next
    assert psc_lookup(p, _va(1, 2, 9, 0), 0, 0, False) == (2, 0xB000, TA_US)
    # same PML4 entry, other PDPT entry -> walk reads the PDPT next
    assert psc_lookup(p, _va(1, 7, 0, 0), 0, 0, False) == (3, 0xA000, RW_US)
    assert psc_lookup(p, _va(2, 0, 0, 0), 0, 0, False) == (-1, 0, 0)
    # counters (rows PDE, PDPTE, PML4E, PML5E): probes stop at the first hit; no PML5 probe
    assert p[6].tolist() == [[1, 3], [1, 2], [1, 1], [0, 0]]
    psc_reset_stats(p)
    assert p[6].sum() == 0


def test_tag_widths():
    p = _toy()
    va = _va(0, 0, 5, 0, 0)  # PD 5: the 2 MiB region [10 MiB, 12 MiB)
    psc_fill(p, va, 0, 0, False, PSC_PDE, 0x3000, RW_US)
    assert psc_lookup(p, va + 0x1F_FFFF, 0, 0, False)[0] == 1  # same VA[47:21]
    assert psc_lookup(p, va + 0x20_0000, 0, 0, False)[0] == -1  # next PD entry
    # 4-level: bits 63:48 are a sign extension and take no part in the tag
    hi = _va(256, 0, 5) - (1 << 48)  # PML4 256 / PD 5, canonical high half (negative int64)
    psc_fill(p, hi, 0, 0, False, PSC_PDE, 0x4000, TA_RW)
    assert psc_lookup(p, hi, 0, 0, False) == (1, 0x4000, TA_RW)
    assert psc_lookup(p, hi & ((1 << 48) - 1), 0, 0, False) == (1, 0x4000, TA_RW)


def test_5_level_paging():
    p = _toy()
    va = _va(3, 1, 0, 0, pml5=7)  # PML5 7 / PML4 3 / PDPT 1
    assert psc_fill(p, va, 0, 0, False, PSC_PML5E, 0x9000, RW_US) == PSC_IGNORED  # no PML5 in 4-level
    assert psc_fill(p, va, 0, 0, True, PSC_PML5E, 0x9000, RW_US) == PSC_FILLED
    assert psc_lookup(p, va, 0, 0, True) == (4, 0x9000, RW_US)  # walk reads the PML4 next
    assert psc_lookup(p, _va(3, 1, pml5=8), 0, 0, True)[0] == -1  # tag includes VA[56:48]
    psc_fill(p, va, 0, 0, True, PSC_PML4E, 0x8000, RW_US)
    assert psc_lookup(p, va, 0, 0, True) == (3, 0x8000, RW_US)
    assert psc_lookup(p, _va(3, 1, pml5=1), 0, 0, True)[0] == -1  # PML4E tag is VA[56:39]


def test_absent_caches_and_validation():
    p = make_psc(get_preset("skylake"))  # no PML5E cache
    assert psc_fill(p, _va(1), 0, 0, True, PSC_PML5E, 0x1000, RW_US) == PSC_IGNORED
    assert psc_lookup(p, _va(1), 0, 0, True) == (-1, 0, 0)
    assert p[6][3].tolist() == [0, 0]  # an absent cache is never probed
    q = make_psc([PSCCache("PDE only", PSC_PDE, 4, 4)])
    assert psc_fill(q, 0, 0, 0, False, PSC_PDPTE, 0x1000, 0) == PSC_IGNORED
    assert psc_fill(q, 0, 0, 0, False, 1, 0x1000, 0) == PSC_IGNORED
    assert psc_fill(q, 0, 0, 0, False, 6, 0x1000, 0) == PSC_IGNORED
    with pytest.raises(MMUInputError):
        make_psc([PSCCache("a", PSC_PDE, 4, 4), PSCCache("b", PSC_PDE, 2, 2)])
    with pytest.raises(MMUInputError):
        PSCCache("c", PSC_PDE, 6, 4)


def test_lru_and_overwrite():
    p = _toy()  # PDE cache: 4 entries, 2 ways -> 2 sets; tags (VA[47:21]) 0, 2, 4 share set 0
    for k, tag in enumerate((0, 2)):
        psc_fill(p, tag << 21, 0, 0, False, PSC_PDE, (k + 1) << 12, RW_US)
    assert psc_lookup(p, 0, 0, 0, False)[0] == 1  # tag 0 becomes MRU
    psc_fill(p, 4 << 21, 0, 0, False, PSC_PDE, 0x3000, RW_US)
    assert [e[2] for e in psc_entries(p, PSC_PDE)[0]] == [0, 4]  # tag 2 was LRU
    psc_fill(p, 4 << 21, 0, 0, False, PSC_PDE, 0x5000, TA_PCD)  # same tag: overwritten
    assert psc_count_valid(p, 0) == 2
    assert psc_lookup(p, 4 << 21, 0, 0, False) == (1, 0x5000, TA_PCD)


def test_context_tags_and_invalidation():
    p = make_psc(get_preset("zen2"))  # PDPTE cache: 16 entries, fully associative
    va = _va(0, 1, 2)
    for asid, pcid in ((0, 1), (0, 2), (1, 1)):
        psc_fill(p, va, asid, pcid, False, PSC_PDPTE, 0x1000 * (asid + pcid), RW_US)
    assert psc_lookup(p, va, 0, 3, False)[0] == -1  # never global: other PCIDs miss
    assert psc_invalidate_pcid(p, 0, 1) == 1
    assert psc_lookup(p, va, 0, 1, False)[0] == -1
    assert psc_lookup(p, va, 0, 2, False)[0] == 2 and psc_lookup(p, va, 1, 1, False)[0] == 2
    assert psc_flush_asid(p, 1) == 1
    assert psc_flush_all(p) == 1
    assert sum(psc_count_valid(p, c) for c in range(4)) == 0


def test_hw_operations_on_psc():
    toy = get_preset("toy")
    t, p = make_tlb(toy), make_psc(toy)
    near, far = _va(0, 0, 1), _va(5, 6, 7)  # two unrelated regions
    psc_fill(p, near, 0, 1, False, PSC_PDE, 0x1000, RW_US)
    psc_fill(p, far, 0, 2, False, PSC_PDE, 0x2000, RW_US)
    hw_invlpg(t, p, near, 0, 2, False)  # PCID 2: removes the far entry, regardless of address
    assert psc_lookup(p, far, 0, 2, False)[0] == -1 and psc_lookup(p, near, 0, 1, False)[0] == 1
    hw_mov_cr3(t, p, 0, 1, 1, 1)  # no-flush bit: PSC untouched
    assert psc_lookup(p, near, 0, 1, False)[0] == 1
    hw_invpcid(t, p, 0, 3, 0, 0, False)  # all contexts: all PSC entries of the asid
    assert psc_lookup(p, near, 0, 1, False)[0] == -1
    psc_fill(p, near, 0, 1, False, PSC_PDE, 0x1000, RW_US)
    hw_cr4_change(t, p, 0, False, True)  # PCIDE 1 -> 0
    assert psc_lookup(p, near, 0, 1, False)[0] == -1


# --- kernel == reference on random op sequences --------------------------------------------------

# VA pieces: PML5 index (5-level only), PML4, PDPT, PD; a tiny universe so tags collide
VAS = st.builds(
    lambda l5, l4, l3, l2, o: (l5 << 48) + (l4 << 39) + (l3 << 30) + (l2 << 21) + o,
    st.sampled_from([0, 0, 1, 300]),  # 300: bit 56 set, high half under LA57
    st.sampled_from([0, 1, 2, 256]),
    st.sampled_from([0, 1, 2, 4]),
    st.sampled_from([0, 1, 2, 4, 6]),
    st.sampled_from([0, 0x1234, 0x1F_FFFF]),
).map(lambda v: v - (1 << 57) if v >> 56 else v)
CTX = st.tuples(st.sampled_from([0, 0, 1]), st.sampled_from([0, 1, 2]))
BOOLS = st.booleans()
FRAMES = st.integers(0, 1 << 20).map(lambda k: k << 12)
ATTRS = st.integers(0, 0x7F)

_INVAL = ["inv_pcid", "flush_asid", "flush_all", "hw_invlpg", "hw_invpcid", "hw_cr3", "hw_cr3", "hw_cr4"]


@st.composite
def op_lists(draw, max_ops=60):
    """Fills and lookups over a few addresses and contexts (so lookups hit and sets overflow),
    with an invalidation now and then."""
    pool = draw(st.lists(VAS, min_size=1, max_size=8))
    va = st.one_of(st.sampled_from(pool), st.sampled_from(pool), st.sampled_from(pool), VAS)
    ctx = st.sampled_from(draw(st.lists(CTX, min_size=1, max_size=3)))
    la57 = st.sampled_from([draw(BOOLS)] * 5 + [True, False])  # mostly one paging mode per run
    args = {
        "fill": st.tuples(va, ctx, la57, st.sampled_from([1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6]), FRAMES, ATTRS),
        "lookup": st.tuples(va, ctx, la57),
        "inv_pcid": st.tuples(ctx),
        "flush_asid": st.tuples(st.sampled_from([0, 1])),
        "flush_all": st.tuples(),
        "hw_invlpg": st.tuples(va, ctx, la57),
        "hw_invpcid": st.tuples(st.integers(0, 4), va, ctx, la57),
        "hw_cr3": st.tuples(ctx, BOOLS, BOOLS),
        "hw_cr4": st.tuples(st.sampled_from([0, 1]), BOOLS, BOOLS),
    }
    kinds = ["fill"] * 8 + ["lookup"] * 10 + ["inval"] * 2
    ops = []
    for _ in range(draw(st.integers(max_ops // 3, max_ops))):
        kind = draw(st.sampled_from(kinds))
        if kind == "inval":
            kind = draw(st.sampled_from(_INVAL))
        ops.append((kind, *draw(args[kind])))
    return ops


PSC_SPECS = {
    "toy": get_preset("toy").pscs,
    "skylake": get_preset("skylake").pscs,
    "zen2": get_preset("zen2").pscs,
    # 3-set (non power of two) caches
    "odd": (
        PSCCache("PDE", PSC_PDE, 6, 2),
        PSCCache("PDPTE", PSC_PDPTE, 3, 1),
        PSCCache("PML4E", PSC_PML4E, 3, 3),
        PSCCache("PML5E", PSC_PML5E, 2, 2),
    ),
}


@pytest.mark.parametrize("name", sorted(PSC_SPECS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=op_lists())
def test_psc_kernel_matches_reference(name, ops):
    caches = PSC_SPECS[name]
    structs = get_preset("toy").tlbs
    t, p = make_tlb(structs), make_psc(caches)
    ref = RefHW(RefTLB(structs), RefPSC(caches))
    geo = {c.entry_level: c for c in caches}
    for op in ops:
        kind = op[0]
        if kind == "fill":
            _, va, (a, pc), la57, lvl, table, attrs = op
            assert psc_fill(p, va, a, pc, la57, lvl, table, attrs) == ref.psc.fill(va, a, pc, la57, lvl, table, attrs)
        elif kind == "lookup":
            _, va, (a, pc), la57 = op
            assert psc_lookup(p, va, a, pc, la57) == ref.psc.lookup(va, a, pc, la57), op
        elif kind == "inv_pcid":
            assert psc_invalidate_pcid(p, *op[1]) == ref.psc.invalidate_pcid(*op[1])
            assert not any(e[:2] == op[1] for lvl in (2, 3, 4, 5) for s in psc_entries(p, lvl) for e in s)
        elif kind == "flush_asid":
            assert psc_flush_asid(p, op[1]) == ref.psc.flush_asid(op[1])
        elif kind == "flush_all":
            assert psc_flush_all(p) == ref.psc.flush_all()
        elif kind == "hw_invlpg":
            _, va, (a, pc), la57 = op
            assert hw_invlpg(t, p, va, a, pc, la57) == ref.invlpg(va, a, pc, la57)
        elif kind == "hw_invpcid":
            _, k, va, (a, pc), la57 = op
            assert hw_invpcid(t, p, a, k, pc, va, la57) == ref.invpcid(a, k, pc, va, la57)
        elif kind == "hw_cr3":
            _, (a, pc), pcide, nf = op
            assert hw_mov_cr3(t, p, a, pcide, pc, nf) == ref.mov_cr3(a, pcide, pc, nf)
            if not pcide or not nf:  # no entry of the flushed PCID may survive
                gone = (a, pc if pcide else 0)
                assert not any(e[:2] == gone for lvl in (2, 3, 4, 5) for s in psc_entries(p, lvl) for e in s)
        else:
            _, a, pge, pcide_cleared = op
            assert hw_cr4_change(t, p, a, pge, pcide_cleared) == ref.cr4_change(a, pge, pcide_cleared)
        for lvl in (2, 3, 4, 5):
            got = psc_entries(p, lvl)
            assert got == ref.psc.snapshot(lvl), (lvl, op)
            if lvl in geo and geo[lvl].entries:
                assert all(len(s) <= geo[lvl].ways for s in got)
                assert psc_count_valid(p, lvl - 2) <= geo[lvl].entries
    assert p[6].tolist() == ref.psc.stats()
