"""`mmu sweep`: the grid, re-pricing, resuming, failures, the process pool and a real Dask cluster."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from clicheck import assert_clean_failure, kill_busy_worker, run

from mmu.engine import MachineConfig, replay
from mmu.errors import MMUInputError
from mmu.guest.asm import assemble_file
from mmu.guest.run import run_program
from mmu.sweep import SweepTable, plan, run_sweep, spec_from_cli, spec_from_toml
from mmu.trace.format import OP_READ, OP_WRITE, RECORD_DTYPE, TraceReader, write_trace

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "traces"
PROGRAMS = TRACES / "programs"
# columns that differ between two runs of the same simulation (timings)
TIMING = {"wall_s", "elapsed_s", "accesses_per_s", "compile_s", "instructions_per_s"}


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def counts(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory) -> Path:
    """20,000 records of gzip.trace: a real stream, quick to replay."""
    path = tmp_path_factory.mktemp("sweep") / "gzip-20k.trace"
    recs = next(TraceReader(TRACES / "gzip.trace").chunks(20_000))
    write_trace(path, recs, {"source": "first 20,000 records of traces/gzip.trace"})
    return path


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--modes", "native,paravirt"], "unknown mode 'paravirt'"),
        (["--param", "tlb_size=1,2"], "unknown parameter 'tlb_size'"),
        (["--param", "ntlb=16,many"], "ntlb_entries: 'many' is not an integer"),
        (["--param", "unsync=maybe"], "'maybe' is not a boolean"),
        (["--param", "stlb=100"], "STLB entries must be a positive multiple of skylake's 128 sets"),
        (["--param", "prefetch=3"], "prefetch must be 0 or a power of two"),
        (["--modes", "native", "--param", "prefetch=8,3"], "native with prefetch=3: prefetch must be 0 or a power"),
        (["--cost", "exits=1"], "unknown cost parameter 'exits'"),
        (["--cost", "exit=fast"], "'fast' is not an integer number of cycles"),
        (["--cost", "exit"], "--cost expects NAME=V1,V2,..."),
        (["--modes", "native:2m"], "native mode has no host pages"),
        (["--modes", "nested:2m", "--param", "host_page=4k,2m"], "the host page is given twice"),
        (["--plot", "out.gif"], "unsupported suffix '.gif'"),
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--upload"], "--upload goes with --dask"),
    ],
)
def test_bad_grid_fails_before_any_run(small_trace, tmp_path, args, fragment):
    out = tmp_path / "t.csv"
    assert_clean_failure(run("sweep", small_trace, "-o", out, *args), fragment)
    assert not out.exists(), "nothing ran, nothing was written"


def test_missing_and_bad_inputs_fail_before_any_run(small_trace, tmp_path):
    out = tmp_path / "t.csv"
    assert_clean_failure(run("sweep", small_trace, tmp_path / "nope.trace", "-o", out), "nope.trace: no such file")
    bad = tmp_path / "bad.s"
    bad.write_text("main:\n    frobnicate a0\n")
    assert_clean_failure(run("sweep", f"{bad}:1,2", "-o", out), "bad.s")
    assert_clean_failure(run("sweep", f"{PROGRAMS / 'forkwait.s'}:4,x", "-o", out), "must be integers")
    not_trace = tmp_path / "x.trace"
    not_trace.write_bytes(b"hello")
    assert_clean_failure(run("sweep", not_trace, "-o", out), "x.trace")
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    assert_clean_failure(run("sweep", small_trace, "-o", foreign), "is not an mmu sweep table")
    assert foreign.read_text() == "a,b\n1,2\n", "a file that is not a sweep table is never overwritten"
    assert not out.exists()


def test_cost_values_are_repriced_and_equal_full_runs(small_trace, tmp_path):
    out = tmp_path / "cost.csv"
    r = run("sweep", small_trace, "--modes", "native,shadow,nested", "--cost", "exit=500,4000", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    rows = rows_of(out)
    assert [(x["mode_label"], x["cost.exit"]) for x in rows] == [
        (m, e) for m in ("native", "shadow", "nested") for e in ("500", "4000")
    ]
    assert [x["simulated"] for x in rows] == ["True", "False"] * 3, "one simulation per mode, re-priced once"
    for x in rows:
        full = replay(small_trace, MachineConfig(mode=x["mode"], cost_overrides={"exit": int(x["cost.exit"])}))
        assert int(x["cycles"]) == full["cycles"], x["mode_label"]
        assert int(x["cycles_breakdown.vm_exits"]) == full["cycles_breakdown"]["vm_exits"]
        assert x["status"] == "ok" and x["error"] == ""
    shadow = [x for x in rows if x["mode"] == "shadow"]
    assert int(shadow[1]["cycles"]) > int(shadow[0]["cycles"])


def test_params_the_mode_ignores_share_a_simulation(small_trace):
    spec = spec_from_cli([str(small_trace)], "native,nested", ["ntlb=0,16,64"], [], 1000)
    tasks = plan(spec)
    by_mode = {m: [t for t in tasks if t.mode.mode == m] for m in ("native", "nested")}
    assert len(by_mode["native"]) == 1 and len(by_mode["native"][0].prices) == 3
    assert len(by_mode["nested"]) == 3
    assert sorted(k for t in tasks for k in t.indices) == list(range(6)), "every grid point has one row"


def test_machine_params_reach_the_machine(tmp_path):
    """A swept STLB size changes the run as a direct replay with that size does."""
    trace = TRACES / "gups-64m.trace"
    out = tmp_path / "stlb.csv"
    r = run("sweep", trace, "--modes", "native", "--param", "stlb_entries=512,2048", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    rows = rows_of(out)
    for x in rows:
        full = replay(trace, MachineConfig(stlb_entries=int(x["param.stlb_entries"])))
        assert int(x["tlb_misses"]) == full["tlb_misses"]
        assert x["tlb.STLB 4K+2M.hits"] == str(full["tlb"]["STLB 4K+2M"]["hits"])
    assert int(rows[0]["tlb_misses"]) > int(rows[1]["tlb_misses"]), "a 4x larger STLB misses less on GUPS"


def test_rerun_skips_finished_rows_and_retries_missing_ones(small_trace, tmp_path):
    out = tmp_path / "resume.csv"
    spec = spec_from_cli([str(small_trace)], "native,shadow", ["roots=1,3"], ["exit=500,1000"], 1000)
    tasks = plan(spec)
    first = run_sweep(tasks, SweepTable(out), workers=1)
    assert (first.rows, first.skipped, first.simulations, first.failed) == (8, 0, 3, 0)
    before = rows_of(out)
    again = run_sweep(tasks, SweepTable(out), workers=1)
    assert (again.skipped, again.simulations) == (8, 0)
    assert rows_of(out) == before, "nothing reran, nothing changed"
    # lose the shadow roots=3 rows (as if the sweep had been interrupted before them)
    kept = [x for x in before if not (x["mode"] == "shadow" and x["param.roots"] == "3")]
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(before[0]))
        w.writeheader()
        w.writerows(kept)
    third = run_sweep(tasks, SweepTable(out), workers=1)
    assert (third.skipped, third.simulations) == (6, 1)
    assert [counts(x) for x in rows_of(out)] == [counts(x) for x in before]


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(small_trace, tmp_path):
    broken = tmp_path / "broken.trace"
    recs = np.zeros(3, dtype=RECORD_DTYPE)
    recs["op"] = [OP_READ, OP_WRITE, OP_READ]
    recs["addr"] = [0x400000, 0x400008, 0x1000]
    recs["arg"] = [8, 8, 8]
    recs["pid"] = 1
    write_trace(broken, recs, {"source": "test"})
    data = bytearray(broken.read_bytes())
    at = bytes(data).find(recs.tobytes())
    assert at > 0
    data[at + recs.nbytes - 1] ^= 0x40  # a bit of the last record's flags: its chunk's CRC no longer matches
    broken.write_bytes(bytes(data))
    out = tmp_path / "fail.csv"
    r = run("sweep", small_trace, broken, "--modes", "native", "-o", out, "-q")
    assert r.exit_code == 1, r.output
    assert "1 runs failed" in r.stderr
    rows = {x["input"]: x for x in rows_of(out)}
    assert rows[str(small_trace)]["status"] == "ok"
    bad = rows[str(broken)]
    assert bad["status"] == "error" and "broken.trace" in bad["error"] and "\n" not in bad["error"]
    assert "checksum mismatch" in bad["error"]
    assert bad["cycles"] == ""


def test_interrupt_keeps_every_finished_row(small_trace, tmp_path):
    out = tmp_path / "int.csv"
    tasks = plan(spec_from_cli([str(small_trace)], "native,shadow,nested", [], [], 1000))
    seen = []

    def progress(done, total):
        seen.append(done)
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(tasks, SweepTable(out), workers=1, progress=progress)
    rows = rows_of(out)
    assert [x["mode"] for x in rows] == ["native", "shadow"] and all(x["status"] == "ok" for x in rows)
    assert not list(tmp_path.glob(".int.csv.*")), "no temporary file is left behind"
    rest = run_sweep(tasks, SweepTable(out), workers=1)
    assert (rest.skipped, rest.simulations) == (2, 1)


def test_process_pool_gives_the_same_rows(small_trace, tmp_path):
    spec = spec_from_cli([str(small_trace)], "native,shadow,nested:2m", [], ["exit=1000,3000"], 1000)
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    run_sweep(plan(spec), SweepTable(one), workers=1)
    outcome = run_sweep(plan(spec), SweepTable(two), workers=2)
    assert outcome.simulations == 3 and outcome.failed == 0
    assert [counts(x) for x in rows_of(two)] == [counts(x) for x in rows_of(one)]


def test_dask_local_cluster_gives_the_same_rows(small_trace, tmp_path):
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    spec = spec_from_cli([str(small_trace), f"{PROGRAMS / 'forkwait.s'}:3,1"], "native,shadow", [], [], 10**6)
    local, cluster, shipped = tmp_path / "local.csv", tmp_path / "dask.csv", tmp_path / "upload.csv"
    run_sweep(plan(spec), SweepTable(local), workers=1)
    outcome = run_sweep(plan(spec), SweepTable(cluster), workers=2, dask="local")
    assert outcome.simulations == 4 and outcome.failed == 0
    assert [counts(x) for x in rows_of(cluster)] == [counts(x) for x in rows_of(local)]
    run_sweep(plan(spec), SweepTable(shipped), workers=1, dask="local", upload=True)
    assert [counts(x) for x in rows_of(shipped)] == [counts(x) for x in rows_of(local)]


def test_unreachable_scheduler_is_a_clean_error(small_trace, tmp_path):
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    r = run("sweep", small_trace, "--modes", "native", "--dask", "tcp://127.0.0.1:9", "-o", tmp_path / "x.csv", "-q")
    assert_clean_failure(r, "cannot reach the Dask scheduler at tcp://127.0.0.1:9")


def test_programs_with_arguments_and_the_instruction_limit(tmp_path):
    out = tmp_path / "prog.csv"
    prog = PROGRAMS / "forkwait.s"
    r = run("sweep", f"{prog}:40,4", "--modes", "native,shadow", "--max-instructions", "1000", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    rows = rows_of(out)
    assert [x["input"] for x in rows] == ["forkwait.s 40 4"] * 2
    assert all(x["cut"] == "True" and x["reason"] == "limit" for x in rows), "the limit cut the runs, and says so"
    full = run_program(assemble_file(prog), [40, 4], MachineConfig(mode="shadow"), max_instructions=1000)
    assert int(rows[1]["cycles"]) == full["cycles"] and int(rows[1]["instructions"]) == full["instructions"]


def test_toml_spec_is_the_same_grid(small_trace, tmp_path):
    toml = tmp_path / "grid.toml"
    toml.write_text(
        f'inputs = ["{small_trace.name}", {{program = "{PROGRAMS / "forkwait.s"}", args = [3, 1]}}]\n'
        'modes = ["native", "nested:2m"]\n'
        "max_instructions = 1000000\n"
        "[params]\nntlb_entries = [0, 16]\n"
        "[costs]\nexit = [800, 1600]\n"
    )
    (tmp_path / small_trace.name).write_bytes(small_trace.read_bytes())
    from_file = spec_from_toml(toml)
    from_cli = spec_from_cli(
        [str(tmp_path / small_trace.name), f"{PROGRAMS / 'forkwait.s'}:3,1"],
        "native,nested:2m", ["ntlb_entries=0,16"], ["exit=800,1600"], 10**6,
    )  # fmt: skip
    assert from_file == from_cli
    assert from_file.swept == ["param.ntlb_entries", "cost.exit"]
    bad = tmp_path / "bad.toml"
    bad.write_text('inputs = ["a.trace"]\nmode = ["native"]\n')
    with pytest.raises(MMUInputError, match="unknown key 'mode'"):
        spec_from_toml(bad)
    bad.write_text("inputs = [")
    with pytest.raises(MMUInputError, match="not a valid TOML"):
        spec_from_toml(bad)


def test_parquet_has_typed_columns(small_trace, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra is not installed")
    out, parquet = tmp_path / "t.csv", tmp_path / "t.parquet"
    r = run(
        "sweep", small_trace, "--modes", "native,shadow", "--cost", "exit=1,2", "-o", out, "--parquet", parquet, "-q"
    )
    assert r.exit_code == 0, r.output
    table = pq.read_table(parquet)
    assert table.num_rows == 4
    assert str(table.schema.field("cycles").type) == "int64"
    assert str(table.schema.field("cycles_per_access").type) == "double"
    assert str(table.schema.field("simulated").type) == "bool"
    assert str(table.schema.field("key").type) == "string"  # text even if a key were all digits
    assert table.column("cycles").to_pylist() == [int(x["cycles"]) for x in rows_of(out)]


def test_plot_of_a_sweep(small_trace, tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "t.csv", tmp_path / "t.svg"
    r = run("sweep", small_trace, "--modes", "shadow,nested", "--cost", "exit=500,4000", "-o", out, "--plot", png)
    assert r.exit_code == 0, r.output
    assert png.read_text().lstrip().startswith("<?xml")
    assert "4 runs in" in r.stderr and "2 simulations; 2 rows re-priced or shared" in r.stderr


def test_rows_carry_the_version_the_hash_and_every_parameter(small_trace, tmp_path):
    import hashlib

    import mmu

    out = tmp_path / "t.csv"
    assert run("sweep", small_trace, "--modes", "nested", "-o", out, "-q").exit_code == 0
    (row,) = rows_of(out)
    assert row["mmu_version"] == mmu.__version__
    assert row["input_sha256"] == hashlib.sha256(small_trace.read_bytes()).hexdigest()
    assert row["param.ntlb_entries"] == "16" and row["param.host_page"] == "4k" and row["cost.exit"] == "2000"
    assert json.loads(row["exits.ept_violation.count"]) > 0


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc to find the workers")
def test_a_worker_killed_by_the_os_does_not_end_the_sweep(tmp_path):
    """SIGKILL (as the out-of-memory killer sends) to a busy pool worker: its simulation runs
    again in a fresh worker and the sweep completes."""
    import subprocess
    import sys

    out = tmp_path / "killed.csv"
    cmd = [sys.executable, "-m", "mmu", "sweep", f"{PROGRAMS / 'gups.s'}:21,3000000", "--modes", "shadow,nested"]
    proc = subprocess.Popen([*cmd, "--workers", "2", "-o", str(out), "-q"], stderr=subprocess.PIPE, text=True)
    killed = kill_busy_worker(proc)
    _, err = proc.communicate(timeout=300)
    assert killed is not None, "a worker was found simulating and killed"
    assert proc.returncode == 0, err
    rows = rows_of(out)
    assert [x["mode"] for x in rows] == ["shadow", "nested"] and all(x["status"] == "ok" for x in rows)
