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

Plain text (a console without colour) keeps every mark: ``#n`` numbers, ``+A``/``+D``, ``✘``.
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


# --- 1D ---------------------------------------------------------------------------------------


def _entry_rows(
    entries: list[EntryRead], va: int, fault_n: int | None, addr_of: dict[int, int] | None = None
) -> list[list[Any]]:
    """Rows of the 1D entry table (shared by the 1D view and the guest side of the 2D view)."""
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
        rows.append(
            [
                Text(("✘ " if bad else "") + f"#{e.n}", style=FAULT_STYLE if bad else "bold"),
                Text(LEVEL_NAMES[e.level], style=FAULT_STYLE if bad else ""),
                f"{hi}:{lo}",
                str(table_index(va, e.level)),
                addr,
                hx(v),
                pte_flags(v, changed),
                points,
            ]
        )
    return rows


def _entry_table(rows: list[list[Any]], addr_header: str, title: str | None = None) -> Table:
    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, collapse_padding=True)
    t.add_column("ref", justify="right", no_wrap=True)
    t.add_column("entry", no_wrap=True)
    t.add_column("VA bits", justify="right", no_wrap=True)
    t.add_column("index", justify="right", no_wrap=True)
    t.add_column(addr_header, no_wrap=True)
    t.add_column("value", no_wrap=True)
    t.add_column("flags")
    t.add_column("points to")
    for r in rows:
        t.add_row(*r)
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
    rows = _entry_rows(list(view.entries), view.va, fault_n)
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
            ]
        )
    if view.entries:
        parts.append(_entry_table(rows, "entry PA"))
    parts.append(_legend(nested=False))
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


def _cell(e: EntryRead | None, ept: bool, fault_n: int | None, guest: bool) -> Text:
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
    return t


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
    for row in grid_rows(view):
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
        cells = [_cell(row.host.get(lv), ept, fault_n, guest=False) for lv in range(view.hlevels, 0, -1)]
        if row.level:
            last = _cell(row.guest, ept, fault_n, guest=True)
        elif view.hpa is not None:
            last = Text("data access", style="bold")
            last.append("\nhpa " + hx(view.hpa), style="bold")
            last.append(f"\n{PAGE_NAMES.get(view.page_size, '?')} page")
        else:
            last = Text("")
        grid.add_row(label, *cells, last)
    parts.append(grid)

    guest_entries = [e for e in view.entries if e.dim == "g"]
    if guest_entries:
        gpa_of = {r.guest.n: r.gpa for r in grid_rows(view) if r.guest is not None and r.gpa is not None}
        g_fault = fault_n if fault_n is not None and fault_n in gpa_of else None
        rows = _entry_rows(guest_entries, view.gva, g_fault, gpa_of)
        parts.append(_entry_table(rows, "entry gpa", title="guest entries (hpa in the grid)"))
    parts.append(_legend(nested=True, npt=view.npt))
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


def walk_renderable(view: WalkView1D | WalkView2D) -> Group:
    """:func:`walk_1d_renderable` or :func:`walk_2d_renderable`, by the kind of ``view``."""
    if isinstance(view, WalkView2D):
        return walk_2d_renderable(view)
    return walk_1d_renderable(view)
