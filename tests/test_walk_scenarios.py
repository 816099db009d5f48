"""Hand-built page-walk scenarios, checked against hand-derived expectations (SDM vol. 3A ch. 4).

Every scenario runs twice: on the plain-Python reference (``tests/reference/paging.py``) and on
the numba kernel behind ``mmu.walk``; both must produce exactly the expected fault, #PF error
code, physical address, page size, entry references and memory contents.

Table layout used throughout: :class:`Tables` hands out table frames in order of creation
starting at 0x1000, so one 4-level 4 KiB mapping puts the PML4 at 0x1000 (CR3), the PDPT at
0x2000, the PD at 0x3000 and the PT at 0x4000; with LA57 the PML5 is at 0x1000 and every
lower table moves up by 0x1000.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from reference.paging import (
    PAGE_1G,
    PAGE_2M,
    PAGE_4K,
    TwinMemory,
    ref_walk,
    table_index,
)

import mmu

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100
PAT_LARGE = 1 << 12
XD = 1 << 63
ALL = P | RW | US
E_P, E_W, E_U, E_RSVD, E_I, E_PK = 1, 2, 4, 8, 0x10, 0x20


def pkey(k: int) -> int:
    """Protection-key field (bits 62:59) of a leaf entry."""
    return k << 59


def ad(k: int) -> int:
    """PKRU access-disable bit of key ``k`` (bit 2k)."""
    return 1 << (2 * k)


def wd(k: int) -> int:
    """PKRU write-disable bit of key ``k`` (bit 2k+1)."""
    return 1 << (2 * k + 1)


@dataclass
class Outcome:
    fault: str | None
    error_code: int
    pa: int | None
    page_size: int
    refs: list[int]


class Tables:
    """Page tables written to both a ``PhysicalMemory`` and a reference dict.

    ``impl`` selects which walker :meth:`walk` runs ("ref" or "kernel") and which memory
    :meth:`read` and :meth:`snapshot` look at.
    """

    def __init__(self, impl: str, la57: bool = False, maxphyaddr: int = 52):
        self.impl = impl
        self.la57 = la57
        self.maxphyaddr = maxphyaddr
        self.twin = TwinMemory(mmu.PhysicalMemory())
        self.next_frame = 0x1000
        self.cr3 = self.new_table()
        self.top = 5 if la57 else 4

    def new_table(self) -> int:
        pa = self.next_frame
        self.next_frame += 0x1000
        return pa

    def put(self, pa: int, value: int) -> None:
        self.twin.write(pa, value)

    def set_bits(self, pa: int, bits: int) -> None:
        self.put(pa, self.twin.read(pa) | bits)

    def clear_bits(self, pa: int, bits: int) -> None:
        self.put(pa, self.twin.read(pa) & ~bits)

    def map(self, va: int, target: int, size: int = PAGE_4K, upper: int = ALL, leaf: int = ALL) -> dict:
        """Map ``va`` to ``target``; return {level: entry pa} of the entries on the path.

        ``upper`` are the flags of the non-leaf entries, ``leaf`` those of the leaf (PS is
        added for 2M/1G leaves). Existing present non-leaf entries are followed, not rewritten.
        """
        leaf_level = {PAGE_4K: 1, PAGE_2M: 2, PAGE_1G: 3}[size]
        table = self.cr3
        path = {}
        for level in range(self.top, leaf_level - 1, -1):
            epa = table | table_index(va, level) << 3
            path[level] = epa
            if level == leaf_level:
                self.put(epa, target | leaf | (PS if size != PAGE_4K else 0))
                break
            entry = self.twin.read(epa)
            if entry & P:
                table = entry & 0x000F_FFFF_FFFF_F000
            else:
                table = self.new_table()
                self.put(epa, table | upper)
        return path

    def walk(self, va: int, access: str = "r", **kw) -> Outcome:
        kw.setdefault("la57", self.la57)
        kw.setdefault("maxphyaddr", self.maxphyaddr)
        if self.impl == "ref":
            r = ref_walk(self.twin.words, self.cr3, va, access, **kw)
        else:
            r = mmu.walk(self.twin.mem, self.cr3, va, access=access, **kw)
        pa = None if r.pa is None else int(r.pa)
        return Outcome(r.fault, int(r.error_code), pa, int(r.page_size), [int(x) for x in r.refs])

    def read(self, pa: int) -> int:
        if self.impl == "ref":
            return self.twin.words.get(pa, 0)
        return self.twin.mem.read_u64(pa)

    def snapshot(self) -> dict[int, int]:
        return {pa: self.read(pa) for pa in sorted(self.twin.words)}


@pytest.fixture(params=["ref", "kernel"])
def impl(request):
    return request.param


@pytest.fixture
def tables(impl):
    def make(la57: bool = False, maxphyaddr: int = 52) -> Tables:
        return Tables(impl, la57, maxphyaddr)

    return make


def assert_fault(r: Outcome, code: int, refs: list[int]) -> None:
    assert (r.fault, r.error_code, r.pa, r.page_size, r.refs) == ("pf", code, None, 0, refs), r


# ---------------------------------------------------------------------------------------------
# Standard 4-level 4 KiB mapping used by most scenarios.
# va 0x7f12_3456_7abc: PML4 idx 254, PDPT idx 72, PD idx 418, PT idx 359, offset 0xabc
#   PML4E at 0x1000 + 254*8, PDPTE at 0x2000 + 72*8, PDE at 0x3000 + 418*8, PTE at 0x4000 + 359*8
#   page frame 0x12_3456_7000 -> pa 0x12_3456_7abc
VA = 0x7F12_3456_7ABC
FRAME = 0x12_3456_7000
PML4E, PDPTE, PDE, PTE = 0x1000 + 254 * 8, 0x2000 + 72 * 8, 0x3000 + 418 * 8, 0x4000 + 359 * 8
REFS4 = [PML4E, PDPTE, PDE, PTE]
ENTRY = {4: PML4E, 3: PDPTE, 2: PDE, 1: PTE}


def std(tables, upper: int = ALL, leaf: int = ALL, maxphyaddr: int = 52) -> Tables:
    t = tables(maxphyaddr=maxphyaddr)
    path = t.map(VA, FRAME, upper=upper, leaf=leaf)
    assert path == ENTRY
    return t


# --- successful translations -------------------------------------------------------------------


def test_4k_supervisor_read_sets_accessed_on_every_level(tables):
    t = std(tables)
    r = t.walk(VA, "r")
    assert r == Outcome(None, 0, 0x12_3456_7ABC, PAGE_4K, REFS4)
    assert t.read(PML4E) == 0x2000 | ALL | A
    assert t.read(PDPTE) == 0x3000 | ALL | A
    assert t.read(PDE) == 0x4000 | ALL | A
    assert t.read(PTE) == FRAME | ALL | A  # a read never sets D


def test_4k_write_sets_dirty_on_the_leaf_only(tables):
    t = std(tables)
    r = t.walk(VA, "w")
    assert r == Outcome(None, 0, 0x12_3456_7ABC, PAGE_4K, REFS4)
    assert t.read(PML4E) == 0x2000 | ALL | A  # bit 6 of a non-leaf entry is ignored: never set
    assert t.read(PDPTE) == 0x3000 | ALL | A
    assert t.read(PDE) == 0x4000 | ALL | A
    assert t.read(PTE) == FRAME | ALL | A | D


def test_fetch_sets_accessed_not_dirty(tables):
    t = std(tables)
    assert t.walk(VA, "x").pa == 0x12_3456_7ABC
    assert t.read(PTE) == FRAME | ALL | A


def test_flags_already_set_leave_memory_unchanged(tables):
    t = std(tables, upper=ALL | A, leaf=ALL | A | D)
    before = t.snapshot()
    assert t.walk(VA, "w").fault is None
    assert t.snapshot() == before


def test_setting_accessed_keeps_ignored_and_key_bits(tables):
    # bits 11:9 and 58:52 are ignored, 62:59 is the key (ignored with PKE=0): all preserved
    junk = 0x0E00 | 0x07F0_0000_0000_0000 | pkey(9)
    t = std(tables, upper=ALL | junk, leaf=ALL | junk | G | PWT | PCD)
    r = t.walk(VA, "w")
    assert r.pa == 0x12_3456_7ABC
    assert t.read(PML4E) == 0x2000 | ALL | junk | A
    assert t.read(PTE) == FRAME | ALL | junk | G | PWT | PCD | A | D


def test_4k_pat_bit7_of_pte_is_not_page_size(tables):
    # bit 7 of a PTE is PAT: still a 4 KiB page, not reserved
    t = std(tables, leaf=ALL | PS)
    r = t.walk(VA)
    assert (r.pa, r.page_size) == (0x12_3456_7ABC, PAGE_4K)


def test_2m_leaf(tables):
    # va 0x7f12_3456_7abc: PML4 idx 254, PDPT idx 72, PD idx 418 (leaf, PS=1), offset 0x16_7abc
    # 2M frame 0x4_5660_0000 with PAT (bit 12) set -> pa 0x4_5660_0000 | 0x16_7abc
    t = tables()
    path = t.map(VA, 0x4_5660_0000, PAGE_2M, leaf=ALL | PAT_LARGE)
    assert path == {4: PML4E, 3: PDPTE, 2: PDE}
    r = t.walk(VA, "w")
    assert r == Outcome(None, 0, 0x4_5676_7ABC, PAGE_2M, [PML4E, PDPTE, PDE])
    assert t.read(PDE) == 0x4_5660_0000 | ALL | PS | PAT_LARGE | A | D
    assert t.read(PDPTE) == 0x3000 | ALL | A


def test_1g_leaf(tables):
    # va 0x7f12_3456_7abc: PML4 idx 254, PDPT idx 72 (leaf, PS=1), offset 0x3456_7abc
    # 1G frame 0x7_c000_0000 with PAT (bit 12) set -> pa 0x7_f456_7abc
    t = tables()
    path = t.map(VA, 0x7_C000_0000, PAGE_1G, leaf=ALL | PAT_LARGE)
    assert path == {4: PML4E, 3: PDPTE}
    r = t.walk(VA, "r")
    assert r == Outcome(None, 0, 0x7_F456_7ABC, PAGE_1G, [PML4E, PDPTE])
    assert t.read(PDPTE) == 0x7_C000_0000 | ALL | PS | PAT_LARGE | A
    assert t.read(PML4E) == 0x2000 | ALL | A


def test_4k_2m_1g_side_by_side(tables):
    # va 0x0000_5555_5540_0123: PML4 170, PDPT 341, PD 170, PT 0, offset 0x123   (4K)
    # va 0x0000_7fff_c01f_fe08: PML4 255, PDPT 511, PD 0 (2M leaf), offset 0x1f_fe08
    # va 0xffff_8000_0000_0000: PML4 256, PDPT 0 (1G leaf), offset 0
    t = tables()
    p4k = t.map(0x0000_5555_5540_0123, 0x9000)
    p2m = t.map(0x0000_7FFF_C01F_FE08, 0x20_0000 * 7, PAGE_2M)
    p1g = t.map(0xFFFF_8000_0000_0000, 0x4000_0000 * 3, PAGE_1G)
    # tables in creation order: PDPT 0x2000, PD 0x3000, PT 0x4000 | PDPT 0x5000, PD 0x6000 | PDPT 0x7000
    assert p4k == {4: 0x1000 + 170 * 8, 3: 0x2000 + 341 * 8, 2: 0x3000 + 170 * 8, 1: 0x4000}
    assert p2m == {4: 0x1000 + 255 * 8, 3: 0x5000 + 511 * 8, 2: 0x6000}
    assert p1g == {4: 0x1000 + 256 * 8, 3: 0x7000}
    assert t.walk(0x0000_5555_5540_0123) == Outcome(None, 0, 0x9123, PAGE_4K, list(p4k.values()))
    assert t.walk(0x0000_7FFF_C01F_FE08) == Outcome(None, 0, 0xFF_FE08, PAGE_2M, list(p2m.values()))
    assert t.walk(0xFFFF_8000_0000_0000) == Outcome(None, 0, 0xC000_0000, PAGE_1G, list(p1g.values()))
    # the top of the address space: PML4 511, PDPT 511, PD 511, PT 511, offset 0xff8
    #   new tables: PDPT 0x8000, PD 0x9000, PT 0xa000
    p = t.map(0xFFFF_FFFF_FFFF_F000, 0xB000)
    assert p == {4: 0x1000 + 511 * 8, 3: 0x8000 + 511 * 8, 2: 0x9000 + 511 * 8, 1: 0xA000 + 511 * 8}
    assert t.walk(0xFFFF_FFFF_FFFF_FFF8) == Outcome(None, 0, 0xBFF8, PAGE_4K, list(p.values()))


def test_address_bit_51_is_an_address_bit_with_maxphyaddr_52(tables):
    t = std(tables)
    t.set_bits(PTE, 1 << 51)
    assert t.walk(VA).pa == (1 << 51) | 0x12_3456_7ABC


# --- 5-level paging ------------------------------------------------------------------------------
# va 0x00ab_cdef_1234_5678: PML5 idx 171, PML4 idx 411, PDPT idx 444, PD idx 145, PT idx 325,
#   offset 0x678. PML5 at 0x1000, PML4 0x2000, PDPT 0x3000, PD 0x4000, PT 0x5000.
VA57 = 0x00AB_CDEF_1234_5678
REFS5 = [0x1000 + 171 * 8, 0x2000 + 411 * 8, 0x3000 + 444 * 8, 0x4000 + 145 * 8, 0x5000 + 325 * 8]


def test_5level_4k(tables):
    t = tables(la57=True)
    path = t.map(VA57, 0x77_7000)
    assert list(path.values()) == REFS5
    r = t.walk(VA57, "w")
    assert r == Outcome(None, 0, 0x77_7678, PAGE_4K, REFS5)
    assert [t.read(x) & (A | D) for x in REFS5] == [A, A, A, A, A | D]


def test_5level_2m_and_1g(tables):
    # 2M: same va, PD idx 145 is the leaf, offset 0x14_5678
    t = tables(la57=True)
    t.map(VA57, 0x60_0000, PAGE_2M)
    assert t.walk(VA57) == Outcome(None, 0, 0x74_5678, PAGE_2M, REFS5[:4])
    # 1G: va 0xff55_4000_0000_0000: PML5 idx 341, PML4 idx 128, PDPT idx 0 (leaf), offset 0
    #   tables: PML5 0x1000, PML4 0x2000, PDPT 0x3000
    t = tables(la57=True)
    path = t.map(0xFF55_4000_0000_0000, 0x1_0000_0000, PAGE_1G)
    assert path == {5: 0x1000 + 341 * 8, 4: 0x2000 + 128 * 8, 3: 0x3000}
    r = t.walk(0xFF55_4000_0123_4567, "x")
    assert r == Outcome(None, 0, 0x1_0123_4567, PAGE_1G, list(path.values()))


def test_la57_changes_which_bits_index_the_root(tables):
    # the same 4-level-canonical va walked with 5 levels uses PML5 idx 0 (va bits 56:48 = 0)
    # va 0x7f12_3456_7abc with LA57: PML5 0, PML4 254, PDPT 72, PD 418, PT 359
    t = tables(la57=True)
    path = t.map(VA, FRAME)
    assert path[5] == 0x1000 and path[4] == 0x2000 + 254 * 8
    assert t.walk(VA).refs == list(path.values())


# --- non-canonical linear addresses: #GP, no walk --------------------------------------------------


@pytest.mark.parametrize(
    "va, la57",
    [
        (0x0000_8000_0000_0000, False),  # bit 47 set, 63:48 clear
        (0xFFFF_7FFF_FFFF_F000, False),  # bit 47 clear, 63:48 set
        (0x8000_0000_0000_0000, False),
        (0x0001_0000_0000_0000, False),
        (0x00AB_CDEF_1234_5678, False),  # canonical only with LA57
        (0x0100_0000_0000_0000, True),  # bit 56 set, 63:57 clear
        (0xFEFF_FFFF_FFFF_F000, True),  # bit 56 clear, 63:57 set
        (0x8000_0000_0000_0000, True),
        (0x7F00_0000_0000_0000, True),
    ],
)
@pytest.mark.parametrize("access, user", [("r", False), ("w", True), ("x", False)])
def test_non_canonical_is_gp_without_references(tables, va, la57, access, user):
    t = tables(la57=la57)
    # map the va's low bits as if it were canonical, so a walk would find a translation
    t.map(va & ((1 << (57 if la57 else 48)) - 1), 0x5000)
    before = t.snapshot()
    r = t.walk(va, access, user=user)
    assert r == Outcome("gp", 0, None, 0, [])
    assert t.snapshot() == before


@pytest.mark.parametrize(
    "va, la57",
    [
        (0xFFFF_8000_0000_0000, False),
        (0xFFFF_FFFF_FFFF_F000, False),
        (0x0000_7FFF_FFFF_F000, False),
        (0xFF00_0000_0000_0000, True),
        (0x00FF_FFFF_FFFF_F000, True),
        (0xFFFF_8000_0000_0000, True),  # canonical in both; with LA57 PML5 idx 511
    ],
)
def test_canonical_extremes_walk(tables, va, la57):
    t = tables(la57=la57)
    path = t.map(va, 0xB000)
    r = t.walk(va | 0x18)
    assert r == Outcome(None, 0, 0xB018, PAGE_4K, list(path.values()))


# --- not-present entries ---------------------------------------------------------------------------

ACCESS_CODES = [
    # (access, ctl, error-code bits that describe the access)
    ("r", {}, 0),
    ("w", {}, E_W),
    ("r", {"user": True}, E_U),
    ("w", {"user": True}, E_W | E_U),
    ("x", {"nxe": True}, E_I),
    ("x", {"nxe": True, "user": True}, E_I | E_U),
    ("x", {"nxe": False, "smep": False}, 0),  # I/D reported only with NXE=1 or SMEP=1
    ("x", {"nxe": False, "smep": False, "user": True}, E_U),
    ("x", {"nxe": False, "smep": True}, E_I),
]


@pytest.mark.parametrize("level", [4, 3, 2, 1])
@pytest.mark.parametrize("access, ctl, code", ACCESS_CODES)
def test_not_present_at_each_level(tables, level, access, ctl, code):
    t = std(tables)
    t.clear_bits(ENTRY[level], P)
    before = t.snapshot()
    r = t.walk(VA, access, **ctl)
    assert_fault(r, code, REFS4[: 5 - level])
    assert t.snapshot() == before  # no A bit on the entries above the fault


@pytest.mark.parametrize("level", [5, 4, 3, 2, 1])
def test_not_present_at_each_level_5level(tables, level):
    t = tables(la57=True)
    path = t.map(VA57, 0x77_7000)
    t.clear_bits(path[level], P)
    before = t.snapshot()
    assert_fault(t.walk(VA57, "w", user=True), E_W | E_U, REFS5[: 6 - level])
    assert t.snapshot() == before


def test_not_present_ignores_reserved_bits(tables):
    # P=0: no other bit is checked, so no RSVD even with every "reserved" bit set
    t = std(tables, maxphyaddr=39)
    t.put(PDE, 0xFFFF_FFFF_FFFF_FFFE)
    assert_fault(t.walk(VA, "r", nxe=False, maxphyaddr=39), 0, REFS4[:3])


def test_empty_root_table(tables):
    t = tables()
    assert_fault(t.walk(VA, "r"), 0, [PML4E])


def test_unbacked_table_reads_as_not_present(tables):
    # a PDPTE pointing at a frame never written: the PDE reads as 0
    t = tables()
    t.put(PML4E, 0x2000 | ALL)
    t.put(PDPTE, 0x0000_0ABC_DEF0_1000 | ALL)
    assert_fault(t.walk(VA, "r"), 0, [PML4E, PDPTE, 0x0000_0ABC_DEF0_1000 + 418 * 8])


# --- reserved bits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "level, bit, m",
    [
        (4, 39, 39),
        (3, 45, 39),
        (2, 51, 39),
        (1, 39, 39),
        (4, 46, 46),
        (3, 50, 46),
        (2, 46, 46),
        (1, 51, 46),
        (1, 40, 40),
        (2, 48, 48),
    ],
)
def test_address_bits_at_or_above_maxphyaddr_are_reserved(tables, level, bit, m):
    # all tables and the frame (0x12_3456_7000 < 2**37) are valid under every m here
    t = std(tables, maxphyaddr=m)
    t.set_bits(ENTRY[level], 1 << bit)
    before = t.snapshot()
    assert_fault(t.walk(VA, "r", maxphyaddr=m), E_P | E_RSVD, REFS4[: 5 - level])
    assert t.snapshot() == before


def test_address_bit_below_maxphyaddr_is_not_reserved(tables):
    # bit 38 < M=39: part of the address, the walk just uses it
    t = std(tables, maxphyaddr=39)
    t.set_bits(PTE, 1 << 38)
    assert t.walk(VA, maxphyaddr=39).pa == (1 << 38) | 0x12_3456_7ABC


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_bits_62_52_are_ignored(tables, level):
    t = std(tables, maxphyaddr=40)
    t.set_bits(ENTRY[level], 0x7FF << 52)
    assert t.walk(VA, "r", maxphyaddr=40, pke=True, pkru=0).pa == 0x12_3456_7ABC


def test_ps_in_pml4e_is_reserved(tables):
    t = std(tables)
    t.set_bits(PML4E, PS)
    assert_fault(t.walk(VA, "r"), E_P | E_RSVD, [PML4E])


def test_ps_in_pml5e_and_pml4e_reserved_with_la57(tables):
    t = tables(la57=True)
    path = t.map(VA57, 0x77_7000)
    t.set_bits(path[5], PS)
    assert_fault(t.walk(VA57, "w"), E_P | E_W | E_RSVD, REFS5[:1])
    t.clear_bits(path[5], PS)
    t.set_bits(path[4], PS)
    assert_fault(t.walk(VA57, "w"), E_P | E_W | E_RSVD, REFS5[:2])


@pytest.mark.parametrize("bit", range(13, 21))
def test_2m_leaf_bits_20_13_are_reserved(tables, bit):
    t = tables()
    t.map(VA, 0x4_5660_0000, PAGE_2M)
    t.set_bits(PDE, 1 << bit)
    assert_fault(t.walk(VA, "r", user=True), E_P | E_U | E_RSVD, [PML4E, PDPTE, PDE])


@pytest.mark.parametrize("bit", range(13, 30))
def test_1g_leaf_bits_29_13_are_reserved(tables, bit):
    t = tables()
    t.map(VA, 0x7_C000_0000, PAGE_1G)
    t.set_bits(PDPTE, 1 << bit)
    before = t.snapshot()
    assert_fault(t.walk(VA, "x"), E_P | E_I | E_RSVD, [PML4E, PDPTE])
    assert t.snapshot() == before


def test_bits_20_13_of_a_non_leaf_pde_are_address_bits(tables):
    # PS=0: bits 20:13 of a PDE are part of the PT address, not reserved
    t = std(tables)
    t.put(PDE, 0x1F_E000 | ALL)  # PT at 0x1f_e000 (empty) -> PTE not present
    assert_fault(t.walk(VA), 0, [PML4E, PDPTE, PDE, 0x1F_E000 + 359 * 8])


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_xd_is_reserved_when_nxe_is_0(tables, level):
    t = std(tables)
    t.set_bits(ENTRY[level], XD)
    assert_fault(t.walk(VA, "r", nxe=False), E_P | E_RSVD, REFS4[: 5 - level])
    # with NXE=1 the same entry is fine for a read
    assert t.walk(VA, "r", nxe=True).pa == 0x12_3456_7ABC


@pytest.mark.parametrize(
    "access, ctl, code",
    [
        ("w", {"user": True}, E_P | E_W | E_U | E_RSVD),
        ("x", {"smep": True}, E_P | E_I | E_RSVD),  # NXE=0, SMEP=1: I/D still reported
        ("x", {"smep": False}, E_P | E_RSVD),
        ("x", {"smep": False, "user": True}, E_P | E_U | E_RSVD),
    ],
)
def test_reserved_fault_error_code_bits(tables, access, ctl, code):
    t = std(tables)
    t.set_bits(PDE, XD)  # reserved because NXE=0
    assert_fault(t.walk(VA, access, nxe=False, **ctl), code, REFS4[:3])


def test_reserved_bit_wins_over_rights(tables):
    # user access to a supervisor, read-only page whose PTE also has a reserved bit: RSVD fault
    t = std(tables, leaf=P, maxphyaddr=39)
    t.set_bits(PTE, 1 << 40)
    r = t.walk(VA, "w", user=True, maxphyaddr=39, pke=True, pkru=0xFFFF_FFFF)
    assert_fault(r, E_P | E_W | E_U | E_RSVD, REFS4)


def test_walk_stops_at_first_faulting_entry(tables):
    # reserved PDPTE above a not-present PTE: RSVD at the PDPTE
    t = std(tables, maxphyaddr=39)
    t.set_bits(PDPTE, 1 << 39)
    t.clear_bits(PTE, P)
    assert_fault(t.walk(VA, maxphyaddr=39), E_P | E_RSVD, REFS4[:2])
    # not-present PDE above a reserved PTE: not-present at the PDE, PTE never read
    t = std(tables, maxphyaddr=39)
    t.clear_bits(PDE, P)
    t.set_bits(PTE, 1 << 39)
    assert_fault(t.walk(VA, maxphyaddr=39), 0, REFS4[:3])


# --- CR3 -----------------------------------------------------------------------------------------


def test_cr3_low_bits_and_bit_63_are_ignored(tables):
    t = std(tables)
    t.cr3 = 0x1000 | 0xFFF | (1 << 63)  # PCID 0xfff, and bit 63 (no-flush) set
    assert t.walk(VA).refs == REFS4


def test_cr3_bits_above_maxphyaddr_are_not_part_of_the_root(tables):
    t = std(tables, maxphyaddr=39)
    t.cr3 = 0x1000 | (1 << 45) | (1 << 39)
    assert t.walk(VA, maxphyaddr=39).refs == REFS4


# --- access rights (SDM 4.6.1) -----------------------------------------------------------------
# Each case: mods {level: (set, clear)} on the standard mapping, the access, the control bits,
# and the expected #PF error code (None = translation succeeds).

RIGHTS = [
    # U/S: user-mode accesses need U/S=1 at every level
    ("user read, user page", {}, "r", {"user": True}, None),
    ("user read, U/S=0 in PML4E", {4: (0, US)}, "r", {"user": True}, E_P | E_U),
    ("user read, U/S=0 in PTE only", {1: (0, US)}, "r", {"user": True}, E_P | E_U),
    ("user write, U/S=0 in PDE", {2: (0, US)}, "w", {"user": True}, E_P | E_W | E_U),
    ("user fetch, U/S=0 in PDPTE", {3: (0, US)}, "x", {"user": True}, E_P | E_U | E_I),
    ("user fetch, U/S=0, NXE=0 SMEP=0", {3: (0, US)}, "x", {"user": True, "nxe": False}, E_P | E_U),
    ("supervisor read, supervisor page", {4: (0, US)}, "r", {}, None),
    ("supervisor write, supervisor page", {1: (0, US)}, "w", {}, None),
    # R/W: user writes need R/W=1 everywhere, whatever CR0.WP
    ("user write, R/W=0 in PDPTE", {3: (0, RW)}, "w", {"user": True}, E_P | E_W | E_U),
    ("user write, R/W=0 in PTE, WP=0", {1: (0, RW)}, "w", {"user": True, "wp": False}, E_P | E_W | E_U),
    ("user read, R/W=0 everywhere", {4: (0, RW), 3: (0, RW), 2: (0, RW), 1: (0, RW)}, "r", {"user": True}, None),
    ("user fetch, R/W=0", {1: (0, RW)}, "x", {"user": True}, None),
    # supervisor writes honour R/W only with CR0.WP=1
    ("supervisor write, R/W=0 in PML4E, WP=1", {4: (0, RW)}, "w", {}, E_P | E_W),
    ("supervisor write, R/W=0 in PTE, WP=0 (user page)", {1: (0, RW)}, "w", {"wp": False}, None),
    ("supervisor write, supervisor page R/W=0, WP=1", {4: (0, US), 2: (0, RW)}, "w", {}, E_P | E_W),
    ("supervisor write, supervisor page R/W=0, WP=0", {4: (0, US), 2: (0, RW)}, "w", {"wp": False}, None),
    # XD (only with NXE=1): OR over levels
    ("supervisor fetch, XD in PML4E", {4: (XD, 0)}, "x", {}, E_P | E_I),
    ("supervisor fetch, XD in PTE, supervisor page", {1: (XD, US)}, "x", {}, E_P | E_I),
    ("user fetch, XD in PTE", {1: (XD, 0)}, "x", {"user": True}, E_P | E_U | E_I),
    ("user fetch, XD in PDE", {2: (XD, 0)}, "x", {"user": True}, E_P | E_U | E_I),
    ("supervisor read, XD page", {2: (XD, 0)}, "r", {}, None),
    ("user write, XD page", {1: (XD, 0)}, "w", {"user": True}, None),
    ("user fetch, no XD", {}, "x", {"user": True}, None),
    ("supervisor fetch, NXE=0, no XD", {}, "x", {"nxe": False}, None),
    # SMEP: supervisor fetches from user-mode addresses
    ("SMEP: supervisor fetch, user page", {}, "x", {"smep": True}, E_P | E_I),
    ("SMEP: supervisor fetch, user page, NXE=0", {}, "x", {"smep": True, "nxe": False}, E_P | E_I),
    ("no SMEP: supervisor fetch, user page", {}, "x", {}, None),
    ("SMEP: supervisor fetch, supervisor page", {3: (0, US)}, "x", {"smep": True}, None),
    ("SMEP: user fetch, user page", {}, "x", {"smep": True, "user": True}, None),
    ("SMEP: supervisor read, user page", {}, "r", {"smep": True}, None),
    ("SMEP: supervisor write, user page", {}, "w", {"smep": True}, None),
    ("SMEP + XD: supervisor fetch, user page", {1: (XD, 0)}, "x", {"smep": True}, E_P | E_I),
    # SMAP: explicit supervisor data accesses to user-mode addresses, unless EFLAGS.AC=1
    ("SMAP: supervisor read, user page, AC=0", {}, "r", {"smap": True}, E_P),
    ("SMAP: supervisor read, user page, AC=1", {}, "r", {"smap": True, "ac": True}, None),
    ("no SMAP: supervisor read, user page", {}, "r", {"ac": False}, None),
    ("SMAP: supervisor write, user page, AC=0", {}, "w", {"smap": True}, E_P | E_W),
    ("SMAP: supervisor write, user page, AC=0, WP=0", {}, "w", {"smap": True, "wp": False}, E_P | E_W),
    ("SMAP: supervisor write, user page, AC=1", {}, "w", {"smap": True, "ac": True}, None),
    ("SMAP: supervisor write, user R/W=0 page, AC=1, WP=1", {1: (0, RW)}, "w", {"smap": True, "ac": True}, E_P | E_W),
    (
        "SMAP: supervisor write, user R/W=0 page, AC=1, WP=0",
        {1: (0, RW)},
        "w",
        {"smap": True, "ac": True, "wp": False},
        None,
    ),
    ("SMAP: supervisor write, user R/W=0 page, AC=0, WP=0", {1: (0, RW)}, "w", {"smap": True, "wp": False}, E_P | E_W),
    ("SMAP: supervisor read, supervisor page", {1: (0, US)}, "r", {"smap": True}, None),
    ("SMAP: U/S=1 leaf under U/S=0 PDPTE is a supervisor address", {3: (0, US)}, "r", {"smap": True}, None),
    ("SMAP: supervisor fetch, user page (fetches exempt)", {}, "x", {"smap": True}, None),
    ("SMAP: user read, user page", {}, "r", {"smap": True, "user": True}, None),
    ("SMAP+SMEP: supervisor fetch, user page, AC=1", {}, "x", {"smap": True, "smep": True, "ac": True}, E_P | E_I),
]


@pytest.mark.parametrize("name, mods, access, ctl, code", RIGHTS, ids=[c[0] for c in RIGHTS])
def test_access_rights(tables, name, mods, access, ctl, code):
    t = std(tables)
    for level, (setb, clearb) in mods.items():
        t.set_bits(ENTRY[level], setb)
        t.clear_bits(ENTRY[level], clearb)
    before = t.snapshot()
    r = t.walk(VA, access, **ctl)
    if code is None:
        assert r == Outcome(None, 0, 0x12_3456_7ABC, PAGE_4K, REFS4)
        assert all(t.read(e) & A for e in REFS4)
        assert bool(t.read(PTE) & D) == (access == "w")
    else:
        # a protection fault reads every entry, and leaves memory unchanged
        assert_fault(r, code, REFS4)
        assert t.snapshot() == before


# --- protection keys (SDM 4.6.2) and the PK error-code bit ---------------------------------------
# Leaf key 5 (PTE bits 62:59 = 5): AD5 = PKRU bit 10, WD5 = PKRU bit 11.

PKEYS = [
    ("user read, AD", {}, "r", {"user": True, "pkru": ad(5)}, E_P | E_U | E_PK),
    ("user write, AD", {}, "w", {"user": True, "pkru": ad(5)}, E_P | E_W | E_U | E_PK),
    ("user write, WD", {}, "w", {"user": True, "pkru": wd(5)}, E_P | E_W | E_U | E_PK),
    ("user write, WD, WP=0", {}, "w", {"user": True, "pkru": wd(5), "wp": False}, E_P | E_W | E_U | E_PK),
    ("user read, WD", {}, "r", {"user": True, "pkru": wd(5)}, None),
    ("supervisor read, AD", {}, "r", {"pkru": ad(5)}, E_P | E_PK),
    ("supervisor write, AD, WP=0", {}, "w", {"pkru": ad(5), "wp": False}, E_P | E_W | E_PK),
    ("supervisor write, WD, WP=1", {}, "w", {"pkru": wd(5)}, E_P | E_W | E_PK),
    ("supervisor write, WD, WP=0", {}, "w", {"pkru": wd(5), "wp": False}, None),
    ("supervisor read, WD", {}, "r", {"pkru": wd(5)}, None),
    ("user fetch, AD|WD (fetches unaffected)", {}, "x", {"user": True, "pkru": ad(5) | wd(5)}, None),
    ("supervisor fetch, AD|WD", {}, "x", {"pkru": ad(5) | wd(5)}, None),
    ("PKE=0 ignores PKRU", {}, "r", {"user": True, "pkru": ad(5), "pke": False}, None),
    ("other keys' bits do not matter", {}, "w", {"user": True, "pkru": 0xFFFF_FFFF & ~(3 << 10)}, None),
    (
        "key bits in non-leaf entries are ignored",
        {4: (pkey(5), pkey(0xF)), 3: (pkey(5), pkey(0xF)), 2: (pkey(5), pkey(0xF)), 1: (0, pkey(0xF))},
        "r",
        {"user": True, "pkru": ad(5)},
        None,
    ),
    ("key 0 uses PKRU bits 1:0", {1: (0, pkey(0xF))}, "w", {"user": True, "pkru": wd(0)}, E_P | E_W | E_U | E_PK),
    ("key 15 uses PKRU bits 31:30", {1: (pkey(0xF), 0)}, "r", {"user": True, "pkru": ad(15)}, E_P | E_U | E_PK),
    ("key 15, AD of key 5 irrelevant", {1: (pkey(0xF), 0)}, "r", {"user": True, "pkru": ad(5)}, None),
    # keys apply to user-mode addresses only
    ("supervisor page, supervisor read, AD", {2: (0, US)}, "r", {"pkru": ad(5)}, None),
    ("supervisor page, supervisor write, WD", {1: (0, US)}, "w", {"pkru": wd(5)}, None),
    ("supervisor page, user read, AD: no PK bit", {2: (0, US)}, "r", {"user": True, "pkru": ad(5)}, E_P | E_U),
    # PK reported whenever the key conditions hold, even if ordinary rights also fail
    ("user write, R/W=0 and WD", {1: (0, RW)}, "w", {"user": True, "pkru": wd(5)}, E_P | E_W | E_U | E_PK),
    ("user write, R/W=0 and AD", {3: (0, RW)}, "w", {"user": True, "pkru": ad(5)}, E_P | E_W | E_U | E_PK),
    (
        "user write, R/W=0, no key restriction",
        {1: (0, RW)},
        "w",
        {"user": True, "pkru": ad(6) | wd(6)},
        E_P | E_W | E_U,
    ),
    ("SMAP AC=0 and AD", {}, "r", {"smap": True, "pkru": ad(5)}, E_P | E_PK),
    ("SMAP AC=0 and WD, read", {}, "r", {"smap": True, "pkru": wd(5)}, E_P),
    ("SMAP AC=1 and AD", {}, "r", {"smap": True, "ac": True, "pkru": ad(5)}, E_P | E_PK),
    ("supervisor write, R/W=0, WP=1, WD", {1: (0, RW)}, "w", {"pkru": wd(5)}, E_P | E_W | E_PK),
    ("supervisor write, R/W=0, WP=0, WD", {1: (0, RW)}, "w", {"pkru": wd(5), "wp": False}, None),
    ("user fetch, XD and AD: no PK bit", {1: (XD, 0)}, "x", {"user": True, "pkru": ad(5)}, E_P | E_U | E_I),
    ("SMEP fetch with AD: no PK bit", {}, "x", {"smep": True, "pkru": ad(5)}, E_P | E_I),
]


@pytest.mark.parametrize("name, mods, access, ctl, code", PKEYS, ids=[c[0] for c in PKEYS])
def test_protection_keys(tables, name, mods, access, ctl, code):
    t = std(tables, leaf=ALL | pkey(5))
    for level, (setb, clearb) in mods.items():
        t.clear_bits(ENTRY[level], clearb)
        t.set_bits(ENTRY[level], setb)
    ctl = {"pke": True, **ctl}
    before = t.snapshot()
    r = t.walk(VA, access, **ctl)
    if code is None:
        assert r == Outcome(None, 0, 0x12_3456_7ABC, PAGE_4K, REFS4)
    else:
        assert_fault(r, code, REFS4)
        assert t.snapshot() == before


def test_protection_key_of_a_2m_leaf(tables):
    # va 0x7f12_3456_7abc, 2M leaf at the PD (idx 418) with key 3 in PDE bits 62:59
    t = tables()
    t.map(VA, 0x4_5660_0000, PAGE_2M, leaf=ALL | pkey(3))
    assert_fault(t.walk(VA, "r", user=True, pke=True, pkru=ad(3)), E_P | E_U | E_PK, [PML4E, PDPTE, PDE])
    assert t.walk(VA, "r", user=True, pke=True, pkru=wd(3)).pa == 0x4_5676_7ABC


def test_protection_key_of_a_1g_leaf(tables):
    t = tables()
    t.map(VA, 0x7_C000_0000, PAGE_1G, leaf=ALL | pkey(12))
    assert_fault(t.walk(VA, "w", user=False, pke=True, pkru=wd(12)), E_P | E_W | E_PK, [PML4E, PDPTE])
    assert t.walk(VA, "w", wp=False, pke=True, pkru=wd(12)).pa == 0x7_F456_7ABC


# --- accessed/dirty flags on faults and on special layouts --------------------------------------


@pytest.mark.parametrize(
    "how",
    ["not-present PTE", "reserved PTE", "user write R/W=0", "supervisor fetch XD", "SMAP", "PK"],
)
def test_any_fault_leaves_memory_unchanged(tables, how):
    t = std(tables, leaf=ALL | pkey(2))
    kw = {}
    if how == "not-present PTE":
        t.clear_bits(PTE, P)
    elif how == "reserved PTE":
        t.set_bits(PTE, XD)
        kw = {"nxe": False}
    elif how == "user write R/W=0":
        t.clear_bits(PDPTE, RW)
        kw = {"user": True}
    elif how == "supervisor fetch XD":
        t.set_bits(PDE, XD)
    elif how == "SMAP":
        kw = {"smap": True}
    elif how == "PK":
        kw = {"pke": True, "pkru": ad(2), "user": True}
    before = t.snapshot()
    access = "x" if how == "supervisor fetch XD" else "w"
    r = t.walk(VA, access, **kw)
    assert r.fault == "pf"
    assert t.snapshot() == before
    if t.impl == "kernel":
        assert t.twin.mem.frames_backed == len(t.twin.frames())


def test_shared_tables_are_marked_once_per_walk(tables):
    # two 4K pages in the same PT: va 0x7f12_3456_7000 (PT idx 359) and 0x7f12_3456_8000 (PT idx 360)
    t = tables()
    t.map(0x7F12_3456_7000, 0x10_0000)
    t.map(0x7F12_3456_8000, 0x20_0000)
    assert t.walk(0x7F12_3456_7000, "r").pa == 0x10_0000
    assert t.read(0x4000 + 360 * 8) == 0x20_0000 | ALL  # the sibling PTE is not touched
    r = t.walk(0x7F12_3456_8010, "w")
    assert r == Outcome(None, 0, 0x20_0010, PAGE_4K, [PML4E, PDPTE, PDE, 0x4000 + 360 * 8])
    assert t.read(PTE) == 0x10_0000 | ALL | A
    assert t.read(0x4000 + 360 * 8) == 0x20_0000 | ALL | A | D


def test_recursive_self_map(tables):
    # PML4[510] points at the PML4 itself. va 0xffff_ff7f_bfdf_e000 has indices 510,510,510,510:
    # every level reads the same entry 0x1000 + 510*8, and the final page is the PML4 frame.
    t = tables()
    self_entry = 0x1000 + 510 * 8
    t.put(self_entry, 0x1000 | P | RW)
    va = 0xFFFF_FF7F_BFDF_E000
    assert [table_index(va, lv) for lv in (4, 3, 2, 1)] == [510, 510, 510, 510]
    r = t.walk(va + 0xFF0, "w")
    assert r == Outcome(None, 0, 0x1FF0, PAGE_4K, [self_entry] * 4)
    assert t.read(self_entry) == 0x1000 | P | RW | A | D


def test_hand_written_2m_chain(tables):
    # va 0x0000_0080_0000_1234: PML4 idx 1, PDPT idx 0, PD idx 0 (2M leaf), offset 0x1234
    #   PML4E 0x1008 -> PDPT 0x2000; PDPTE 0x2000 -> PD 0x3000; PDE 0x3000 -> 2M frame 0x2000_0000
    t = tables()
    t.put(0x1000 + 8, 0x2000 | ALL)
    t.put(0x2000, 0x3000 | ALL)
    t.put(0x3000, 0x2000_0000 | ALL | PS)
    r = t.walk(0x0000_0080_0000_1234, "w", user=True)
    assert r == Outcome(None, 0, 0x2000_1234, PAGE_2M, [0x1008, 0x2000, 0x3000])
    assert [t.read(x) for x in (0x1008, 0x2000, 0x3000)] == [
        0x2000 | ALL | A,
        0x3000 | ALL | A,
        0x2000_0000 | ALL | PS | A | D,
    ]
