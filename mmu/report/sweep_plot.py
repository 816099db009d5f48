"""Plots of an ``mmu sweep`` table: how the cost of each mode moves with the swept parameters.

A sweep is a tidy table, one row per run, read back from CSV: every value may be a string (numbers
as decimal text, ``""`` for missing). :func:`sweep_figure` draws it and returns the figure (tests
inspect it); :func:`plot_sweep` writes it to a file. The figure has one column of panels per input:

- one swept parameter: cycles per access against the parameter, one line per ``mode_label``;
- two or more: a heat map of the shadow / nested cycle ratio over the first two parameters, with
  the ratio-1.0 contour ("shadow = nested"); further parameters are held at their first value;
- always: a stacked breakdown of cycles per access per ``mode_label`` at the first grid point.

Rows with ``status`` other than ``"ok"`` are left out and counted in a footnote. Like
:mod:`mmu.report.plot`, this module only renders (matplotlib, Agg canvas, imported when drawing).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmu.errors import MMUInputError
from mmu.report.plot import _color, _require_matplotlib, breakdown_segments, check_plot_target

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Row = dict[str, Any]

RATIO_LABEL = "shadow / nested cycles"
EQUAL_LABEL = "shadow = nested"
_CPA_LABEL = "cycles per access"
_MARKERS = "osD^v<>ph*"
# unit of a machine parameter, from the end of its name (cost.* parameters are all in cycles)
_PARAM_UNITS = (("_entries", "entries"), ("_levels", "levels"), ("_page", "page size"), ("_bytes", "bytes"))
# cycles_breakdown terms under the VM exits, as breakdown_segments reads them
_TERM_KEYS = ("base", "tlb", "walk", "guest_page_faults")


def _num(v: Any) -> float | None:
    """A CSV cell as a number: None for empty, missing or non-numeric text."""
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        x = float(str(v).strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _key(v: Any) -> str:
    return "" if v is None else str(v).strip()


def _n(row: Row, col: str) -> float:
    x = _num(row.get(col))
    return 0.0 if x is None else x


def _cpa(row: Row) -> float:
    """Cycles per access of a run: the ``cycles_per_access`` column, else cycles / accesses; NaN if neither."""
    x = _num(row.get("cycles_per_access"))
    if x is not None:
        return x
    cycles, accesses = _num(row.get("cycles")), _num(row.get("accesses"))
    return cycles / accesses if cycles is not None and accesses else math.nan


def axis_label(col: str) -> str:
    """An axis label with the unit: ``cost.exit`` -> "exit cost (cycles)", ``param.ntlb_entries`` ->
    "ntlb_entries (entries)", ``param.host_page`` -> "host_page (page size)"."""
    if col.startswith("cost."):
        return f"{col[5:]} cost (cycles)"
    if col.startswith("param."):
        name = col[6:]
        unit = next((u for end, u in _PARAM_UNITS if name.endswith(end)), "")
        return f"{name} ({unit})" if unit else name
    return col


class _Axis:
    """The values of one swept column: in grid order (order of first appearance in the rows), or
    ascending when every value is a number (a line through them then reads left to right)."""

    def __init__(self, col: str, rows: list[Row]) -> None:
        self.col = col
        keys: list[str] = []
        for r in rows:
            k = _key(r.get(col))
            if k not in keys:
                keys.append(k)
        self.first = keys[0] if keys else ""
        nums = [_num(k) for k in keys]
        self.numeric = bool(keys) and all(x is not None for x in nums)
        if self.numeric:
            pairs = sorted(zip(nums, keys, strict=True))
            self.keys = [k for _, k in pairs]
            self.positions = [float(x) for x, _ in pairs]  # type: ignore[arg-type]
        else:
            self.keys = keys
            self.positions = [float(i) for i in range(len(keys))]
        self.pos = dict(zip(self.keys, self.positions, strict=True))

    def scale(self) -> tuple[str, dict[str, Any]]:
        """("linear", {}), or a base-2 log axis when the numbers span a factor of 16 or more
        (symlog when 0 is among them: an NTLB of 0 entries is a real configuration)."""
        if not self.numeric or len(self.positions) < 3:
            return "linear", {}
        lo, hi = self.positions[0], self.positions[-1]
        positive = [x for x in self.positions if x > 0]
        if lo < 0 or len(positive) < 2 or hi / positive[0] < 16:
            return "linear", {}
        if lo == 0:
            return "symlog", {"base": 2, "linthresh": positive[0]}
        return "log", {"base": 2}


def _modes(rows: list[Row]) -> list[str]:
    out: list[str] = []
    for r in rows:
        m = _key(r.get("mode_label")) or _key(r.get("mode"))
        if m not in out:
            out.append(m)
    return out


def _mode(r: Row) -> str:
    return _key(r.get("mode_label")) or _key(r.get("mode"))


def ratio_modes(mode_labels: list[str]) -> tuple[str, str]:
    """The two mode labels of the ratio map: ``"shadow"`` and the first label starting with
    ``"nested"``. MMUInputError naming what is missing (a caller can check before running)."""
    nested = next((m for m in mode_labels if m.startswith("nested")), None)
    missing = [name for name, ok in (("shadow", "shadow" in mode_labels), ("a nested mode", nested)) if not ok]
    if missing:
        have = ", ".join(mode_labels) or "none"
        raise MMUInputError(
            f"the shadow / nested ratio map of a two-parameter sweep needs runs of shadow and of a nested mode; "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing (modes with results: {have})"
        )
    return "shadow", nested  # type: ignore[return-value]


def _point_text(axes: list[_Axis], keys: list[str]) -> str:
    return ", ".join(f"{a.col} = {k}" for a, k in zip(axes, keys, strict=True))


def _line_panel(ax: Axes, rows: list[Row], axis: _Axis, modes: list[str], input_: str) -> None:
    """Cycles per access against the one swept parameter, a line per mode label."""
    for i, m in enumerate(modes):
        ys = {_key(r.get(axis.col)): _cpa(r) for r in reversed(rows) if _mode(r) == m}  # first row wins
        pts = [(axis.pos[k], ys[k]) for k in axis.keys if k in ys]
        if not pts:
            continue
        ax.plot(*zip(*pts, strict=True), marker=_MARKERS[i % len(_MARKERS)], color=_mode_color(i), label=m)
    scale, kw = axis.scale()
    ax.set_xscale(scale, **kw)
    if not axis.numeric or len(axis.keys) <= 12:
        ax.set_xticks(axis.positions, axis.keys)
        ax.minorticks_off()
    ax.set_xlabel(axis_label(axis.col))
    ax.set_ylabel(_CPA_LABEL)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(input_, fontsize="medium")


def _mode_color(i: int) -> Any:
    import matplotlib

    return matplotlib.colormaps["tab10"](i % 10)


def _ratio_grid(rows: list[Row], ax_x: _Axis, ax_y: _Axis, shadow: str, nested: str) -> list[list[float]]:
    """ratio[y][x] = cycles(shadow) / cycles(nested) at each grid point (NaN where either is missing)."""
    cycles: dict[tuple[str, str, str], float] = {}
    for r in reversed(rows):  # first row wins
        c = _num(r.get("cycles"))
        if c is not None:
            cycles[_mode(r), _key(r.get(ax_x.col)), _key(r.get(ax_y.col))] = c
    grid = []
    for ky in ax_y.keys:
        line = []
        for kx in ax_x.keys:
            s, n = cycles.get((shadow, kx, ky)), cycles.get((nested, kx, ky))
            line.append(s / n if s is not None and n else math.nan)
        grid.append(line)
    return grid


def _ratio_norm(grids: list[list[list[float]]]) -> Any:
    """A log colour scale symmetric about 1.0, so "shadow = nested" is the neutral colour."""
    from matplotlib.colors import LogNorm

    vals = [v for g in grids for line in g for v in line if v > 0]
    m = max([max(v, 1 / v) for v in vals], default=1.0)
    m = max(m, 1.05)
    return LogNorm(vmin=1 / m, vmax=m)


def _ratio_panel(ax: Axes, grid: list[list[float]], ax_x: _Axis, ax_y: _Axis, norm: Any, title: str) -> Any:
    """The heat map (cells at grid indices, labelled with the values) and its 1.0 contour."""
    import numpy as np
    from matplotlib.lines import Line2D

    z = np.ma.masked_invalid(np.array(grid, dtype=np.float64))
    nx, ny = len(ax_x.keys), len(ax_y.keys)
    mesh = ax.pcolormesh(np.arange(nx + 1) - 0.5, np.arange(ny + 1) - 0.5, z, cmap="RdBu_r", norm=norm, shading="flat")
    if nx * ny <= 144:
        for iy in range(ny):
            for ix in range(nx):
                v = grid[iy][ix]
                ax.text(ix, iy, "-" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize="x-small")
    finite = z.compressed()
    if nx >= 2 and ny >= 2 and finite.size and finite.min() < 1.0 < finite.max():
        cs = ax.contour(np.arange(nx), np.arange(ny), z, levels=[1.0], colors="black", linewidths=1.5)
        ax.clabel(cs, fmt={1.0: EQUAL_LABEL}, fontsize="x-small")
        ax.legend(
            handles=[Line2D([], [], color="black", linewidth=1.5, label=f"{EQUAL_LABEL} (ratio 1.0)")],
            loc="upper left",
            bbox_to_anchor=(0.0, -0.14),
            fontsize="x-small",
            frameon=False,
        )
    ax.set_xticks(range(nx), ax_x.keys)
    ax.set_yticks(range(ny), ax_y.keys)
    ax.set_xlabel(axis_label(ax_x.col))
    ax.set_ylabel(axis_label(ax_y.col))
    ax.set_title(title, fontsize="medium")
    return mesh


def _breakdown_panel(
    ax: Axes, rows: list[Row], modes: list[str], colors: dict[str, int], failed: set[str], title: str
) -> list[tuple[str, Any]]:
    """Stacked cycles per access per mode label; returns the drawn (label, handle) pairs."""
    by_mode = {}
    for r in reversed(rows):  # first row wins
        by_mode[_mode(r)] = r
    drawn = [m for m in modes if m in by_mode]
    results = [_nested_stats(by_mode[m]) for m in drawn]
    x = {m: i for i, m in enumerate(modes)}
    bottom = [0.0] * len(drawn)
    handles = []
    for label, values in breakdown_segments(results):
        per_access = [v / s["accesses"] if s["accesses"] else 0.0 for v, s in zip(values, results, strict=True)]
        if not any(per_access):
            continue
        h = ax.bar(
            [x[m] for m in drawn],
            per_access,
            bottom=bottom,
            width=0.6,
            label=label,
            color=_color(colors[label]),
            edgecolor="white",
            linewidth=0.5,
        )
        handles.append((label, h))
        bottom = [b + v for b, v in zip(bottom, per_access, strict=True)]
    for m in modes:
        if m not in by_mode and m in failed:
            ax.annotate("failed", (x[m], 0), xytext=(0, 3), textcoords="offset points", ha="center", color="firebrick")
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylabel(_CPA_LABEL)
    ax.set_title(title, fontsize="medium")
    return handles


def _nested_stats(row: Row) -> dict[str, Any]:
    """A flat CSV row as the stats shape :func:`mmu.report.plot.breakdown_segments` reads, with
    ``accesses``. VM-exit cycles no ``exits.<reason>.cycles`` column accounts for become reason "other"."""
    exits: dict[str, dict[str, float]] = {}
    for col, v in row.items():
        if col.startswith("exits.") and col.endswith(".cycles"):
            x = _num(v)
            if x:
                exits[col[len("exits.") : -len(".cycles")]] = {"cycles": x}
    rest = _n(row, "cycles_breakdown.vm_exits") - sum(e["cycles"] for e in exits.values())
    if rest > 0.5:
        exits["other"] = {"cycles": rest}
    return {
        "cycles_breakdown": {k: _n(row, f"cycles_breakdown.{k}") for k in _TERM_KEYS},
        "exits": exits,
        "accesses": _n(row, "accesses"),
    }


def _segment_colors(rows: list[Row]) -> dict[str, int]:
    """One colour index per breakdown segment label, the same in every panel."""
    labels = [label for label, _ in breakdown_segments([_nested_stats(r) for r in rows])]
    return {label: k for k, label in enumerate(labels)}


def sweep_figure(rows: list[Row], swept: list[str], title: str) -> Figure:
    """The figure of a sweep: a column of panels per input (see the module docstring).

    ``rows`` are the sweep's runs (values as read from CSV: strings are fine); ``swept`` names the
    swept columns in grid order (``[]`` draws only the breakdown). Raises MMUInputError when no run
    succeeded, a swept column is not in the table, two or more parameters are swept without both a
    shadow and a nested run (:func:`ratio_modes`), or matplotlib is missing.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in rows if _key(r.get("status")) == "ok"]
    n_failed = len(rows) - len(ok)
    if not ok:
        raise MMUInputError(f"nothing to plot: none of the sweep's {len(rows)} runs succeeded")
    for col in swept:
        if not any(col in r for r in rows):
            raise MMUInputError(f"cannot plot the sweep over {col!r}: no such column in the sweep's table")
    axes_ = [_Axis(col, rows) for col in swept]
    modes = _modes(rows)
    inputs = []
    for r in rows:
        if _key(r.get("input")) not in inputs:
            inputs.append(_key(r.get("input")))
    first = [a.first for a in axes_]

    def at(rs: list[Row], fixed: list[_Axis]) -> list[Row]:
        return [r for r in rs if all(_key(r.get(a.col)) == a.first for a in fixed)]

    shadow = nested = ""
    if len(swept) >= 2:
        shadow, nested = ratio_modes(_modes(ok))

    n_in = len(inputs)
    main = bool(swept)
    fig = Figure(figsize=(max(6.5, 5.2 * n_in + 2.5), 9.0 if main else 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(2 if main else 1, n_in, squeeze=False)
    colors = _segment_colors(ok)

    if len(swept) == 1:
        for j, inp in enumerate(inputs):
            _line_panel(grid[0][j], [r for r in ok if _key(r.get("input")) == inp], axes_[0], modes, inp)
        handles, labels = [], []
        for ax in grid[0]:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        order = sorted(range(len(labels)), key=lambda i: modes.index(labels[i]))
        fig.legend(
            [handles[i] for i in order],
            [labels[i] for i in order],
            loc="outside right upper",
            title="mode",
            fontsize="small",
            frameon=False,
        )
    elif len(swept) >= 2:
        ax_x, ax_y = axes_[0], axes_[1]
        held = axes_[2:]
        per_input = [at([r for r in ok if _key(r.get("input")) == inp], held) for inp in inputs]
        grids = [_ratio_grid(rs, ax_x, ax_y, shadow, nested) for rs in per_input]
        norm = _ratio_norm(grids)
        mesh = None
        for j, inp in enumerate(inputs):
            head = f"{shadow} / {nested} cycles: {inp}"
            if held:
                head += f"\n{_point_text(held, [a.first for a in held])} (first value; also swept)"
            mesh = _ratio_panel(grid[0][j], grids[j], ax_x, ax_y, norm, head)
        cbar = fig.colorbar(mesh, ax=list(grid[0]), shrink=0.9)
        cbar.set_label(RATIO_LABEL)
        cbar.ax.axhline(1.0, color="black", linewidth=1.5)

    row_b = 1 if main else 0
    point = f"\nat {_point_text(axes_, first)} (first grid point)" if axes_ else ""
    seen: dict[str, Any] = {}
    for j, inp in enumerate(inputs):
        rs = at([r for r in ok if _key(r.get("input")) == inp], axes_)
        fm = {
            _mode(r)
            for r in at([r for r in rows if _key(r.get("input")) == inp], axes_)
            if _key(r.get("status")) != "ok"
        }
        for label, h in _breakdown_panel(grid[row_b][j], rs, modes, colors, fm, f"cycle breakdown: {inp}{point}"):
            seen.setdefault(label, h)
    ordered = sorted(seen, key=lambda label: colors[label])
    grid[row_b][-1].legend(
        [seen[label] for label in ordered],
        ordered,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        frameon=False,
    )

    fig.suptitle(title)
    if n_failed:
        fig.supxlabel(
            f"{n_failed} run{'s' if n_failed != 1 else ''} failed (status error) and {'are' if n_failed != 1 else 'is'}"
            " left out; see the error column of the sweep table",
            x=0.01,
            ha="left",
            fontsize="small",
            color="firebrick",
        )
    return fig


def plot_sweep(rows: list[Row], swept: list[str], path: Path, title: str) -> None:
    """Write :func:`sweep_figure` of ``rows`` to ``path``.

    The format follows the suffix: ``.png``, ``.svg`` or ``.pdf``. Raises MMUInputError for another
    suffix, a missing matplotlib, a table :func:`sweep_figure` cannot draw, or a file that cannot
    be written.
    """
    fmt = check_plot_target(path)
    fig = sweep_figure(rows, swept, title)
    try:
        fig.savefig(path, format=fmt, dpi=150)
    except OSError as exc:
        raise MMUInputError(f"cannot write {path}: {exc.strerror or exc}") from None


__all__ = ["EQUAL_LABEL", "RATIO_LABEL", "axis_label", "plot_sweep", "ratio_modes", "sweep_figure"]
