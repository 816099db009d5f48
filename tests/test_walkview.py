"""Walk views (``mmu.report.walkview``), the demo guest and ``mmu walk``.

Renderers are checked as plain text (a ``Console`` writing to a StringIO, no colour) and, for the
fault highlight, with colour forced on. Demo-guest addresses, decoded level by level:

* 0x0000_0000_0040_0000: PML4 0, PDPT 0, PD 2, PT 0, offset 0 -> gpa 0x20_0000 (4 KiB, user RW XD)
* 0x0000_0000_0040_1000: PML4 0, PDPT 0, PD 2, PT 1 -> gpa 0x20_1000 (4 KiB, user read-only)
* 0x0000_0000_0040_2000: PML4 0, PDPT 0, PD 2, PT 2 -> not present
* 0x0000_0000_0040_3000: PML4 0, PDPT 0, PD 2, PT 3 -> gpa 0x8000_3000, never backed by the host
* 0x0000_0000_0060_0000: PML4 0, PDPT 0, PD 3 (2 MiB leaf) -> gpa 0x40_0000
* 0x0000_0040_0000_0000: PML4 0, PDPT 256 (1 GiB leaf) -> gpa 0x4000_0000
* 0xffff_8000_0000_0000: PML4 256, PDPT 0, PD 0, PT 0 -> gpa 0x20_2000 (supervisor)
"""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path

import numpy as np
import pytest
from clicheck import assert_clean_failure
from rich.console import Console
from typer.testing import CliRunner

import mmu
from mmu.cli import app
from mmu.report.demo_guest import GUEST_RAM_HPA, build_native, build_nested
from mmu.report.walkview import capture_1d, capture_2d, grid_rows, hx, walk_renderable
from mmu.trace.format import OP_READ, OP_SWITCH, OP_WRITE, RECORD_DTYPE, write_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"
runner = CliRunner()


def render(view, width: int = 120, color: bool = False) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=color, color_system="standard" if color else None)
    console.print(walk_renderable(view))
    return console.file.getvalue()


def native_view(va: int, access: str = "r", user: bool = True):
    g = build_native()
    after = copy.deepcopy(g.mem)
    r = mmu.walk(after, g.cr3, va, access, user=user)
    return r, capture_1d(r, g.mem, after, va, g.cr3, access, user)


def nested_view(va: int, access: str = "r", user: bool = True, **host):
    g = build_nested(**host)
    after = copy.deepcopy(g.mem)
    r = mmu.walk_nested(after, g.eptp, g.cr3, va, access, user=user, ept_levels=g.ept_levels, npt=g.npt)
    view = capture_2d(
        r, g.mem, after, va, g.cr3, g.eptp, access, user, ept_levels=g.ept_levels, ept_ad=g.ept_ad, npt=g.npt
    )
    return r, view


def grid_cells(text: str) -> list[list[list[str]]]:
    """The grid's body as rows of cells, each cell a list of its text lines."""
    grid = text[: text.index("references:")]
    rows: list[list[list[str]]] = []
    cur: list[list[str]] | None = None
    for line in grid.splitlines():
        if line.startswith(("├", "╰")):
            if cur is not None:
                rows.append(cur)
            cur = None
        elif line.startswith("│") and "guest level" not in line:
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            if cur is None:
                cur = [[] for _ in cells]
            for i, c in enumerate(cells):
                cur[i].append(c)
    return rows


# --- the demo guest ---------------------------------------------------------------------------


def test_demo_guest_is_deterministic_and_fresh():
    a, b = build_native(), build_native()
    for pa in range(0x1000, 0x8000, 8):
        assert a.mem.read_u64(pa) == b.mem.read_u64(pa)
    assert a.mem.read_u64(0x1000) == 0x2007  # gPML4E 0 -> PDPT at 0x2000, P RW US, A clear
    g = build_nested("2m", ept_levels=5, ept_ad=True)
    assert g.eptp & 0x78 == (4 << 3) | 0x40  # walk length 5, A/D
    assert g.mem.read_u64(GUEST_RAM_HPA + 0x1000) == 0x2007


@pytest.mark.parametrize(
    "va, size, gpa",
    [(0x40_0000, 1 << 12, 0x20_0000), (0x60_0123, 1 << 21, 0x40_0123), (0x40_0000_1234, 1 << 30, 0x4000_1234)],
)
def test_demo_guest_page_sizes(va, size, gpa):
    r, _ = native_view(va)
    assert (r.fault, r.pa, r.page_size) == (None, gpa, size)
    for host_page in ("4k", "2m", "1g"):
        rn, _ = nested_view(va, host_page=host_page)
        assert (rn.fault, rn.gpa, rn.hpa) == (None, gpa, GUEST_RAM_HPA + gpa)


# --- 1D ----------------------------------------------------------------------------------------


def entry_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if re.match(r"\s*(✘ )?#\d+\s", line)]


def test_1d_rows_decode_levels_indices_and_bits():
    va = 0xFFFF_8000_0000_0000  # PML4 256, PDPT 0, PD 0, PT 0
    r, view = native_view(va, user=False)
    text = render(view)
    rows = entry_rows(text)
    assert [row[:5] for row in rows] == [
        ["#1", "PML4E", "47:39", "256", hx(r.refs[0])],
        ["#2", "PDPTE", "38:30", "0", hx(r.refs[1])],
        ["#3", "PDE", "29:21", "0", hx(r.refs[2])],
        ["#4", "PTE", "20:12", "0", hx(r.refs[3])],
    ]
    assert r.refs[0] == 0x1000 + 256 * 8
    assert "offset" in text and "0x20_2000" in text
    assert "✔" in text and "supervisor read allowed: VA 0xffff_8000_0000_0000 → PA 0x20_2000" in text


def test_1d_large_page_stops_early_and_shows_offset():
    _, view = native_view(0x60_0123, access="w")
    text = render(view)
    assert [row[1] for row in entry_rows(text)] == ["PML4E", "PDPTE", "PDE"]
    assert "2M page 0x40_0000" in text
    assert re.search(r"offset\s+20:0\s+0x123\s+0x40_0123", text)


def test_1d_not_present_fault_is_marked():
    r, view = native_view(0x40_2000)
    assert r.fault == "pf"
    text = render(view)
    rows = entry_rows(text)
    assert rows[-1][:3] == ["✘", "#4", "PTE"] and "not" in rows[-1]
    assert all(row[0] != "✘" for row in rows[:-1])
    assert "#PF error code 0x4 (U): not present at the PTE level" in text
    colored = render(view, color=True)
    fault_line = next(line for line in colored.splitlines() if "#4" in line)
    assert "\x1b[1;31m" in fault_line  # bold red


@pytest.mark.parametrize(
    "va, access, user, verdict",
    [
        (0x40_1000, "w", True, "#PF error code 0x7 (P|W|U): write to a read-only page"),
        (0xFFFF_8000_0000_0000, "r", True, "#PF error code 0x5 (P|U): user-mode access to a supervisor page"),
        (0x40_0000, "x", True, "#PF error code 0x15 (P|U|I): instruction fetch from a no-execute page"),
        (0x8000_0000_0000, "r", True, "#GP: VA 0x800000000000 is not canonical"),
    ],
)
def test_1d_fault_verdicts(va, access, user, verdict):
    _, view = native_view(va, access, user)
    assert verdict in render(view)


def test_ad_changes_are_marked_only_when_the_walk_sets_them():
    g = build_native()
    after = copy.deepcopy(g.mem)
    r = mmu.walk(after, g.cr3, 0x40_0000, "w", user=True)
    first = render(capture_1d(r, g.mem, after, 0x40_0000, g.cr3, "w", True))
    rows = entry_rows(first)
    assert all("+A" in row for row in rows)
    assert [("+D" in row) for row in rows] == [False, False, False, True]
    # walk again: A and D are already set, so nothing changes and nothing is marked
    again = copy.deepcopy(after)
    r2 = mmu.walk(again, g.cr3, 0x40_0000, "w", user=True)
    second = render(capture_1d(r2, after, again, 0x40_0000, g.cr3, "w", True))
    assert "+A" not in second.split("legend")[0] and "+D" not in second.split("legend")[0]
    assert all("A" in row for row in entry_rows(second))
    # a faulting walk writes nothing
    _, view = native_view(0x40_1000, "w")
    assert "+A" not in render(view).split("legend")[0]


# --- 2D ----------------------------------------------------------------------------------------


def test_2d_grid_numbers_in_hardware_order_4k():
    r, view = nested_view(0x40_0000)
    assert r.fault is None and len(r.refs) == 24
    text = render(view)
    cells = grid_cells(text)
    assert len(cells) == 5  # gPML4E, gPDPTE, gPDE, gPTE, data
    # golden: row i holds host references 5i+1..5i+4 left to right, then the guest entry 5i+5
    for i, row in enumerate(cells):
        numbers = [re.match(r"#(\d+)", c[0]).group(1) if c[0].startswith("#") else None for c in row[1:]]
        expected = [str(5 * i + k) for k in range(1, 6)]
        if i == 4:
            expected[4] = None  # the data row ends with the data access, not an entry
        assert numbers == expected, (i, row)
    # each cell's address is the hpa of that reference, as the walker reported it
    for row in cells:
        for c in row[1:]:
            if c[0].startswith("#"):
                n = int(re.match(r"#(\d+)", c[0]).group(1))
                dim, _level, hpa = r.refs[n - 1]
                assert c[1] == hx(hpa)
                assert (dim == "g") == (c is row[-1])
    # column headers and row labels
    assert re.search(r"guest level\s+│ EPT PML4E │ EPT PDPTE │ EPT PDE\s+│ EPT PTE\s+│ guest entry", text)
    assert [row[0][0] for row in cells] == ["gPML4E", "gPDPTE", "gPDE", "gPTE", "data"]
    assert cells[3][0][1] == "idx 0 (20:12)" and cells[4][0][2] == "gpa 0x20_0000"
    assert "hpa 0x1_0020_0000" in cells[4][5][1]
    # reading the grid top-down, left to right gives 1..24
    assert [int(x) for x in re.findall(r"#(\d+)", text[: text.index("references:")])] == list(range(1, 25))
    assert "24 references: 20 host + 4 guest" in text


def test_2d_grid_rows_cover_every_reference_once():
    for va in (0x40_0000, 0x60_0000, 0x40_0000_0000, 0x40_2000, 0x40_3000):
        for host_page in ("4k", "2m", "1g"):
            r, view = nested_view(va, host_page=host_page)
            placed = []
            for row in grid_rows(view):
                placed += [row.host[lv].n for lv in sorted(row.host, reverse=True)]
                if row.guest is not None:
                    placed.append(row.guest.n)
            assert placed == list(range(1, len(r.refs) + 1)), (va, host_page)


def test_2d_grid_with_2m_host_pages_leaves_the_ept_pte_column_empty():
    r, view = nested_view(0x40_0000, host_page="2m")
    assert len(r.refs) == 19
    text = render(view)
    cells = grid_cells(text)
    assert all(not any(row[4]) for row in cells)  # EPT PTE column
    assert [c[0] for c in cells[0][1:4]] == ["#1", "#2", "#3"]
    assert "rwxu 2M" in cells[0][3][2]
    assert "19 references: 15 host + 4 guest" in text
    assert "(guest 4K, host 2M page → 4K translation)" in text


def test_2d_guest_fault_marks_the_guest_cell_and_leaves_the_rest_unreached():
    r, view = nested_view(0x40_2000)
    assert r.fault == "pf" and len(r.refs) == 20
    text = render(view)
    cells = grid_cells(text)
    assert cells[3][5][0] == "#20 ✘" and cells[3][5][2] == "not present"
    assert [c[0] for c in cells[4][1:]] == ["·"] * 5
    assert "guest #PF error code 0x4 (U): not present at the PTE level" in text
    assert "no VM exit" in text


def test_2d_ept_violation_on_the_final_gpa():
    r, view = nested_view(0x40_3000)
    assert r.fault == "ept_violation" and r.gpa == 0x8000_3000
    text = render(view)
    cells = grid_cells(text)
    assert cells[4][0][2] == "gpa 0x8000_3000"
    assert cells[4][2][0] == "#22 ✘" and cells[4][2][2] == "not present"
    assert "EPT violation on gpa 0x8000_3000 (EPT PDPTE not present): VM exit, exit qualification 0x181" in text
    assert "data read · EPT rights --- · guest linear address valid · access to the final gpa" in text


def test_2d_npt_fault_and_nested_ad_marks():
    r, view = nested_view(0x40_3000, npt=True)
    assert r.fault == "npf"
    text = render(view)
    assert "#VMEXIT(NPF) on gpa 0x8000_3000 (NPT PDPTE not present), EXITINFO1 0x1_0000_0004" in text
    assert "error code U (not present) · fault on the final gpa" in text
    assert "NPT PML4E" in text
    _, view = nested_view(0x40_0000, "w", npt=True)
    cells = grid_cells(render(view))
    # NPT keeps A/D: guest-table reads are nested writes, so every host leaf gets A and D
    assert cells[0][4][0] == "#4 +A +D" and cells[0][1][0] == "#1 +A"
    assert cells[3][5][0] == "#20 +A +D"  # the guest PTE of a write


def test_2d_ept_ad_marks_host_cells():
    _, view = nested_view(0x40_0000, ept_ad=True)
    cells = grid_cells(render(view))
    assert cells[0][1][0] == "#1 +A" and cells[0][5][0] == "#5 +A"
    _, view = nested_view(0x40_0000)
    cells = grid_cells(render(view))
    assert cells[0][1][0] == "#1" and cells[0][5][0] == "#5 +A"  # EPT A/D off: host entries untouched


def test_2d_five_level_ept_has_29_references():
    r, view = nested_view(0x40_0000, ept_levels=5)
    text = render(view, width=140)
    assert len(r.refs) == 29 and "EPT PML5E" in text
    assert [int(x) for x in re.findall(r"#(\d+)", text[: text.index("references:")])] == list(range(1, 30))


@pytest.mark.parametrize("width", [100, 140])
def test_2d_renders_at_other_widths(width):
    _, view = nested_view(0x40_0000)
    text = render(view, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert [int(x) for x in re.findall(r"#(\d+)", text[: text.index("references:")])] == list(range(1, 25))


# --- CLI ---------------------------------------------------------------------------------------


def run(*args):
    return runner.invoke(app, ["walk", *[str(a) for a in args]])


def lines_with(text: str, *fragments: str) -> list[str]:
    return [line for line in text.splitlines() if all(f in line for f in fragments)]


def test_cli_native():
    r = run("0x400000")
    assert r.exit_code == 0, r.output
    assert (
        "native, 4-level paging" in r.stdout
        and "PML4E" in r.stdout
        and "VA 0x40_0000 → PA 0x20_0000, 4 KiB page" in r.stdout
    )


def test_cli_native_fault_is_not_an_error():
    r = run("4202496")  # 0x402000, decimal
    assert r.exit_code == 0, r.output
    assert "#PF error code 0x4 (U)" in r.stdout


@pytest.mark.parametrize("host_page, refs", [("4k", 24), ("2m", 19), ("1g", 14)])
def test_cli_nested(host_page, refs):
    r = run("0x400000", "--mode", "nested", "--host-page", host_page, "--access", "w")
    assert r.exit_code == 0, r.output
    assert f"{refs} references" in r.stdout and "gpa 0x20_0000 → hpa 0x1_0020_0000" in r.stdout


def test_cli_nested_npt_and_supervisor():
    r = run("0xffff800000000000", "--mode", "nested", "--npt", "--supervisor", "--ept-levels", "5")
    assert r.exit_code == 0, r.output
    assert "AMD NPT, 5 levels" in r.stdout and "supervisor read allowed" in r.stdout


def test_cli_help_documents_the_demo_layout():
    r = runner.invoke(app, ["walk", "--help"])
    assert r.exit_code == 0
    for va in ("0x0000_0000_0040_0000", "0x0000_0000_0040_2000", "0xffff_8000_0000_0000", "0x0000_0040_0000_0000"):
        assert va in r.stdout


@pytest.mark.parametrize("mode", ["native", "nested"])
def test_cli_trace_index(mode):
    r = run("--trace", TRACES / "ls-usr.trace", "--index", 5000, "--mode", mode)
    assert r.exit_code == 0, r.output
    assert "record 5000: fetch of 3 bytes at 0x4013e16 by pid 1" in r.stdout
    assert "0x0000_0000_0401_3e16" in r.stdout and "✔" in r.stdout
    # the fetch hits the warm TLB: every reference of the cold walk is marked skipped
    assert "warm at record 5000: TLB hit (L1 ITLB 4K), no walk" in r.stdout
    assert len(re.findall("skip · TLB(?!/)", r.stdout)) == (24 if mode == "nested" else 4)  # not the legend
    if mode == "nested":
        assert "24 references" in r.stdout


def test_cli_trace_index_zero_walks_empty_tables():
    r = run("--trace", TRACES / "ls-usr.trace", "--index", 0)
    assert r.exit_code == 0, r.output
    assert "no records" in r.stdout and "not present at the PML4E level" in r.stdout
    assert lines_with(r.stdout, "#1", "PML4E", "w1 · mem")  # nothing cached: the line comes from memory


def test_cli_trace_new_process_and_event_record(tmp_path):
    recs = np.zeros(4, dtype=RECORD_DTYPE)
    recs["op"] = [OP_WRITE, OP_SWITCH, OP_READ, OP_READ]
    recs["pid"] = [1, 1, 2, 1]
    recs["addr"] = [0x1000, 0, 0x2000, 0x1008]
    recs["arg"] = [8, 0, 8, 8]
    path = tmp_path / "t.trace"
    write_trace(path, recs, {"source": "test"})
    r = run("--trace", path, "--index", 2)  # pid 2's first access: its tables are still empty
    assert r.exit_code == 0, r.output
    assert "by pid 2" in r.stdout and "not present at the PML4E level" in r.stdout
    r = run("--trace", path, "--index", 3)  # pid 1 again: the page its write mapped
    assert r.exit_code == 0, r.output
    assert "read of 8 bytes at 0x1008 by pid 1" in r.stdout and "✔" in r.stdout
    r = run("0x1000", "--trace", path, "--index", 3, "--access", "w")  # another VA in pid 1's tables
    assert r.exit_code == 0, r.output
    assert "walking the given VA 0x1000 instead" in r.stdout and "user write allowed" in r.stdout
    assert_clean_failure(run("--trace", path, "--index", 1), "record 1 is an OS event ('switch')")


def test_cli_svg_and_html(tmp_path):
    svg, html = tmp_path / "w.svg", tmp_path / "w.html"
    r = run("0x400000", "--mode", "nested", "--svg", svg, "--html", html)
    assert r.exit_code == 0, r.output
    s, h = svg.read_text(), html.read_text()
    assert s.startswith("<svg") and "EPT" in s
    assert "<html" in h.lower() and "24 references" in h


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["0xzz"], "bad virtual address '0xzz'"),
        (["-"], "bad virtual address"),
        (["0x1" + "0" * 16], "does not fit in 64 bits"),
        (["0x1000", "--access", "q"], "--access must be r, w or x"),
        (["0x1000", "--mode", "warp"], "unknown mode 'warp'"),
        (["0x1000", "--npt"], "apply to --mode nested"),
        (["0x1000", "--mode", "nested", "--host-page", "3m"], "unknown host page size"),
        (["0x1000", "--mode", "nested", "--ept-levels", "3"], "--ept-levels must be 4 or 5"),
        (["--index", "3"], "--trace and --index go together"),
        (["--trace", TRACES / "ls-usr.trace", "--index", "200000"], "--index 200000 is out of range"),
        (["--trace", TRACES / "ls-usr.trace", "--index", "-1"], "is out of range"),
        (["--trace", "/nonexistent.trace", "--index", "0"], "/nonexistent.trace"),
    ],
)
def test_cli_bad_input(args, fragment):
    assert_clean_failure(run(*args), fragment)


def test_cli_unwritable_export(tmp_path):
    assert_clean_failure(run("0x400000", "--svg", tmp_path / "no" / "such" / "dir.svg"), "cannot write")
