"""`mmu replay A.trace B.trace --quantum N`: single-process traces as processes of one guest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clicheck import assert_clean_failure, run

from mmu.engine import MachineConfig
from mmu.errors import MMUInputError
from mmu.replayfile import replay, replay_interleaved
from mmu.trace.format import RECORD_DTYPE, TraceReader, write_trace
from mmu.trace.interleave import interleave

TRACES = Path(__file__).resolve().parent.parent / "traces"


def _small(tmp_path: Path, name: str, n: int, pid: int = 1) -> Path:
    recs = np.array(TraceReader(TRACES / name).memmap()[:n])
    recs["pid"] = pid
    path = tmp_path / name
    write_trace(path, recs, {"source": "test"})
    return path


def test_round_robin_schedule(tmp_path):
    a = _small(tmp_path, "gzip.trace", 2500, pid=7)
    b = _small(tmp_path, "ls-usr.trace", 1200, pid=3)
    chunks = list(interleave([a, b], quantum=1000, chunk_size=700))
    sched = np.concatenate(chunks)
    assert len(sched) == 3700
    # slices of 1000: A B A B A(500), A's tail after B ran out
    pids = sched["pid"]
    assert list(pids[[0, 999, 1000, 1999, 2000, 2999, 3000, 3199, 3200, 3699]]) == [1, 1, 2, 2, 1, 1, 2, 2, 1, 1]
    ra = np.array(TraceReader(a).memmap())
    assert np.array_equal(sched["addr"][pids == 1], ra["addr"])  # each trace's order is kept


def test_interleaved_replay_runs_processes_and_switches(tmp_path):
    a = _small(tmp_path, "gzip.trace", 20_000)
    b = _small(tmp_path, "ls-usr.trace", 20_000)
    s = replay_interleaved([a, b], MachineConfig(), quantum=5000)
    assert s["processes"] == 2 and s["accesses"] == 40_000
    assert s["cr3_loads"] == 8  # 8 slices of 5000, a switch before each
    alone = replay(a, MachineConfig())
    assert s["guest_page_faults"] > alone["guest_page_faults"]


@pytest.mark.parametrize("mode", ["shadow", "nested"])
def test_interleaved_guest_sees_the_same_in_every_mode(tmp_path, mode):
    a = _small(tmp_path, "gzip.trace", 20_000)
    b = _small(tmp_path, "gups-64m.trace", 20_000)
    keys = ("accesses", "guest_page_faults", "processes", "cr3_loads", "pt_frames", "data_frames", "bad_accesses")
    native = replay_interleaved([a, b], MachineConfig(pcide=False), quantum=3000)
    other = replay_interleaved([a, b], MachineConfig(mode=mode, pcide=False), quantum=3000)
    assert {k: native[k] for k in keys} == {k: other[k] for k in keys}
    if mode == "shadow":
        assert other["exits"]["cr3_load"]["count"] == native["cr3_loads"]


def test_multi_process_input_is_refused(tmp_path):
    recs = np.zeros(4, dtype=RECORD_DTYPE)
    recs["addr"] = 0x1000
    recs["arg"] = 8
    recs["pid"] = [1, 2, 1, 2]
    path = tmp_path / "two.trace"
    write_trace(path, recs, {"source": "test"})
    with pytest.raises(MMUInputError, match="several processes"):
        list(interleave([path, path], quantum=2))
    with pytest.raises(MMUInputError, match="quantum"):
        list(interleave([path], quantum=0))


def test_cli(tmp_path):
    a = _small(tmp_path, "gzip.trace", 4000)
    b = _small(tmp_path, "ls-usr.trace", 4000)
    r = run("replay", a, b, "--quantum", "1000", "--json", "--mode", "shadow")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["processes"] == 2 and s["quantum"] == 1000 and s["trace"] == [str(a), str(b)]
    assert_clean_failure(run("replay", a, b, "--quantum", "-3"), "quantum")
    assert_clean_failure(run("replay", a, b, "--emit-translations", tmp_path / "x.npy"), "one trace")
