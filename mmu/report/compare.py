"""Side-by-side comparison of one input replayed in several modes (pure: stats -> renderables)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
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
    row("TLB misses / 1000 accesses", lambda s: f"{s['tlb_misses_per_1000']:,.2f}")
    row("references / walk", lambda s: f"{s['refs_per_walk']:.2f}")

    def dims(s: dict[str, Any]) -> str:
        ms = s.get("mode_stats") or {}
        if "walk_refs_guest" in ms and s["walks"]:
            return f"{ms['walk_refs_guest'] / s['walks']:.2f} g + {ms['walk_refs_host'] / s['walks']:.2f} h"
        return f"{s['refs_per_walk']:.2f} (1D)"

    row("  guest + host dimension", dims)
    row("guest page faults", lambda s: f"{s['guest_page_faults']:,}")
    row("VM exits / 1000 accesses", lambda s: _per_1000(s["vm_exits"], s["accesses"]))
    reasons = sorted({r for s in results for r in s["exits"]})
    for r in reasons:
        row(f"  {r}", lambda s, r=r: _per_1000(s["exits"].get(r, {}).get("count", 0), s["accesses"]))
    row("VMM memory (EPT / shadow tables)", lambda s: f"{s.get('vmm_memory_bytes', 0) / 1024:,.0f} KiB")
    if any("shadow_pages" in (s.get("mode_stats") or {}) for s in results):

        def sps(s: dict[str, Any]) -> str:
            sp = (s.get("mode_stats") or {}).get("shadow_pages")
            return f"{sp['live']:,} / {sp['created']:,}" if sp else "-"

        row("shadow pages (live / created)", sps)
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


def compare_renderable(results: list[dict[str, Any]], title: str = "") -> Group:
    """One table, a column per mode, and a verdict line."""
    t = Table(title=title or "mmu compare", box=box.SIMPLE_HEAVY)
    t.add_column("", style="bold")
    for s in results:
        label = s["mode"]
        ms = s.get("mode_stats") or {}
        if "host" in ms:
            label += f"\n{ms['host']} {ms['host_page']}"
        elif "shadow_pages" in ms and _shadow_policy(ms):
            label += f"\n{_shadow_policy(ms)}"
        t.add_column(label, justify="right")
    for label, cells in compare_rows(results):
        t.add_row(label, *cells)
    return Group(t, verdict(results))
