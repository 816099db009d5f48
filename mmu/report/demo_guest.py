"""A small, fixed "fresh demo guest" for ``mmu walk VA``: page tables with a few telling mappings.

The same guest page tables are built natively (in a :class:`~mmu.memory.PhysicalMemory`, physical
address = guest-physical address) or in a VM (guest-physical memory backed by host memory through
an EPT or an AMD NPT). Nothing is random: every build gives the same tables at the same addresses,
and no walk has run yet, so every A/D flag is clear.

Demo layout (4-level guest paging; guest tables at gpa 0x1000 = gCR3 .. 0x7000)::

    VA                      page    rights                  gpa            what a walk shows
    0x0000_0000_0040_0000   4 KiB   user R/W, XD            0x20_0000      an ordinary user data page
    0x0000_0000_0040_1000   4 KiB   user read-only          0x20_1000      write: #PF P|W|U (protection)
    0x0000_0000_0040_2000   -       not present             -              #PF (P=0) at the PT level
    0x0000_0000_0040_3000   4 KiB   user R/W                0x8000_3000    nested: EPT violation (gpa not backed)
    0x0000_0000_0060_0000   2 MiB   user R/W                0x40_0000      a large page: 3 guest levels
    0x0000_0040_0000_0000   1 GiB   user R/W                0x4000_0000    a huge page: 2 guest levels
    0xffff_8000_0000_0000   4 KiB   supervisor R/W, global  0x20_2000      user access: #PF P|U
    anything else           -       not present             -              #PF (P=0) where the path ends

In a VM, guest-physical ``g`` lives at host-physical ``GUEST_RAM_HPA + g`` (4 GiB + g) and the
host tables (EPT or NPT, 4 or 5 levels) take frames from host-physical 0x1000 upward. The host
backs, with pages of the chosen size (4 KiB, 2 MiB or 1 GiB), only what the guest uses: its page
tables, the 4 KiB data pages, the whole 2 MiB page, and the first 2 MiB of the 1 GiB page (all
of it with 1 GiB host pages). gpa 0x8000_3000 is never backed, so a nested walk of
0x0000_0000_0040_3000 ends in an EPT violation (an #NPF with ``npt``) on the final gpa.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmu.memory import PhysicalMemory
from mmu.x86.bits import PAGE_1G, PAGE_2M, PAGE_4K
from mmu.x86.ept import EptBuilder, NptBuilder

GUEST_RAM_HPA = 1 << 32  # host-physical address of guest-physical 0 (1 GiB aligned)
GCR3 = 0x1000

# guest entry bits (SDM Tables 4-15..4-20)
_P, _RW, _US, _PS, _G = 0x1, 0x2, 0x4, 0x80, 0x100
_XD = 1 << 63
_D = 0x40
_USER_TABLE = _P | _RW | _US
_KERNEL_TABLE = _P | _RW

HOST_PAGE_SIZES = {"4k": PAGE_4K, "2m": PAGE_2M, "1g": PAGE_1G}


@dataclass(frozen=True)
class DemoMapping:
    """One row of the demo layout: ``va`` maps ``size`` bytes at ``gpa`` (None: not present)."""

    va: int
    size: int
    gpa: int | None
    leaf_flags: int
    rights: str
    note: str


DEMO_MAPPINGS: tuple[DemoMapping, ...] = (
    DemoMapping(0x0000_0000_0040_0000, PAGE_4K, 0x20_0000, _P | _RW | _US | _XD, "user RW XD", "data page"),
    DemoMapping(0x0000_0000_0040_1000, PAGE_4K, 0x20_1000, _P | _US, "user RO", "write: #PF P|W|U"),
    DemoMapping(0x0000_0000_0040_2000, PAGE_4K, None, 0, "-", "hole: #PF (P=0) at PTE"),
    DemoMapping(0x0000_0000_0040_3000, PAGE_4K, 0x8000_3000, _P | _RW | _US, "user RW", "nested: EPT violation"),
    DemoMapping(0x0000_0000_0060_0000, PAGE_2M, 0x40_0000, _P | _RW | _US, "user RW", "2 MiB page"),
    DemoMapping(0x0000_0040_0000_0000, PAGE_1G, 0x4000_0000, _P | _RW | _US, "user RW", "1 GiB page"),
    DemoMapping(0xFFFF_8000_0000_0000, PAGE_4K, 0x20_2000, _P | _RW | _G, "kernel RW G", "user: #PF P|U"),
)

# guest-physical ranges the host backs: (gpa, bytes); large host pages round them out
_BACKED = ((0x0, 0x8000), (0x20_0000, 0x3000), (0x40_0000, PAGE_2M), (0x4000_0000, PAGE_2M))


@dataclass
class DemoGuest:
    """A built demo guest.

    Attributes
    ----------
    mode : {"native", "nested"}
    mem : PhysicalMemory
        Natively the machine's memory (guest tables at pa = gpa); nested, host memory holding the
        guest's memory at ``GUEST_RAM_HPA + gpa`` and the host tables.
    cr3 : int
        (Guest) CR3: gpa of the guest PML4.
    eptp : int | None
        EPTP (EPT) or nCR3 (NPT) in nested mode; None natively.
    npt, ept_levels, ept_ad, host_page
        The host side (nested mode only).
    mappings : tuple of DemoMapping
    """

    mode: str
    mem: PhysicalMemory
    cr3: int
    eptp: int | None = None
    npt: bool = False
    ept_levels: int = 4
    ept_ad: bool = False
    host_page: str = "4k"
    mappings: tuple[DemoMapping, ...] = DEMO_MAPPINGS


def _index(va: int, level: int) -> int:
    return (va >> (12 + 9 * (level - 1))) & 511


def _build_guest_tables(write: Callable[[int, int], None], read: Callable[[int], int]) -> None:
    """Write the demo guest's page tables through ``write(gpa, value)`` / ``read(gpa)``."""
    next_table = [GCR3 + 0x1000]  # frames 0x2000.. in creation order; gCR3's PML4 at 0x1000

    def new_table() -> int:
        gpa = next_table[0]
        next_table[0] += 0x1000
        return gpa

    leaf_levels = {PAGE_4K: 1, PAGE_2M: 2, PAGE_1G: 3}
    for m in DEMO_MAPPINGS:
        if m.gpa is None:
            continue
        upper = _USER_TABLE if m.leaf_flags & _US else _KERNEL_TABLE
        leaf_level = leaf_levels[m.size]
        table = GCR3
        for level in range(4, leaf_level, -1):
            epa = table + 8 * _index(m.va, level)
            entry = read(epa)
            if entry & _P:
                table = entry & 0x000F_FFFF_FFFF_F000
            else:
                table = new_table()
                write(epa, table | upper)
        write(table + 8 * _index(m.va, leaf_level), m.gpa | m.leaf_flags | (_PS if leaf_level > 1 else 0))


def build_native() -> DemoGuest:
    """The demo guest's tables in a fresh PhysicalMemory (pa = gpa); CR3 = 0x1000."""
    mem = PhysicalMemory(frames=16)
    _build_guest_tables(mem.write_u64, mem.read_u64)
    return DemoGuest("native", mem, GCR3)


def build_nested(host_page: str = "4k", ept_levels: int = 4, ept_ad: bool = False, npt: bool = False) -> DemoGuest:
    """The demo guest in a VM: host memory with the guest's memory and an EPT (or NPT) mapping it.

    Parameters
    ----------
    host_page : {"4k", "2m", "1g"}
        Size of the host pages backing guest memory.
    ept_levels : {4, 5}
        Host walk length.
    ept_ad : bool
        EPTP bit 6 (EPT accessed/dirty flags); ignored with ``npt`` (NPT always keeps A/D).
    npt : bool
        AMD nested page tables instead of EPT; ``eptp`` is then nCR3.
    """
    if host_page not in HOST_PAGE_SIZES:
        raise ValueError(f"host page must be one of {', '.join(HOST_PAGE_SIZES)}, not {host_page!r}")
    size = HOST_PAGE_SIZES[host_page]
    hmem = PhysicalMemory(frames=64)
    builder: EptBuilder | NptBuilder = (
        NptBuilder(hmem, levels=ept_levels) if npt else EptBuilder(hmem, levels=ept_levels, ad=ept_ad)
    )
    done: set[int] = set()
    for gpa, nbytes in _BACKED:
        first = gpa - gpa % size
        last = gpa + nbytes - 1
        for page in range(first, last - last % size + size, size):
            if page in done:
                continue
            done.add(page)
            builder.map(page, GUEST_RAM_HPA + page, page_size=size)
    _build_guest_tables(
        lambda gpa, value: hmem.write_u64(GUEST_RAM_HPA + gpa, value),
        lambda gpa: hmem.read_u64(GUEST_RAM_HPA + gpa),
    )
    eptp = builder.root if npt else builder.eptp  # type: ignore[union-attr]
    return DemoGuest(
        "nested", hmem, GCR3, eptp, npt=npt, ept_levels=ept_levels, ept_ad=ept_ad and not npt, host_page=host_page
    )


# The shadow demo: the same VAs in a guest the simulator's OS builds by demand paging, then edits
# (guest kernel stores, so the shadow MMU sees them as it would), as (va, what a walk shows).
SHADOW_LAYOUT: tuple[tuple[int, str], ...] = (
    (0x0000_0000_0040_0000, "4K user RW XD, clean (as after writeback): leaf table unsync; write: ad_dirty"),
    (0x0000_0000_0040_1000, "4K user RO (PTE edited + INVLPG): write: true #PF, pf_inject"),
    (0x0000_0000_0040_2000, "hole: guest PTE not present: pf_inject"),
    (0x0000_0000_0040_3000, "PTE re-pointed to gpa 0x20_3000 without INVLPG: stale unsync entry"),
    (0x0000_0000_0060_0000, "2M page at gpa 0x40_0000 (PDE edited): a direct shadow page splits it"),
    (0x0000_0000_0060_8000, "same 2M page, beyond the prefetched group: hidden_fault"),
    (0x0000_0040_0000_0000, "not mapped in this guest: pf_inject"),
)
_SHADOW_STALE_GPA = 0x20_3000
_SHADOW_LARGE_GPA = 0x40_0000


def build_shadow(host_page: str = "4k") -> Any:
    """The demo guest under shadow paging: a shadow-mode :class:`mmu.engine.Machine` (KVM's default
    policy; host pages of ``host_page``, which the engine may refuse with MMUInputError) that has
    run one process through :data:`SHADOW_LAYOUT`.

    The guest writes 0x40_0000, 0x40_1000 and 0x40_3000 and reads 0x60_0000 (its OS maps a 4 KiB
    page for each, dirty where written; the second PTE store makes the leaf table unsync), then
    edits its tables with guest kernel stores: XD and D cleared on 0x40_0000 (as writeback's
    ``pte_mkclean``) and read-only 0x40_1000 (each followed by INVLPG), a 2 MiB page
    at 0x60_0000 (a PDE store, which the VMM emulates, then INVLPG), and 0x40_3000 re-pointed with
    no INVLPG; finally it reads 0x40_0000, 0x40_1000 and 0x60_0000 again, so the shadow holds them.
    Guest-physical addresses other than the two edited ones come from the guest OS's allocator.
    """
    import numpy as np

    from mmu.engine import Machine, MachineConfig
    from mmu.guest.os import O_CUR, P_ROOT
    from mmu.trace.ops import OP_READ, OP_WRITE, RECORD_DTYPE

    m = Machine(MachineConfig(mode="shadow", host_page=host_page))

    def touch(*vas: int, op: int = OP_READ) -> None:
        recs = np.zeros(len(vas), dtype=RECORD_DTYPE)
        recs["addr"] = vas
        recs["arg"] = 8
        recs["pid"] = 1
        recs["op"] = op
        m.run(recs, where="shadow demo guest")

    def entry_gpa(va: int, level: int) -> int:
        table = int(m.osst.procs[int(m.osst.ometa[O_CUR]), P_ROOT])
        for lv in range(4, level, -1):
            table = m.read_guest(table + 8 * _index(va, lv)) & 0x000F_FFFF_FFFF_F000
        return table + 8 * _index(va, level)

    def edit(va: int, level: int, value: int, invlpg: bool = True) -> None:
        m.guest_store(entry_gpa(va, level), value)
        if invlpg:
            m.invlpg(va)

    touch(0x40_0000, 0x40_1000, 0x40_3000, op=OP_WRITE)
    touch(0x60_0000)
    pte = m.read_guest(entry_gpa(0x40_0000, 1))
    edit(0x40_0000, 1, (pte | _XD) & ~_D)
    pte = m.read_guest(entry_gpa(0x40_1000, 1))
    edit(0x40_1000, 1, pte & ~_RW)
    pte = m.read_guest(entry_gpa(0x40_3000, 1))
    edit(0x40_3000, 1, _SHADOW_STALE_GPA | (pte & 0xFFF), invlpg=False)
    edit(0x60_0000, 2, _SHADOW_LARGE_GPA | _P | _RW | _US | _PS)
    touch(0x40_0000, 0x40_1000, 0x60_0000)
    return m


def layout_lines() -> list[str]:
    """The demo layout as a small table, one line per mapping (for ``mmu walk --help``)."""
    sizes = {PAGE_4K: "4K", PAGE_2M: "2M", PAGE_1G: "1G"}
    out = [f"{'VA':21}  {'pg':3}  {'rights':11}  {'gpa':11}  what a walk shows"]
    for m in DEMO_MAPPINGS:
        page = "-" if m.gpa is None else sizes[m.size]
        target = "-" if m.gpa is None else "0x" + format(m.gpa, "_x")
        out.append(f"{m.va:#021_x}  {page:3}  {m.rights:11}  {target:11}  {m.note}")
    return out


def shadow_layout_lines() -> list[str]:
    """The shadow demo (:func:`build_shadow`), one line per VA (for ``mmu walk --help``)."""
    return [f"{va:#021_x}  {note}" for va, note in SHADOW_LAYOUT]
