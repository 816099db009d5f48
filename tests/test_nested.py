"""The 2D walk (``mmu.walk_nested``): guest tables through EPT (SDM vol. 3C 28.2) or AMD NPT.

Every scenario runs on the plain-Python reference (``tests/reference/nested.py``) and on the numba
kernel; both must give the expected fault, #PF error code, exit qualification (or #NPF
EXITINFO1), gpa, hpa, page size, references (dimension, level, hpa, in hardware order) and memory.

Layout used throughout (:class:`World`):

* host tables (EPT or nested) get frames in creation order from hpa 0x1000 (the root);
* guest RAM: gpa ``g`` lives at hpa ``HBASE + g`` (HBASE = 0x40_0000_0000, 1 GiB aligned), mapped
  lazily by host pages of ``host_page`` bytes as the scenario touches it;
* guest tables get gpa frames in creation order from 0x1000 (gCR3 = 0x1000).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reference.nested import ref_walk_nested
from reference.paging import TA_D, TA_RW, TA_US, TA_XD, TwinMemory, table_index

import mmu
from mmu.x86.ept import EPT_MT_WB, make_eptp

PAGE_4K, PAGE_2M, PAGE_1G = 1 << 12, 1 << 21, 1 << 30
HBASE = 0x40_0000_0000
# guest (ordinary) entry bits
P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100
XD = 1 << 63
ALL = P | RW | US
E_P, E_W, E_U, E_RSVD, E_I = 1, 2, 4, 8, 0x10
# EPT entry bits
R_, W_, X_, XU = 1, 2, 4, 1 << 10
LARGE, EA, ED = 1 << 7, 1 << 8, 1 << 9
WB = EPT_MT_WB << 3
# exit qualification bits (SDM Table 27-7)
Q_R, Q_W, Q_F, Q_RD, Q_WR, Q_EX, Q_XU, Q_GLA, Q_FINAL = 1, 2, 4, 8, 16, 32, 64, 128, 256
NPF_FINAL, NPF_TABLE = 1 << 32, 1 << 33


@dataclass
class Outcome:
    fault: str | None
    error_code: int
    exit_qualification: int
    gpa: int | None
    hpa: int | None
    page_size: int
    refs: list[tuple[str, int, int]]


class World:
    """A guest (tables in guest-physical memory) and its host tables, in one host memory.

    Written to a PhysicalMemory and a reference dict at once; ``impl`` picks the walker.
    """

    def __init__(
        self,
        impl: str,
        *,
        npt: bool = False,
        hlevels: int = 4,
        la57: bool = False,
        ept_ad: bool = False,
        host_page: int = PAGE_4K,
        maxphyaddr: int = 52,
    ):
        self.impl, self.npt, self.hlevels, self.la57, self.ept_ad = impl, npt, hlevels, la57, ept_ad
        self.host_page, self.maxphyaddr = host_page, maxphyaddr
        self.twin = TwinMemory(mmu.PhysicalMemory())
        self.next_host = 0x1000
        self.hroot = self.new_host_table()
        self.next_guest = 0x1000
        self.gtop = 5 if la57 else 4
        self.gcr3 = self.new_guest_table()

    # -- memory ----------------------------------------------------------------------------
    def put(self, hpa: int, value: int) -> None:
        self.twin.write(hpa, value)

    def read(self, hpa: int) -> int:
        return self.twin.words.get(hpa, 0) if self.impl == "ref" else self.twin.mem.read_u64(hpa)

    def gread(self, gpa: int) -> int:
        return self.read(HBASE + gpa)

    def snapshot(self) -> dict[int, int]:
        return {pa: self.read(pa) for pa in sorted(self.twin.words)}

    # -- host tables -----------------------------------------------------------------------
    def new_host_table(self) -> int:
        pa = self.next_host
        self.next_host += 0x1000
        return pa

    @property
    def host_upper(self) -> int:
        return ALL if self.npt else R_ | W_ | X_ | XU

    @property
    def host_leaf(self) -> int:
        return ALL if self.npt else R_ | W_ | X_ | XU | WB

    def host_map(self, gpa: int, leaf: int | None = None) -> dict[int, int]:
        """Map the host page holding ``gpa`` to HBASE + its gpa (if not mapped); return the path."""
        leaf = self.host_leaf if leaf is None else leaf
        leaf_level = {PAGE_4K: 1, PAGE_2M: 2, PAGE_1G: 3}[self.host_page]
        table, path = self.hroot, {}
        for level in range(self.hlevels, leaf_level - 1, -1):
            epa = table | ((gpa >> (12 + 9 * (level - 1))) & 511) << 3
            path[level] = epa
            entry = self.twin.words.get(epa, 0)
            if level == leaf_level:
                if not entry:
                    frame = HBASE + (gpa & ~(self.host_page - 1))
                    self.put(epa, frame | leaf | (LARGE if leaf_level > 1 else 0))
                break
            if entry:
                table = entry & 0x000F_FFFF_FFFF_F000
            else:
                table = self.new_host_table()
                self.put(epa, table | self.host_upper)
        return path

    def host_leaf_hpa(self, gpa: int) -> int:
        return self.host_map(gpa)[min(self.host_map(gpa))]

    def set_host_leaf(self, gpa: int, rights: int) -> None:
        """Replace the rights bits (EPT 2:0 and 10, or NPT P/RW/US/NX) of the leaf mapping ``gpa``."""
        epa = self.host_leaf_hpa(gpa)
        mask = (P | RW | US | XD) if self.npt else (R_ | W_ | X_ | XU)
        self.put(epa, self.twin.words[epa] & ~mask | rights)

    # -- guest tables ----------------------------------------------------------------------
    def new_guest_table(self) -> int:
        gpa = self.next_guest
        self.next_guest += 0x1000
        self.host_map(gpa)
        return gpa

    def gput(self, gpa: int, value: int) -> None:
        self.put(HBASE + gpa, value)

    def guest_map(self, va: int, target: int, size: int = PAGE_4K, upper: int = ALL, leaf: int = ALL) -> dict:
        """Map ``va`` to gpa ``target``; host-map the tables and the data page; {level: entry gpa}."""
        leaf_level = {PAGE_4K: 1, PAGE_2M: 2, PAGE_1G: 3}[size]
        table, path = self.gcr3, {}
        for level in range(self.gtop, leaf_level - 1, -1):
            epa = table | table_index(va, level) << 3
            path[level] = epa
            if level == leaf_level:
                self.gput(epa, target | leaf | (PS if size != PAGE_4K else 0))
                break
            entry = self.twin.words.get(HBASE + epa, 0)
            if entry & P:
                table = entry & 0x000F_FFFF_FFFF_F000
            else:
                table = self.new_guest_table()
                self.gput(epa, table | upper)
        self.host_map(target | (va & (size - 1)))
        return path

    # -- walking ---------------------------------------------------------------------------
    def walk(self, va: int, access: str = "r", mbec: bool = False, **kw) -> Outcome:
        kw.setdefault("la57", self.la57)
        if self.impl == "ref":
            r = ref_walk_nested(
                self.twin.words,
                self.hroot,
                self.hlevels,
                self.gcr3,
                va,
                access,
                ept_ad=self.ept_ad,
                npt=self.npt,
                mbec=mbec,
                maxphyaddr=self.maxphyaddr,
                **kw,
            )
        elif self.npt:
            r = mmu.walk_nested(
                self.twin.mem, self.hroot, self.gcr3, va, access, npt=True, ept_levels=self.hlevels,
                maxphyaddr=self.maxphyaddr, mbec=mbec, **kw,
            )  # fmt: skip
        else:
            eptp = make_eptp(self.hroot, self.hlevels, self.ept_ad)
            r = mmu.walk_nested(self.twin.mem, eptp, self.gcr3, va, access, maxphyaddr=self.maxphyaddr, mbec=mbec, **kw)
        return Outcome(r.fault, r.error_code, r.exit_qualification, r.gpa, r.hpa, r.page_size, list(r.refs))


@pytest.fixture(params=["ref", "kernel"])
def world(request):
    def make(**kw) -> World:
        return World(request.param, **kw)

    return make


def h_refs(w: World, gpa: int, m: int | None = None) -> list[tuple[str, int, int]]:
    """The host references a cold walk of ``gpa`` makes in ``w`` (read off the builder's path)."""
    path = w.host_map(gpa)
    return [("h", lv, pa) for lv, pa in sorted(path.items(), reverse=True)][:m]


# ---------------------------------------------------------------------------------------------
# The standard scenario: 4-level guest, 4-level EPT, 4 KiB pages in both dimensions.
# gva 0x7f12_3456_7abc: guest PML4 idx 254, PDPT idx 72, PD idx 418, PT idx 359, offset 0xabc
#   guest tables at gpa 0x1000 (gCR3), 0x2000, 0x3000, 0x4000; guest page gpa 0x1234_5000
#   guest entries at gpa 0x17f0, 0x2240, 0x3d10, 0x4b38 -> hpa HBASE + gpa
# EPT (root 0x1000): gpa 0x17f0 / 0x2240 / 0x3d10 / 0x4b38 -> EPT PML4 idx 0, PDPT idx 0, PD idx 0,
#   PT idx 1 / 2 / 3 / 4 (EPT PDPT 0x2000, PD 0x3000, PT 0x4000)
# data gpa 0x1234_5abc -> EPT PML4 idx 0, PDPT idx 0, PD idx 145 (0x91), PT idx 325 (0x145), in a
#   second EPT page table at 0x5000; hpa = HBASE + 0x1234_5abc
VA = 0x7F12_3456_7ABC
GFRAME = 0x1234_5000
GPA = 0x1234_5ABC
GE = {4: 0x1000 + 254 * 8, 3: 0x2000 + 72 * 8, 2: 0x3000 + 418 * 8, 1: 0x4000 + 359 * 8}


def host4(pt_index: int) -> list[tuple[str, int, int]]:
    return [("h", 4, 0x1000), ("h", 3, 0x2000), ("h", 2, 0x3000), ("h", 1, 0x4000 + 8 * pt_index)]


STD_REFS = (
    host4(1) + [("g", 4, HBASE + 0x17F0)]
    + host4(2) + [("g", 3, HBASE + 0x2240)]
    + host4(3) + [("g", 2, HBASE + 0x3D10)]
    + host4(4) + [("g", 1, HBASE + 0x4B38)]
    + [("h", 4, 0x1000), ("h", 3, 0x2000), ("h", 2, 0x3000 + 145 * 8), ("h", 1, 0x5000 + 325 * 8)]
)  # fmt: skip


def std(world, leaf: int = ALL, upper: int = ALL, **kw) -> World:
    w = world(**kw)
    assert w.guest_map(VA, GFRAME, leaf=leaf, upper=upper) == GE
    return w


def test_cold_walk_references_in_hardware_order(world):
    w = std(world)
    before = w.snapshot()
    r = w.walk(VA, "r")
    assert r == Outcome(None, 0, 0, GPA, HBASE + GPA, PAGE_4K, STD_REFS)
    assert len(r.refs) == 24
    # guest A flags set (through the EPT, which allows writes); EPT A/D off: EPT unchanged
    assert [w.gread(GE[lv]) & (A | D) for lv in (4, 3, 2, 1)] == [A, A, A, A]
    changed = {pa for pa, v in w.snapshot().items() if before[pa] != v}
    assert changed == {HBASE + GE[lv] for lv in (4, 3, 2, 1)}


def test_write_sets_guest_dirty_on_the_leaf(world):
    w = std(world)
    r = w.walk(VA, "w")
    assert (r.fault, r.hpa) == (None, HBASE + GPA)
    assert [w.gread(GE[lv]) & (A | D) for lv in (4, 3, 2, 1)] == [A, A, A, A | D]


# --- the reference-count table (published-results.md section 0) --------------------------------

COUNTS = [
    # (la57, host levels, guest page, host page, (n+1)(m+1)-1)
    (False, 4, PAGE_4K, PAGE_4K, 24),
    (True, 5, PAGE_4K, PAGE_4K, 35),
    (False, 5, PAGE_4K, PAGE_4K, 29),
    (True, 4, PAGE_4K, PAGE_4K, 29),
    (False, 4, PAGE_2M, PAGE_4K, 19),
    (False, 4, PAGE_4K, PAGE_2M, 19),
    (False, 4, PAGE_2M, PAGE_2M, 15),
    (False, 4, PAGE_4K, PAGE_1G, 14),
    (False, 4, PAGE_1G, PAGE_4K, 14),
    (True, 5, PAGE_2M, PAGE_2M, 24),
]


@pytest.mark.parametrize("npt", [False, True], ids=["ept", "npt"])
@pytest.mark.parametrize("la57, hlevels, gpage, hpage, count", COUNTS)
def test_reference_counts(world, npt, la57, hlevels, gpage, hpage, count):
    w = world(npt=npt, la57=la57, hlevels=hlevels, host_page=hpage)
    va = 0x7F12_3456_7ABC | (0x1_0000_0000_0000 if la57 else 0)
    target = 0x4000_0000 * 3  # gpa 3 GiB: aligned for every guest page size
    w.guest_map(va, target, gpage)
    r = w.walk(va, "w" if npt else "r")
    assert r.fault is None and len(r.refs) == count
    assert r.page_size == min(gpage, hpage)
    assert r.gpa == target | (va & (gpage - 1)) and r.hpa == HBASE + r.gpa
    # the shape: n groups of (m host refs, 1 guest ref), then m host refs for the data gpa
    n = (5 if la57 else 4) - {PAGE_4K: 0, PAGE_2M: 1, PAGE_1G: 2}[gpage]
    m = hlevels - {PAGE_4K: 0, PAGE_2M: 1, PAGE_1G: 2}[hpage]
    assert [d for d, _, _ in r.refs] == (["h"] * m + ["g"]) * n + ["h"] * m
    assert [lv for d, lv, _ in r.refs if d == "h"] == list(range(hlevels, hlevels - m, -1)) * (n + 1)
    assert [lv for d, lv, _ in r.refs if d == "g"] == list(range(5 if la57 else 4, 0, -1))[:n]


# --- guest #PF ----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_guest_not_present_at_each_level(world, level):
    w = std(world, ept_ad=True)
    w.gput(GE[level], 0)
    before = w.snapshot()
    r = w.walk(VA, "w", user=True)
    k = 5 - level  # guest entries read
    assert r == Outcome("pf", E_W | E_U, 0, None, None, 0, STD_REFS[: 5 * k])
    # no guest A/D written; the EPT A/D flags of the k table translations are (they happened)
    for lv in (4, 3, 2, 1):
        assert w.gread(GE[lv]) == before[HBASE + GE[lv]]
    for i in range(k):
        gpa = GE[4 - i]
        path = h_refs(w, gpa)
        assert all(w.read(pa) & EA for _, _, pa in path)
        assert w.read(path[-1][2]) & ED  # accesses to guest paging structures count as writes
    assert not w.read(h_refs(w, GPA)[-1][2]) & (EA | ED)  # the data gpa was never translated


@pytest.mark.parametrize(
    "level, change, access, kw, code, nrefs",
    [
        (2, ~US, "r", {"user": True}, E_P | E_U, 20),  # user access to a supervisor-mode address
        (1, ~RW, "w", {"user": True}, E_P | E_W | E_U, 20),  # user write to a read-only page
        (3, ~RW, "w", {"wp": True}, E_P | E_W, 20),  # supervisor write, CR0.WP = 1
        (1, XD, "x", {}, E_P | E_I, 20),  # fetch from an XD page (NXE = 1)
        (2, 1 << 51, "r", {}, E_P | E_RSVD, 15),  # address bit >= MAXPHYADDR (48): stops at the PDE
        (4, PS, "r", {}, E_P | E_RSVD, 5),  # PS in a PML4E
    ],
)
def test_guest_protection_and_reserved_faults(world, level, change, access, kw, code, nrefs):
    # rights are checked once the leaf is found (all 4 guest levels read); reserved bits stop the walk
    w = std(world, maxphyaddr=48)
    value = w.gread(GE[level])
    w.gput(GE[level], value & change if change < 0 else value | change)
    before = w.snapshot()
    r = w.walk(VA, access, **kw)
    assert w.snapshot() == before
    assert (r.fault, r.error_code, r.exit_qualification, r.gpa, r.hpa) == ("pf", code, 0, None, None)
    assert r.refs == STD_REFS[:nrefs]


def test_non_canonical_gva(world):
    w = std(world)
    assert w.walk(0x8000_0000_0000).refs == []
    assert w.walk(0x8000_0000_0000).fault == "gp"
    assert w.walk(0x0100_0000_0000_0000, la57=True).fault == "gp"


# --- EPT violations and misconfigurations ---------------------------------------------------------


def test_ept_violation_on_a_guest_table_gpa(world):
    # the EPT does not map the page holding the guest PD (gpa 0x3000): the PDE read faults
    w = std(world)
    w.set_host_leaf(0x3000, 0)
    r = w.walk(VA, "w")
    assert r == Outcome("ept_violation", 0, Q_R | Q_GLA, GE[2], None, 0, STD_REFS[:14])
    # with EPT A/D on, guest paging-structure reads are treated as writes: bits 0 and 1
    w = std(world, ept_ad=True)
    w.set_host_leaf(0x3000, R_ | X_)
    r = w.walk(VA, "r")
    assert r == Outcome("ept_violation", 0, Q_R | Q_W | Q_RD | Q_EX | Q_GLA, GE[2], None, 0, STD_REFS[:14])


def test_ept_violation_on_the_final_gpa(world):
    w = std(world)
    w.set_host_leaf(GPA, R_ | X_)
    before = w.snapshot()
    r = w.walk(VA, "w")
    assert r == Outcome("ept_violation", 0, Q_W | Q_RD | Q_EX | Q_GLA | Q_FINAL, GPA, None, 0, STD_REFS)
    assert w.snapshot() == before  # no guest A/D written for an access that did not complete
    assert w.walk(VA, "x").hpa == HBASE + GPA  # fetches are allowed
    w.set_host_leaf(GPA, 0)
    assert w.walk(VA, "r").exit_qualification == Q_R | Q_GLA | Q_FINAL


def test_guest_fault_wins_over_an_ept_fault_on_the_data_gpa(world):
    w = std(world)
    w.set_host_leaf(GPA, 0)
    assert w.walk(VA, "w", user=True).fault == "ept_violation"
    w.gput(GE[1], w.gread(GE[1]) & ~RW)
    r = w.walk(VA, "w", user=True)
    assert (r.fault, r.error_code, len(r.refs)) == ("pf", E_P | E_W | E_U, 20)


@pytest.mark.parametrize("where", ["table", "final"])
def test_ept_misconfiguration(world, where):
    w = std(world)
    gpa = 0x2000 if where == "table" else GPA
    epa = w.host_leaf_hpa(gpa)
    w.put(epa, w.twin.words[epa] & ~(7 << 3) | 2 << 3)  # memory type 2 in the leaf
    r = w.walk(VA, "r")
    assert (r.fault, r.exit_qualification, r.hpa) == ("ept_misconfig", 0, None)
    assert r.gpa == (GE[3] if where == "table" else GPA)
    assert r.refs == (STD_REFS[:9] if where == "table" else STD_REFS)


def test_gpa_wider_than_a_4_level_ept(world):
    # the guest maps its page at gpa 0xf_0000_1234_5000 (bits 51:48 set, fine with MAXPHYADDR 52);
    # a 4-level EPT walk cannot translate it: violation, no host reference for that gpa
    w = std(world)
    w.gput(GE[1], 0xF_0000_1234_5000 | ALL)
    r = w.walk(VA, "r")
    assert r == Outcome("ept_violation", 0, Q_R | Q_GLA | Q_FINAL, 0xF_0000_1234_5ABC, None, 0, STD_REFS[:20])


# --- guest A/D updates through the EPT -----------------------------------------------------------


def test_guest_accessed_update_needs_ept_write_permission(world):
    # the guest PT page (gpa 0x4000) is read-only in the EPT: reading the PTE is fine, setting its
    # A flag is a guest-physical write -> EPT violation on the PTE's gpa, bit 8 = 0, no data access
    w = std(world)
    w.set_host_leaf(0x4000, R_ | X_)
    before = w.snapshot()
    r = w.walk(VA, "r")
    assert r == Outcome("ept_violation", 0, Q_W | Q_RD | Q_EX | Q_GLA, GE[1], None, 0, STD_REFS[:20])
    assert w.snapshot() == before  # nothing written, not even the A flags of the upper entries
    # once A is set in the PTE, a read needs no write: it succeeds
    w.gput(GE[1], w.gread(GE[1]) | A)
    r = w.walk(VA, "r")
    assert r.fault is None and r.refs == STD_REFS
    # a write must set D in the PTE: violation again, on the PTE
    r = w.walk(VA, "w")
    assert (r.fault, r.exit_qualification, r.gpa) == ("ept_violation", Q_W | Q_RD | Q_EX | Q_GLA, GE[1])
    w.gput(GE[1], w.gread(GE[1]) | D)
    assert w.walk(VA, "w").hpa == HBASE + GPA


def test_guest_ad_with_ept_ad_sets_both_dimensions(world):
    w = std(world, ept_ad=True)
    assert w.walk(VA, "r").fault is None
    for gpa in (0x1000, 0x2000, 0x3000, 0x4000):  # guest table pages: accessed as writes
        path = h_refs(w, gpa)
        assert all(w.read(pa) & EA for _, _, pa in path)
        assert w.read(path[-1][2]) & ED
    data = h_refs(w, GPA)
    assert all(w.read(pa) & EA for _, _, pa in data)
    assert not w.read(data[-1][2]) & ED  # a read of the data page: no EPT D
    assert w.walk(VA, "w").fault is None
    assert w.read(data[-1][2]) & ED
    assert [w.gread(GE[lv]) & (A | D) for lv in (4, 3, 2, 1)] == [A, A, A, A | D]


def test_ept_ad_off_leaves_the_ept_untouched(world):
    w = std(world)
    ept = {pa for pa in w.twin.words if pa < HBASE}
    before = {pa: w.read(pa) for pa in ept}
    assert w.walk(VA, "w").fault is None
    assert {pa: w.read(pa) for pa in ept} == before


# --- mode-based execute control, page sizes ------------------------------------------------------


def test_mbec_user_fetch_needs_bit_10(world):
    w = std(world)
    w.set_host_leaf(GPA, R_ | X_)  # supervisor-execute only
    r = w.walk(VA, "x", mbec=True)  # the guest page is a user-mode address (U/S = 1 everywhere)
    assert (r.fault, r.exit_qualification) == ("ept_violation", Q_F | Q_RD | Q_EX | Q_GLA | Q_FINAL)
    assert w.walk(VA, "x").fault is None  # without MBEC bit 2 is enough
    w.gput(GE[2], w.gread(GE[2]) & ~US)  # now a supervisor-mode address: bit 2 applies
    assert w.walk(VA, "x", mbec=True).fault is None
    w.gput(GE[2], w.gread(GE[2]) | US)
    w.set_host_leaf(GPA, R_ | XU)
    assert w.walk(VA, "x", mbec=True).hpa == HBASE + GPA


@pytest.mark.parametrize(
    "gpage, hpage", [(PAGE_2M, PAGE_4K), (PAGE_4K, PAGE_2M), (PAGE_1G, PAGE_2M), (PAGE_2M, PAGE_1G)]
)
def test_page_size_is_the_smaller_of_the_two(world, gpage, hpage):
    w = world(host_page=hpage)
    w.guest_map(VA, 0x4000_0000 * 5, gpage)
    r = w.walk(VA)
    assert r.page_size == min(gpage, hpage)
    assert r.hpa == HBASE + 0x4000_0000 * 5 + (VA & (gpage - 1))


# --- AMD nested paging ---------------------------------------------------------------------------


def test_npt_walk_and_nested_accessed_dirty(world):
    w = std(world, npt=True)
    r = w.walk(VA, "r")
    assert r == Outcome(None, 0, 0, GPA, HBASE + GPA, PAGE_4K, STD_REFS)
    for gpa in (0x1000, 0x2000, 0x3000, 0x4000):  # guest page-table accesses are user writes
        path = h_refs(w, gpa)
        assert [w.read(pa) & (A | D) for _, _, pa in path] == [A, A, A, A | D]
    assert [w.read(pa) & (A | D) for _, _, pa in h_refs(w, GPA)] == [A, A, A, A]


@pytest.mark.parametrize(
    "gpa, rights, access, code, nrefs",
    [
        (0x3000, P | RW, "r", E_P | E_W | E_U | NPF_TABLE, 14),  # U/S = 0: nested accesses are user
        (0x3000, P | US, "r", E_P | E_W | E_U | NPF_TABLE, 14),  # guest PD page read-only: a user write
        (0x3000, 0, "r", E_W | E_U | NPF_TABLE, 14),  # not present
        (GPA, P | US, "w", E_P | E_W | E_U | NPF_FINAL, 24),  # data page read-only
        (GPA, ALL | XD, "x", E_P | E_U | E_I | NPF_FINAL, 24),  # nested NX, fetch
        (GPA, 0, "r", E_U | NPF_FINAL, 24),
    ],
)
def test_npt_faults(world, gpa, rights, access, code, nrefs):
    w = std(world, npt=True)
    w.set_host_leaf(gpa, rights)
    r = w.walk(VA, access)
    assert r.fault == "npf" and r.exit_qualification == code
    assert r.gpa == (GE[2] if gpa == 0x3000 else GPA)
    assert r.refs == STD_REFS[:nrefs]
    assert r.error_code == 0 and r.hpa is None


def test_npt_reserved_bit_is_an_npf(world):
    w = std(world, npt=True, maxphyaddr=48)
    epa = w.host_leaf_hpa(0x2000)
    w.put(epa, w.twin.words[epa] | 1 << 51)
    r = w.walk(VA, "r")
    assert (r.fault, r.exit_qualification, r.gpa) == ("npf", E_P | E_W | E_U | E_RSVD | NPF_TABLE, GE[3])


def test_eptp_fields_drive_the_walk():
    for impl in ("ref", "kernel"):
        w = World(impl, hlevels=5, ept_ad=True)
        w.guest_map(VA, GFRAME)
        r = w.walk(VA)
        assert len(r.refs) == 29
    w = World("kernel", hlevels=5)
    w.guest_map(VA, GFRAME)
    eptp = make_eptp(w.hroot, 5, ad=True)
    assert len(mmu.walk_nested(w.twin.mem, eptp, w.gcr3, VA).refs) == 29
    assert mmu.walk_nested(w.twin.mem, w.hroot, w.gcr3, VA, ept_levels=5).fault is None  # bare root
    with pytest.raises(ValueError):
        mmu.walk_nested(w.twin.mem, eptp, w.gcr3, VA, access="q")


# --- property: kernel == reference on random guest and host tables -------------------------------


def chance(draw, percent: int) -> bool:
    return draw(st.integers(0, 99)) >= 100 - percent


class RandomHost:
    """Host tables (EPT or NPT) built lazily with sprinkled faults, written into ``words``."""

    def __init__(self, draw, words: dict[int, int], npt: bool, levels: int, m: int, clean: bool):
        self.draw, self.words, self.npt, self.levels, self.m = draw, words, npt, levels, m
        self.clean = clean  # no faults drawn: every mapping valid (benign bits still random)
        self.next_table = 0x1000
        self.tables: list[int] = []
        self.root = self.new_table()

    def new_table(self) -> int:
        pa = self.next_table
        self.next_table += 0x1000
        self.tables.append(pa)
        return pa

    def fault(self, percent: int) -> bool:
        return chance(self.draw, 0 if self.clean else percent)

    def present(self, e: int) -> bool:
        return bool(e & 1) if self.npt else bool(e & 7) or bool(e & XU)

    def is_table(self, e: int, level: int) -> bool:
        return level >= 4 or (level > 1 and not e & 0x80)

    def peek(self, gpa: int) -> int | None:
        """hpa of ``gpa`` ignoring rights and reserved bits, or None (a hole)."""
        if gpa >> (12 + 9 * self.levels):
            return None
        table = self.root
        for level in range(self.levels, 0, -1):
            e = self.words.get(table | ((gpa >> (12 + 9 * (level - 1))) & 511) << 3, 0)
            if not self.present(e):
                return None
            addr = e & ((1 << self.m) - 1) & ~0xFFF
            if not self.is_table(e, level):
                size = 1 << (12 + 9 * (level - 1))
                return (addr & ~(size - 1)) | (gpa & (size - 1))
            table = addr
        raise AssertionError

    def ensure(self, gpa: int) -> None:
        """Map the host page of ``gpa`` (unless mapped, or a hole/fault is drawn)."""
        draw = self.draw
        if gpa >> (12 + 9 * self.levels) or self.peek(gpa) is not None:
            return
        leaf_level = draw(st.sampled_from([1, 1, 1, 1, 2, 2, 3]))
        table = self.root
        for level in range(self.levels, 0, -1):
            epa = table | ((gpa >> (12 + 9 * (level - 1))) & 511) << 3
            e = self.words.get(epa, 0)
            if self.present(e):
                if not self.is_table(e, level):
                    return  # a leaf (maybe with reserved bits) already covers it
                table = e & ((1 << self.m) - 1) & ~0xFFF
                continue
            if self.fault(3):
                self.words[epa] = draw(st.integers(0, (1 << 64) - 1)) & ~(1 | 7 | XU)  # a hole
                return
            if level <= leaf_level:  # (below an existing table the page is smaller than drawn)
                self.words[epa] = self.leaf(level)
                return
            nxt = self.new_table()
            self.words[epa] = nxt | self.upper(level)
            table = nxt

    def frame(self, level: int) -> int:
        size = 1 << (12 + 9 * (level - 1))
        if level == 1 and chance(self.draw, 4):
            return self.draw(st.sampled_from(self.tables))  # alias a host table frame
        top = min(self.m, 44)
        return self.draw(st.integers(1 << 32 >> (12 + 9 * (level - 1)), (1 << top) // size - 1)) * size

    def upper(self, level: int) -> int:
        draw = self.draw
        if self.npt:
            e = P | (RW if not self.fault(3) else 0) | (US if not self.fault(3) else 0)
            e |= draw(st.integers(0, 0x0F78)) & 0x0E38  # PWT, PCD, A, ignored 11:9
            e |= XD if self.fault(5) else 0
            if self.fault(2):
                e |= PS if level >= 4 else 1 << draw(st.integers(self.m, 51)) if self.m < 52 else 0
            return e
        e = R_ | W_ | X_ if not self.fault(5) else draw(st.integers(1, 7))
        e |= XU if not self.fault(20) else 0
        e |= draw(st.sampled_from([0, EA, ED, EA | ED, 1 << 11, 1 << 63, 0x7F << 52]))
        if self.fault(2):
            e |= 1 << draw(st.integers(3, 7 if level >= 4 else 6))  # reserved
        if self.m < 52 and self.fault(2):
            e |= 1 << draw(st.integers(self.m, 51))
        return e

    def leaf(self, level: int) -> int:
        draw = self.draw
        size_bits = 12 + 9 * (level - 1)
        frame = self.frame(level)
        if self.npt:
            e = frame | P | (RW if not self.fault(6) else 0) | (US if not self.fault(3) else 0)
            e |= draw(st.integers(0, 0x1FF)) & 0x178  # PWT, PCD, A, D/PAT, G
            e |= PS if level > 1 else 0
            e |= XD if self.fault(10) else 0
            if level > 1 and self.fault(4):
                e |= 1 << draw(st.integers(13, size_bits - 1))
            return e
        e = frame | (R_ | W_ | X_ if not self.fault(20) else draw(st.integers(0, 7)))
        e |= XU if not self.fault(40) else 0
        mt = draw(st.sampled_from([6, 6, 6, 6, 0, 1, 4, 5])) if not self.fault(5) else draw(st.sampled_from([2, 3, 7]))
        e |= mt << 3 | draw(st.sampled_from([0, 1 << 6, EA, EA | ED, 1 << 11, 1 << 63]))
        e |= LARGE if level > 1 else 0
        if level > 1 and self.fault(4):
            e |= 1 << draw(st.integers(12, size_bits - 1))
        if self.m < 52 and self.fault(3):
            e |= 1 << draw(st.integers(self.m, 51))
        if not e & (7 | XU):
            e |= R_  # keep it present: holes are drawn separately
        return e


@st.composite
def nested_cases(draw):
    npt = chance(draw, 35)
    hlevels = draw(st.sampled_from([4, 5]))
    la57 = draw(st.booleans())
    m = draw(st.sampled_from([40, 46, 52]))
    host = {
        "ept_ad": draw(st.booleans()),
        "npt": npt,
        "mbec": chance(draw, 30),
        "execute_only": not chance(draw, 15),
        "maxphyaddr": m,
    }
    guest = {
        "access": draw(st.sampled_from(["r", "w", "x"])),
        "user": draw(st.booleans()),
        "wp": not chance(draw, 20),
        "nxe": not chance(draw, 15),
        "smep": chance(draw, 30),
        "smap": chance(draw, 30),
        "ac": draw(st.booleans()),
        "la57": la57,
        "pke": chance(draw, 25),
    }
    guest["pkru"] = draw(st.integers(0, (1 << 32) - 1)) if guest["pke"] and chance(draw, 50) else 0

    words: dict[int, int] = {}
    h = RandomHost(draw, words, npt, hlevels, m, clean=chance(draw, 50))
    gfault = 0 if chance(draw, 50) else 1  # half the guests have no faulty entry at all
    top = 5 if la57 else 4
    width = 57 if la57 else 48
    gva = draw(st.integers(0, (1 << width) - 1))
    if gva >> (width - 1):
        gva |= ((1 << 64) - 1) & ~((1 << width) - 1)
    if chance(draw, 4):
        gva ^= 1 << draw(st.integers(width - 1, 63))  # non-canonical

    gmax = min(m, 40)

    def guest_page() -> int:
        if m == 52 and hlevels == 4 and chance(draw, 3):
            return draw(st.integers(1 << 36, (1 << 40) - 1)) << 12  # beyond a 4-level host walk
        return draw(st.integers(1, (1 << (gmax - 12)) - 1)) << 12

    pool = [guest_page() for _ in range(draw(st.integers(1, 4)))]
    gcr3 = pool[0] | (draw(st.integers(0, 0xFFF)) if chance(draw, 15) else 0)
    table = pool[0]
    for level in range(top, 0, -1):
        epa = table | table_index(gva & ((1 << 64) - 1), level) << 3
        h.ensure(epa)
        hpa = h.peek(epa)
        if hpa is None:
            break  # the walk stops in the host dimension here
        roll = draw(st.integers(0, 99))
        if roll >= 100 - 4 * gfault:
            words[hpa] = draw(st.integers(0, (1 << 64) - 1)) & ~P
            break
        leaf = level == 1 or (level == 3 and chance(draw, 20)) or (level == 2 and chance(draw, 25))
        if leaf:
            size_bits = 12 + 9 * (level - 1)
            frame = draw(st.integers(0, (1 << (gmax - size_bits)) - 1)) << size_bits
            if chance(draw, 3) and m == 52 and hlevels == 4:
                frame |= 0xF << 48
        else:
            frame = draw(st.sampled_from(pool)) if chance(draw, 20) else guest_page()
        entry = frame | P
        entry |= RW if not chance(draw, 12 * gfault) else 0
        entry |= US if not chance(draw, 12 * gfault) else 0
        entry |= draw(st.integers(0, 0x0F78)) & 0x0F78  # PWT, PCD, A, D, G, ignored (A/D often preset)
        if leaf and level > 1:
            entry |= PS
        entry |= XD if chance(draw, 10) else 0
        entry |= draw(st.integers(0, 15)) << 59 if leaf else 0
        if roll >= 100 - 9 * gfault:
            kinds = ["xd"] + (["addr"] if m < 52 else []) + (["ps"] if level >= 4 else [])
            kinds += ["large"] if leaf and level > 1 else []
            kind = draw(st.sampled_from(kinds))
            if kind == "xd":
                entry |= XD
            elif kind == "addr":
                entry |= 1 << draw(st.integers(m, 51))
            elif kind == "ps":
                entry |= PS
            else:
                entry |= 1 << draw(st.integers(13, 12 + 9 * (level - 1) - 1))
        words[hpa] = entry
        if leaf:
            h.ensure(frame | (gva & ((1 << (12 + 9 * (level - 1))) - 1)))
            break
        table = frame
    # noise: random words in host tables and guest frames (may alias anything above)
    for _ in range(draw(st.integers(0, 2))):
        pa = draw(st.sampled_from(h.tables + list(words)[:8])) & ~7
        words[(pa & ~0xFFF) | draw(st.integers(0, 511)) << 3] = draw(st.integers(0, (1 << 64) - 1))
    return h.root, hlevels, gcr3, gva, host, guest, words


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(nested_cases())
def test_kernel_equals_reference(case):
    root, hlevels, gcr3, gva, host, guest, words = case
    twin = TwinMemory(mmu.PhysicalMemory(frames=16))
    for pa, value in words.items():
        twin.write(pa, value)
    ref_mem = dict(twin.words)
    access = guest.pop("access")
    ref = ref_walk_nested(ref_mem, root, hlevels, gcr3, gva, access, **host, **guest)
    event(f"{'npt' if host['npt'] else 'ept'} {ref.fault}")
    event(f"refs {len(ref.refs) // 5 * 5}+")
    npt = host.pop("npt")
    if npt:
        eptp, levels = root, hlevels
        host.pop("ept_ad")
    else:
        eptp, levels = make_eptp(root, hlevels, host.pop("ept_ad")), None
    got = mmu.walk_nested(twin.mem, eptp, gcr3, gva, access, npt=npt, ept_levels=levels, **host, **guest)
    assert (got.fault, got.error_code, got.exit_qualification, got.gpa, got.hpa, got.page_size) == (
        ref.fault,
        ref.error_code,
        ref.exit_qualification,
        ref.gpa,
        ref.hpa,
        ref.page_size,
    )
    assert list(got.refs) == ref.refs
    if ref.fault is None:
        assert (got.attrs, got.ept_perms) == (ref.attrs, ref.ept_perms)
        assert (got.attrs & (TA_RW | TA_US | TA_XD | TA_D)) == (ref.attrs & (TA_RW | TA_US | TA_XD | TA_D))
    for pa, value in ref_mem.items():
        assert twin.mem.read_u64(pa) == value, hex(pa)
    assert twin.mem.frames_backed == len(twin.frames())
