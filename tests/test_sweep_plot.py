"""``mmu sweep`` plots (``mmu.report.sweep_plot``), drawn from synthetic sweep tables of strings as
read back from CSV. Nothing here simulates."""

from __future__ import annotations

import itertools
import sys
import xml.etree.ElementTree as ET

import pytest

from mmu.errors import MMUInputError
from mmu.report.sweep_plot import EQUAL_LABEL, RATIO_LABEL, axis_label, plot_sweep, ratio_modes, sweep_figure

MODES = (("native", "native"), ("shadow", "shadow"), ("nested", "nested:4k"), ("nested", "nested:2m"))


def run(inp: str, label: str, params: dict[str, object], *, walk: int, exits: dict[str, int], status: str = "ok"):
    """One sweep row as the CSV reader returns it: every value a string, "" for missing. 1000 accesses,
    base 1000 + TLB 200 + guest #PF 100 cycles, then ``walk`` and the exit cycles by reason."""
    mode = label.split(":")[0]
    r = {"input": inp, "mode": mode, "mode_label": label, "status": status, "error": "" if status == "ok" else "x"}
    r |= {k: str(v) for k, v in params.items()}
    if status != "ok":
        return r | {"accesses": "", "cycles": "", "cycles_per_access": ""}
    bd = {"base": 1000, "tlb": 200, "walk": walk, "guest_page_faults": 100, "vm_exits": sum(exits.values())}
    r |= {f"cycles_breakdown.{k}": str(v) for k, v in bd.items()}
    for reason, c in exits.items():
        r[f"exits.{reason}.count"] = str(c // 100)
        r[f"exits.{reason}.cycles"] = str(c)
    cycles = sum(bd.values())
    return r | {"accesses": "1000", "cycles": str(cycles), "cycles_per_access": repr(cycles / 1000)}


def model(label: str, ntlb: int, exit_cost: int) -> tuple[int, dict[str, int]]:
    """Walk cycles and exit cycles: shadow pays exits, nested pays walks that an NTLB shortens."""
    if label == "shadow":
        return 400, {"hidden_fault": 3 * exit_cost, "cr3_write": exit_cost}
    if label.startswith("nested"):
        return 40_000 // (1 + ntlb) + 500, {"ept_violation": exit_cost // 2}
    return 300, {}


@pytest.fixture
def one_param_rows() -> list[dict[str, str]]:
    rows = []
    for inp in ("traces/gups-64m.trace", "forkwait.s 40 4"):
        for e in (250, 500, 1000, 2000, 4000):
            for _, label in MODES:
                walk, exits = model(label, 64, e)
                rows.append(run(inp, label, {"cost.exit": e}, walk=walk, exits=exits))
    return rows


def two_param_rows(ntlbs=(0, 16, 64, 256), exit_costs=(250, 1000, 4000), modes=MODES, extra=None):
    rows = []
    for n, e in itertools.product(ntlbs, exit_costs):
        for _, label in modes:
            walk, exits = model(label, n, e)
            rows.append(
                run(
                    "traces/gups-64m.trace",
                    label,
                    {"param.ntlb_entries": n, "cost.exit": e} | (extra or {}),
                    walk=walk,
                    exits=exits,
                )
            )
    return rows


def cpa(row: dict[str, str]) -> float:
    return float(row["cycles_per_access"])


def test_axis_labels_carry_units():
    assert axis_label("cost.exit") == "exit cost (cycles)"
    assert axis_label("param.ntlb_entries") == "ntlb_entries (entries)"
    assert axis_label("param.host_page") == "host_page (page size)"
    assert axis_label("param.thp") == "thp"


def test_one_param_lines_follow_the_rows_per_mode_and_input(one_param_rows):
    fig = sweep_figure(one_param_rows, ["cost.exit"], "sweep")
    assert fig.get_suptitle() == "sweep"
    lines_ax = fig.axes[:2]  # top row: one line panel per input, in input order
    for ax, inp in zip(lines_ax, ("traces/gups-64m.trace", "forkwait.s 40 4"), strict=True):
        assert ax.get_title() == inp
        assert ax.get_xlabel() == "exit cost (cycles)"
        assert ax.get_ylabel() == "cycles per access"
        assert [ln.get_label() for ln in ax.get_lines()] == [label for _, label in MODES]
        for ln in ax.get_lines():
            mine = [r for r in one_param_rows if r["input"] == inp and r["mode_label"] == ln.get_label()]
            assert list(ln.get_xdata()) == [float(r["cost.exit"]) for r in mine]  # grid order
            assert list(ln.get_ydata()) == [cpa(r) for r in mine]
            assert ln.get_marker() not in (None, "None", "")
        # 250..4000 spans a factor of 16: a log2 axis, ticked at the swept values
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["250", "500", "1000", "2000", "4000"]
    # one legend for both panels, an entry per mode label
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [label for _, label in MODES]


def test_one_param_numbers_sorted_strings_as_categories_in_grid_order():
    rows = [
        run("t", label, {"param.ntlb_entries": n}, walk=100 + n, exits={})
        for n in (64, 0, 16)
        for label in ("shadow", "nested:4k")
    ]
    ax = sweep_figure(rows, ["param.ntlb_entries"], "t").axes[0]
    (ln, _) = ax.get_lines()
    assert list(ln.get_xdata()) == [0.0, 16.0, 64.0]  # a line reads left to right
    assert list(ln.get_ydata()) == pytest.approx([1.4 + n / 1000 for n in (0, 16, 64)])
    assert ax.get_xscale() == "linear"  # spans 16..64 only

    rows = [
        run("t", label, {"param.host_page": p}, walk=w, exits={})
        for p, w in (("2m", 10), ("4k", 500), ("1g", 5))
        for label in ("shadow", "nested:x")
    ]
    ax = sweep_figure(rows, ["param.host_page"], "t").axes[0]
    ln = ax.get_lines()[0]
    assert list(ln.get_xdata()) == [0.0, 1.0, 2.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2m", "4k", "1g"]
    assert list(ln.get_ydata()) == [1.31, 1.8, 1.305]
    assert ax.get_xlabel() == "host_page (page size)"


def test_zero_from_a_wide_range_gets_a_symlog_axis():
    rows = [run("t", "shadow", {"param.ntlb_entries": n}, walk=100, exits={}) for n in (0, 16, 256, 1024)]
    assert sweep_figure(rows, ["param.ntlb_entries"], "t").axes[0].get_xscale() == "symlog"


def heat(fig):
    ax = fig.axes[0]
    (mesh,) = [c for c in ax.collections if c.__class__.__name__ == "QuadMesh"]
    return ax, mesh


def test_heat_map_values_are_shadow_over_nested_cycles():
    rows = two_param_rows()
    fig = sweep_figure(rows, ["param.ntlb_entries", "cost.exit"], "t")
    ax, mesh = heat(fig)
    cycles = {(r["mode_label"], r["param.ntlb_entries"], r["cost.exit"]): int(r["cycles"]) for r in rows}
    want = [
        [cycles["shadow", str(n), str(e)] / cycles["nested:4k", str(n), str(e)] for n in (0, 16, 64, 256)]
        for e in (250, 1000, 4000)
    ]
    got = mesh.get_array().reshape(3, 4).tolist()  # rows: cost.exit (y), columns: ntlb (x)
    assert got == want
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "16", "64", "256"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["250", "1000", "4000"]
    assert ax.get_xlabel() == "ntlb_entries (entries)"
    assert ax.get_ylabel() == "exit cost (cycles)"
    assert "shadow / nested:4k" in ax.get_title()  # the first nested mode label, named
    (cbar_ax,) = [a for a in fig.axes if a.get_ylabel() == RATIO_LABEL]
    assert mesh.norm.vmin < 1.0 < mesh.norm.vmax and mesh.norm.vmin * mesh.norm.vmax == pytest.approx(1.0)
    assert cbar_ax is not None


def contours(ax):
    from matplotlib.contour import ContourSet

    return [c for c in ax.collections if isinstance(c, ContourSet)]


def test_contour_at_one_when_the_ratio_crosses_one():
    ax, mesh = heat(sweep_figure(two_param_rows(), ["param.ntlb_entries", "cost.exit"], "t"))
    z = mesh.get_array()
    assert z.min() < 1.0 < z.max()  # the synthetic sweep crosses over
    (cs,) = contours(ax)
    assert list(cs.levels) == [1.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"{EQUAL_LABEL} (ratio 1.0)"]
    assert all(t.get_text() == EQUAL_LABEL for t in cs.labelTexts)

    # big NTLBs only: nested always wins, no crossing, no contour (and no warning)
    ax, mesh = heat(sweep_figure(two_param_rows(ntlbs=(256, 1024)), ["param.ntlb_entries", "cost.exit"], "t"))
    assert mesh.get_array().min() > 1.0
    assert contours(ax) == [] and ax.get_legend() is None


def test_more_params_held_at_their_first_value():
    rows = two_param_rows(extra={"param.host_page": "4k"}) + two_param_rows(extra={"param.host_page": "2m"})
    for r in rows[len(rows) // 2 :]:  # the 2m half would give other ratios
        r["cycles"] = "1"
    ax, mesh = heat(sweep_figure(rows, ["param.ntlb_entries", "cost.exit", "param.host_page"], "t"))
    ax0, mesh0 = heat(sweep_figure(two_param_rows(), ["param.ntlb_entries", "cost.exit"], "t"))
    assert mesh.get_array().tolist() == mesh0.get_array().tolist()
    assert "param.host_page = 4k (first value" in ax.get_title()


def test_missing_shadow_or_nested_is_a_clear_error():
    no_nested = two_param_rows(modes=MODES[:2])
    with pytest.raises(
        MMUInputError,
        match=r"needs runs of shadow and of a nested mode; a nested mode is missing "
        r"\(modes with results: native, shadow\)",
    ):
        sweep_figure(no_nested, ["param.ntlb_entries", "cost.exit"], "t")
    with pytest.raises(MMUInputError, match="shadow is missing"):
        ratio_modes(["native", "nested:2m"])
    assert ratio_modes(["native", "nested:2m", "shadow", "nested:4k"]) == ("shadow", "nested:2m")
    # the same runs still give a breakdown, and one parameter needs no ratio
    assert sweep_figure(no_nested, [], "t").axes
    assert sweep_figure([r for r in no_nested if r["param.ntlb_entries"] == "0"], ["cost.exit"], "t").axes


def bars(ax):
    """(segment label, heights per bar) of a stacked bar panel."""
    return [(c.get_label(), [p.get_height() for p in c.patches]) for c in ax.containers]


def test_breakdown_per_mode_at_the_first_grid_point():
    rows = two_param_rows()
    fig = sweep_figure(rows, ["param.ntlb_entries", "cost.exit"], "t")
    ax = [a for a in fig.axes if a.get_title().startswith("cycle breakdown")][0]
    assert "param.ntlb_entries = 0, cost.exit = 250 (first grid point)" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == [label for _, label in MODES]
    first = {r["mode_label"]: r for r in rows if r["param.ntlb_entries"] == "0" and r["cost.exit"] == "250"}
    drawn = dict(bars(ax))
    assert list(drawn) == [
        "base",
        "TLB",
        "page walks",
        "guest #PF",
        "VM exits: cr3_write",
        "VM exits: ept_violation",
        "VM exits: hidden_fault",
    ]
    assert drawn["page walks"] == pytest.approx([int(first[m]["cycles_breakdown.walk"]) / 1000 for _, m in MODES])
    assert drawn["VM exits: hidden_fault"] == pytest.approx([0, 0.75, 0, 0])
    assert drawn["VM exits: ept_violation"] == pytest.approx([0, 0, 0.125, 0.125])
    tops = [sum(values[i] for values in drawn.values()) for i in range(4)]
    assert tops == pytest.approx([cpa(first[m]) for _, m in MODES])
    assert ax.get_ylabel() == "cycles per access"


def test_zero_params_draws_only_the_breakdown_and_uncounted_exits_show_as_other():
    rows = [run("t", label, {}, walk=100, exits={"hidden_fault": 500}) for _, label in MODES]
    rows[1]["cycles_breakdown.vm_exits"] = "800"  # 300 cycles of exits no reason column accounts for
    fig = sweep_figure(rows, [], "t")
    assert len([a for a in fig.axes if a.get_title()]) == 1
    ax = fig.axes[0]
    assert ax.get_title() == "cycle breakdown: t"
    assert dict(bars(ax))["VM exits: other"] == pytest.approx([0, 0.3, 0, 0])


def test_error_rows_skipped_and_counted(one_param_rows):
    rows = list(one_param_rows)
    rows[1] = run(rows[1]["input"], "shadow", {"cost.exit": 250}, walk=0, exits={}, status="error")
    rows[7] = run(rows[7]["input"], "nested:2m", {"cost.exit": 500}, walk=0, exits={}, status="error")
    fig = sweep_figure(rows, ["cost.exit"], "t")
    shadow = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "shadow"][0]
    assert list(shadow.get_xdata()) == [500.0, 1000.0, 2000.0, 4000.0]
    nested = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "nested:2m"][0]
    assert list(nested.get_xdata()) == [250.0, 1000.0, 2000.0, 4000.0]
    assert any(t.get_text().startswith("2 runs failed") for t in fig.texts)
    # the breakdown at the first grid point marks the failed shadow run
    ax = [a for a in fig.axes if a.get_title().startswith("cycle breakdown: traces/gups")][0]
    assert [t.get_text() for t in ax.texts] == ["failed"]
    assert not any("failed" in t.get_text() for t in sweep_figure(one_param_rows, ["cost.exit"], "t").texts)

    with pytest.raises(MMUInputError, match="none of the sweep's 2 runs succeeded"):
        sweep_figure([rows[1], rows[7]], ["cost.exit"], "t")


def test_unknown_swept_column():
    rows = two_param_rows()
    with pytest.raises(MMUInputError, match="'cost.walk': no such column"):
        sweep_figure(rows, ["cost.walk"], "t")


def test_files_written_by_suffix(one_param_rows, tmp_path):
    png, svg, pdf = tmp_path / "s.png", tmp_path / "s.svg", tmp_path / "s.PDF"
    plot_sweep(one_param_rows, ["cost.exit"], png, "sweep")
    plot_sweep(two_param_rows(), ["param.ntlb_entries", "cost.exit"], svg, "sweep")
    plot_sweep(one_param_rows, [], pdf, "sweep")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_bad_suffix_unwritable_path_and_missing_matplotlib(one_param_rows, tmp_path, monkeypatch):
    with pytest.raises(MMUInputError, match=r"unsupported suffix '\.jpg'; use one of \.png, \.svg, \.pdf"):
        plot_sweep(one_param_rows, ["cost.exit"], tmp_path / "s.jpg", "t")
    with pytest.raises(MMUInputError, match="cannot write"):
        plot_sweep(one_param_rows, ["cost.exit"], tmp_path / "no" / "dir" / "s.png", "t")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MMUInputError, match=r'needs matplotlib, which is not installed: pip install "mmu-lab\[plot\]"'):
        plot_sweep(one_param_rows, ["cost.exit"], tmp_path / "s.png", "t")
    assert not (tmp_path / "s.png").exists()
