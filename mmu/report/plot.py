"""A stacked bar per mode of where the cycles go (``mmu compare --plot``).

matplotlib is an optional extra (``pip install "mmu-lab[plot]"``); it is imported only when a plot is
drawn, and drawn with the Agg canvas (no display). :func:`breakdown_segments` is the pure part:
the stacked terms of every bar, bottom to top. :func:`breakdown_figure` draws them and returns the
figure (tests inspect it); :func:`plot_breakdown` writes it to a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmu.errors import MMUInputError
from mmu.report.compare import mode_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
INSTALL_HINT = 'pip install "mmu-lab[plot]"'

# cycles_breakdown terms below the VM exits, bottom to top, with their legend labels
_TERMS = (("base", "base"), ("tlb", "TLB"), ("walk", "page walks"), ("guest_page_faults", "guest #PF"))
_EXIT_PREFIX = "VM exits: "


def breakdown_segments(results: list[dict[str, Any]]) -> list[tuple[str, list[int]]]:
    """The stacked terms of every bar, bottom to top, as (legend label, cycles per mode).

    The ``cycles_breakdown`` terms base, TLB, page walks and guest #PF, then the ``vm_exits`` term
    split by exit reason (``exits.<reason>.cycles``; reasons in sorted order, one segment for each
    reason any mode took). A mode's segments sum to its ``cycles``.
    """
    segments = [(label, [int(s["cycles_breakdown"][key]) for s in results]) for key, label in _TERMS]
    reasons = sorted({r for s in results for r in s.get("exits", {})})
    for r in reasons:
        segments.append((_EXIT_PREFIX + r, [int(s["exits"].get(r, {}).get("cycles", 0)) for s in results]))
    return segments


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MMUInputError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def check_plot_target(path: Path) -> str:
    """The format to write ``path`` in, from its suffix; MMUInputError for an unsupported suffix or a
    missing matplotlib (so a caller can fail before a long run, not after it)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MMUInputError(
            f"cannot plot to {path}: unsupported suffix {path.suffix or '(none)'!r}; use one of {', '.join(FORMATS)}"
        )
    _require_matplotlib()
    return fmt


def breakdown_figure(results: list[dict[str, Any]], title: str) -> Figure:
    """A figure with one stacked bar per mode, in the order of ``results``.

    Bars are labelled with :func:`mmu.report.compare.mode_label`; each carries its slowdown vs the
    first mode (``1.00×`` on the first). Raises MMUInputError if matplotlib is missing.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [mode_label(s) for s in results]
    fig = Figure(figsize=(max(5.0, 1.6 * len(results) + 3.0), 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = list(range(len(results)))
    bottom = [0] * len(results)
    for k, (label, values) in enumerate(breakdown_segments(results)):
        if not any(values):
            continue
        ax.bar(x, values, bottom=bottom, width=0.6, label=label, color=_color(k), edgecolor="white", linewidth=0.5)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    base = results[0]["cycles"] if results else 0
    top = max(bottom, default=0)
    for i, s in enumerate(results):
        text = f"{s['cycles'] / base:.2f}×" if base else "-"
        ax.annotate(text, (i, s["cycles"]), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, top * 1.12 if top else 1)
    ax.set_ylabel("cycles")
    ax.set_title(title)
    if labels:
        ax.set_xlabel(f"above each bar: cycles vs {labels[0]}", fontsize="small", color="dimgray")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return fig


def _color(k: int) -> Any:
    import matplotlib

    return matplotlib.colormaps["tab20"](k % 20)


def plot_breakdown(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """Write the stacked cycle breakdown of ``results`` (one stats object per mode) to ``path``.

    The format follows the suffix: ``.png``, ``.svg`` or ``.pdf``. Raises MMUInputError for another
    suffix, a missing matplotlib (with the command that installs it) or a file that cannot be written.
    """
    fmt = check_plot_target(path)
    fig = breakdown_figure(results, title)
    try:
        fig.savefig(path, format=fmt, dpi=150)
    except OSError as exc:
        raise MMUInputError(f"cannot write {path}: {exc.strerror or exc}") from None
