"""``mmu.trace.record``: real programs under Valgrind Lackey, converted through a FIFO."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from mmu.errors import MMUInputError
from mmu.trace.format import OP_FETCH, TraceReader, read_trace
from mmu.trace.record import record, valgrind_version

needs_valgrind = pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")


@needs_valgrind
def test_record_true_to_the_end(tmp_path):
    out = tmp_path / "true.trace"
    s = record(["true"], out, pid=4)
    r = TraceReader(out)
    h = r.header
    assert h["command"] == "true" and h["valgrind"].startswith("valgrind-") and h["source"] == "lackey"
    assert h["truncated"] is False and h["exit_status"] == 0 and h["lackey_lines"] == s.lines
    assert r.n_records == s.records > 10_000
    recs = read_trace(out)
    assert set(recs["pid"].tolist()) == {4}
    # the first instruction of the dynamic loader is fetched first
    assert recs[0]["op"] == OP_FETCH
    assert sorted(os.listdir(tmp_path)) == ["true.trace"]


@needs_valgrind
def test_max_accesses_stops_valgrind(tmp_path):
    out = tmp_path / "ls.trace"
    s = record(["ls", "-l", "/usr"], out, max_accesses=3000)
    assert s.truncated and s.records == 3000
    h = TraceReader(out).header
    assert h["truncated"] is True and h["max_accesses"] == 3000 and h["command"] == "ls -l /usr"
    assert np.all(read_trace(out)["op"] <= 2)


@needs_valgrind
def test_failing_command_leaves_nothing(tmp_path):
    out = tmp_path / "f.trace"
    with pytest.raises(MMUInputError) as ei:
        record(["ls", str(tmp_path / "no-such-dir")], out)
    msg = str(ei.value)
    assert "exited with status 2" in msg and "no-such-dir" in msg and "\n" not in msg
    assert os.listdir(tmp_path) == []


@needs_valgrind
def test_allow_failure_keeps_trace(tmp_path):
    out = tmp_path / "f.trace"
    s = record(["false"], out, allow_failure=True)
    assert TraceReader(out).header["exit_status"] == 1 and s.records > 0


def test_command_not_found(tmp_path):
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed")
    with pytest.raises(MMUInputError, match="^command not found: no-such-program-xyz$"):
        record(["no-such-program-xyz"], tmp_path / "o.trace")
    assert os.listdir(tmp_path) == []


def test_valgrind_missing(tmp_path):
    with pytest.raises(MMUInputError, match="valgrind not found"):
        record(["true"], tmp_path / "o.trace", valgrind="no-such-valgrind-xyz")
    with pytest.raises(MMUInputError, match="valgrind not found"):
        valgrind_version("/nonexistent/valgrind")
    assert os.listdir(tmp_path) == []


def test_no_command(tmp_path):
    with pytest.raises(MMUInputError, match="no command"):
        record([], tmp_path / "o.trace")
