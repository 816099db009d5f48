"""Walk views: one translation rendered step by step (``mmu walk``).

Two steps, kept apart so the rendering stays a pure function of data:

1. :func:`capture_1d` / :func:`capture_2d` turn a walker's result (:class:`mmu.WalkResult` or
   :class:`mmu.NestedWalkResult`) plus the memory before and after the walk into a
   :class:`WalkView1D` / :class:`WalkView2D`: every entry read, in the order the hardware read
   it, with its value before and after (so A/D updates can be shown). Capturing reads memory and
   nothing else.
2. :func:`walk_1d_renderable` / :func:`walk_2d_renderable` turn a view into a rich renderable:

   * 1D: one row per level -- the VA bits that index it, the entry address, the raw value as
     read, decoded flags (``+A``/``+D``: set by this walk), what it points to; the fault row in
     red; then the page offset row.
   * 2D: the classic grid -- guest levels down (plus the data gPA row), host (EPT/NPT) levels
     across plus the guest entry itself; each cell is numbered in the order the reference was
     issued (1..24 for a cold 4 + 4 walk) with its host-physical address; then the guest
     entries as a 1D table.

   Both end with a legend and a one-line verdict: the translation, a #PF with its decoded error
   code, an EPT violation with its decoded exit qualification, or an #NPF with its EXITINFO1.

Shadow paging has no single walk to capture: :func:`capture_shadow` reads a shadow-mode
:class:`mmu.engine.Machine` (without changing it) into a :class:`WalkViewShadow` -- the guest's
walk (what the VMM's software walk reads) beside the shadow walk (what the hardware reads), level
by level, with the shadow MMU's state of each table: write-protected guest frames, unsync and
direct shadow pages, each shadow page's role. :func:`walk_shadow_renderable` draws it as a table
and ends with where each walk stops and the VM exit a TLB miss would take.

Warm marks: a view may carry a :class:`WarmWalk` (``warm``, from :func:`mmu.report.warm.probe`):
what the machine's TLB and caches would serve at a trace position. Every reference of the cold
walk keeps its number; :func:`warm_marks` pairs it with the warm reference that reads the same
entry (marked ``w<n> · L2``/``LLC``/``mem``: the warm issue order and where the line came from),
or names what served it (``skip · TLB``/``PSC``/``NTLB``/``hPSC``, the cell dimmed); a warm
reference the cold walk does not make (a stale cached entry) is listed on its own. A one-line
summary (:func:`warm_summary`) follows the grid or table.

Plain text (a console without colour) keeps every mark: ``#n`` numbers, ``+A``/``+D``, ``✘``,
the warm marks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from mmu.x86.bits import PF_P, PF_PK, PF_RSVD, TA_RW, TA_US, TA_XD, pf_error_string
from mmu.x86.ept import EQ_FETCH, EQ_FINAL, EQ_GLA_VALID, EQ_READ, EQ_USER_EXECUTABLE, EQ_WRITE, NPF_FINAL, NPF_TABLE

_ADDR = 0x000F_FFFF_FFFF_F000
LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
ACCESS_NAMES = {"r": "read", "w": "write", "x": "fetch"}
PAGE_NAMES = {1 << 12: "4 KiB", 1 << 21: "2 MiB", 1 << 30: "1 GiB"}
_SHORT_PAGE = {1 << 12: "4K", 1 << 21: "2M", 1 << 30: "1G"}
# A/D flag positions: ordinary entries (guest, NPT) and EPT entries
_AD_ORDINARY = (("A", 1 << 5), ("D", 1 << 6))
_AD_EPT = (("A", 1 << 8), ("D", 1 << 9))

FAULT_STYLE = "bold red"
CHANGE_STYLE = "bold green"


class _Memory(Protocol):
    def read_u64(self, pa: int) -> int: ...


def hx(x: int) -> str:
    """Hex with ``_`` every four digits: ``0x1_0000_1008``."""
    return "0x" + format(int(x), "_x")


# --- captured data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryRead:
    """One paging-structure entry a walk read.

    Attributes
    ----------
    n : int
        1-based position in the order the hardware issued the reads.
    dim : {"g", "h"}
        Guest entry (or the only dimension of a 1D walk) / host entry (EPT or NPT).
    level : int
        5..1 in its own dimension.
    addr : int
        (Host-)physical address the entry was read from.
    before, after : int
        The 64-bit entry before and after the walk (they differ in A/D flags the walk set).
    """

    n: int
    dim: str
    level: int
    addr: int
    before: int
    after: int


@dataclass(frozen=True)
class WarmRef:
    """One paging-structure reference the warm hardware issues (:func:`mmu.report.warm.probe`).

    Attributes
    ----------
    n : int
        1-based position in the warm translation's issue order.
    dim : {"g", "h"}
        Guest entry (or the entry of a 1D walk: native tables, shadow tables) / host entry.
    level : int
        5..1 in its own dimension.
    addr : int
        (Host-)physical address of the entry.
    source : {"L2", "LLC", "mem"}
        Where its line came from: the L2-like or LLC-like walk-line cache, or memory.
    row : int
        The 2D grid row: the guest level of the entry (host entries: of the guest entry whose
        gpa they translate), 0 for the data gpa. 1D walks: the entry's level.
    """

    n: int
    dim: str
    level: int
    addr: int
    source: str
    row: int


@dataclass(frozen=True)
class WarmWalk:
    """What the machine's warm hardware does for one translation (:func:`mmu.report.warm.probe`).

    Attributes
    ----------
    record : int
        The trace position (the machine has run records 0..record-1).
    mode : {"native", "nested", "shadow"}
        The machine's mode (shadow: the hardware walks the shadow tables).
    outcome : str
        "ok", "pf" (a #PF for the guest, from the walk or from a TLB entry's cached rights),
        "gp", "ept_violation", "ept_misconfig" (nested: a VM exit; NPT's #NPF is an
        "ept_violation"), "shadow_pf" (a #PF on the shadow tables: a VM exit), or
        "not_predicted" (see ``note``).
    top_level : int
        Levels of the (guest or 1D) paging structures: 4 or 5.
    tlb_hit : str | None
        The TLB structure that held the translation, None on a miss.
    dirty_rewalk : bool
        A write through a TLB entry whose D flag is clear: the hardware walks again to set D.
    psc_hit : str | None
        The paging-structure cache that gave the walk's first table (guest dimension).
    start_level : int
        Level of the first guest (1D) table the walk reads: ``top_level`` from the root, less
        after a PSC hit; 0 when there is no walk.
    refs : tuple of WarmRef
        Every reference issued, in order.
    ntlb_rows : frozenset of int
        Nested: grid rows whose gpa the nested TLB translated (no host reference).
    addr, gpa : int | None
        On "ok": the (host-)physical address, and (nested, shadow) the guest-physical one; on
        a nested exit, ``gpa`` is the guest-physical address whose translation failed.
    code : int
        #PF error code or exit qualification of a fault.
    note : str
        Work the VMM does first (shadow: a pending flush), or why nothing was predicted.
    """

    record: int
    mode: str
    outcome: str
    top_level: int
    tlb_hit: str | None = None
    dirty_rewalk: bool = False
    psc_hit: str | None = None
    start_level: int = 0
    refs: tuple[WarmRef, ...] = ()
    ntlb_rows: frozenset[int] = frozenset()
    addr: int | None = None
    gpa: int | None = None
    code: int = 0
    note: str = ""


@dataclass(frozen=True)
class WalkView1D:
    """Everything :func:`walk_1d_renderable` shows. ``entries`` in the order read."""

    va: int
    cr3: int
    access: str
    user: bool
    levels: int
    fault: str | None
    error_code: int
    pa: int | None
    page_size: int
    attrs: int
    entries: tuple[EntryRead, ...]
    context: str = ""
    warm: WarmWalk | None = None


@dataclass(frozen=True)
class WalkView2D:
    """Everything :func:`walk_2d_renderable` shows. ``entries`` in the order read (both dimensions)."""

    gva: int
    gcr3: int
    eptp: int
    access: str
    user: bool
    glevels: int
    hlevels: int
    npt: bool
    ept_ad: bool
    fault: str | None
    error_code: int
    exit_qualification: int
    gpa: int | None
    hpa: int | None
    page_size: int
    attrs: int
    entries: tuple[EntryRead, ...]
    context: str = ""
    warm: WarmWalk | None = None


def capture_1d(
    result: Any,
    mem_before: _Memory,
    mem_after: _Memory,
    va: int,
    cr3: int,
    access: str = "r",
    user: bool = False,
    la57: bool = False,
    context: str = "",
) -> WalkView1D:
    """A :class:`WalkView1D` of ``result`` (a :class:`mmu.WalkResult` of a walk of ``va``).

    ``mem_before`` must hold the tables as they were before the walk and ``mem_after`` as they
    are after it (walk a copy, keep the original). Only ``read_u64`` is called on them.
    """
    entries = tuple(
        EntryRead(i + 1, "g", int(lv), int(pa), mem_before.read_u64(pa), mem_after.read_u64(pa))
        for i, (pa, lv) in enumerate(zip(result.refs, result.levels, strict=True))
    )
    return WalkView1D(
        va=int(va) & ((1 << 64) - 1),
        cr3=int(cr3),
        access=access,
        user=bool(user),
        levels=5 if la57 else 4,
        fault=result.fault,
        error_code=int(result.error_code),
        pa=result.pa,
        page_size=int(result.page_size),
        attrs=int(result.attrs),
        entries=entries,
        context=context,
    )


def capture_2d(
    result: Any,
    mem_before: _Memory,
    mem_after: _Memory,
    gva: int,
    gcr3: int,
    eptp: int,
    access: str = "r",
    user: bool = False,
    la57: bool = False,
    ept_levels: int = 4,
    ept_ad: bool = False,
    npt: bool = False,
    context: str = "",
) -> WalkView2D:
    """A :class:`WalkView2D` of ``result`` (a :class:`mmu.NestedWalkResult` of a walk of ``gva``).

    ``mem_before``/``mem_after``: host memory before and after the walk (see :func:`capture_1d`).
    """
    entries = tuple(
        EntryRead(i + 1, dim, int(lv), int(pa), mem_before.read_u64(pa), mem_after.read_u64(pa))
        for i, (dim, lv, pa) in enumerate(result.refs)
    )
    return WalkView2D(
        gva=int(gva) & ((1 << 64) - 1),
        gcr3=int(gcr3),
        eptp=int(eptp),
        access=access,
        user=bool(user),
        glevels=5 if la57 else 4,
        hlevels=int(ept_levels),
        npt=bool(npt),
        ept_ad=bool(ept_ad) and not npt,
        fault=result.fault,
        error_code=int(result.error_code),
        exit_qualification=int(result.exit_qualification),
        gpa=result.gpa,
        hpa=result.hpa,
        page_size=int(result.page_size),
        attrs=int(result.attrs),
        entries=entries,
        context=context,
    )


# --- decoding helpers ---------------------------------------------------------------------------


def va_bits(level: int) -> tuple[int, int]:
    """(high, low) bit numbers of the VA (or gPA) field that indexes a table of ``level``."""
    lo = 12 + 9 * (level - 1)
    return lo + 8, lo


def table_index(va: int, level: int) -> int:
    return (va >> (12 + 9 * (level - 1))) & 511


def _is_leaf(value: int, level: int) -> bool:
    return level == 1 or (level <= 3 and bool(value & 0x80))


def _ad_changes(e: EntryRead, ept: bool) -> list[str]:
    bits = _AD_EPT if ept else _AD_ORDINARY
    return [name for name, bit in bits if (e.after & bit) and not (e.before & bit)]


def _marks(e: EntryRead, ept: bool) -> Text:
    out = Text()
    for name in _ad_changes(e, ept):
        out.append(f" +{name}", style=CHANGE_STYLE)
    return out


def pte_flags(value: int, changed: list[str] | None = None) -> Text:
    """Set flags of an ordinary paging entry (guest or NPT), ``+A``/``+D`` for ones the walk set."""
    changed = changed or []
    names = (
        ("P", 0),
        ("RW", 1),
        ("US", 2),
        ("PWT", 3),
        ("PCD", 4),
        ("A", 5),
        ("D", 6),
        ("PS", 7),
        ("G", 8),
        ("XD", 63),
    )
    out = Text()
    for name, bit in names:
        if value >> bit & 1 or name in changed:
            if out:
                out.append(" ")
            if name in changed:
                out.append(f"+{name}", style=CHANGE_STYLE)
            else:
                out.append(name)
    pkey = (value >> 59) & 0xF
    if pkey:
        out.append(f" PK{pkey}")
    return out if out else Text("0", style="dim")


def ept_flags(value: int, level: int, changed: list[str] | None = None) -> Text:
    """``rwx`` rights (``u`` for XU), the leaf's page size and memory type, ``+A``/``+D``."""
    changed = changed or []
    if not value & 0x7 and not value >> 10 & 1:
        return Text("not present", style=FAULT_STYLE)
    out = Text("".join(c if value >> i & 1 else "-" for i, c in enumerate("rwx")))
    if value >> 10 & 1:
        out.append("u")
    if _is_leaf(value, level):
        size = {1: "4K", 2: "2M", 3: "1G"}[level]
        out.append(f" {size}")
    for name, bit in _AD_EPT:
        if name in changed:
            out.append(f" +{name}", style=CHANGE_STYLE)
        elif value & bit:
            out.append(f" {name}")
    return out


def pf_cause(code: int, attrs: int, access: str, user: bool, last_level: int | None) -> str:
    """Why a #PF happened, in words, from its error code and the translation's combined rights."""
    where = f" at the {LEVEL_NAMES.get(last_level or 0, '?')} level" if last_level else ""
    if not code & PF_P:
        return f"not present{where}"
    if code & PF_RSVD:
        return f"reserved bit set{where}"
    if code & PF_PK:
        return "protection-key violation"
    if user and not attrs & TA_US:
        return "user-mode access to a supervisor page"
    if access == "w" and not attrs & TA_RW:
        return "write to a read-only page"
    if access == "x" and attrs & TA_XD:
        return "instruction fetch from a no-execute page"
    if not user and attrs & TA_US:
        return "supervisor access to a user page (SMEP/SMAP)"
    return "protection violation"


def pf_text(code: int) -> str:
    """``#PF error code 0x7 (P|W|U)``."""
    return f"#PF error code {code:#x} ({pf_error_string(code)})"


def exit_qualification_text(q: int) -> str:
    """Decoded EPT-violation exit qualification (SDM vol. 3C Table 27-7), without the value."""
    kinds = [name for bit, name in ((EQ_READ, "read"), (EQ_WRITE, "write"), (EQ_FETCH, "fetch")) if q & bit]
    rights = "".join(c if q >> (3 + i) & 1 else "-" for i, c in enumerate("rwx"))
    if q & EQ_USER_EXECUTABLE:
        rights += "u"
    parts = ["data " + "+".join(kinds) if kinds else "no access bits", f"EPT rights {rights}"]
    if q & EQ_GLA_VALID:
        parts.append("guest linear address valid")
        parts.append("access to the final gpa" if q & EQ_FINAL else "access to a guest paging-structure entry")
    return " · ".join(parts)


def npf_text(info1: int) -> str:
    """Decoded #NPF EXITINFO1 (AMD APM vol. 2, 15.25.6), without the value."""
    code = info1 & 0xFFFF_FFFF
    kind = "protection" if code & PF_P else "not present"
    what = (
        "fault on the final gpa"
        if info1 & NPF_FINAL
        else "fault on a guest page-table access"
        if info1 & NPF_TABLE
        else "no bit 32/33"
    )
    return f"error code {pf_error_string(code)} ({kind}) · {what}"


def va_split(va: int, levels: int, page_size: int = 0, names: dict[int, str] | None = None) -> Text:
    """``0x0000_0000_0040_0000 = PML4 0 | PDPT 0 | PD 2 | PT 0 | offset 0x0``."""
    names = names or {5: "PML5", 4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}
    out = Text(f"{va:#021_x}", style="bold")
    out.append(" = ")
    leaf = {1 << 21: 2, 1 << 30: 3}.get(page_size, 1)
    for level in range(levels, leaf - 1, -1):
        out.append(f"{names[level]} {table_index(va, level)}")
        out.append(" | ", style="dim")
    off_bits = 12 + 9 * (leaf - 1)
    out.append(f"offset {va & ((1 << off_bits) - 1):#x}")
    return out


def _who(user: bool, access: str) -> str:
    return f"{'user' if user else 'supervisor'} {ACCESS_NAMES.get(access, access)}"


# --- warm marks ---------------------------------------------------------------------------------

SKIP_NAMES = {"TLB": "TLB", "PSC": "PSC", "NTLB": "NTLB", "hPSC": "host PSC"}
WARM_STYLES = {"L2": "bold green", "LLC": "bold yellow", "mem": "bold red"}
STALE_STYLE = "bold magenta"
_TABLE_NAMES = {5: "PML5", 4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}


@dataclass(frozen=True)
class WarmMark:
    """What the warm hardware does with one reference of the cold walk.

    ``ref``: the warm reference that reads the same entry (it is issued). Otherwise
    ``skipped_by`` names the structure that served it -- "TLB", "PSC" (a guest or 1D
    paging-structure cache), "NTLB", "hPSC" (a host PSC) -- or is "" when the warm walk ended
    before it or read another entry instead.
    """

    ref: WarmRef | None
    skipped_by: str = ""


def warm_marks(
    cells: dict[tuple[int, str, int], int], warm: WarmWalk
) -> tuple[dict[tuple[int, str, int], WarmMark], list[WarmRef]]:
    """Match the warm references to the cold walk's cells.

    Parameters
    ----------
    cells : dict
        ``(row, dim, level) -> entry address`` of every reference of the cold walk (``row`` as
        in :class:`WarmRef`).
    warm : WarmWalk

    Returns
    -------
    (marks, stale)
        A :class:`WarmMark` per cell, and the warm references that read an entry the cold walk
        does not (a cached entry that no longer matches the tables), in issue order.
    """
    by_cell = {(r.row, r.dim, r.level): r for r in warm.refs}
    host_start: dict[int, int] = {}
    for r in warm.refs:
        if r.dim == "h":
            host_start[r.row] = max(host_start.get(r.row, 0), r.level)
    marks: dict[tuple[int, str, int], WarmMark] = {}
    issued: set[int] = set()
    for key, addr in cells.items():
        row, dim, level = key
        ref = by_cell.get(key)
        if ref is not None and ref.addr == addr:
            marks[key] = WarmMark(ref)
            issued.add(ref.n)
        elif warm.start_level == 0:
            marks[key] = WarmMark(None, "TLB" if warm.tlb_hit else "")
        elif row > warm.start_level:
            marks[key] = WarmMark(None, "PSC")
        elif dim == "h" and row in warm.ntlb_rows:
            marks[key] = WarmMark(None, "NTLB")
        elif dim == "h" and level > host_start.get(row, level):
            marks[key] = WarmMark(None, "hPSC")
        else:
            marks[key] = WarmMark(None)
    return marks, [r for r in warm.refs if r.n not in issued]


def warm_mark_text(mark: WarmMark) -> Text:
    """``w3 · L2`` (issued third, line from the L2-like cache), ``skip · PSC``, ``not issued``."""
    if mark.ref is not None:
        return Text(f"w{mark.ref.n} · {mark.ref.source}", style=WARM_STYLES[mark.ref.source])
    if mark.skipped_by:
        return Text(f"skip · {mark.skipped_by}", style="dim")
    return Text("not issued", style="dim")


def _with_mark(cell: Text, mark: WarmMark | None) -> Text:
    """``cell`` with its warm mark on a last line, dimmed if the warm hardware does not issue it."""
    if mark is not None:
        if mark.ref is None:
            cell.stylize("dim")
        cell.append("\n")
        cell.append_text(warm_mark_text(mark))
    return cell


def _warm_outcome(warm: WarmWalk, npt: bool, cold_addr: int | None) -> Text:
    """`` → hpa 0x...`` or the fault or exit the warm translation ends in."""
    out = Text(" → ")
    phys = "PA" if warm.mode == "native" else "hpa"
    if warm.outcome == "ok":
        out.append(f"{phys} {hx(warm.addr or 0)}", style="bold")
        if cold_addr != warm.addr:
            cold = f"{phys} {hx(cold_addr)}" if cold_addr is not None else "a fault"
            out.append(f" (stale: the tables give {cold})", style=STALE_STYLE)
    elif warm.outcome == "pf":
        how = "from the TLB entry's cached rights" if warm.start_level == 0 else "for the guest"
        out.append(f"{pf_text(warm.code)} {how}", style=FAULT_STYLE)
    elif warm.outcome == "ept_violation":
        what = "#NPF" if npt else "EPT violation"
        out.append(f"{what} on gpa {hx(warm.gpa or 0)}: VM exit", style=FAULT_STYLE)
    elif warm.outcome == "ept_misconfig":
        out.append(f"EPT misconfiguration on gpa {hx(warm.gpa or 0)}: VM exit", style=FAULT_STYLE)
    elif warm.outcome == "shadow_pf":
        out.append("#PF on the shadow tables: VM exit to the VMM", style=FAULT_STYLE)
    else:
        out.append("#GP", style=FAULT_STYLE)
    if warm.outcome not in ("ok", "gp"):
        out.append(" (the handler and the retried translation are not shown)", style="dim")
    return out


def warm_summary(
    warm: WarmWalk,
    marks: dict[tuple[int, str, int], WarmMark],
    stale: list[WarmRef],
    cold_addr: int | None = None,
    npt: bool = False,
) -> list[Text]:
    """The warm summary line (plus the note, and one line per stale reference).

    ``warm at record N: TLB miss, guest PSC hit (PDE cache) ...: 3 of 24 references issued
    (L2 2, LLC 0, mem 1); skipped: guest PSC 15, NTLB 6, host PSC 0 → hpa 0x...``.
    ``cold_addr``: the cold walk's (host-)physical address, to flag a stale warm translation;
    ``npt``: name a nested exit #NPF.
    """
    nested = warm.mode == "nested"
    head = Text(f"warm at record {warm.record}: ", style="bold")
    if warm.outcome == "not_predicted":
        head.append(warm.note)
        return [head]
    if warm.tlb_hit is not None and warm.start_level == 0:
        head.append(f"TLB hit ({warm.tlb_hit}), no walk")
    elif warm.tlb_hit is not None:
        head.append(f"TLB hit ({warm.tlb_hit}), but the write walks again to set D")
    elif warm.outcome == "gp":
        head.append("non-canonical, no lookup")
    else:
        head.append("TLB miss")
    if warm.start_level:
        if warm.psc_hit is not None:
            which = "guest PSC" if nested else "PSC"
            head.append(f", {which} hit ({warm.psc_hit}): the walk starts at the {_TABLE_NAMES[warm.start_level]}")
        else:
            head.append(", no PSC hit: the walk starts at the root")
    sources = {name: sum(r.source == name for r in warm.refs) for name in WARM_STYLES}
    head.append(f"; {len(warm.refs)} of {len(marks)} references issued (")
    for k, (name, count) in enumerate(sources.items()):
        head.append((", " if k else "") + f"{name} {count}", style=WARM_STYLES[name] if count else "")
    head.append(")")
    skipped = {why: sum(m.skipped_by == why for m in marks.values()) for why in SKIP_NAMES}
    if skipped["TLB"]:
        shown = ["TLB"]
    elif nested:
        shown = ["PSC", "NTLB", "hPSC"]
    else:
        shown = ["PSC"]
    names = dict(SKIP_NAMES, PSC="guest PSC" if nested else "PSC")
    head.append("; skipped: " + ", ".join(f"{names[why]} {skipped[why]}" for why in shown))
    missing = sum(m.ref is None and not m.skipped_by for m in marks.values())
    if missing:
        head.append(f"; not issued {missing}")
    if stale:
        head.append(f"; {len(stale)} not in the cold walk", style=STALE_STYLE)
    head.append_text(_warm_outcome(warm, npt, cold_addr))
    lines = [head]
    if warm.note:
        lines.append(Text(f"  {warm.note}", style="dim"))
    for r in stale:
        dim = "" if not nested else ("host " if r.dim == "h" else "guest ")
        where = "PA" if warm.mode == "native" else "hpa"
        lines.append(
            Text(
                f"  w{r.n} · {r.source}: {dim}{LEVEL_NAMES[r.level]} at {where} {hx(r.addr)} is not in the cold walk: "
                "a cached entry no longer matches the tables",
                style=STALE_STYLE,
            )
        )
    return lines


def _warm_parts(
    warm: WarmWalk | None, cells: dict[tuple[int, str, int], int], cold_addr: int | None, npt: bool = False
) -> tuple[dict[tuple[int, str, int], WarmMark] | None, list[Text]]:
    """The marks of the cold walk's ``cells`` and the summary lines (None and [] when cold)."""
    if warm is None:
        return None, []
    if warm.outcome == "not_predicted":
        return None, warm_summary(warm, {}, [])
    marks, stale = warm_marks(cells, warm)
    return marks, warm_summary(warm, marks, stale, cold_addr, npt)


def _warm_legend(nested: bool) -> Text:
    served = "TLB/PSC/NTLB/hPSC = served by the TLB, a guest PSC, the nested TLB, a host PSC"
    if not nested:
        served = "TLB/PSC = served by the TLB, a paging-structure cache"
    t = Text(
        "warm: w<n> · L2/LLC/mem = the warm hardware issues it n-th, its line from the L2-like or LLC-like "
        f"walk-line cache or memory · skip · {served} · not issued = the warm walk ends first or reads another entry"
    )
    t.stylize("dim")
    return t


# --- 1D ---------------------------------------------------------------------------------------


def _entry_rows(
    entries: list[EntryRead],
    va: int,
    fault_n: int | None,
    addr_of: dict[int, int] | None = None,
    marks: dict[int, WarmMark] | None = None,
) -> list[list[Any]]:
    """Rows of the 1D entry table (shared by the 1D view and the guest side of the 2D view).

    ``marks``: the warm mark of each entry by its number; adds a last cell per row.
    """
    rows = []
    for e in entries:
        changed = _ad_changes(e, ept=False)
        hi, lo = va_bits(e.level)
        v = e.before
        if not v & 1:
            points = Text("not present", style=FAULT_STYLE)
        elif _is_leaf(v, e.level):
            size = 1 << (12 + 9 * (e.level - 1))
            points = Text(f"{_SHORT_PAGE[size]} page {hx(v & _ADDR & ~(size - 1))}")
        else:
            points = Text(f"table {hx(v & _ADDR)}")
        bad = e.n == fault_n
        addr = hx(addr_of[e.n]) if addr_of else hx(e.addr)
        row: list[Any] = [
            Text(("✘ " if bad else "") + f"#{e.n}", style=FAULT_STYLE if bad else "bold"),
            Text(LEVEL_NAMES[e.level], style=FAULT_STYLE if bad else ""),
            f"{hi}:{lo}",
            str(table_index(va, e.level)),
            addr,
            hx(v),
            pte_flags(v, changed),
            points,
        ]
        if marks is not None:
            row.append(warm_mark_text(marks[e.n]))
        rows.append(row)
    return rows


def _entry_table(
    rows: list[list[Any]], addr_header: str, title: str | None = None, dim_rows: set[int] | None = None
) -> Table:
    """The entry table; a ninth cell per row adds the ``warm`` column, ``dim_rows`` are dimmed."""
    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, collapse_padding=True)
    t.add_column("ref", justify="right", no_wrap=True)
    t.add_column("entry", no_wrap=True)
    t.add_column("VA bits", justify="right", no_wrap=True)
    t.add_column("index", justify="right", no_wrap=True)
    t.add_column(addr_header, no_wrap=True)
    t.add_column("value", no_wrap=True)
    t.add_column("flags")
    t.add_column("points to")
    if any(len(r) > 8 for r in rows):
        t.add_column("warm", no_wrap=True)
    for i, r in enumerate(rows):
        t.add_row(*r, style="dim" if dim_rows and i in dim_rows else None)
    return t


def _legend(nested: bool, npt: bool = False) -> Text:
    t = Text("legend: #n issue order · ")
    if nested:
        t.append("cell: entry hpa, " + ("NPT flags" if npt else "EPT rights") + " · ")
    t.append("+A/+D set by this walk · ✘ fault")
    if nested:
        t.append(" · · not reached")
    t.stylize("dim")
    return t


def walk_1d_renderable(view: WalkView1D) -> Group:
    """The 1D walk of ``view``: header, entry table, legend and verdict."""
    head = Text(f"mmu walk — native, {view.levels}-level paging, CR3 {hx(view.cr3)}", style="bold")
    parts: list[Any] = [head]
    if view.context:
        parts.append(Text(view.context, style="dim"))
    what = Text(f"{_who(view.user, view.access)} of VA ")
    what.append_text(va_split(view.va, view.levels, _leaf_size(view.entries)))
    parts.append(what)
    fault_n = view.entries[-1].n if view.fault == "pf" and view.entries else None
    cells = {(e.level, "g", e.level): e.addr for e in view.entries}
    by_cell, warm_lines = _warm_parts(view.warm, cells, view.pa)
    marks = None if by_cell is None else {e.n: by_cell[(e.level, "g", e.level)] for e in view.entries}
    rows = _entry_rows(list(view.entries), view.va, fault_n, marks=marks)
    dim_rows = {i for i, e in enumerate(view.entries) if marks is not None and marks[e.n].ref is None}
    if view.fault is None and view.pa is not None:
        off_bits = view.page_size.bit_length() - 1
        rows.append(
            [
                Text("→", style="bold"),
                "offset",
                f"{off_bits - 1}:0",
                hx(view.va & (view.page_size - 1)),
                Text(hx(view.pa), style="bold"),
                "",
                "",
                Text("data"),
                *([""] if marks is not None else []),
            ]
        )
    if view.entries:
        parts.append(_entry_table(rows, "entry PA", dim_rows=dim_rows))
    parts.extend(warm_lines)
    parts.append(_legend(nested=False))
    if marks is not None:
        parts.append(_warm_legend(nested=False))
    parts.append(_verdict_1d(view))
    return Group(*parts)


def _verdict_1d(view: WalkView1D) -> Text:
    who = _who(view.user, view.access)
    if view.fault == "gp":
        bits = "63:56" if view.levels == 5 else "63:47"
        return Text(f"✘ #GP: VA {view.va:#x} is not canonical (bits {bits} must be equal)", style=FAULT_STYLE)
    if view.fault == "pf":
        last = view.entries[-1].level if view.entries else None
        cause = pf_cause(view.error_code, view.attrs, view.access, view.user, last)
        return Text(f"✘ {pf_text(view.error_code)}: {cause} ({who})", style=FAULT_STYLE)
    rights = ["user" if view.attrs & TA_US else "supervisor", "read/write" if view.attrs & TA_RW else "read-only"]
    if view.attrs & TA_XD:
        rights.append("no-execute")
    out = Text(f"✔ {who} allowed: ", style="bold green")
    out.append(f"VA {hx(view.va)} → PA ")
    out.append(hx(view.pa or 0), style="bold")
    out.append(f", {PAGE_NAMES[view.page_size]} page ({', '.join(rights)})")
    return out


# --- 2D ---------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One row of the 2D grid: the gpa translated by the host columns, then the guest entry."""

    level: int  # guest level, or 0 for the data row
    gpa: int | None  # the gpa the host walk translates (guest entry gpa, or the data gpa)
    host: dict[int, EntryRead]
    guest: EntryRead | None
    reached: bool


def grid_rows(view: WalkView2D) -> list[_Row]:
    """The rows of the 2D grid, guest levels top down and then the data row.

    Every reference of ``view.entries`` lands in exactly one cell, so reading the cells row by
    row (host levels left to right, then the guest entry) gives the hardware order. Rows the
    walk never reached (after a fault) are included with ``reached=False``; levels below a
    guest large-page leaf are left out.
    """
    rows: list[_Row] = []
    host: dict[int, EntryRead] = {}
    base = view.gcr3 & _ADDR
    level = view.glevels
    leaf: EntryRead | None = None
    for e in view.entries:
        if e.dim == "h":
            host[e.level] = e
            continue
        rows.append(_Row(e.level, base + 8 * table_index(view.gva, e.level), host, e, True))
        host = {}
        level = e.level - 1
        if e.before & 1 and _is_leaf(e.before, e.level):
            leaf = e
        else:
            base = e.before & _ADDR
    if leaf is not None:
        size = 1 << (12 + 9 * (leaf.level - 1))
        data_gpa = (leaf.before & _ADDR & ~(size - 1)) | (view.gva & (size - 1))
        rows.append(_Row(0, data_gpa, host, None, bool(host) or view.fault is None))
        return rows
    if view.fault not in (None, "pf", "gp") and level >= 1:
        # a host fault while translating the gpa of the next guest entry
        rows.append(_Row(level, base + 8 * table_index(view.gva, level), host, None, True))
        level -= 1
    rows.extend(_Row(lv, None, {}, None, False) for lv in range(level, 0, -1))
    rows.append(_Row(0, None, {}, None, False))
    return rows


def _fault_ref(view: WalkView2D) -> int | None:
    """Number of the reference the fault is charged to (None: no reference, e.g. #GP)."""
    if view.fault is None or not view.entries:
        return None
    last = view.entries[-1]
    if view.fault in ("pf", "npf") or last.dim == "h":
        return last.n
    # an EPT violation with a guest entry last: a guest A/D update the EPT does not allow;
    # charge it to the guest entry whose gpa faulted
    for row in grid_rows(view):
        if row.guest is not None and row.gpa == view.gpa:
            return row.guest.n
    return last.n


def _cell(e: EntryRead | None, ept: bool, fault_n: int | None, guest: bool, mark: WarmMark | None = None) -> Text:
    if e is None:
        return Text("")
    bad = e.n == fault_n
    t = Text(f"#{e.n}", style=FAULT_STYLE if bad else "bold")
    if bad:
        t.append(" ✘", style=FAULT_STYLE)
    t.append_text(_marks(e, ept and not guest))
    t.append("\n" + hx(e.addr), style=FAULT_STYLE if bad else "")
    t.append("\n")
    if guest or not ept:
        if not e.before & 1:
            t.append("not present", style=FAULT_STYLE)
        else:
            t.append_text(pte_flags(e.before & ~(0x60 | 0xF << 59)))  # A/D: marks on line 1
            if _is_leaf(e.before, e.level) and (e.level > 1 or not guest):
                t.append(" " + {1: "4K", 2: "2M", 3: "1G"}[e.level])
    else:
        t.append_text(ept_flags(e.before & ~0x300, e.level))
    return _with_mark(t, mark)


def walk_2d_renderable(view: WalkView2D) -> Group:
    """The 2D walk of ``view``: header, the reference grid, the guest entries, legend, verdict."""
    ept = not view.npt
    host_name = "NPT" if view.npt else "EPT"
    head = Text(
        f"mmu walk — nested paging: {'AMD NPT' if view.npt else 'Intel EPT'}, {view.hlevels} levels"
        + ("" if view.npt else f", A/D {'on' if view.ept_ad else 'off'}")
        + f" · {view.glevels}-level guest · gCR3 {hx(view.gcr3)} · {'nCR3' if view.npt else 'EPTP'} {hx(view.eptp)}",
        style="bold",
    )
    parts: list[Any] = [head]
    if view.context:
        parts.append(Text(view.context, style="dim"))
    what = Text(f"{_who(view.user, view.access)} of gVA ")
    what.append_text(va_split(view.gva, view.glevels, _guest_page_size(view)))
    parts.append(what)
    if view.fault == "gp" and not view.entries:
        parts.append(_verdict_2d(view))
        return Group(*parts)

    fault_n = _fault_ref(view)
    n = len(view.entries)
    nh = sum(e.dim == "h" for e in view.entries)
    grid_body = grid_rows(view)
    cells = {(r.level, "h", lv): e.addr for r in grid_body for lv, e in r.host.items()}
    cells.update({(r.level, "g", r.level): r.guest.addr for r in grid_body if r.guest is not None})
    marks, warm_lines = _warm_parts(view.warm, cells, view.hpa, view.npt)
    grid = Table(
        box=box.ROUNDED,
        show_lines=True,
        caption=f"{n} references: {nh} host + {n - nh} guest",
        caption_justify="left",
    )
    grid.add_column("guest level", no_wrap=True)
    for lv in range(view.hlevels, 0, -1):
        grid.add_column(f"{host_name} {LEVEL_NAMES[lv]}", no_wrap=True)
    grid.add_column("guest entry", no_wrap=True)
    for row in grid_body:
        if row.level:
            hi, lo = va_bits(row.level)
            label = Text(f"g{LEVEL_NAMES[row.level]}", style="bold")
            label.append(f"\nidx {table_index(view.gva, row.level)} ({hi}:{lo})")
        else:
            label = Text("data", style="bold")
            label.append(f"\noffset {view.gva & (_guest_page_size(view) - 1):#x}" if _guest_page_size(view) else "\n")
        label.append("\ngpa " + (hx(row.gpa) if row.gpa is not None else "—"))
        if not row.reached:
            label.stylize("dim")
            dots = [Text("·", style="dim") for _ in range(view.hlevels + 1)]
            grid.add_row(label, *dots)
            continue
        host_cells = [
            _cell(row.host.get(lv), ept, fault_n, False, marks.get((row.level, "h", lv)) if marks else None)
            for lv in range(view.hlevels, 0, -1)
        ]
        if row.level:
            last = _cell(row.guest, ept, fault_n, True, marks.get((row.level, "g", row.level)) if marks else None)
        elif view.hpa is not None:
            last = Text("data access", style="bold")
            last.append("\nhpa " + hx(view.hpa), style="bold")
            last.append(f"\n{PAGE_NAMES.get(view.page_size, '?')} page")
        else:
            last = Text("")
        grid.add_row(label, *host_cells, last)
    parts.append(grid)
    parts.extend(warm_lines)

    guest_entries = [e for e in view.entries if e.dim == "g"]
    if guest_entries:
        gpa_of = {r.guest.n: r.gpa for r in grid_body if r.guest is not None and r.gpa is not None}
        g_fault = fault_n if fault_n is not None and fault_n in gpa_of else None
        rows = _entry_rows(guest_entries, view.gva, g_fault, gpa_of)
        parts.append(_entry_table(rows, "entry gpa", title="guest entries (hpa in the grid)"))
    parts.append(_legend(nested=True, npt=view.npt))
    if marks is not None:
        parts.append(_warm_legend(nested=True))
    parts.append(_verdict_2d(view))
    return Group(*parts)


def _leaf_size(entries: tuple[EntryRead, ...]) -> int:
    """Page size the guest (or 1D) leaf entry among ``entries`` maps; 0 if no leaf was read."""
    for e in entries:
        if e.dim == "g" and e.before & 1 and _is_leaf(e.before, e.level):
            return 1 << (12 + 9 * (e.level - 1))
    return 0


def _guest_page_size(view: WalkView2D) -> int:
    return _leaf_size(view.entries)


def _verdict_2d(view: WalkView2D) -> Text:
    who = _who(view.user, view.access)
    if view.fault == "gp":
        bits = "63:56" if view.glevels == 5 else "63:47"
        return Text(f"✘ #GP: gVA {view.gva:#x} is not canonical (bits {bits} must be equal)", style=FAULT_STYLE)
    if view.fault == "pf":
        g = [e for e in view.entries if e.dim == "g"]
        cause = pf_cause(view.error_code, view.attrs, view.access, view.user, g[-1].level if g else None)
        msg = f"✘ guest {pf_text(view.error_code)}: {cause} ({who}); the guest handles it, no VM exit"
        return Text(msg, style=FAULT_STYLE)
    if view.fault in ("ept_violation", "ept_misconfig", "npf"):
        where = f"gpa {hx(view.gpa)}" if view.gpa is not None else "a gpa"
        last = view.entries[-1] if view.entries else None
        why = ""
        if last is not None and last.dim == "h":
            present = bool(last.before & 1) if view.npt else bool(last.before & 0x7 or last.before >> 10 & 1)
            host = "NPT" if view.npt else "EPT"
            why = f" ({host} {LEVEL_NAMES[last.level]} not present)" if not present else ""
        q = view.exit_qualification
        if view.fault == "npf":
            out = Text(f"✘ #VMEXIT(NPF) on {where}{why}, EXITINFO1 {hx(q)}", style=FAULT_STYLE)
            out.append(f"\n  EXITINFO1: {npf_text(q)}", style="dim")
        elif view.fault == "ept_misconfig":
            out = Text(f"✘ EPT misconfiguration on {where}: VM exit (no exit qualification)", style=FAULT_STYLE)
        else:
            out = Text(f"✘ EPT violation on {where}{why}: VM exit, exit qualification {q:#x}", style=FAULT_STYLE)
            out.append(f"\n  exit qualification: {exit_qualification_text(q)}", style="dim")
        return out
    gsize = _guest_page_size(view)
    out = Text(f"✔ {who} allowed: ", style="bold green")
    out.append(f"gVA {hx(view.gva)} → gpa {hx(view.gpa or 0)} → hpa ")
    out.append(hx(view.hpa or 0), style="bold")
    out.append(f" (guest {_SHORT_PAGE.get(gsize, '?')}")
    hleaf = [e for e in view.entries if e.dim == "h"]
    if hleaf:
        out.append(f", host {_SHORT_PAGE.get(1 << (12 + 9 * (hleaf[-1].level - 1)), '?')}")
    out.append(f" page → {_SHORT_PAGE.get(view.page_size, '?')} translation)")
    return out


# --- shadow -----------------------------------------------------------------------------------

#: what a VM exit of each reason does, as the shadow view's verdict says it
SHADOW_EXITS = {
    "hidden_fault": "hidden fault: the guest maps it, the shadow does not (yet); the VMM walks the guest "
    "tables, fills the shadow path and resumes the guest",
    "pf_inject": "a true guest fault: the VMM's walk of the guest tables faults too, so it injects the "
    "#PF into the guest",
    "ad_dirty": "first write through a clean guest entry: the VMM sets the guest's D flag and makes the "
    "shadow entry writable",
    "wp_unsync": "a write to a frame that holds a shadowed leaf table: the VMM lets that table go unsync "
    "and the write proceed",
    "tracing_write": "a write to a write-tracked guest table (upper level, or unsync off): the VMM "
    "emulates it and zaps the entry it changed in every shadow",
}


@dataclass(frozen=True)
class ShadowPage:
    """One shadow page (a row of the shadow MMU's ``spt``) as :func:`walk_shadow_renderable` shows it.

    Attributes
    ----------
    sp : int
        Its row in ``spt``.
    gfn : int
        Guest frame it shadows (direct: first guest frame of the large page it splits).
    level : int
        Level of the table it holds (its role's level).
    direct : bool
        It splits a guest large page and shadows no guest table (role.direct, ``SPF_DIRECT``).
    access : int
        TA_RW | TA_US | TA_XD rights inherited from the guest entries above (role.access).
    cr0_wp, nxe : bool
        The role's CR0.WP and EFER.NXE bits.
    unsync : bool
        Its guest table may be written freely until the guest's next INVLPG or flush (``SPF_UNSYNC``).
    invalid : bool
        Zapped while the root cache still refers to it (``SPF_INVALID``).
    """

    sp: int
    gfn: int
    level: int
    direct: bool
    access: int
    cr0_wp: bool
    nxe: bool
    unsync: bool
    invalid: bool


@dataclass(frozen=True)
class ShadowRow:
    """One level of the shadow view: the guest entry beside the shadow entry the hardware reads.

    ``None`` fields: that side's walk did not reach this level (it stopped above, or the guest
    maps a large page here and the shadow splits it).

    Attributes
    ----------
    level : int
        5..1.
    guest_gpa, guest_value : int | None
        Guest-physical address of the guest entry and its value.
    guest_table_wp : bool
        The guest table's frame is write-protected: shadow pages keep it read-only
        (``gfs[gfn, GF_WP] > 0``), so a guest store to it traps.
    guest_table_tracked : bool
        Stores to that frame are emulated (tracing) rather than letting it go unsync.
    shadow_hpa, shadow_value : int | None
        Host-physical address of the shadow entry and its value.
    shadow_page : ShadowPage | None
        The shadow page holding that entry.
    """

    level: int
    guest_gpa: int | None
    guest_value: int | None
    guest_table_wp: bool
    guest_table_tracked: bool
    shadow_hpa: int | None
    shadow_value: int | None
    shadow_page: ShadowPage | None


@dataclass(frozen=True)
class WalkViewShadow:
    """Everything :func:`walk_shadow_renderable` shows: the guest walk and the shadow walk of ``gva``.

    Attributes
    ----------
    gcr3 : int
        The guest's CR3 (root gpa | PCID).
    cr3 : int
        The hardware CR3 the VMM loaded: the shadow root's hpa | PCID.
    guest_fault : None | "pf" | "gp"
        Outcome of the guest walk (the VMM's software walk: what the guest's tables say).
    guest_error_code, guest_attrs, guest_gpa, guest_page_size
        #PF error code, or the combined rights, gpa and page size of the guest translation.
    shadow_fault : None | "pf" | "gp"
        Outcome of the hardware walk of the shadow tables.
    shadow_error_code, shadow_hpa, shadow_page_size
        The same for the shadow translation.
    backing_hpa : int | None
        Where the VMM backs ``guest_gpa`` (None: not backed yet, or no guest translation); a
        shadow translation elsewhere is stale.
    shadow_gpa : int | None
        The guest-physical address the shadow translation's host frame backs (reverse map).
    exit_reason : str | None
        The VM exit this access would take on a TLB miss (a key of :data:`SHADOW_EXITS`), or None
        when the hardware completes it from the shadow tables (or a #GP ends it first).
    """

    gva: int
    gcr3: int
    cr3: int
    access: str
    user: bool
    levels: int
    rows: tuple[ShadowRow, ...]
    guest_fault: str | None
    guest_error_code: int
    guest_attrs: int
    guest_gpa: int | None
    guest_page_size: int
    shadow_fault: str | None
    shadow_error_code: int
    shadow_hpa: int | None
    shadow_page_size: int
    backing_hpa: int | None
    shadow_gpa: int | None
    exit_reason: str | None
    context: str = ""
    warm: WarmWalk | None = None


def _shadow_page(sh: tuple, table_hpa: int) -> ShadowPage | None:
    from mmu.modes.shadow import shadow_page_at

    info = shadow_page_at(sh, table_hpa)
    return ShadowPage(**info) if info is not None else None


def capture_shadow(machine: Any, va: int, access: str = "r", user: bool = True, context: str = "") -> WalkViewShadow:
    """A :class:`WalkViewShadow` of ``va`` in the current process of a shadow-mode ``machine``.

    Two walks, both read-only (no A/D flag is set, nothing in the shadow MMU changes): the VMM's
    software walk of the guest's tables (guest-physical, read through the memslot view), and the
    hardware's walk of the shadow tables from the shadow root. ``machine`` is an
    :class:`mmu.engine.Machine` in shadow mode whose guest has run a process; MMUInputError otherwise.
    """
    import numpy as np

    from mmu.errors import MMUInputError
    from mmu.guest.os import O_CUR, P_PCID, P_ROOT
    from mmu.memory import mem_read
    from mmu.modes.native import C_CTL, C_MAXPHYADDR, C_PKRU
    from mmu.modes.shadow import SM_LEVELS, frame_protection, predict_exit, sh_root_hpa
    from mmu.modes.vmm import vm_gpa_of, vm_hpa
    from mmu.x86.bits import CTL_USER, WALK_OK
    from mmu.x86.walk import MAX_LEVELS, TR_COLS, TR_ENTRY_PA, TR_NEXT, check_walk_args, to_int64, walk_core

    if machine.config.mode != "shadow":
        raise MMUInputError(f"the shadow walk view needs a machine in shadow mode, not {machine.config.mode!r}")
    acc = check_walk_args(access, machine.config.maxphyaddr, 0)
    sh, mem, cfg = machine.sh, machine.mem.state, machine.cfg
    row = int(machine.osst.ometa[O_CUR])
    if row < 0 or sh.roots[0, 1] < 0:
        raise MMUInputError("no shadow root yet: the guest has not run a process")
    groot = int(machine.osst.procs[row, P_ROOT])
    pcid = int(machine.osst.procs[row, P_PCID])
    root_hpa = int(sh_root_hpa(sh))
    levels = int(sh.smeta[SM_LEVELS])
    va64 = to_int64(va)

    def read(hpa: int) -> int:
        return int(mem_read(mem, np.int64(hpa)))

    def walk(root: int, xlate: Any) -> tuple[int, int, int, int, int, np.ndarray]:
        trail = np.zeros((MAX_LEVELS, TR_COLS), dtype=np.int64)
        args = (
            mem, np.int64(root), np.int64(levels), np.int64(TA_RW | TA_US), np.int64(va64), np.int64(acc),
            np.int64(int(cfg[C_CTL]) | (CTL_USER if user else 0)), np.int64(cfg[C_PKRU]),
            np.int64(cfg[C_MAXPHYADDR]), trail, False,
        )  # fmt: skip
        fmap = xlate[0] if xlate is not None else trail[0, :0]  # the memslot map (gfn -> hfn)
        st, code, pa, shift, attrs, n = walk_core(*args, fmap, xlate is not None)
        return int(st), int(code), int(pa), int(shift), int(attrs), trail[: int(n)]

    rows: list[ShadowRow] = []
    outcome: dict[str, Any] = {
        "guest_fault": "gp", "guest_error_code": 0, "guest_attrs": 0, "guest_gpa": None, "guest_page_size": 0,
        "shadow_fault": "gp", "shadow_error_code": 0, "shadow_hpa": None, "shadow_page_size": 0,
        "backing_hpa": None, "shadow_gpa": None, "exit_reason": None,
    }  # fmt: skip
    if (va64 >> (56 if levels == 5 else 47)) in (0, -1):  # else not canonical: #GP, no walk
        gst, gcode, gpa, gshift, gattrs, gtrail = walk(groot, machine.vm)
        sst, scode, hpa, sshift, _sattrs, strail = walk(root_hpa, None)
        guest: dict[int, tuple[int, int]] = {}  # level -> (entry gpa, value)
        base = groot
        for i, level in enumerate(range(levels, levels - len(gtrail), -1)):
            egpa = base + 8 * table_index(va, level)
            ehpa = int(gtrail[i, TR_ENTRY_PA])
            guest[level] = (egpa, read(ehpa) if ehpa >= 0 else 0)
            base = int(gtrail[i, TR_NEXT])
        shadow = {
            levels - i: (int(strail[i, TR_ENTRY_PA]), read(int(strail[i, TR_ENTRY_PA]))) for i in range(len(strail))
        }
        for level in range(levels, levels - max(len(gtrail), len(strail)), -1):
            g = guest.get(level)
            s = shadow.get(level)
            wp, tracked = frame_protection(sh, g[0] >> 12) if g else (False, False)
            rows.append(
                ShadowRow(
                    level=level,
                    guest_gpa=g[0] if g else None,
                    guest_value=g[1] if g else None,
                    guest_table_wp=wp,
                    guest_table_tracked=tracked,
                    shadow_hpa=s[0] if s else None,
                    shadow_value=s[1] if s else None,
                    shadow_page=_shadow_page(sh, s[0] & ~0xFFF) if s else None,
                )
            )
        guest_ok, shadow_ok = gst == WALK_OK, sst == WALK_OK
        backing = int(vm_hpa(machine.vm, np.int64(gpa))) if guest_ok else -1
        shadow_gpa = int(vm_gpa_of(machine.vm, np.int64(hpa))) if shadow_ok else -1
        outcome = {
            "guest_fault": None if guest_ok else "pf",
            "guest_error_code": gcode,
            "guest_attrs": gattrs,
            "guest_gpa": gpa if guest_ok else None,
            "guest_page_size": 1 << gshift if guest_ok else 0,
            "shadow_fault": None if shadow_ok else "pf",
            "shadow_error_code": scode,
            "shadow_hpa": hpa if shadow_ok else None,
            "shadow_page_size": 1 << sshift if shadow_ok else 0,
            "backing_hpa": backing if backing >= 0 else None,
            "shadow_gpa": shadow_gpa if shadow_ok and shadow_gpa >= 0 else None,
            "exit_reason": predict_exit(sh, access, guest_ok, shadow_ok, shadow, gpa),
        }
    return WalkViewShadow(
        gva=int(va) & ((1 << 64) - 1),
        gcr3=groot | pcid,
        cr3=root_hpa | pcid,
        access=access,
        user=bool(user),
        levels=levels,
        rows=tuple(rows),
        context=context,
        **outcome,
    )


WP_STYLE = "bold yellow"
UNSYNC_STYLE = "bold magenta"
DIRECT_STYLE = "bold cyan"


def _rights(access: int) -> str:
    """``W U XD``-style names of TA_RW / TA_US / TA_XD rights (``R`` for read-only, ``S`` supervisor)."""
    return " ".join(
        [
            "W" if access & TA_RW else "R",
            "U" if access & TA_US else "S",
            *(["XD"] if access & TA_XD else []),
        ]
    )


def _shadow_entry_cell(
    hpa: int | None, value: int | None, stop: bool, exit_reason: str | None, mark: WarmMark | None = None
) -> Text:
    if hpa is None or value is None:
        return Text("·", style="dim")
    t = Text(f"hpa {hx(hpa)}", style=FAULT_STYLE if stop else "bold")
    if stop:
        t.append(" ✘", style=FAULT_STYLE)
    t.append(f"\n{hx(value)}\n")
    t.append_text(pte_flags(value) if value & 1 else Text("not present", style=FAULT_STYLE))
    if stop and exit_reason:
        t.append(f"\n→ VM exit {exit_reason}", style=FAULT_STYLE)
    return _with_mark(t, mark)


def _shadow_page_cell(p: ShadowPage | None) -> Text:
    if p is None:
        return Text("")
    t = Text(f"sp {p.sp} · L{p.level} · ")
    t.append(f"splits gfn {hx(p.gfn)}.." if p.direct else f"shadows gfn {hx(p.gfn)}")
    t.append(f"\nrole access {_rights(p.access)}")
    t.append(f"{' · wp' if p.cr0_wp else ''}{' · nxe' if p.nxe else ''}", style="dim")
    marks = [
        ("direct", DIRECT_STYLE, p.direct),
        ("unsync", UNSYNC_STYLE, p.unsync),
        ("zapped (root cache only)", FAULT_STYLE, p.invalid),
    ]
    shown = [(name, style) for name, style, on in marks if on]
    if shown:
        t.append("\n")
        for k, (name, style) in enumerate(shown):
            t.append((" · " if k else "") + name, style=style)
    return t


def _guest_cells(r: ShadowRow, leaf_level: int | None, fault_level: int | None) -> tuple[Text, Text]:
    """(guest entry, guest table frame) cells of one level."""
    if r.guest_gpa is None or r.guest_value is None:
        if leaf_level is not None and r.level < leaf_level:
            size = _SHORT_PAGE[1 << (12 + 9 * (leaf_level - 1))]
            return Text(f"(inside the guest's {size} page)", style="dim"), Text("")
        return Text("·", style="dim"), Text("")
    bad = r.level == fault_level
    v = r.guest_value
    entry = Text(f"gpa {hx(r.guest_gpa)}", style=FAULT_STYLE if bad else "bold")
    if bad:
        entry.append(" ✘", style=FAULT_STYLE)
    entry.append(f"\n{hx(v)}\n")
    entry.append_text(pte_flags(v) if v & 1 else Text("not present", style=FAULT_STYLE))
    frame = Text(f"gfn {hx(r.guest_gpa >> 12)}\n")
    if r.guest_table_wp:
        frame.append("write-protected", style=WP_STYLE)
        frame.append("\nstores emulated" if r.guest_table_tracked else "\nstore → unsync", style="dim")
    else:
        frame.append("writable", style="dim")
    return entry, frame


def walk_shadow_renderable(view: WalkViewShadow) -> Group:
    """The shadow view of ``view``: the guest walk beside the shadow walk, level by level."""
    head = Text(
        f"mmu walk — shadow paging, {view.levels}-level · guest CR3 {hx(view.gcr3)} · "
        f"hardware CR3 {hx(view.cr3)} (shadow root)",
        style="bold",
    )
    parts: list[Any] = [head]
    if view.context:
        parts.append(Text(view.context, style="dim"))
    what = Text(f"{_who(view.user, view.access)} of gVA ")
    what.append_text(va_split(view.gva, view.levels, view.guest_page_size))
    parts.append(what)
    if view.guest_fault == "gp":
        bits = "63:56" if view.levels == 5 else "63:47"
        parts.append(
            Text(f"✘ #GP: gVA {view.gva:#x} is not canonical (bits {bits} must be equal); no walk", style=FAULT_STYLE)
        )
        return Group(*parts)

    g_levels = [r.level for r in view.rows if r.guest_gpa is not None]
    s_levels = [r.level for r in view.rows if r.shadow_hpa is not None]
    g_last = min(g_levels) if g_levels else None
    s_last = min(s_levels) if s_levels else None
    leaf_level = g_last if view.guest_fault is None else None
    cells = {(r.level, "g", r.level): r.shadow_hpa for r in view.rows if r.shadow_hpa is not None}
    marks, warm_lines = _warm_parts(view.warm, cells, view.shadow_hpa)
    t = Table(box=box.ROUNDED, show_lines=True)
    t.add_column("level", no_wrap=True)
    t.add_column("guest entry (gpa)", no_wrap=True)
    t.add_column("guest table", no_wrap=True)
    t.add_column("shadow entry (hpa)", no_wrap=True)
    t.add_column("shadow page")
    for r in view.rows:
        hi, lo = va_bits(r.level)
        label = Text(LEVEL_NAMES[r.level], style="bold")
        label.append(f"\nidx {table_index(view.gva, r.level)}\n({hi}:{lo})")
        entry, frame = _guest_cells(r, leaf_level, g_last if view.guest_fault else None)
        s_stop = view.shadow_fault is not None and r.level == s_last
        mark = marks.get((r.level, "g", r.level)) if marks else None
        shadow = _shadow_entry_cell(r.shadow_hpa, r.shadow_value, s_stop, view.exit_reason, mark)
        t.add_row(label, entry, frame, shadow, _shadow_page_cell(r.shadow_page))
    g_page = Text("")
    if view.guest_gpa is not None:
        g_page = Text(f"gpa {hx(view.guest_gpa)}", style="bold")
        g_page.append(f"\n{_SHORT_PAGE[view.guest_page_size]} page")
    s_page = Text("")
    if view.shadow_hpa is not None:
        s_page = Text(f"hpa {hx(view.shadow_hpa)}", style="bold")
        s_page.append(f"\n{_SHORT_PAGE[view.shadow_page_size]} page")
    check = Text("")
    if view.shadow_hpa is not None:
        stale = view.guest_gpa is None or view.backing_hpa != view.shadow_hpa
        if stale:
            check = Text("stale", style=UNSYNC_STYLE)
            if view.shadow_gpa is not None:
                check.append(f": maps gpa {hx(view.shadow_gpa)}")
        else:
            check = Text("✔ backs the guest's gpa", style="green")
    t.add_row(Text("page", style="bold"), g_page, Text(""), s_page, check)
    parts.append(t)
    parts.extend(warm_lines)
    legend = Text(
        "legend: write-protected: shadow pages keep this guest table read-only, so guest stores to it trap · "
        "unsync: the shadow page lets its guest table be written, resynced at INVLPG or a flush · "
        "direct: splits a guest large page · role access: rights inherited from the entries above · "
        "✘ where a walk stops · · not reached"
    )
    legend.stylize("dim")
    parts.append(legend)
    if marks is not None:
        parts.append(_warm_legend(nested=False))
    parts.extend(_verdict_shadow(view, len(s_levels)))
    return Group(*parts)


def _verdict_shadow(view: WalkViewShadow, shadow_refs: int) -> list[Text]:
    who = _who(view.user, view.access)
    if view.guest_fault == "pf":
        last = min((r.level for r in view.rows if r.guest_gpa is not None), default=None)
        cause = pf_cause(view.guest_error_code, view.guest_attrs, view.access, view.user, last)
        guest = Text(f"guest tables: ✘ {pf_text(view.guest_error_code)}: {cause}", style=FAULT_STYLE)
    else:
        guest = Text(f"guest tables: ✔ {who} allowed, gVA {hx(view.gva)} → gpa {hx(view.guest_gpa or 0)}")
        if view.backing_hpa is not None:
            guest.append(f" (backed at hpa {hx(view.backing_hpa)})")
    if view.shadow_fault == "pf":
        s_last = min((r.level for r in view.rows if r.shadow_hpa is not None), default=None)
        if view.shadow_error_code & PF_P:
            why = f"the shadow entries do not allow a {_who(view.user, view.access)}"
        else:
            why = f"not present at the {LEVEL_NAMES.get(s_last or 0, '?')} level"
        shadow = Text(f"shadow tables: ✘ #PF ({why})", style=FAULT_STYLE)
    else:
        shadow = Text(f"shadow tables: ✔ gVA {hx(view.gva)} → hpa ")
        shadow.append(hx(view.shadow_hpa or 0), style="bold")
    out = [guest, shadow]
    if view.exit_reason is None:
        verdict = Text(
            f"✔ on a TLB miss the hardware walks the shadow tables ({shadow_refs} references) and fills the TLB: "
            "no VM exit",
            style="bold green",
        )
        if view.guest_gpa is None or view.backing_hpa != view.shadow_hpa:
            verdict.append(
                "\n  the shadow entry is stale (the guest changed its tables without INVLPG; an unsync table may "
                "lag until the guest's INVLPG or TLB flush, as a TLB may)",
                style=UNSYNC_STYLE,
            )
    else:
        verdict = Text(f"✘ VM exit {view.exit_reason}: {SHADOW_EXITS[view.exit_reason]}", style=FAULT_STYLE)
        if view.exit_reason == "pf_inject":
            verdict.append(f" ({pf_text(view.guest_error_code)})")
    out.append(verdict)
    return out


def walk_renderable(view: WalkView1D | WalkView2D | WalkViewShadow) -> Group:
    """:func:`walk_1d_renderable`, :func:`walk_2d_renderable` or :func:`walk_shadow_renderable`, by the
    kind of ``view``."""
    if isinstance(view, WalkViewShadow):
        return walk_shadow_renderable(view)
    if isinstance(view, WalkView2D):
        return walk_2d_renderable(view)
    return walk_1d_renderable(view)
