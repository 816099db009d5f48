"""Side-by-side comparison of one input replayed in several modes (pure: stats -> renderables).

Row labels never wrap: a table too wide for the console is split into several, each with the
labels and as many mode columns as fit (an 80-column terminal holds four modes of the usual
figures in one table).
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


def _per_1000(x: float, n: int) -> str:
    return f"{1000.0 * x / n:,.2f}" if n else "-"


def _shadow_policy(ms: dict[str, Any]) -> str:
    """The shadow policy knobs that differ from KVM's defaults, e.g. "no-unsync, roots 0"."""
    pol = ms.get("policy") or {}
    out = []
    if not pol.get("unsync", True):
        out.append("no-unsync")
    if pol.get("prefault", False):
        out.append("prefault")
    for key, default in (("prefetch", 8), ("roots", 3), ("flood_threshold", 3), ("max_pages", 0)):
        if pol.get(key, default) != default:
            out.append(f"{key.replace('_threshold', '')} {pol[key]}")
    return ", ".join(out)


def mode_label(s: dict[str, Any]) -> str:
    """ "native", "nested (ept 2m)", "shadow (no-unsync)" or "native (thp always)": the mode and
    what distinguishes its configuration from the defaults."""
    ms = s.get("mode_stats") or {}
    if "host" in ms:
        parts = [f"{ms['host']} {ms['host_page']}"]
    else:
        policy = _shadow_policy(ms) if "shadow_pages" in ms else ""
        parts = [policy] if policy else []
    if s.get("thp", "madvise") != "madvise":
        parts.append(f"thp {s['thp']}")
    return f"{s['mode']} ({', '.join(parts)})" if parts else s["mode"]


def compare_rows(results: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The comparison as (row label, one cell per mode) pairs; the first result is the baseline."""
    base = results[0]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn) -> None:
        rows.append((label, [fn(s) for s in results]))

    if any("instructions" in s for s in results):
        row("guest instructions", lambda s: f"{s['instructions']:,}" if "instructions" in s else "-")
    row("accesses", lambda s: f"{s['accesses']:,}")
    row("cycles", lambda s: f"{s['cycles']:,}")
    row("cycles / access", lambda s: f"{s['cycles_per_access']:.3f}")
    row(
        f"slowdown vs {base['mode']}",
        lambda s: f"{s['cycles'] / base['cycles']:.3f}×" if base["cycles"] else "-",
    )
    row("  TLB cycles", lambda s: f"{s['cycles_breakdown']['tlb']:,}")
    row("  page-walk cycles", lambda s: f"{s['cycles_breakdown']['walk']:,}")
    row("  guest #PF cycles", lambda s: f"{s['cycles_breakdown']['guest_page_faults']:,}")
    row("  VM-exit cycles", lambda s: f"{s['cycles_breakdown']['vm_exits']:,}")
    row("TLB misses / 1k accesses", lambda s: f"{s['tlb_misses_per_1000']:,.2f}")
    row("references / walk", lambda s: f"{s['refs_per_walk']:.2f}")

    def dims(s: dict[str, Any]) -> str:
        ms = s.get("mode_stats") or {}
        if "walk_refs_guest" in ms and s["walks"]:
            return f"{ms['walk_refs_guest'] / s['walks']:.2f} + {ms['walk_refs_host'] / s['walks']:.2f}"
        return f"{s['refs_per_walk']:.2f} (1D)"

    row("  guest + host", dims)
    row("guest page faults", lambda s: f"{s['guest_page_faults']:,}")
    row("VM exits / 1k accesses", lambda s: _per_1000(s["vm_exits"], s["accesses"]))
    reasons = sorted({r for s in results for r in s["exits"]})
    for r in reasons:
        row(f"  {r}", lambda s, r=r: _per_1000(s["exits"].get(r, {}).get("count", 0), s["accesses"]))
    row("VMM tables (EPT/shadow)", lambda s: f"{s.get('vmm_memory_bytes', 0) / 1024:,.0f} KiB")
    if any("shadow_pages" in (s.get("mode_stats") or {}) for s in results):

        def sps(s: dict[str, Any]) -> str:
            sp = (s.get("mode_stats") or {}).get("shadow_pages")
            return f"{sp['live']:,} / {sp['created']:,}" if sp else "-"

        row("shadow pages live/created", sps)
    return rows


def verdict(results: list[dict[str, Any]]) -> Text:
    """Which mode wins, by how much, and the biggest cost term of the loser."""
    ranked = sorted(results, key=lambda s: s["cycles"])
    best, worst = ranked[0], ranked[-1]
    if len(results) < 2 or not best["cycles"]:
        return Text("")
    names = {"tlb": "TLB", "walk": "page walks", "guest_page_faults": "guest page faults", "vm_exits": "VM exits"}
    extra = {names[k]: worst["cycles_breakdown"][k] - best["cycles_breakdown"][k] for k in names}
    main = max(extra, key=lambda k: extra[k])
    t = Text()
    t.append(mode_label(best), style="bold green")
    t.append(f" is fastest; {mode_label(worst)} takes ")
    t.append(f"{worst['cycles'] / best['cycles']:.2f}×", style="bold")
    t.append(f" the cycles, most of the difference in {main} ({extra[main]:+,} cycles).")
    return t


def limit_note(results: list[dict[str, Any]]) -> Text:
    """A warning when a guest program was stopped at the instruction limit (empty otherwise)."""
    cut = [s for s in results if s.get("reason") == "limit"]
    if not cut:
        return Text("")
    n = max(s.get("instructions", 0) for s in cut)
    who = "" if len(cut) == len(results) else f" ({', '.join(mode_label(s) for s in cut)})"
    return Text(
        f"stopped at the instruction limit ({n:,} instructions){who}: the program did not finish, "
        "and the figures cover only the part that ran.",
        style="bold yellow",
    )


def _column_header(s: dict[str, Any]) -> str:
    label = s["mode"]
    ms = s.get("mode_stats") or {}
    if "host" in ms:
        label += f"\n{ms['host']} {ms['host_page']}"
    elif "shadow_pages" in ms and _shadow_policy(ms):
        label += f"\n{_shadow_policy(ms)}"
    return label


class CompareTables:
    """The comparison table, split by mode columns into as few tables as fit the console.

    Labels and cells never wrap; a single mode wider than the console is left to rich.
    """

    def __init__(self, results: list[dict[str, Any]], title: str = "") -> None:
        self.results = results
        self.title = title or "mmu compare"
        self.rows = compare_rows(results)

    def table(self, columns: list[int], title: str) -> Table:
        """A table of the labels and the modes at indices ``columns``."""
        t = Table(title=title, box=box.SIMPLE_HEAVY, show_edge=False, pad_edge=False, collapse_padding=True)
        t.add_column("", style="bold", no_wrap=True)
        for i in columns:
            t.add_column(_column_header(self.results[i]), justify="right", no_wrap=True)
        for label, cells in self.rows:
            t.add_row(label, *(cells[i] for i in columns))
        return t

    def tables(self, console: Console, options: ConsoleOptions) -> list[Table]:
        """The fewest tables, modes in order, that each fit ``options.max_width``."""
        n = len(self.results)
        unbounded = options.update(max_width=1 << 16)  # a table's own measure is clamped to the width
        for parts in range(1, n + 1):
            size = -(-n // parts)
            groups = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
            titles = [self.title] + [f"{self.title} (continued)"] * (len(groups) - 1)
            tables = [self.table(g, t) for g, t in zip(groups, titles, strict=True)]
            if all(Measurement.get(console, unbounded, t).maximum <= options.max_width for t in tables):
                return tables
        return tables

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for t in self.tables(console, options):
            yield t
            yield Text("")


def compare_renderable(results: list[dict[str, Any]], title: str = "") -> Group:
    """The comparison table(s), a note if a guest program was cut short, and a verdict line."""
    parts: list[Any] = [CompareTables(results, title)]
    note = limit_note(results)
    if note:
        parts.append(note)
    line = verdict(results)
    if line:
        parts.append(line)
    return Group(*parts)
