"""``mmu run``: every shipped program agrees with the reference interpreter in every mode; a
recorded run replays to identical stats; the CLI's output and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmu.cli import app
from mmu.engine import MachineConfig
from mmu.guest.asm import assemble_file
from mmu.guest.run import run_program
from mmu.replayfile import replay
from mmu.trace.format import read_trace
from tests.guest_ref import run

PROGRAMS = Path(__file__).resolve().parent.parent / "traces" / "programs"
SMALL_ARGS = {
    "forkwait": [6, 3],
    "pfstorm": [40, 3],
    "pingpong": [20, 2],
    "gups": [8, 600],
    "seqscan": [12, 2, 8],
    "ptrchase": [7, 300, 64],
    "mmapchurn": [60, 6, 5],
    "twophase": [5, 2, 7, 500],
}
MODES = ["native", "nested", "shadow"]
# Fields of the stats object that depend on wall-clock time, not on the simulation.
TIMING = {"elapsed_s", "compile_s", "accesses_per_s", "instructions_per_s", "records_per_s"}


def _program(name: str):
    return assemble_file(PROGRAMS / f"{name}.s")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SMALL_ARGS))
def test_program_matches_reference(name, mode):
    prog = _program(name)
    args = SMALL_ARGS[name]
    ref = run(prog, args)
    got = run_program(prog, args, MachineConfig(mode=mode))
    assert got["console"] == ref.text
    assert got["exit_code"] == ref.exit_code == 0
    assert got["instructions"] == ref.instructions
    assert got["switches"] == ref.switches
    assert got["statuses"] == {str(k): v for k, v in ref.statuses.items()}
    assert got["accesses"] == got["reads"] + got["writes"] + got["fetches"]
    assert got["fetches"] == ref.instructions  # every fetch is translated


@pytest.mark.parametrize("name", sorted(SMALL_ARGS))
def test_recorded_events_match_reference(tmp_path, name):
    # the executor's recorded trace is the reference's event stream, record for record
    # (guest-visible behaviour does not depend on the mode, so native is enough here)
    prog = _program(name)
    out = tmp_path / f"{name}.trace"
    run_program(prog, SMALL_ARGS[name], MachineConfig(), record_path=out)
    recs = read_trace(out)
    got = list(zip(*(recs[k].tolist() for k in ("op", "pid", "addr", "arg", "flags")), strict=True))
    ref = run(prog, SMALL_ARGS[name], trace=True).events
    assert len(got) == len(ref) and got == ref


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["forkwait", "pfstorm", "mmapchurn"])
def test_recorded_run_replays_to_identical_stats(tmp_path, name, mode):
    out = tmp_path / f"{name}.trace"
    config = MachineConfig(mode=mode)
    got = run_program(_program(name), SMALL_ARGS[name], config, record_path=out)
    again = replay(out, config)
    shared = (set(got) & set(again)) - TIMING - {"trace", "records"}
    assert {"accesses", "cycles", "walks", "tlb", "vm_exits", "exits"} <= shared
    assert {k: got[k] for k in shared} == {k: again[k] for k in shared}
    assert again["accesses"] == got["accesses"] > 0


def test_cli_runs_a_program_and_prints_json(tmp_path):
    res = CliRunner().invoke(app, ["run", str(PROGRAMS / "seqscan.s"), "--json", "--", "4", "1"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["console"] == "seqscan: pages=4 passes=1 stride=8 sum=2096128\n"
    assert data["exit_code"] == 0 and data["mode"] == "native"


def test_cli_shadow_policy_flags_reach_the_machine():
    """pfstorm's PTE stores: with unsync (KVM's default) a leaf table traps once, then goes
    unsync; with --no-unsync every store to a shadowed leaf table is an emulated tracing write."""
    argv = ["run", str(PROGRAMS / "pfstorm.s"), "--mode", "shadow", "--json"]
    out = {}
    for extra in ([], ["--no-unsync", "--prefetch", "0", "--roots", "0", "--flood-threshold", "0", "--prefault"]):
        res = CliRunner().invoke(app, argv + extra + ["--", "40", "3"])
        assert res.exit_code == 0, res.output
        out[bool(extra)] = json.loads(res.output)
    on, off = out[False], out[True]
    assert on["console"] == off["console"]
    assert off["mode_stats"]["policy"] == {
        "unsync": False,
        "prefetch": 0,
        "roots": 0,
        "flood_threshold": 0,
        "max_pages": 0,
        "prefault": True,
    }
    assert off["mode_stats"]["prefaulted"] > 0 == on["mode_stats"]["prefaulted"]
    assert off["mode_stats"]["shadow_pages"]["unsynced"] == 0 < on["mode_stats"]["shadow_pages"]["unsynced"]
    assert off["exits"]["tracing_write"]["count"] > 5 * on["exits"]["tracing_write"]["count"]


def test_cli_prints_console_and_summary_and_records(tmp_path):
    out = tmp_path / "ff.trace"
    res = CliRunner().invoke(
        app, ["run", str(PROGRAMS / "forkwait.s"), "--mode", "nested", "--record", str(out), "--", "2", "1"]
    )
    assert res.exit_code == 0, res.output
    assert res.output.startswith("forkwait: n=2 pages=1 ")
    assert "exit code 0" in res.output and "nested" in res.output
    assert out.stat().st_size > 0
    res = CliRunner().invoke(app, ["run", str(PROGRAMS / "forkwait.s"), "--quiet", "--", "2", "1"])
    assert res.output.startswith("forkwait:") and "instructions" not in res.output


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "nope.s"], "nope.s: no such file"),
        (["run", str(PROGRAMS / "gups.s"), "--mode", "pv"], "unknown mode 'pv'"),
        (["run", str(PROGRAMS / "gups.s"), "--", "twelve"], "program arguments must be integers"),
        (["run", "BAD"], ":2:9: "),
    ],
)
def test_cli_errors_are_one_line_with_status_2(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAD").write_text("_start: li a0, 0\n        frob a0\n")
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmu: error: ") and message in lines[0], res.output
