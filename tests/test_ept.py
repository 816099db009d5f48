"""The host dimension alone: gpa -> hpa through EPT (SDM vol. 3C 28.2) and AMD NPT (APM 15.25).

Every scenario runs twice: on the plain-Python reference (``tests/reference/nested.py``) and on the
numba kernel behind ``mmu.x86.ept.translate_gpa``; both must give the expected fault, code (exit
qualification bits 0-6, or the #NPF error code), hpa, page size, references and memory.

Table layout: :class:`Host` hands out host table frames in creation order from 0x1000, so one
4-level 4 KiB mapping puts the EPT PML4 at 0x1000 (the EPTP root), the PDPT at 0x2000, the PD at
0x3000 and the PT at 0x4000 (with 5 levels the PML5 is at 0x1000 and the rest move up 0x1000).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from reference.nested import ref_ept_translate, ref_npt_translate
from reference.paging import TwinMemory

import mmu
from mmu.x86.ept import (
    EPT_MT_UC,
    EPT_MT_WB,
    PERM_R,
    PERM_W,
    PERM_X,
    PERM_XU,
    EptBuilder,
    NptBuilder,
    decode_ept_entry,
    decode_eptp,
    host_root_and_mode,
    make_eptp,
    translate_gpa,
)

R, W, X, XU = 1, 2, 4, 1 << 10
LARGE, A8, D9 = 1 << 7, 1 << 8, 1 << 9
WB = EPT_MT_WB << 3
RWX = R | W | X
Q_R, Q_W, Q_F = 1, 2, 4
Q_RD, Q_WR, Q_EX, Q_XU = 1 << 3, 1 << 4, 1 << 5, 1 << 6
PAGE_4K, PAGE_2M, PAGE_1G = 1 << 12, 1 << 21, 1 << 30
# ordinary (NPT) entry bits
P, RW_, US, PS, A5, D6 = 1, 2, 4, 0x80, 0x20, 0x40
NX = 1 << 63
E_P, E_W, E_U, E_RSVD, E_I = 1, 2, 4, 8, 0x10


@dataclass
class Outcome:
    fault: str | None
    code: int
    hpa: int | None
    page_size: int
    refs: list[tuple[int, int]]


_KIND = {"ok": None, "violation": "ept_violation", "misconfig": "ept_misconfig", "npf": "npf"}


class Host:
    """EPT (or, with ``npt``, nested) tables written to a PhysicalMemory and a reference dict."""

    def __init__(self, impl: str, levels: int = 4, ad: bool = False, npt: bool = False, maxphyaddr: int = 52):
        self.impl, self.levels, self.ad, self.npt, self.maxphyaddr = impl, levels, ad, npt, maxphyaddr
        self.twin = TwinMemory(mmu.PhysicalMemory())
        self.next_frame = 0x1000
        self.root = self.new_table()

    def new_table(self) -> int:
        pa = self.next_frame
        self.next_frame += 0x1000
        return pa

    def put(self, pa: int, value: int) -> None:
        self.twin.write(pa, value)

    def read(self, pa: int) -> int:
        return self.twin.words.get(pa, 0) if self.impl == "ref" else self.twin.mem.read_u64(pa)

    def snapshot(self) -> dict[int, int]:
        return {pa: self.read(pa) for pa in sorted(self.twin.words)}

    def map(self, gpa: int, hpa: int, size: int = PAGE_4K, leaf: int | None = None, upper: int | None = None):
        """Map ``gpa`` -> ``hpa``; return {level: entry hpa} of the path. Large leaves get bit 7."""
        if leaf is None:
            leaf = (P | RW_ | US) if self.npt else (RWX | WB)
        if upper is None:
            upper = (P | RW_ | US) if self.npt else RWX
        leaf_level = {PAGE_4K: 1, PAGE_2M: 2, PAGE_1G: 3}[size]
        table, path = self.root, {}
        for level in range(self.levels, leaf_level - 1, -1):
            epa = table | ((gpa >> (12 + 9 * (level - 1))) & 511) << 3
            path[level] = epa
            if level == leaf_level:
                self.put(epa, hpa | leaf | (LARGE if size != PAGE_4K else 0))
                break
            entry = self.twin.words.get(epa, 0)
            if entry:
                table = entry & 0x000F_FFFF_FFFF_F000
            else:
                table = self.new_table()
                self.put(epa, table | upper)
        return path

    def translate(self, gpa: int, access: str = "r", user_addr: bool = False, mbec: bool = False, xonly=True):
        if self.impl == "ref":
            if self.npt:
                o = ref_npt_translate(self.twin.words, self.root, self.levels, gpa, access, self.maxphyaddr)
            else:
                o = ref_ept_translate(
                    self.twin.words,
                    self.root,
                    self.levels,
                    gpa,
                    access,
                    self.ad,
                    mbec,
                    user_addr,
                    self.maxphyaddr,
                    xonly,
                )
            return Outcome(_KIND[o.kind], o.code, o.hpa, o.page_size, o.refs)
        eptp = self.root if self.npt else make_eptp(self.root, self.levels, self.ad)
        r = translate_gpa(
            self.twin.mem,
            eptp,
            gpa,
            access,
            user_addr=user_addr,
            npt=self.npt,
            ept_levels=self.levels,
            mbec=mbec,
            execute_only=xonly,
            maxphyaddr=self.maxphyaddr,
        )
        return Outcome(r.fault, r.code, r.hpa, r.page_size, r.refs)


@pytest.fixture(params=["ref", "kernel"])
def host(request):
    def make(**kw) -> Host:
        return Host(request.param, **kw)

    return make


# ---------------------------------------------------------------------------------------------
# Standard 4-level EPT, 4 KiB page.
# gpa 0x7f12_3456_7abc: EPT PML4 idx 254, PDPT idx 72, PD idx 418, PT idx 359, offset 0xabc
#   PML4E at 0x1000 + 254*8, PDPTE at 0x2000 + 72*8, PDE at 0x3000 + 418*8, PTE at 0x4000 + 359*8
#   host frame 0xab_cdef_0000 -> hpa 0xab_cdef_0abc
GPA = 0x7F12_3456_7ABC
HFRAME = 0xAB_CDEF_0000
PML4E, PDPTE, PDE, PTE = 0x1000 + 254 * 8, 0x2000 + 72 * 8, 0x3000 + 418 * 8, 0x4000 + 359 * 8
PATH = {4: PML4E, 3: PDPTE, 2: PDE, 1: PTE}
REFS = [(4, PML4E), (3, PDPTE), (2, PDE), (1, PTE)]


def std(host, leaf: int = RWX | WB, upper: int = RWX, **kw) -> Host:
    h = host(**kw)
    assert h.map(GPA, HFRAME, leaf=leaf, upper=upper) == PATH
    return h


def test_4k_read(host):
    h = std(host)
    before = h.snapshot()
    assert h.translate(GPA) == Outcome(None, 0, 0xAB_CDEF_0ABC, PAGE_4K, REFS)
    assert h.snapshot() == before  # EPT A/D off: nothing written


def test_2m_and_1g_pages(host):
    # gpa 0x7f12_3456_7abc: PML4 254, PDPT 72, PD 418 = 2M leaf, offset 0x16_7abc
    h = host()
    assert h.map(GPA, 0x40_0000_0000, PAGE_2M) == {4: PML4E, 3: PDPTE, 2: PDE}
    assert h.translate(GPA, "w") == Outcome(None, 0, 0x40_0016_7ABC, PAGE_2M, REFS[:3])
    # gpa 0x7e00_0000_1234: PML4 252, PDPT 0 = 1G leaf (new PDPT at 0x4000), offset 0x1234
    h.map(0x7E00_0000_1234 & ~(PAGE_1G - 1), 0x80_0000_0000, PAGE_1G)
    r = h.translate(0x7E00_0000_1234, "x")
    assert r == Outcome(None, 0, 0x80_0000_1234, PAGE_1G, [(4, 0x1000 + 252 * 8), (3, 0x4000)])


def test_5_level_ept():
    for impl in ("ref", "kernel"):
        # gpa 0x1_7f12_3456_7abc: PML5 idx 1, PML4 254, PDPT 72, PD 418, PT 359, offset 0xabc
        h = Host(impl, levels=5)
        gpa = 0x1_7F12_3456_7ABC
        path = h.map(gpa, HFRAME)
        assert path == {5: 0x1008, 4: 0x2000 + 254 * 8, 3: 0x3000 + 72 * 8, 2: 0x4000 + 418 * 8, 1: 0x5000 + 359 * 8}
        assert h.translate(gpa) == Outcome(None, 0, 0xAB_CDEF_0ABC, PAGE_4K, sorted(path.items(), reverse=True))
        # with a 4-level walk the same gpa does not fit: violation, nothing read
        h4 = Host(impl, levels=4)
        assert h4.translate(gpa, "w") == Outcome("ept_violation", Q_W, None, 0, [])


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_not_present_at_each_level(host, level):
    h = std(host)
    # bits 2:0 = 000 makes the entry not present whatever else it holds (bits 63:3 ignored)
    h.put(PATH[level], h.read(PATH[level]) & ~7 | 0xFF8)
    r = h.translate(GPA, "w")
    assert r == Outcome("ept_violation", Q_W, None, 0, REFS[: 5 - level])  # rights AND to 0


@pytest.mark.parametrize(
    "leaf, upper_pdpte, access, qual",
    [
        (X | WB, RWX, "r", Q_R | Q_EX),  # execute-only page, data read
        (R | X | WB, RWX, "w", Q_W | Q_RD | Q_EX),  # read/execute page, write
        (R | W | WB, RWX, "x", Q_F | Q_RD | Q_WR),  # read/write page, fetch
        (RWX | WB, R | X, "w", Q_W | Q_RD | Q_EX),  # the PDPTE withholds W from the whole 1G region
        (RWX | WB, X, "r", Q_R | Q_EX),  # execute-only PDPTE above a RWX leaf
    ],
)
def test_rights_violations(host, leaf, upper_pdpte, access, qual):
    h = std(host, leaf=leaf)
    h.put(PDPTE, 0x3000 | upper_pdpte)
    assert h.translate(GPA, access) == Outcome("ept_violation", qual, None, 0, REFS)


def test_mode_based_execute_control(host):
    # MBEC: bit 2 allows fetches for supervisor-mode linear addresses, bit 10 for user-mode ones
    h = std(host, leaf=R | X | WB)  # no XU in the leaf; upper entries have no XU either
    assert h.translate(GPA, "x", user_addr=False, mbec=True).fault is None
    r = h.translate(GPA, "x", user_addr=True, mbec=True)
    assert r == Outcome("ept_violation", Q_F | Q_RD | Q_EX, None, 0, REFS)
    for pa in (PML4E, PDPTE, PDE):
        h.put(pa, h.read(pa) | XU)
    h.put(PTE, HFRAME | R | XU | WB)  # user-execute only
    assert h.translate(GPA, "x", user_addr=True, mbec=True).hpa == 0xAB_CDEF_0ABC
    r = h.translate(GPA, "x", user_addr=False, mbec=True)
    assert r == Outcome("ept_violation", Q_F | Q_RD | Q_XU, None, 0, REFS)
    # without MBEC bit 10 is ignored: execute is bit 2 for everyone
    assert h.translate(GPA, "x", user_addr=True).fault == "ept_violation"
    # under MBEC an entry with only bit 10 set is present (execute-only for user mode)
    h.put(PTE, HFRAME | XU | WB)
    assert h.translate(GPA, "x", user_addr=True, mbec=True).fault is None
    assert h.translate(GPA, "x", user_addr=True).refs == REFS  # not present without MBEC
    assert h.translate(GPA, "x", user_addr=True).code == Q_F


MISCONFIGS = [
    # (entry level, bits to set, bits to clear)
    ("write-only leaf (010b)", 1, W, R | X),
    ("write/execute leaf (110b)", 1, W | X, R),
    ("write-only PML4E", 4, W, R | X),
    ("PML4E bit 7", 4, LARGE, 0),
    ("PML4E bit 3", 4, 1 << 3, 0),
    ("PML4E bits 5:3 (memory type)", 4, 6 << 3, 0),
    ("table PDPTE bit 6", 3, 1 << 6, 0),
    ("table PDE bit 3", 2, 1 << 3, 0),
    ("leaf memory type 2", 1, 2 << 3, 7 << 3),
    ("leaf memory type 3", 1, 3 << 3, 7 << 3),
    ("leaf memory type 7", 1, 7 << 3, 7 << 3),
    ("PTE bit 46 with MAXPHYADDR = 46", 1, 1 << 46, 0),
]


@pytest.mark.parametrize("what, level, set_bits, clear_bits", MISCONFIGS, ids=[m[0] for m in MISCONFIGS])
def test_misconfigurations(host, what, level, set_bits, clear_bits):
    h = std(host, maxphyaddr=46)
    h.put(PATH[level], h.read(PATH[level]) & ~clear_bits | set_bits)
    for access in "rwx":
        assert h.translate(GPA, access) == Outcome("ept_misconfig", 0, None, 0, REFS[: 5 - level]), what


def test_large_page_reserved_bits_and_memory_type(host):
    # 2M leaf: bits 20:12 reserved; 1G leaf: bits 29:12 reserved (Tables 28-2, 28-4)
    h = host()
    h.map(GPA, 0x40_0000_0000, PAGE_2M)
    for bit in (12, 20):
        h.put(PDE, 0x40_0000_0000 | RWX | WB | LARGE | 1 << bit)
        assert h.translate(GPA).fault == "ept_misconfig"
    h.put(PDE, 0x40_0000_0000 | RWX | 7 << 3 | LARGE)  # memory type 7 on a 2M leaf
    assert h.translate(GPA).fault == "ept_misconfig"
    h.put(PDE, 0x40_0000_0000 | RWX | EPT_MT_UC << 3 | LARGE | 1 << 6)  # UC with IPAT: fine
    assert h.translate(GPA).hpa == 0x40_0016_7ABC
    h2 = host()
    h2.map(GPA & ~(PAGE_1G - 1), 0x80_0000_0000, PAGE_1G)
    for bit in (12, 21, 29):
        h2.put(PDPTE, 0x80_0000_0000 | RWX | WB | LARGE | 1 << bit)
        assert h2.translate(GPA).refs == REFS[:2]
        assert h2.translate(GPA).fault == "ept_misconfig"


def test_execute_only_support(host):
    h = std(host, leaf=X | WB)
    assert h.translate(GPA, "x").fault is None
    assert h.translate(GPA, "x", xonly=False) == Outcome("ept_misconfig", 0, None, 0, REFS)
    # an execute-only non-leaf entry too
    h = std(host, upper=X)
    assert h.translate(GPA, "x").fault is None
    assert h.translate(GPA, "x", xonly=False) == Outcome("ept_misconfig", 0, None, 0, REFS[:1])


def test_ignored_bits_are_not_reserved(host):
    # bit 11, bits 62:52, suppress-#VE (63), A/D bits, IPAT, bit 7 of a PTE: all allowed
    junk = 1 << 11 | 0x7FF << 52 | 1 << 63
    h = std(host, leaf=RWX | WB | junk | 1 << 6 | LARGE | A8 | D9, upper=RWX | junk | A8 | D9 | XU)
    assert h.translate(GPA, "w").hpa == 0xAB_CDEF_0ABC


def test_misconfiguration_wins_over_violation(host):
    # the PDPTE withholds W, and the PTE has memory type 7: a write is a misconfiguration
    h = std(host, leaf=RWX | 7 << 3)
    h.put(PDPTE, 0x3000 | R | X)
    assert h.translate(GPA, "w") == Outcome("ept_misconfig", 0, None, 0, REFS)


def test_accessed_and_dirty_flags(host):
    h = std(host, ad=True)
    assert h.translate(GPA, "r").fault is None
    assert [h.read(pa) & (A8 | D9) for pa in PATH.values()] == [A8] * 4  # A everywhere, no D on a read
    assert h.translate(GPA, "w").fault is None
    assert [h.read(pa) & (A8 | D9) for pa in PATH.values()] == [A8, A8, A8, A8 | D9]  # D on the leaf only
    # a faulting translation writes nothing
    h = std(host, leaf=R | X | WB, ad=True)
    before = h.snapshot()
    assert h.translate(GPA, "w").fault == "ept_violation"
    assert h.snapshot() == before
    h.put(PTE, h.read(PTE) | 3 << 3)
    before = h.snapshot()
    assert h.translate(GPA, "r").fault == "ept_misconfig"
    assert h.snapshot() == before


def test_address_bits_beyond_maxphyaddr(host):
    h = std(host, maxphyaddr=40)
    h.put(PDE, h.read(PDE) | 1 << 40)
    assert h.translate(GPA).fault == "ept_misconfig"
    h.put(PDE, h.read(PDE) & ~(1 << 40) | 1 << 39)  # bit 39 < M: part of the address
    assert h.translate(GPA).refs[-1] == (1, (0x4000 | 1 << 39) + 359 * 8)


# --- AMD nested page tables (ordinary format, user-mode accesses) ------------------------------


@pytest.mark.parametrize(
    "level, entry_bits, access, code, nrefs",
    [
        (3, P | RW_, "r", E_P | E_U, 4),  # U/S = 0 anywhere: every nested access is a user access
        (1, P | US, "w", E_P | E_W | E_U, 4),  # read-only page, write
        (4, 0, "w", E_W | E_U, 1),  # not present
        (1, P | RW_ | US | NX, "x", E_P | E_U | E_I, 4),  # NX page, fetch (host EFER.NXE = 1)
        (4, P | RW_ | US | PS, "r", E_P | E_U | E_RSVD, 1),  # PS in a PML4E is reserved
    ],
)
def test_npt_faults(host, level, entry_bits, access, code, nrefs):
    h = host(npt=True)
    h.map(GPA, HFRAME)
    next_table = {4: 0x2000, 3: 0x3000, 2: 0x4000, 1: HFRAME}[level]
    h.put(PATH[level], next_table | entry_bits)
    r = h.translate(GPA, access)
    assert (r.fault, r.code, r.hpa) == ("npf", code, None)
    assert r.refs == REFS[:nrefs]


def test_npt_success_sets_nested_accessed_and_dirty(host):
    h = host(npt=True)
    h.map(GPA, HFRAME)
    assert h.translate(GPA, "w") == Outcome(None, 0, 0xAB_CDEF_0ABC, PAGE_4K, REFS)
    assert [h.read(pa) & (A5 | D6) for pa in PATH.values()] == [A5, A5, A5, A5 | D6]
    h2 = host(npt=True)
    h2.map(GPA, 0x40_0000_0000, PAGE_2M)
    assert h2.translate(GPA, "x").hpa == 0x40_0016_7ABC


# --- Python helpers ----------------------------------------------------------------------------


def test_eptp_encoding():
    eptp = make_eptp(0x5000, levels=5, ad=True)
    assert eptp == 0x5000 | 4 << 3 | 1 << 6 | 6
    assert decode_eptp(eptp) == {"root": 0x5000, "levels": 5, "ad": True, "memtype": 6}
    assert host_root_and_mode(eptp, None, None, False, 52) == (0x5000, 5, True)
    assert host_root_and_mode(eptp, 4, False, False, 52) == (0x5000, 4, False)  # explicit wins
    assert host_root_and_mode(0x5000, None, None, False, 52) == (0x5000, 4, False)  # bare root
    assert host_root_and_mode(0x5000 | 0x18, None, None, True, 52) == (0x5000, 4, False)  # nCR3
    with pytest.raises(ValueError):
        host_root_and_mode(0x5000 | 1 << 3, None, None, False, 52)  # walk length 2
    with pytest.raises(ValueError):
        make_eptp(0x5001)


def test_decode_ept_entry():
    d = decode_ept_entry(0xAB_CDEF_0000 | R | X | 6 << 3 | 1 << 6 | LARGE | A8 | D9 | XU | 1 << 63)
    assert d == {
        "R": True,
        "W": False,
        "X": True,
        "MT": 6,
        "IPAT": True,
        "LARGE": True,
        "A": True,
        "D": True,
        "XU": True,
        "SVE": True,
        "ADDR": 0xAB_CDEF_0000,
        "present": True,
    }
    assert decode_ept_entry(0xFF8)["present"] is False


def test_ept_builder_maps_4k_2m_1g():
    mem = mmu.PhysicalMemory()
    ept = EptBuilder(mem, levels=4, ad=True)
    ept.map(0x10_0000, 0x7_0000_0000, size=3 * PAGE_4K)  # three 4K pages
    ept.map(0x4000_0000, 0x8_0000_0000, size=2 * PAGE_2M, page_size=PAGE_2M, perms="r-x")
    ept.map(0x1_0000_0000, 0x40_0000_0000, page_size=PAGE_1G, perms="rw", memtype=EPT_MT_UC)
    assert ept.eptp == ept.root | 3 << 3 | 1 << 6 | 6
    assert translate_gpa(mem, ept.eptp, 0x10_2345).hpa == 0x7_0000_2345
    r = translate_gpa(mem, ept.eptp, 0x4020_0010, "w")
    assert (r.fault, r.code) == ("ept_violation", Q_W | Q_RD | Q_EX)
    r = translate_gpa(mem, ept.eptp, 0x4020_0010, "x")
    assert (r.hpa, r.page_size, r.perms) == (0x8_0020_0010, PAGE_2M, PERM_R | PERM_X)  # XU only under MBEC
    assert translate_gpa(mem, ept.eptp, 0x4020_0010, "x", mbec=True).perms == PERM_R | PERM_X | PERM_XU
    r = translate_gpa(mem, ept.eptp, 0x1_2345_6789, "w")
    assert (r.hpa, r.page_size, len(r.refs)) == (0x40_2345_6789, PAGE_1G, 2)
    leaf = mem.read_u64(ept.path(0x1_2345_6789)[3])
    assert decode_ept_entry(leaf)["MT"] == EPT_MT_UC and decode_ept_entry(leaf)["D"]  # EPT A/D on
    assert ept.translate(0x10_1000) == 0x7_0000_1000 and ept.translate(0x20_0000) is None
    ept.protect(0x10_1000, "r")
    assert translate_gpa(mem, ept.eptp, 0x10_1000, "w").fault == "ept_violation"
    ept.unmap(0x10_1000)
    assert translate_gpa(mem, ept.eptp, 0x10_1000).code == Q_R
    with pytest.raises(ValueError):
        ept.map(0x4000_0000, 0x9_0000_0000)  # a 2M leaf already maps the region
    with pytest.raises(ValueError):
        ept.map(0x1234, 0x5000)  # not page aligned


def test_npt_builder():
    mem = mmu.PhysicalMemory()
    npt = NptBuilder(mem)
    npt.map(0, 0x20_0000_0000, size=PAGE_2M, page_size=PAGE_2M, writable=False)
    r = translate_gpa(mem, npt.ncr3, 0x1_2345, "r", npt=True)
    assert (r.hpa, r.page_size, r.perms) == (0x20_0001_2345, PAGE_2M, PERM_R | PERM_X)
    r = translate_gpa(mem, npt.ncr3, 0x1_2345, "w", npt=True)
    assert (r.fault, r.code) == ("npf", E_P | E_W | E_U)
    assert PERM_W == 2 and PERM_XU == 1 << 10
