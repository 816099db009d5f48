"""Warm marks of ``mmu walk`` (``mmu.report.warm``): what the machine's caches would serve at a trace
position, checked against what the machine then does, and ``mmu walk --program``.

The essential check: probe record N in a machine that has run records 0..N-1, then run record N
and compare the stats deltas with the prediction -- walks, walk references (guest / host), where
each reference's line came from, TLB misses. A translation that completes in hardware must match
exactly. One that ends in a fault or a VM exit (a guest #PF, an EPT violation, a shadow #PF) is
followed by the handler and a retried translation, which the probe does not cover: there the
prediction is only a lower bound. Records that cross a page boundary translate two pages (the
view shows the first) and are not sampled.

The hand-built trace, decoded level by level (4-level paging; CR4.PCIDE off, so a process switch
flushes the TLB and the paging-structure caches):

* A = 0x4000_0000: PML4 0, PDPT 1, PD 0, PT 0
* D = 0x8000_0000: PML4 0, PDPT 2, PD 0, PT 0 (same PML4E as A)
* E = 0x4020_0000: PML4 0, PDPT 1, PD 1, PT 0 (same PDPTE as A)
* F = 0x4000_1000: PML4 0, PDPT 1, PD 0, PT 1 (same PDE as A)
* G = 0x4000_2000: PML4 0, PDPT 1, PD 0, PT 2 (same PDE as A; read before it is written)

Records 0-3 map A, D, E, F (pid 1); record 4 switches to pid 2 (flush); then pid 1 again:
5 reads A (a walk from the root), 6 D (PML4E cache hit: the walk starts at the PDPT), 7 E (PDPTE
cache hit: starts at the PD), 8 F (PDE cache hit: starts at the PT), 9 A (TLB hit), 10 G (a
first touch: a read, so the guest maps the zero page read-only), 11 G (TLB hit), 12 writes G
through that read-only TLB entry: a guest #PF (copy-on-write from the zero page); under shadow
paging the #PF exits to the VMM first.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import mmu
from mmu.cli import app
from mmu.cli.report import enter_process, machine_view
from mmu.engine import Machine, MachineConfig
from mmu.guest.asm import assemble_file
from mmu.guest.run import run_program
from mmu.modes.shadow import SM_FLUSH, SM_RELOAD, SP_FLAGS, SPF_INVALID
from mmu.report.demo_guest import build_native
from mmu.report.walkview import WarmRef, WarmWalk, capture_1d, hx, walk_renderable, warm_marks
from mmu.report.warm import probe
from mmu.stats import (
    S_GUEST_PF,
    S_REF_DRAM,
    S_REF_L2_HITS,
    S_REF_LLC_HITS,
    S_TLB_MISSES,
    S_VM_EXITS,
    S_WALK_REFS,
    S_WALK_REFS_GUEST,
    S_WALK_REFS_HOST,
    S_WALKS,
)
from mmu.trace.format import OP_FETCH, OP_READ, OP_WRITE, RECORD_DTYPE, TraceReader, is_access, write_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"
PROGRAMS = TRACES / "programs"
runner = CliRunner()

A, D, E, F, G = 0x4000_0000, 0x8000_0000, 0x4020_0000, 0x4000_1000, 0x4000_2000
HAND = [
    (OP_WRITE, 1, A), (OP_WRITE, 1, D), (OP_WRITE, 1, E), (OP_WRITE, 1, F), (OP_READ, 2, 0x1000),
    (OP_READ, 1, A), (OP_READ, 1, D), (OP_READ, 1, E), (OP_READ, 1, F), (OP_READ, 1, A),
    (OP_READ, 1, G), (OP_READ, 1, G), (OP_WRITE, 1, G),
]  # fmt: skip
CONFIGS = {
    "native": {"mode": "native"},
    "nested-4k": {"mode": "nested"},
    "nested-2m": {"mode": "nested", "host_page": "2m"},
    "shadow": {"mode": "shadow"},
}
# Nested with no nested TLB and no host PSCs: after the switch's flush, nothing is cached at all.
NESTED_UNCACHED = {"mode": "nested", "ntlb_entries": 0, "host_psc": False}


def _records(*rows: tuple) -> np.ndarray:
    recs = np.zeros(len(rows), dtype=RECORD_DTYPE)
    for i, row in enumerate(rows):
        recs[i] = row
    return recs


def hand_records() -> np.ndarray:
    recs = np.zeros(len(HAND), dtype=RECORD_DTYPE)
    recs["op"] = [op for op, _, _ in HAND]
    recs["pid"] = [pid for _, pid, _ in HAND]
    recs["addr"] = [addr for _, _, addr in HAND]
    recs["arg"] = 8
    return recs


def read_all(path: Path) -> np.ndarray:
    return next(TraceReader(path).chunks(1 << 22))


def state_arrays(m: Machine) -> list[np.ndarray]:
    """Copies of every array of the machine's state (memory, allocators, VMM, OS, hardware, stats)."""
    out: list[np.ndarray] = []

    def add(x) -> None:
        if isinstance(x, tuple):
            for a in x:
                add(a)
        elif x is not None:
            out.append(np.array(x, copy=True))

    for part in (m.mem.state, m.mem.alloc.state, m.galloc.state, m.vm, m.hcache, m.sh, m.osst, m.tlb, m.psc, m.ptc):
        add(part)
    add(m.stats)
    add(m.cfg)
    return out


def same_state(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def probe_then_run(m: Machine, recs: np.ndarray, i: int, verify: bool = True) -> tuple[WarmWalk, np.ndarray]:
    """Probe record ``i`` (the machine has run records 0..i-1), check that the probe changed
    nothing (``verify``: copying the whole state is slow), run the record; returns the
    prediction and the stats deltas of the run."""
    rec = recs[i]
    enter_process(m, int(rec["pid"]))
    before = state_arrays(m) if verify else []
    w = probe(m, int(rec["addr"]), "rwx"[int(rec["op"])], True, i)
    assert not verify or same_state(before, state_arrays(m)), f"record {i}: the probe changed the machine"
    stats = m.stats.copy()
    m.run(recs[i : i + 1])
    return w, m.stats - stats


def predicted(w: WarmWalk) -> dict[int, int]:
    """The counters the probe's answer implies for the translation attempt it covers."""
    nested = w.mode == "nested"
    return {
        S_WALKS: int(w.start_level > 0),
        S_WALK_REFS: len(w.refs),
        S_WALK_REFS_GUEST: sum(r.dim == "g" for r in w.refs) if nested else 0,
        S_WALK_REFS_HOST: sum(r.dim == "h" for r in w.refs) if nested else 0,
        S_REF_L2_HITS: sum(r.source == "L2" for r in w.refs),
        S_REF_LLC_HITS: sum(r.source == "LLC" for r in w.refs),
        S_REF_DRAM: sum(r.source == "mem" for r in w.refs),
        S_TLB_MISSES: int(w.tlb_hit is None and w.outcome != "gp"),
    }


def check(w: WarmWalk, delta: np.ndarray) -> None:
    want = predicted(w)
    got = {k: int(delta[k]) for k in want}
    if w.outcome == "ok":
        assert got == want, f"record {w.record}: {w}"
    else:
        # a fault or VM exit: its handler runs and the translation is retried
        assert all(got[k] >= v for k, v in want.items()), f"record {w.record}: {got} < {want}"
        assert delta[S_GUEST_PF] + delta[S_VM_EXITS] >= 1


def kinds(w: WarmWalk, host_levels: int = 4) -> set[str]:
    """What served the translation: "tlb", "psc", "root" (a walk from the root), "ntlb", "hpsc"."""
    out: set[str] = set()
    if w.start_level == 0:
        return {"tlb"} if w.tlb_hit else out
    out.add("psc" if w.psc_hit else "root")
    if w.ntlb_rows:
        out.add("ntlb")
    starts: dict[int, int] = {}
    for r in w.refs:
        if r.dim == "h":
            starts[r.row] = max(starts.get(r.row, 0), r.level)
    if any(level < host_levels for level in starts.values()):
        out.add("hpsc")
    return out


def render(view, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width)
    console.print(walk_renderable(view))
    return console.file.getvalue()


def hand_machine(config: dict, upto: int) -> tuple[Machine, np.ndarray]:
    recs = hand_records()
    m = Machine(MachineConfig(pcide=False, **config))
    m.run(recs[:upto])
    enter_process(m, int(recs[upto]["pid"]))
    return m, recs


# --- predictions against the machine --------------------------------------------------------------

SAMPLES = {
    "gups-64m.trace": (100, 1655, 51415, 51726, 54525, 82515, 147825, 162745, 166485, 172275, 238015),
    "ls-usr.trace": (5000, 42683, 42877, 47436),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_probe_predicts_shipped_trace_records(name):
    config = CONFIGS[name]
    seen: set[str] = set()
    for trace, indices in SAMPLES.items():
        recs = read_all(TRACES / trace)
        m = Machine(MachineConfig(**config))
        done = 0
        for i in indices:
            addr, size = int(recs[i]["addr"]), int(recs[i]["arg"])
            assert is_access(int(recs[i]["op"])) and addr >> 12 == (addr + size - 1) >> 12
            m.run(recs[done:i])
            w, delta = probe_then_run(m, recs, i)
            done = i + 1
            check(w, delta)
            seen |= kinds(w)
    # TLB hits, guest PSC hits, and (nested) nested-TLB hits and host-PSC hits all occur
    want = {"tlb", "psc"} | ({"ntlb", "hpsc"} if config["mode"] == "nested" else set())
    assert want <= seen


@pytest.mark.parametrize("name", [*sorted(CONFIGS), "nested-uncached"])
def test_probe_predicts_the_hand_built_records(name):
    config = NESTED_UNCACHED if name == "nested-uncached" else CONFIGS[name]
    recs = hand_records()
    m = Machine(MachineConfig(pcide=False, **config))
    got = {}
    for i in range(len(recs)):
        w, delta = probe_then_run(m, recs, i)
        check(w, delta)
        got[i] = (w.start_level, w.psc_hit, w.tlb_hit is not None, w.outcome)
    assert got[5] == (4, None, False, "ok")  # the switch flushed everything: a walk from the root
    assert got[6] == (3, "PML4E cache", False, "ok")
    assert got[7] == (2, "PDPTE cache", False, "ok")
    assert got[8] == (1, "PDE cache", False, "ok")
    assert got[9] == got[11] == (0, None, True, "ok")
    if config["mode"] == "shadow":
        assert got[12] == (0, None, True, "shadow_pf")  # a read-only shadow entry: the VMM reflects the #PF
    else:
        assert got[12] == (0, None, True, "pf")  # the zero page is read-only: copy-on-write


def test_a_walk_with_nothing_cached_issues_all_24_references():
    m, recs = hand_machine(NESTED_UNCACHED, 5)
    w, delta = probe_then_run(m, recs, 5)
    check(w, delta)
    assert len(w.refs) == 24 and not w.ntlb_rows and kinds(w) == {"root"}
    assert [r.n for r in w.refs] == list(range(1, 25))
    # with the nested TLB on, the same walk reads the four guest entries only
    m, recs = hand_machine(CONFIGS["nested-4k"], 5)
    w, delta = probe_then_run(m, recs, 5)
    check(w, delta)
    assert [(r.dim, r.level) for r in w.refs] == [("g", 4), ("g", 3), ("g", 2), ("g", 1)]
    assert w.ntlb_rows == frozenset({0, 1, 2, 3, 4})


def test_the_probe_writes_nothing_the_run_then_writes():
    # record 12 copies G on write (the zero page): the machine's memory changes on the run, never
    # on the probe
    m, recs = hand_machine(CONFIGS["native"], 12)
    mem = [a.copy() for a in m.mem.state]
    w = probe(m, G, "w", True, 12)
    assert w.outcome == "pf" and w.tlb_hit and not w.refs
    assert all(np.array_equal(a, b) for a, b in zip(mem, m.mem.state, strict=True))
    m.run(recs[12:13])
    assert not all(np.array_equal(a, b) for a, b in zip(mem, m.mem.state, strict=True))


@pytest.fixture(scope="module")
def program_traces(tmp_path_factory) -> dict[str, np.ndarray]:
    """Recorded runs of two guest programs: mmap/munmap churn (under shadow paging the VMM's
    flushes are left pending) and forks (several processes). Records from 100 on (the start-up is
    all TLB hits), at most 600 of them."""
    out = {}
    for name, args in (("mmapchurn", [50, 4]), ("forkwait", [5, 2])):
        path = tmp_path_factory.mktemp("runs") / f"{name}.trace"
        run_program(assemble_file(PROGRAMS / f"{name}.s"), args, record_path=path)
        out[name] = read_all(path)[:700]
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_probe_predicts_program_records(name, program_traces):
    config = CONFIGS[name]
    pending = 0
    seen: set[str] = set()
    for recs in program_traces.values():
        m = Machine(MachineConfig(**config))
        m.run(recs[:100])
        for i in range(100, len(recs)):
            addr, size = int(recs[i]["addr"]), int(recs[i]["arg"])
            if not is_access(int(recs[i]["op"])) or addr >> 12 != (addr + size - 1) >> 12:
                m.run(recs[i : i + 1])
                continue
            enter_process(m, int(recs[i]["pid"]))
            flush = bool(m.sh.smeta[SM_FLUSH])
            w, delta = probe_then_run(m, recs, i, verify=i % 50 == 0)
            check(w, delta)
            seen |= kinds(w)
            assert ("pending flush" in w.note) == flush
            pending += flush
    assert {"tlb", "psc", "root"} <= seen
    if config["mode"] == "shadow":
        assert pending > 0  # the VMM's pending flush is part of what the probe predicts


# --- marks ------------------------------------------------------------------------------------------


def lines_with(text: str, *fragments: str) -> list[str]:
    return [line for line in text.splitlines() if all(f in line for f in fragments)]


def flat(text: str) -> str:
    """The text with every run of white space (line breaks included) as one space."""
    return " ".join(text.split())


def test_1d_marks_psc_skips_and_line_sources():
    m, _ = hand_machine(CONFIGS["native"], 7)
    text = render(machine_view(m, E, "r", True, "", 7))
    assert lines_with(text, "#1", "PML4E", "skip · PSC") and lines_with(text, "#2", "PDPTE", "skip · PSC")
    assert lines_with(text, "#3", "PDE", "w1 · L2") and lines_with(text, "#4", "PTE", "w2 · L2")
    assert (
        "warm at record 7: TLB miss, PSC hit (PDPTE cache): the walk starts at the PD; 2 of 4 references issued "
        "(L2 2, LLC 0, mem 0); skipped: PSC 2 → PA 0xa000" in flat(text)
    )


def grid_cells(text: str) -> list[list[str]]:
    """The 2D grid's body: one list per row, each cell its lines joined by a space."""
    rows: list[list[str]] = []
    cur: list[list[str]] | None = None
    for line in text[: text.index("references:")].splitlines():
        if line.startswith(("├", "╰")):
            if cur is not None:
                rows.append([" ".join(part for part in cell if part) for cell in cur])
            cur = None
        elif line.startswith("│") and "guest level" not in line:
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            cur = cur or [[] for _ in cells]
            for k, c in enumerate(cells):
                cur[k].append(c)
    return rows


def test_2d_grid_marks_psc_ntlb_and_issued_cells():
    m, _ = hand_machine(CONFIGS["nested-4k"], 8)
    text = render(machine_view(m, F, "r", True, "", 8))
    rows = grid_cells(text)
    assert [r[0].split()[0] for r in rows] == ["gPML4E", "gPDPTE", "gPDE", "gPTE", "data"]
    for row in rows[:3]:  # above the PDE-cache hit: every cell keeps its number and is skipped
        assert all(cell.endswith("skip · PSC") for cell in row[1:])
    gpte, data = rows[3], rows[4]
    for n, cell in zip(range(16, 20), gpte[1:5], strict=True):  # the NTLB translated the gPTE's gpa
        assert cell.startswith(f"#{n} ") and cell.endswith("skip · NTLB")
    assert gpte[5].startswith("#20") and gpte[5].endswith("w1 · L2")
    for n, cell in zip(range(21, 25), data[1:5], strict=True):  # and the data gpa
        assert cell.startswith(f"#{n} ") and cell.endswith("skip · NTLB")
    assert (
        "warm at record 8: TLB miss, guest PSC hit (PDE cache): the walk starts at the PT; 1 of 24 references "
        "issued (L2 1, LLC 0, mem 0); skipped: guest PSC 15, NTLB 8, host PSC 0 → hpa "
    ) in flat(text)


def test_2d_grid_marks_host_psc_skips():
    recs = read_all(TRACES / "gups-64m.trace")
    m = Machine(MachineConfig(mode="nested"))
    m.run(recs[:110135])
    text = render(machine_view(m, int(recs[110135]["addr"]), "r", True, "", 110135))
    gpde, gpte, data = grid_cells(text)[-3:]
    # the gPDE's gpa is in the nested TLB; neither the gPTE's nor the data's is, and the host
    # PDE cache gives the EPT page table of both
    assert [c.split()[-1] for c in gpde[1:5]] == ["NTLB"] * 4 and gpde[5].endswith("w1 · L2")
    assert [c.split()[-1] for c in gpte[1:4] + data[1:4]] == ["hPSC"] * 6
    assert gpte[4].endswith("w2 · L2") and gpte[5].endswith("w3 · L2") and data[4].endswith("w4 · L2")
    assert "4 of 24 references issued (L2 4, LLC 0, mem 0); skipped: guest PSC 10, NTLB 4, host PSC 6" in flat(text)


def test_tlb_hit_skips_every_reference():
    m, _ = hand_machine(CONFIGS["nested-2m"], 9)
    text = render(machine_view(m, A, "r", True, "", 9))
    cells = [cell for row in grid_cells(text) for cell in row[1:] if cell.startswith("#")]
    assert len(cells) == 19 and all(cell.endswith("skip · TLB") for cell in cells)
    assert "warm at record 9: TLB hit (L1 DTLB 4K), no walk; 0 of 19 references issued" in text
    assert "skipped: TLB 19" in text


def test_shadow_marks_the_shadow_walk():
    m, _ = hand_machine(CONFIGS["shadow"], 6)
    text = render(machine_view(m, D, "r", True, "", 6))
    out = flat(text)
    assert "skip · PSC" in out and "w1 · L2" in out and "w2 · L2" in out and "w3 · L2" in out
    assert "3 of 4 references issued (L2 3, LLC 0, mem 0); skipped: PSC 1 → hpa" in out


def test_stale_tlb_entry_is_shown_as_stale():
    # the guest remaps A without INVLPG: the TLB still translates it to the old page
    m, _ = hand_machine(CONFIGS["native"], 9)
    va, ve = machine_view(m, A, "r", True, ""), machine_view(m, E, "r", True, "")
    m.guest_store(va.entries[3].addr, ve.entries[3].before)
    text = flat(render(machine_view(m, A, "r", True, "", 9)))
    assert (
        "TLB hit (L1 DTLB 4K), no walk; 0 of 4 references issued (L2 0, LLC 0, mem 0); skipped: TLB 4 → "
        f"PA {hx(va.pa or 0)} (stale: the tables give PA {hx(ve.pa or 0)})" in text
    )


def test_stale_psc_entry_reads_an_entry_the_cold_walk_does_not():
    # the guest points A's PDE at E's page table without INVLPG: the PDE cache still gives A's
    m, _ = hand_machine(CONFIGS["native"], 9)
    va, ve = machine_view(m, A, "r", True, ""), machine_view(m, E, "r", True, "")
    m.guest_store(va.entries[2].addr, ve.entries[2].before)
    view = machine_view(m, G, "r", True, "", 9)
    assert [r.addr for r in view.warm.refs] == [va.entries[3].addr + 16]  # A's PT, index 2
    assert view.entries[3].addr == ve.entries[3].addr + 16  # E's PT, index 2
    text = render(view)
    assert lines_with(text, "#4", "PTE", "not issued")
    assert "skipped: PSC 3; not issued 1; 1 not in the cold walk" in flat(text)
    assert f"w1 · L2: PTE at PA {hx(va.entries[3].addr + 16)} is not in the cold walk" in text


def test_warm_marks_pair_cells_by_row_and_address():
    warm = WarmWalk(
        record=3, mode="nested", outcome="ok", top_level=4, start_level=2, psc_hit="PDPTE cache",
        refs=(WarmRef(1, "h", 1, 0x5000, "LLC", 2), WarmRef(2, "g", 2, 0x9000, "mem", 2),
              WarmRef(3, "g", 1, 0x7777, "L2", 1)),
        ntlb_rows=frozenset({1}),
    )  # fmt: skip
    cells = {
        (3, "h", 1): 0x5000, (3, "g", 3): 0x8000,  # a row above the PSC hit
        (2, "h", 2): 0x4000, (2, "h", 1): 0x5000, (2, "g", 2): 0x9000,  # host PDE cached, PTE read
        (1, "h", 1): 0x5008, (1, "g", 1): 0x6000,  # the NTLB translated the gpa; the guest PTE elsewhere
        (0, "h", 1): 0x5010,  # the data row: the warm walk issues nothing there
    }  # fmt: skip
    marks, stale = warm_marks(cells, warm)
    assert {k: (m.ref.n if m.ref else m.skipped_by) for k, m in marks.items()} == {
        (3, "h", 1): "PSC", (3, "g", 3): "PSC", (2, "h", 2): "hPSC", (2, "h", 1): 1, (2, "g", 2): 2,
        (1, "h", 1): "NTLB", (1, "g", 1): "", (0, "h", 1): "",
    }  # fmt: skip
    assert [r.n for r in stale] == [3]


def test_not_predicted_warm_walk_says_why_and_marks_nothing():
    g = build_native()
    after = copy.deepcopy(g.mem)
    r = mmu.walk(after, g.cr3, 0x40_0000, "r", user=True)
    view = capture_1d(r, g.mem, after, 0x40_0000, g.cr3, "r", True)
    warm = WarmWalk(record=7, mode="native", outcome="not_predicted", top_level=4, note="because of a test")
    text = render(dataclasses.replace(view, warm=warm))
    assert "warm at record 7: because of a test" in text and "skip ·" not in text and " w1 " not in text


def test_a_pending_shadow_root_reload_is_not_predicted():
    # the VMM would build a new root first (it allocates frames): the probe says so and stops
    m, _ = hand_machine(CONFIGS["shadow"], 5)
    m.sh.smeta[SM_RELOAD] = 1
    m.sh.spt[m.sh.roots[0, 1], SP_FLAGS] |= SPF_INVALID  # the current root was zapped
    before = state_arrays(m)
    view = machine_view(m, A, "r", True, "", 5)
    assert same_state(before, state_arrays(m))
    assert view.warm is not None and view.warm.outcome == "not_predicted"
    text = flat(render(view))
    assert "warm at record 5: the VMM reloads a zapped shadow root before the guest resumes" in text
    assert "skip ·" not in text and "warm: w<n>" not in text


# --- the CLI ------------------------------------------------------------------------------------------


def run(*args):
    return runner.invoke(app, ["walk", *[str(a) for a in args]])


def assert_clean_failure(result, *fragments):
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert err.startswith("mmu: error: ") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, err


def test_cli_trace_view_is_warm_unless_cold(tmp_path):
    # a code page is file-backed: the fetch maps it clean and writable, the read fills the DTLB,
    # and the write hits the TLB but must walk again to set D
    x = 0x40_0000
    trace = tmp_path / "dirty.trace"
    write_trace(trace, _records((x, 4, 1, OP_FETCH, 0), (x + 64, 8, 1, OP_READ, 0), (x + 128, 8, 1, OP_WRITE, 0)))
    r = run("--trace", trace, "--index", 2, "--mode", "nested", "--width", 150)
    assert r.exit_code == 0, r.output
    out = flat(r.stdout)
    assert "marked with what this machine's TLB and caches would serve (warm)" in out
    assert "warm at record 2: TLB hit (L1 DTLB 4K), but the write walks again to set D" in out
    assert "24 references: 20 host + 4 guest" in out
    r = run("--trace", TRACES / "gups-64m.trace", "--index", 110135, "--mode", "nested", "--width", 150)
    assert r.exit_code == 0, r.output
    assert "skip · NTLB" in flat(r.stdout) and "w1 · L2" in flat(r.stdout)
    r = run("--trace", TRACES / "gups-64m.trace", "--index", 110135, "--mode", "nested", "--cold")
    assert r.exit_code == 0, r.output
    assert "walked cold, as on a TLB miss" in flat(r.stdout) and "warm at" not in r.stdout and "skip ·" not in r.stdout


def test_cli_demo_guest_is_cold_and_says_so():
    r = run("0x400000", "--mode", "nested")
    assert r.exit_code == 0, r.output
    assert "walked cold" in r.stdout and "warm at" not in r.stdout


def test_cli_program(tmp_path):
    r = run("--program", PROGRAMS / "mmapchurn.s", "--index", 230, "--mode", "shadow", "--width", 200, "--", 50, 4)
    assert r.exit_code == 0, r.output
    out = flat(r.stdout)
    assert "the recorded run of mmapchurn.s 50 4: page tables after records 0..229 (shadow); record 230:" in out
    assert "warm at record 230: TLB miss, no PSC hit: the walk starts at the root; 4 of 4 references issued" in out
    assert "the VMM's pending flush of the VM's TLB entries and PSCs runs first" in out
    # the same record from the trace the run records
    trace = tmp_path / "churn.trace"
    run_program(assemble_file(PROGRAMS / "mmapchurn.s"), [50, 4], record_path=trace)
    t = run("--trace", trace, "--index", 230, "--mode", "shadow", "--width", 200)
    assert t.exit_code == 0, t.output
    assert t.stdout[t.stdout.index("\nuser ") :] == r.stdout[r.stdout.index("\nuser ") :]  # all but the context


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--program", "/nonexistent.s", "--index", "3"], "/nonexistent.s: no such file"),
        (["--program", PROGRAMS / "forkwait.s", "--index", "100000", "--", "2", "1"], "--index 100000 is out of range"),
        (["--program", PROGRAMS / "forkwait.s", "--index", "3", "--", "2", "1"], "record 3 is an OS event"),
        (["--program", PROGRAMS / "gups.s", "--trace", TRACES / "ls-usr.trace", "--index", "3"], "give one"),
        (["--program", PROGRAMS / "gups.s"], "--program and --index go together"),
        (["0x1000", "5"], "program arguments (after --) go with --program"),
        (["--program", PROGRAMS / "gups.s", "--index", "3", "--", "lots"], "program arguments must be integers"),
    ],
)
def test_cli_program_bad_input(args, fragment):
    assert_clean_failure(run(*args), fragment)


def test_cli_program_assembler_error(tmp_path):
    bad = tmp_path / "bad.s"
    bad.write_text("        .text\n_start:\n        frobnicate a0\n")
    assert_clean_failure(run("--program", bad, "--index", "0"), "bad.s")


def test_cli_help_shows_a_program_example():
    r = runner.invoke(app, ["walk", "--help"])
    assert r.exit_code == 0
    assert "--program" in r.stdout and "forkwait.s" in r.stdout and "--cold" in r.stdout
