"""CLI: `mmu replay`, `mmu demo`, `mmu presets`, `mmu cache` -- output schema and clean failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clicheck import assert_clean_failure, run

from mmu.trace.format import RECORD_DTYPE, TraceReader, write_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"

REQUIRED = {
    "mode", "accesses", "cycles", "tlb_misses", "walks", "walk_refs", "guest_page_faults", "vm_exits", "exits",
    "elapsed_s", "tlb", "psc",
}  # fmt: skip


def test_replay_json_schema():
    r = run("replay", TRACES / "gzip.trace", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert REQUIRED <= set(s)
    assert s["mode"] == "native" and s["exits"] == {} and s["vm_exits"] == 0
    assert s["accesses"] == TraceReader(TRACES / "gzip.trace").count_accesses()
    assert set(s["tlb"]) >= {"L1 DTLB 4K", "STLB 4K+2M"}
    assert all({"hits", "misses"} == set(v) for v in s["tlb"].values())
    assert s["cycles"] == sum(s["cycles_breakdown"].values())


def test_replay_summary_and_cost_override():
    r = run("replay", TRACES / "ls-usr.trace", "--cost", "guest_pf=0", "--cost", "ref_dram=100")
    assert r.exit_code == 0, r.output
    assert "mmu replay" in r.stdout and "TLB structures" in r.stdout
    a = json.loads(run("replay", TRACES / "ls-usr.trace", "--json").stdout)
    b = json.loads(run("replay", TRACES / "ls-usr.trace", "--json", "--cost", "guest_pf=0").stdout)
    assert a["guest_page_faults"] == b["guest_page_faults"] > 0
    assert a["cycles"] - b["cycles"] == a["guest_page_faults"] * 3200


def test_replay_emit(tmp_path):
    out = tmp_path / "gpa.npy"
    r = run("replay", TRACES / "ls-usr.trace", "--quiet", "--emit-translations", out)
    assert r.exit_code == 0 and r.stdout == ""
    gpa = np.load(out, allow_pickle=False)
    assert len(gpa) == TraceReader(TRACES / "ls-usr.trace").count_accesses()
    assert (gpa != np.uint64(2**64 - 1)).all()


def test_demo_screen_ends_with_a_warm_nested_walk():
    r = run("demo")
    assert r.exit_code == 0, r.output
    assert "ls-usr.trace: native vs shadow vs nested paging" in r.stdout
    assert "forkwait.s 40 4: a page-table-update-heavy guest" in r.stdout
    assert "24 references: 20 host + 4 guest" in r.stdout
    assert "warm at record 82515:" in r.stdout and "skip · PSC" in r.stdout


def test_demo_json():
    r = run("demo", "--json")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)
    assert [s["mode"] for s in results] == ["native", "shadow", "nested", "nested"] * 3  # 2 traces, 1 program
    assert results[-1]["console"].startswith("forkwait: n=40 pages=4")
    assert all(REQUIRED <= set(s) for s in results)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["replay", "/nonexistent/x.trace"], ["/nonexistent/x.trace"]),
        (["replay", TRACES / "gzip.trace", "--mode", "warp"], ["unknown mode 'warp'"]),
        (["replay", TRACES / "gzip.trace", "--cpu", "pentium"], ["unknown CPU preset"]),
        (["replay", TRACES / "gzip.trace", "--cost", "bogus=3"], ["unknown cost parameter 'bogus'"]),
        (["replay", TRACES / "gzip.trace", "--cost", "exit=fast"], ["NAME=CYCLES"]),
        (["replay", TRACES / "gzip.trace", "--chunk-size", "0"], ["--chunk-size"]),
        (["cache", "explode"], ["unknown cache action"]),
    ],
)
def test_bad_arguments(args, fragments):
    assert_clean_failure(run(*args), *fragments)


def test_bad_trace_files(tmp_path):
    junk = tmp_path / "junk.trace"
    junk.write_bytes(np.random.default_rng(0).bytes(1000))
    assert_clean_failure(run("replay", junk), str(junk))
    good = TRACES / "gzip.trace"
    cut = tmp_path / "cut.trace"
    cut.write_bytes(good.read_bytes()[:-5])
    assert_clean_failure(run("replay", cut), str(cut))


def test_impossible_event_leaves_no_output(tmp_path):
    r = np.zeros(2, dtype=RECORD_DTYPE)
    r["addr"] = 0x1000
    r["arg"] = [8, 0]
    r["pid"] = [1, 9]
    r["op"] = [0, 20]  # pid 9 exits without ever having run
    path = tmp_path / "exit.trace"
    write_trace(path, r, {"source": "test"})
    out = tmp_path / "gpa.npy"
    assert_clean_failure(run("replay", path, "--emit-translations", out), "record 1", "exit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exit.trace"]


def test_presets_lists_sources():
    r = run("presets")
    assert r.exit_code == 0
    assert "guest_pf" in r.stdout and "3200" in r.stdout


def test_cache_path():
    r = run("cache", "path")
    assert r.exit_code == 0 and r.stdout.strip()


def test_compare_json_csv_and_table(tmp_path):
    csv_path = tmp_path / "c.csv"
    r = run("compare", TRACES / "ls-usr.trace", "--modes", "native,nested:2m", "--json", "--csv", csv_path)
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)
    assert [s["mode"] for s in results] == ["native", "nested"]
    assert results[1]["mode_stats"]["host_page"] == "2m"
    assert all(REQUIRED <= set(s) for s in results)
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 3 and "mode_stats.host_page" in lines[0]
    t = run("compare", TRACES / "ls-usr.trace", "--modes", "native,nested", "-q")
    assert t.exit_code == 0 and "slowdown vs native" in t.stdout and "is fastest" in t.stdout


@pytest.mark.parametrize(
    "modes, fragment", [("native,warp", "unknown mode 'warp'"), ("nested:3m", "host page"), (",", "empty")]
)
def test_compare_bad_modes(modes, fragment):
    assert_clean_failure(run("compare", TRACES / "ls-usr.trace", "--modes", modes), fragment)
