"""``mmu compare``: modes on several processes, the table at 80 columns, the instruction limit."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from clicheck import assert_clean_failure, kill_busy_worker, run
from rich.console import Console

import mmu.cli
import mmu.cli.parallel
from mmu.cli.parallel import run_parallel
from mmu.engine import MachineConfig, replay
from mmu.errors import MMUInputError
from mmu.guest.asm import assemble_file
from mmu.guest.run import run_program
from mmu.report.compare import compare_renderable, compare_rows
from mmu.trace.format import RECORD_DTYPE, write_trace

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "traces"
PROGRAMS = TRACES / "programs"
MODES = [("native", "4k"), ("shadow", "4k"), ("nested", "4k"), ("nested", "2m")]
TIMING = {"elapsed_s", "compile_s", "accesses_per_s", "instructions_per_s"}


def untimed(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in s.items() if k not in TIMING} for s in results]


# --- the process pool -------------------------------------------------------------------------


def _rendezvous(i: int, event, fail: bool = False) -> tuple[int, int]:
    """Job 0 (taken first, by the calling process) waits until job 1 runs: in a spawned worker."""
    if i == 0:
        assert event.wait(120)
    else:
        event.set()
        if fail:
            raise MMUInputError(f"job {i} is bad input")
    return i, os.getpid()


@pytest.fixture(scope="module")
def manager():
    with multiprocessing.get_context("spawn").Manager() as m:
        yield m


def test_run_parallel_keeps_job_order_and_uses_a_spawned_worker(manager):
    event = manager.Event()
    out = run_parallel(_rendezvous, [(0, event), (1, event)], workers=2, patience=0.0)
    assert [i for i, _ in out] == [0, 1]
    assert out[0][1] == os.getpid() and out[1][1] != os.getpid()


def test_run_parallel_reraises_a_workers_input_error(manager):
    event = manager.Event()
    with pytest.raises(MMUInputError, match="^job 1 is bad input$"):
        run_parallel(_rendezvous, [(0, event), (1, event, True)], workers=2, patience=0.0)


def test_run_parallel_with_one_worker_is_a_loop():
    assert run_parallel(divmod, [(7, 2), (9, 4)], workers=1) == [(3, 1), (2, 1)]


@pytest.mark.parametrize(
    ("source", "extra"),
    [(TRACES / "ls-usr.trace", []), (PROGRAMS / "forkwait.s", ["--", "40", "4"])],
)
def test_compare_on_workers_matches_serial(source, extra, monkeypatch):
    monkeypatch.setattr(mmu.cli.parallel, "PATIENCE_S", 0.0)  # spawn the workers at once
    modes = "native,shadow,nested,nested:2m"
    one = run("compare", source, "--modes", modes, "--json", "--workers", "1", *extra)
    two = run("compare", source, "--modes", modes, "--json", "--workers", "2", *extra)
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert [s["mode"] for s in b] == ["native", "shadow", "nested", "nested"]
    assert [s["mode_stats"].get("host_page") for s in b[2:]] == ["4k", "2m"]
    assert untimed(a) == untimed(b)
    table_one = run("compare", source, "--modes", modes, "-q", "--workers", "1", *extra).stdout
    table_two = run("compare", source, "--modes", modes, "-q", "--workers", "2", *extra).stdout
    assert table_one == table_two and "is fastest" in table_two


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--cpu", "pentium"], "unknown CPU preset"),
        (["--cost", "bogus=3"], "unknown cost parameter 'bogus'"),
        (["--cost", "exit=-1"], "must be >= 0"),
        (["--thp", "sometimes"], "unknown THP policy"),
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--max-instructions", "-5"], "--max-instructions must be >= 0"),
    ],
)
def test_bad_input_fails_before_any_run(args, fragment, monkeypatch):
    def no_run(*_args):
        raise AssertionError("a mode ran")

    monkeypatch.setattr(mmu.cli, "_run_mode", no_run)
    assert_clean_failure(run("compare", TRACES / "ls-usr.trace", "--workers", "2", *args), fragment)


def test_bad_trace_fails_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(mmu.cli, "_run_mode", None)
    junk = tmp_path / "junk.trace"
    junk.write_bytes(b"not a trace at all" * 10)
    assert_clean_failure(run("compare", junk, "--workers", "2"), str(junk))
    assert_clean_failure(run("compare", tmp_path / "none.trace", "--workers", "2"), "no such file")
    assert_clean_failure(run("compare", tmp_path / "none.s", "--workers", "2"), "no such file")


@pytest.mark.parametrize("patience", [None, 0.0])  # the error found here, or (likely) in a worker
def test_error_during_a_run_is_one_line(tmp_path, patience, monkeypatch):
    if patience is not None:
        monkeypatch.setattr(mmu.cli.parallel, "PATIENCE_S", patience)
    r = np.zeros(2, dtype=RECORD_DTYPE)
    r["addr"] = 0x1000
    r["arg"] = [8, 0]
    r["pid"] = [1, 9]
    r["op"] = [0, 20]  # pid 9 exits without ever having run: found by the replay, not the header
    path = tmp_path / "exit.trace"
    write_trace(path, r, {"source": "test"})
    assert_clean_failure(run("compare", path, "--workers", "2"), "record 1", "exit")


# --- the table at 80 columns ------------------------------------------------------------------


@pytest.fixture(scope="module")
def forkwait_results() -> list[dict]:
    prog = assemble_file(PROGRAMS / "forkwait.s")
    return [run_program(prog, [40, 4], MachineConfig(mode=m, host_page=hp)) for m, hp in MODES]


@pytest.fixture(scope="module")
def gups_results() -> list[dict]:
    return [replay(TRACES / "gups-64m.trace", MachineConfig(mode=m, host_page=hp)) for m, hp in MODES]


def render(results: list[dict], width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(compare_renderable(results, title="t"))
    return out.getvalue()


@pytest.mark.parametrize("which", ["forkwait_results", "gups_results"])
@pytest.mark.parametrize("copies", [1, 2])  # 4 modes, then 7
@pytest.mark.parametrize("width", [80, 120])
def test_labels_and_cells_never_wrap(which, copies, width, request):
    results = request.getfixturevalue(which)
    results = results + results[1:] * (copies - 1)
    text = render(results, width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    tables = 1 if (copies == 1 or width == 120) else 2
    assert text.count("(continued)") == tables - 1
    for label, cells in compare_rows(results):
        rows = [line for line in lines if line.startswith(label + "  ")]
        assert len(rows) == tables, (label, text)
        # every cell, whole, on its label's line, left to right
        shown = " ".join(rows).split()
        for cell in cells:
            assert all(part in shown for part in cell.split()), (label, cell)


def test_four_modes_fit_one_table_at_80_columns(gups_results):
    text = render(gups_results, 80)
    assert "(continued)" not in text
    assert "VMM tables (EPT/shadow)" in text and "shadow pages live/created" in text


# --- the instruction limit --------------------------------------------------------------------


def test_compare_flags_a_program_stopped_at_the_limit():
    r = run("compare", PROGRAMS / "forkwait.s", "--modes", "native,shadow", "--max-instructions", "1000", "-q",
            "--", "40", "4")  # fmt: skip
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "stopped at the instruction limit (1,000 instructions)" in text
    assert "guest instructions 1,000 1,000" in text
    j = run("compare", PROGRAMS / "forkwait.s", "--modes", "native,shadow", "--max-instructions", "1000", "--json",
            "--", "40", "4")  # fmt: skip
    assert [(s["reason"], s["instructions"]) for s in json.loads(j.stdout)] == [("limit", 1000)] * 2


def test_compare_of_a_finished_program_has_no_limit_note():
    r = run("compare", PROGRAMS / "forkwait.s", "--modes", "native", "-q", "--", "40", "4")
    assert r.exit_code == 0, r.output
    assert "instruction limit" not in r.stdout and "guest instructions" in r.stdout


def test_demo_takes_max_instructions():
    r = run("demo", "--json", "--max-instructions", "500", "--workers", "1")
    assert r.exit_code == 0, r.output
    program = json.loads(r.stdout)[-4:]
    assert [(s["reason"], s["instructions"]) for s in program] == [("limit", 500)] * 4


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc to find the workers")
def test_a_worker_killed_by_the_os_is_a_one_line_error():
    """SIGKILL (as the out-of-memory killer sends) to a busy compare worker: one line, exit 2."""
    import subprocess
    import sys

    prog = Path(__file__).resolve().parent.parent / "traces" / "programs" / "gups.s"
    cmd = [sys.executable, "-m", "mmu", "compare", str(prog), "--modes", "shadow,nested", "--workers", "2", "-q"]
    proc = subprocess.Popen([*cmd, "--", "21", "3000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = kill_busy_worker(proc)
    _, err = proc.communicate(timeout=300)
    assert killed is not None, "a worker was found simulating and killed"
    assert proc.returncode == 2, err
    # the worker killed may be running a job or still warming up (under load the parent may not
    # have handed it a job yet): either way, one line naming what died
    assert err.startswith("mmu: error: a worker process died running ") and err.count("\n") == 1, err
    assert "killed by the operating system" in err
    assert "Traceback" not in err
