"""The shadow walk view (``mmu walk --mode shadow``): the guest's walk beside the shadow walk.

Addresses, decoded level by level (4-level paging):

* 0x0000_0000_0040_0000: PML4 0, PDPT 0, PD 2, PT 0
* 0x0000_0000_0040_1000: PML4 0, PDPT 0, PD 2, PT 1
* 0x0000_0000_0040_2000: PML4 0, PDPT 0, PD 2, PT 2 (never mapped by the guest)
* 0x0000_0000_0040_3000: PML4 0, PDPT 0, PD 2, PT 3
* 0x0000_0000_0060_0000: PML4 0, PDPT 0, PD 3 (the shadow demo's guest 2 MiB page), direct PT 0
* 0x0000_0000_0060_8000: PML4 0, PDPT 0, PD 3, direct PT 8 (outside the prefetched group 0..7)
* 0x0000_0040_0000_0000: PML4 0, PDPT 256 (never mapped by the guest)
"""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from mmu.cli import app
from mmu.engine import Machine, MachineConfig
from mmu.guest.os import O_CUR, P_ROOT
from mmu.modes.shadow import GF_WP, SP_FLAGS, SPF_DIRECT, SPF_UNSYNC, sh_root_hpa
from mmu.report.demo_guest import SHADOW_LAYOUT, build_shadow
from mmu.report.walkview import LEVEL_NAMES, WalkViewShadow, capture_shadow, hx, table_index, walk_renderable
from mmu.trace.format import OP_READ, OP_SWITCH, OP_WRITE, RECORD_DTYPE, write_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"
ADDR = 0x000F_FFFF_FFFF_F000
runner = CliRunner()


def render(view: WalkViewShadow, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width)
    console.print(walk_renderable(view))
    return console.file.getvalue()


def touch(m: Machine, *vas: int, op: int = OP_READ, pid: int = 1) -> None:
    recs = np.zeros(len(vas), dtype=RECORD_DTYPE)
    recs["addr"] = vas
    recs["arg"] = 8
    recs["pid"] = pid
    recs["op"] = op
    m.run(recs)


def guest_root(m: Machine) -> int:
    return int(m.osst.procs[int(m.osst.ometa[O_CUR]), P_ROOT])


def table_rows(text: str) -> list[list[str]]:
    """Rows of the view's table as lists of cells, each cell its lines joined by a space."""
    rows: list[list[str]] = []
    cur: list[list[str]] | None = None
    for line in text.splitlines():
        if line.startswith(("├", "╰")):
            if cur is not None:
                rows.append([" ".join(x for x in c if x) for c in cur])
            cur = None
        elif line.startswith("│") and "guest entry (gpa)" not in line:
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            if cur is None:
                cur = [[] for _ in cells]
            for i, c in enumerate(cells):
                cur[i].append(c)
    return rows


@pytest.fixture(scope="module")
def demo() -> Machine:
    return build_shadow()


# --- golden rows: the guest side is guest memory, the shadow side host memory --------------------


@pytest.mark.parametrize("va", [0x40_0000, 0x40_3000, 0x60_0000, 0x60_8000, 0x40_2000])
def test_rows_hold_guest_and_host_memory(demo, va):
    view = capture_shadow(demo, va, "r", True)
    # guest walk, decoded independently: entry gpa = table + 8 * index, value from guest memory
    table, expected = guest_root(demo), []
    for level in (4, 3, 2, 1):
        gpa = table + 8 * table_index(va, level)
        value = demo.read_guest(gpa)
        expected.append((level, gpa, value))
        if not value & 1 or (level in (2, 3) and value & 0x80):
            break
        table = value & ADDR
    got = [(r.level, r.guest_gpa, r.guest_value) for r in view.rows if r.guest_gpa is not None]
    assert got == expected
    # shadow walk: from the hardware CR3 (the shadow root), values from host memory
    assert view.cr3 & ADDR == int(sh_root_hpa(demo.sh))
    table, expected = view.cr3 & ADDR, []
    for level in (4, 3, 2, 1):
        hpa = table + 8 * table_index(va, level)
        value = demo.mem.read_u64(hpa)
        expected.append((level, hpa, value))
        if not value & 1 or value & 0x80:
            break
        table = value & ADDR
    got = [(r.level, r.shadow_hpa, r.shadow_value) for r in view.rows if r.shadow_hpa is not None]
    assert got == expected
    # and the rendering shows each of them on its level's row
    rows = table_rows(render(view))
    assert [r[0].split()[0] for r in rows] == [LEVEL_NAMES[r.level] for r in view.rows] + ["page"]
    for row, r in zip(rows, view.rows, strict=False):
        if r.guest_gpa is not None:
            assert f"gpa {hx(r.guest_gpa)}" in row[1] and hx(r.guest_value) in row[1]
        if r.shadow_hpa is not None:
            assert f"hpa {hx(r.shadow_hpa)}" in row[3] and hx(r.shadow_value) in row[3]


def test_capture_changes_nothing(demo):
    before = copy.deepcopy((demo.mem.state, demo.sh, demo.vm, demo.osst, demo.stats))
    for va, _ in SHADOW_LAYOUT:
        for access in "rwx":
            capture_shadow(demo, va, access, True)
    after = (demo.mem.state, demo.sh, demo.vm, demo.osst, demo.stats)
    for a, b in zip(before, after, strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y)


def test_ordinary_page_translates_without_exit(demo):
    view = capture_shadow(demo, 0x40_0000, "r", True)
    assert (view.guest_fault, view.shadow_fault, view.exit_reason) == (None, None, None)
    assert view.backing_hpa == view.shadow_hpa is not None
    text = render(view)
    assert "shadow paging" in text and "hardware CR3" in text
    assert "✔ backs the guest's gpa" in text
    assert "walks the shadow tables (4 references) and fills the TLB: no VM exit" in text
    # XD, set by the guest's edit, reached the shadow entry after its INVLPG
    assert view.rows[-1].guest_value >> 63 == view.rows[-1].shadow_value >> 63 == 1


# --- marks: write protection, unsync, direct --------------------------------------------------------


def test_leaf_table_is_write_protected_then_unsync_after_its_second_pte_store():
    m = Machine(MachineConfig(mode="shadow"))
    touch(m, 0x40_0000)  # one PTE store, before the table had a shadow; the fill then shadows it
    view = capture_shadow(m, 0x40_0000, "r", True)
    pt = view.rows[-1]
    assert pt.level == 1 and pt.guest_table_wp and not pt.guest_table_tracked
    assert not pt.shadow_page.unsync
    assert all(r.guest_table_wp and r.guest_table_tracked for r in view.rows[:-1])  # upper tables
    rows = table_rows(render(view))
    assert all("write-protected" in r[2] for r in rows[:4])
    assert "unsync" not in rows[3][4]

    touch(m, 0x40_1000)  # the second PTE store traps on the write-protected frame: unsync
    view = capture_shadow(m, 0x40_0000, "r", True)
    pt = view.rows[-1]
    gfn = pt.guest_gpa >> 12
    assert m.sh.gfs[gfn, GF_WP] == 0 and not pt.guest_table_wp
    assert pt.shadow_page.unsync and m.sh.spt[pt.shadow_page.sp, SP_FLAGS] & SPF_UNSYNC
    rows = table_rows(render(view))
    assert "writable" in rows[3][2] and "write-protected" not in rows[3][2]
    assert "unsync" in rows[3][4]
    assert all("write-protected" in r[2] for r in rows[:3])


def test_no_unsync_keeps_the_leaf_table_write_tracked():
    m = Machine(MachineConfig(mode="shadow", unsync=False))
    touch(m, 0x40_0000, 0x40_1000)
    pt = capture_shadow(m, 0x40_0000, "r", True).rows[-1]
    assert pt.guest_table_wp and pt.guest_table_tracked and not pt.shadow_page.unsync
    assert "stores emulated" in table_rows(render(capture_shadow(m, 0x40_0000)))[3][2]


def test_direct_shadow_page_splits_the_guest_large_page(demo):
    view = capture_shadow(demo, 0x60_0000, "r", True)
    assert view.guest_page_size == 1 << 21 and view.shadow_page_size == 1 << 12
    pde, pte = view.rows[-2], view.rows[-1]
    assert pde.guest_value & 0x80 and pte.guest_gpa is None  # the guest walk ends at its PDE
    sp = pte.shadow_page
    assert sp.direct and sp.level == 1 and sp.gfn == 0x400 and demo.sh.spt[sp.sp, SP_FLAGS] & SPF_DIRECT
    assert not sp.access & 1  # clean guest page: the direct page's role drops W
    rows = table_rows(render(view))
    assert "inside the guest's 2M page" in rows[3][1]
    assert "direct" in rows[3][4] and "role access R U" in rows[3][4]


# --- where the walks stop, and the exit a miss takes -----------------------------------------------


def test_not_present_shadow_entry_is_a_hidden_fault(demo):
    view = capture_shadow(demo, 0x60_8000, "r", True)
    assert view.guest_fault is None and view.shadow_fault == "pf" and view.exit_reason == "hidden_fault"
    assert view.rows[-1].shadow_value == 0
    text = render(view)
    rows = table_rows(text)
    assert "✘" in rows[3][3] and "not present" in rows[3][3] and "VM exit hidden_fault" in rows[3][3]
    assert "shadow tables: ✘ #PF (not present at the PTE level)" in text
    assert "VM exit hidden_fault: hidden fault" in text


def test_guest_fault_is_injected(demo):
    view = capture_shadow(demo, 0x40_1000, "w", True)
    assert view.guest_fault == "pf" and view.exit_reason == "pf_inject"
    text = render(view)
    assert "guest tables: ✘ #PF error code 0x7 (P|W|U): write to a read-only page" in text
    assert "VM exit pf_inject" in text
    view = capture_shadow(demo, 0x40_2000, "r", True)
    rows = table_rows(render(view))
    assert "✘" in rows[3][1] and "not present" in rows[3][1]


def test_stale_unsync_entry_is_marked(demo):
    view = capture_shadow(demo, 0x40_3000, "r", True)
    assert view.guest_gpa == 0x20_3000 and view.exit_reason is None
    assert view.shadow_gpa is not None and view.shadow_gpa != view.guest_gpa
    assert view.rows[-1].shadow_page.unsync
    text = render(view)
    assert "stale" in table_rows(text)[-1][4] and "the shadow entry is stale" in text


def test_non_canonical_address_is_a_gp(demo):
    view = capture_shadow(demo, 0x8000_0000_0000, "r", True)
    assert view.guest_fault == "gp" and view.rows == ()
    assert "#GP: gVA 0x800000000000 is not canonical" in render(view)


def _exits_taken(m: Machine, va: int, access: str) -> set[str]:
    run = copy.deepcopy(m)
    before = run.result()["exits"]
    touch(run, va, op={"r": OP_READ, "w": OP_WRITE}[access])
    after = run.result()["exits"]
    return {r for r, e in after.items() if e["count"] > before.get(r, {"count": 0})["count"]}


@pytest.mark.parametrize(
    "va, access, reason",
    [
        (0x40_0000, "r", None),
        (0x40_0000, "w", "ad_dirty"),  # the guest cleaned its PTE (D clear, as after writeback)
        (0x40_1000, "w", "pf_inject"),
        (0x40_2000, "r", "pf_inject"),
        (0x60_0000, "w", "ad_dirty"),  # a clean 2M page: dirtying it changes the direct page's role
        (0x60_8000, "r", "hidden_fault"),
        (0x40_0000_0000, "r", "pf_inject"),
        (0xFFFF_8000_0000_0000, "r", "pf_inject"),
        (0x40_3000, "r", None),  # the stale shadow entry still translates
        (0x40_3000, "w", None),  # the stale entry is writable: the guest's first access wrote it
    ],
)
def test_predicted_exit_is_the_one_the_machine_takes(demo, va, access, reason):
    view = capture_shadow(demo, va, access, True)
    assert view.exit_reason == reason
    taken = _exits_taken(demo, va, access)
    assert (reason in taken) if reason else not taken


def test_write_to_a_guest_table_frame_is_a_tracing_write():
    """The guest maps 0x40_1000 onto its own page directory (an upper-level table: write-tracked)."""
    m = Machine(MachineConfig(mode="shadow"))
    touch(m, 0x40_0000, 0x40_1000)
    pd_gpa = m.read_guest(guest_root(m) + 0) & ADDR  # PML4E 0 -> PDPT
    pd_gpa = m.read_guest(pd_gpa + 0) & ADDR  # PDPTE 0 -> PD
    pte_gpa = (m.read_guest(pd_gpa + 8 * 2) & ADDR) + 8 * 1  # PDE 2 -> PT, PTE 1
    m.guest_store(pte_gpa, pd_gpa | 0x67)  # P RW US A D
    m.invlpg(0x40_1000)
    touch(m, 0x40_1000)
    view = capture_shadow(m, 0x40_1000, "w", True)
    assert view.guest_gpa == pd_gpa and view.exit_reason == "tracing_write"
    assert not view.rows[-1].shadow_value & 2  # mapped read-only: the frame is write-protected
    assert "VM exit tracing_write" in render(view)
    assert "tracing_write" in _exits_taken(m, 0x40_1000, "w")


def test_capture_needs_a_shadow_machine_with_a_process():
    from mmu.errors import MMUInputError

    with pytest.raises(MMUInputError, match="shadow mode"):
        capture_shadow(Machine(MachineConfig()), 0x40_0000)
    with pytest.raises(MMUInputError, match="no shadow root"):
        capture_shadow(Machine(MachineConfig(mode="shadow")), 0x40_0000)


# --- CLI -----------------------------------------------------------------------------------------


def run(*args):
    return runner.invoke(app, ["walk", *[str(a) for a in args]])


def test_cli_demo_guest():
    r = run("0x400000", "--mode", "shadow", "--width", 160)
    assert r.exit_code == 0, r.output
    assert "shadow paging, 4-level" in r.stdout and "shadow demo guest" in r.stdout
    assert "write-protected" in r.stdout and "unsync" in r.stdout and "no VM exit" in r.stdout
    r = run("0x608000", "--mode", "shadow")
    assert r.exit_code == 0, r.output
    assert "VM exit hidden_fault" in r.stdout


def test_cli_help_documents_the_shadow_demo():
    r = runner.invoke(app, ["walk", "--help"])
    assert r.exit_code == 0
    assert "--mode shadow" in r.stdout and "direct" in r.stdout


def test_cli_trace_index():
    r = run("--trace", TRACES / "ls-usr.trace", "--index", 5000, "--mode", "shadow", "--width", 160)
    assert r.exit_code == 0, r.output
    assert "record 5000: fetch of 3 bytes at 0x4013e16 by pid 1" in r.stdout
    assert "shadow paging" in r.stdout and "✔ backs the guest's gpa" in r.stdout
    # the fetch hits the warm TLB: every shadow entry is marked skipped
    assert "warm at record 5000: TLB hit (L1 ITLB 4K), no walk" in r.stdout
    assert len(re.findall("skip · TLB(?!/)", r.stdout)) == 4  # not the legend


def test_cli_trace_walks_the_records_process(tmp_path):
    recs = np.zeros(4, dtype=RECORD_DTYPE)
    recs["op"] = [OP_WRITE, OP_SWITCH, OP_READ, OP_READ]
    recs["pid"] = [1, 1, 2, 1]
    recs["addr"] = [0x1000, 0, 0x2000, 0x1008]
    recs["arg"] = [8, 0, 8, 8]
    path = tmp_path / "t.trace"
    write_trace(path, recs, {"source": "test"})
    r = run("--trace", path, "--index", 2, "--mode", "shadow")  # pid 2's first access: empty tables
    assert r.exit_code == 0, r.output
    assert "by pid 2" in r.stdout and "not present at the PML4E level" in r.stdout
    assert "VM exit pf_inject" in r.stdout and "#PF on the shadow tables: VM exit to the VMM" in r.stdout
    r = run("--trace", path, "--index", 3, "--mode", "shadow")  # back in pid 1: its shadow root
    assert r.exit_code == 0, r.output
    assert "by pid 1" in r.stdout and "user read allowed" in r.stdout and "no VM exit" in r.stdout


def test_cli_svg_and_html(tmp_path):
    svg, html = tmp_path / "w.svg", tmp_path / "w.html"
    r = run("0x600000", "--mode", "shadow", "--svg", svg, "--html", html)
    assert r.exit_code == 0, r.output
    s, h = svg.read_text(), html.read_text()
    assert s.startswith("<svg") and "direct" in s
    assert "<html" in h.lower() and "shadow paging" in h


def test_cli_host_large_pages_reach_the_shadow_leaf():
    # The engine backs guest memory with 2 MiB host pages: the guest 2 MiB page gets one large
    # shadow entry (no direct page), since no guest table lies in its region.
    r = run("0x600000", "--mode", "shadow", "--host-page", "2m", "--width", 160)
    assert r.exit_code == 0, r.output
    rows = table_rows(r.stdout)
    assert [row[0].split()[0] for row in rows] == ["PML4E", "PDPTE", "PDE", "page"]
    assert "PS" in rows[2][3] and "2M page" in rows[3][3]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["0x1000", "--mode", "warp"], "unknown mode 'warp'; choose native, nested or shadow"),
        (["0x1000", "--mode", "shadow", "--npt"], "apply to --mode nested"),
        (["0x1000", "--mode", "shadow", "--ept-levels", "5"], "apply to --mode nested"),
        (["0x1000", "--mode", "shadow", "--host-page", "3m"], "unknown host page size"),
        (["0x1000", "--mode", "shadow", "--access", "q"], "--access must be r, w or x"),
        (["--trace", TRACES / "ls-usr.trace", "--index", "200000", "--mode", "shadow"], "out of range"),
    ],
)
def test_cli_bad_input(args, fragment):
    from clicheck import assert_clean_failure

    assert_clean_failure(run(*args), fragment)
