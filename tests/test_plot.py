"""``mmu compare --plot``: the stacked cycle breakdown per mode (``mmu.report.plot``)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from clicheck import assert_clean_failure
from typer.testing import CliRunner

from mmu.cli import app
from mmu.engine import MachineConfig
from mmu.errors import MMUInputError
from mmu.replayfile import replay
from mmu.report.compare import mode_label
from mmu.report.plot import breakdown_figure, breakdown_segments, plot_breakdown

TRACES = Path(__file__).resolve().parent.parent / "traces"
TRACE = TRACES / "ls-usr.trace"
runner = CliRunner()


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return [replay(TRACE, MachineConfig(mode=m)) for m in ("native", "shadow", "nested")]


def test_segments_sum_to_cycles_and_split_vm_exits_by_reason(results):
    segments = breakdown_segments(results)
    labels = [label for label, _ in segments]
    assert labels[:4] == ["base", "TLB", "page walks", "guest #PF"]
    exit_segments = [(label, values) for label, values in segments if label.startswith("VM exits: ")]
    reasons = sorted({r for s in results for r in s["exits"]})
    assert [label for label, _ in exit_segments] == [f"VM exits: {r}" for r in reasons]
    assert {"hidden_fault", "ept_violation"} <= set(reasons)  # shadow's and nested's exits both appear
    for i, s in enumerate(results):
        assert sum(values[i] for _, values in exit_segments) == s["cycles_breakdown"]["vm_exits"]
        assert sum(values[i] for _, values in segments) == s["cycles"]
    assert all(values[0] == 0 for _, values in exit_segments)  # native takes no VM exits


def test_figure_bars_in_mode_order_with_slowdowns(results):
    fig = breakdown_figure(results, "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [mode_label(s) for s in results]
    assert ax.get_title() == "t"
    drawn = [(c.get_label(), [round(p.get_height()) for p in c.patches]) for c in ax.containers]
    assert drawn == [(label, values) for label, values in breakdown_segments(results) if any(values)]
    tops = [round(max(p.get_y() + p.get_height() for c in ax.containers for p in [c.patches[i]])) for i in range(3)]
    assert tops == [s["cycles"] for s in results]
    base = results[0]["cycles"]
    assert [t.get_text() for t in ax.texts] == [f"{s['cycles'] / base:.2f}×" for s in results]
    assert ax.texts[0].get_text() == "1.00×"


def test_png_svg_pdf_files(results, tmp_path):
    png, svg, pdf = tmp_path / "b.png", tmp_path / "b.svg", tmp_path / "b.PDF"
    for path in (png, svg, pdf):
        plot_breakdown(results, path, "mmu compare")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_bad_suffix_and_unwritable_path(results, tmp_path):
    with pytest.raises(MMUInputError, match=r"unsupported suffix '\.jpg'; use one of \.png, \.svg, \.pdf"):
        plot_breakdown(results, tmp_path / "b.jpg", "t")
    with pytest.raises(MMUInputError, match="cannot write"):
        plot_breakdown(results, tmp_path / "no" / "dir" / "b.png", "t")


def test_missing_matplotlib(results, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MMUInputError, match=r'needs matplotlib, which is not installed: pip install "mmu-lab\[plot\]"'):
        plot_breakdown(results, tmp_path / "b.png", "t")
    # the CLI fails before replaying anything, and writes nothing
    r = runner.invoke(app, ["compare", str(TRACE), "--plot", str(tmp_path / "c.png"), "-q"])
    assert_clean_failure(r, 'pip install "mmu-lab[plot]"')
    assert r.stdout == "" and not (tmp_path / "c.png").exists()


def test_cli_compare_plot(tmp_path):
    out = tmp_path / "c.svg"
    r = runner.invoke(app, ["compare", str(TRACE), "--modes", "native,shadow,nested:2m", "--plot", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "slowdown vs native" in r.stdout  # the table is still printed
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    assert "nested (ept 2m)" in out.read_text()


def test_cli_bad_suffix_fails_before_replaying(tmp_path):
    r = runner.invoke(app, ["compare", str(TRACE), "--plot", str(tmp_path / "c.gif")])
    assert_clean_failure(r, "unsupported suffix '.gif'")
    assert r.stdout == ""
