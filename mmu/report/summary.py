"""Rich renderables for one run's stats object."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text


def _fmt(n: float | int) -> str:
    if isinstance(n, float):
        return f"{n:,.3f}"
    return f"{n:,}"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "-"


def summary_renderable(s: dict[str, Any]) -> Group:
    """A summary of one run: headline numbers, TLB levels, walks, faults, exits."""
    acc = s["accesses"]
    head = Table(box=box.SIMPLE_HEAVY, show_header=False, title=f"mmu replay — mode [bold]{s['mode']}[/]")
    head.add_column("what", style="bold")
    head.add_column("value", justify="right")
    head.add_column("note", style="dim", overflow="fold")
    head.add_row("trace", Text(str(s.get("trace", "-")), overflow="fold"), f"cpu preset {s.get('cpu', '-')}")
    head.add_row(
        "accesses",
        _fmt(acc),
        f"{_fmt(s['reads'])} reads, {_fmt(s['writes'])} writes, {_fmt(s['fetches'])} fetches",
    )
    head.add_row("cycles", _fmt(s["cycles"]), f"{s['cycles_per_access']:.3f} per access")
    b = s["cycles_breakdown"]
    head.add_row(
        "  translation overhead",
        _fmt(s["translation_cycles"]),
        f"TLB {_fmt(b['tlb'])} · walks {_fmt(b['walk'])} · guest #PF {_fmt(b['guest_page_faults'])}"
        f" · VM exits {_fmt(b['vm_exits'])}",
    )
    head.add_row("TLB misses", _fmt(s["tlb_misses"]), f"{s['tlb_misses_per_1000']} per 1000 accesses")
    head.add_row(
        "page walks",
        _fmt(s["walks"]),
        f"{_fmt(s['walk_refs'])} refs, {s['refs_per_walk']} per walk; "
        f"refs from L2 {_fmt(s['walk_ref_sources']['l2'])} / LLC {_fmt(s['walk_ref_sources']['llc'])}"
        f" / DRAM {_fmt(s['walk_ref_sources']['dram'])}",
    )
    head.add_row(
        "guest page faults",
        _fmt(s["guest_page_faults"]),
        f"{_fmt(s['guest_page_faults_not_present'])} not-present, "
        f"{_fmt(s['guest_page_faults_protection'])} protection ({_fmt(s['spurious_page_faults'])} spurious)",
    )
    head.add_row(
        "guest memory",
        f"{_fmt(s['data_frames'])} pages",
        f"{_fmt(s['pt_frames'])} page-table frames ({s['pt_memory_bytes'] / 1024:,.0f} KiB)",
    )
    head.add_row("VM exits", _fmt(s["vm_exits"]), f"{s['vm_exits_per_1000']} per 1000 accesses")
    if s["bad_accesses"]:
        head.add_row(
            Text("bad accesses", style="bold red"),
            _fmt(s["bad_accesses"]),
            "non-canonical or kernel-half addresses the guest could not map",
        )
    head.add_row(
        "elapsed",
        f"{s['elapsed_s']:.3f} s",
        f"{_fmt(s['accesses_per_s'])} accesses/s simulated"
        + (f"; kernels compiled in {s['compile_s']:.1f} s" if s.get("compile_s", 0) > 0.5 else ""),
    )

    parts: list[Any] = [head]
    if s.get("tlb"):
        t = Table(title="TLB structures", box=box.SIMPLE)
        for col in ("structure", "hits", "misses", "hit rate"):
            t.add_column(col, justify="left" if col == "structure" else "right")
        for name, d in s["tlb"].items():
            t.add_row(name, _fmt(d["hits"]), _fmt(d["misses"]), _pct(d["hits"], d["hits"] + d["misses"]))
        parts.append(t)
    if s.get("psc"):
        t = Table(title="Paging-structure caches", box=box.SIMPLE)
        for col in ("cache", "hits", "misses", "hit rate"):
            t.add_column(col, justify="left" if col == "cache" else "right")
        for name, d in s["psc"].items():
            t.add_row(name, _fmt(d["hits"]), _fmt(d["misses"]), _pct(d["hits"], d["hits"] + d["misses"]))
        parts.append(t)
    if s.get("exits"):
        t = Table(title="VM exits by reason", box=box.SIMPLE)
        for col in ("reason", "count", "cycles"):
            t.add_column(col, justify="left" if col == "reason" else "right")
        for name, d in s["exits"].items():
            t.add_row(name, _fmt(d["count"]), _fmt(d["cycles"]))
        parts.append(t)
    ms = s.get("mode_stats") or {}
    if "shadow_pages" in ms:
        parts.append(shadow_renderable(ms))
    return Group(*parts)


def shadow_renderable(ms: dict[str, Any]) -> Table:
    """The shadow MMU's work: shadow pages, root cache, resyncs, flushes, memory."""
    sp = ms["shadow_pages"]
    pol = ms["policy"]
    t = Table(title="Shadow MMU", box=box.SIMPLE, show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    t.add_column("note", style="dim", overflow="fold")
    t.add_row(
        "policy",
        "",
        f"unsync {'on' if pol['unsync'] else 'off'} · prefetch {pol['prefetch']} · previous roots {pol['roots']}"
        f" · flood threshold {pol['flood_threshold'] or 'off'}"
        f" · shadow-page cap {pol.get('max_pages') or 'none'}"
        + (" · prefault" if pol.get("prefault") else ""),
    )
    t.add_row(
        "shadow pages",
        f"{_fmt(sp['live'])} live",
        f"{_fmt(sp['created'])} created, {_fmt(sp['zapped'])} zapped ({_fmt(sp['flooded'])} by write flooding,"
        f" {_fmt(sp.get('reclaimed', 0))} reclaimed under the cap), peak {_fmt(sp['peak'])}",
    )
    t.add_row("unsync", _fmt(sp["unsynced"]), f"pages let out of sync; {_fmt(sp['resynced'])} resynchronised")
    rc = ms["root_cache"]
    t.add_row("root cache", f"{_fmt(rc['hits'])} hits", f"{_fmt(rc['misses'])} misses (root rebuilt or re-found)")
    t.add_row(
        "shadow entries",
        _fmt(ms["spte_writes"]),
        f"written or zapped; {_fmt(ms['prefetched_sptes'])} prefetched, {_fmt(ms.get('prefaulted', 0))} prefaulted, "
        f"{_fmt(ms['write_protected_sptes'])} made read-only to write-protect a guest table",
    )
    t.add_row("emulated writes", _fmt(ms["emulated_writes"]), "stores to write-tracked guest tables")
    t.add_row("VMM TLB flushes", _fmt(ms["vmm_tlb_flushes"]), "VM-wide, requested by the VMM")
    t.add_row(
        "shadow tables",
        f"{ms['shadow_table_bytes'] / 1024:,.0f} KiB",
        f"peak {ms['shadow_table_peak_bytes'] / 1024:,.0f} KiB of host memory",
    )
    return t
