"""CLI: `mmu import`, `mmu record`, `mmu info` -- success output; exit 2 and one line on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import clicheck
import numpy as np
import pytest
from typer.testing import CliRunner

from mmu.cli import app
from mmu.trace.format import RECORD_DTYPE, TraceReader, read_trace, write_trace

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_failure(result, *fragments, folder=None, leftovers=()):
    """A clean failure (clicheck) that leaves exactly ``leftovers`` in ``folder``."""
    clicheck.assert_clean_failure(result, *fragments)
    if folder is not None:
        assert sorted(os.listdir(folder)) == sorted(leftovers)


@pytest.mark.parametrize(
    "kind, sample, pid",
    [
        ("lackey", "lackey_echo.txt", 3),
        ("pin", "pinatrace_echo.out", 3),
        ("champsim", "champsim_echo.trace.xz", 3),
        ("npy", "loads_echo.npy", 3),
        ("NPY", "records_echo.npy", 7),  # the array's own pid field wins
    ],
)
def test_import_each_kind(tmp_path, kind, sample, pid):
    out = tmp_path / "o.trace"
    r = run("import", kind, DATA / sample, "-o", out, "--pid", "3")
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.stderr
    assert TraceReader(out).header["source"] == kind.lower()
    assert set(read_trace(out)["pid"].tolist()) == {pid}


def test_import_quiet_and_max_accesses(tmp_path):
    out = tmp_path / "o.trace"
    r = run("import", "lackey", DATA / "lackey_echo.txt", "-o", out, "-q", "--max-accesses", "10")
    assert r.exit_code == 0 and r.stderr == "" and r.stdout == ""
    assert TraceReader(out).n_records == 10


def test_unknown_kind(tmp_path):
    r = run("import", "dynamorio", DATA / "lackey_echo.txt", "-o", tmp_path / "o.trace")
    assert_clean_failure(r, "unknown trace kind 'dynamorio'", "lackey, pin, champsim, npy", folder=tmp_path)


@pytest.mark.parametrize(
    "kind, content, fragment",
    [
        ("lackey", b"I  0401ab70,3\nbogus line\n", "line 2: not a lackey trace line: 'bogus line'"),
        ("pin", b"0x1: R 0x2\n0x1: Q 0x2\n", "line 2: not a pinatrace line"),
        ("champsim", b"\0" * 100, "is not a multiple of 64"),
        ("npy", b"\x93NUMPY garbage", "not a readable .npy array"),
    ],
)
def test_bad_input_exit_2_no_partial_output(tmp_path, kind, content, fragment):
    src = tmp_path / "bad.in"
    src.write_bytes(content)
    r = run("import", kind, src, "-o", tmp_path / "o.trace")
    assert_clean_failure(r, str(src), fragment, folder=tmp_path, leftovers=["bad.in"])


def test_missing_input_file(tmp_path):
    r = run("import", "lackey", tmp_path / "nope.txt", "-o", tmp_path / "o.trace")
    assert_clean_failure(r, "nope.txt: no such file", folder=tmp_path)


def test_output_directory_missing(tmp_path):
    r = run("import", "lackey", DATA / "lackey_echo.txt", "-o", tmp_path / "no" / "o.trace")
    assert_clean_failure(r, "no such directory")


def test_fetch_ip_only_for_pin(tmp_path):
    r = run("import", "lackey", DATA / "lackey_echo.txt", "-o", tmp_path / "o.trace", "--fetch-ip")
    assert_clean_failure(r, "--fetch-ip applies to pin", folder=tmp_path)


def test_info_tables_and_json(tmp_path):
    out = tmp_path / "o.trace"
    assert run("import", "lackey", DATA / "lackey_echo.txt", "-o", out, "-q").exit_code == 0
    r = run("info", out)
    assert r.exit_code == 0, r.output
    for word in ("mmu trace v2", "CRC-32 per 65,536-record chunk", "lackey", "fetch", "read", "4 KiB pages", "total"):
        assert word in r.stdout
    r = run("info", out, "--json")
    info = json.loads(r.stdout)
    recs = read_trace(out)
    assert info["records"] == len(recs) == info["accesses"]
    assert info["ops"] == {
        name: int(np.count_nonzero(recs["op"] == op)) for op, name in ((0, "read"), (1, "write"), (2, "fetch"))
    }
    assert info["pages_4k"] == len(np.unique(recs["addr"] >> np.uint64(12)))
    assert info["header"]["source"] == "lackey"
    assert (info["version"], info["chunk_records"]) == (2, 65536)


@pytest.mark.parametrize("content, fragment", [(b"", "truncated"), (b"garbage!" * 8, "not an mmu trace file")])
def test_info_bad_trace(tmp_path, content, fragment):
    p = tmp_path / "x.trace"
    p.write_bytes(content)
    assert_clean_failure(run("info", p), str(p), fragment)


def test_info_bad_record(tmp_path):
    r = np.zeros(3, dtype=RECORD_DTYPE)
    r["arg"] = 1
    p = tmp_path / "x.trace"
    write_trace(p, r, {})
    reader = TraceReader(p)
    raw = bytearray(p.read_bytes()[: reader.data_offset + 16 * 3])
    raw[8:12] = (1).to_bytes(4, "little")  # as a version 1 file (no checksums): the record check speaks
    raw[-2] = 99  # op of record 2
    p.write_bytes(bytes(raw))
    assert_clean_failure(run("info", p), "record 2: unknown op code 99")


@pytest.mark.parametrize("command", ["info", "replay"])
def test_corrupted_chunk(tmp_path, command):
    r = np.zeros(70_000, dtype=RECORD_DTYPE)
    r["addr"] = np.arange(70_000, dtype=np.uint64) * 64
    r["arg"] = 8
    p = tmp_path / "x.trace"
    write_trace(p, r, {})
    raw = bytearray(p.read_bytes())
    raw[TraceReader(p).data_offset + 16 * 66_000 + 3] ^= 0x04  # an address bit of record 66000: chunk 1
    p.write_bytes(bytes(raw))
    res = run(command, p)
    assert_clean_failure(res, str(p), "chunk 1 (records 65536..69999): checksum mismatch", "corrupted")


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_record_command(tmp_path):
    out = tmp_path / "r.trace"
    r = run("record", "-o", out, "--max-accesses", "500", "--", "ls", "-l", "/usr")
    assert r.exit_code == 0, r.output
    h = TraceReader(out).header
    assert h["command"] == "ls -l /usr" and h["truncated"] is True
    assert TraceReader(out).n_records == 500


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_record_failure(tmp_path):
    r = run("record", "-o", tmp_path / "r.trace", "--", "false")
    assert_clean_failure(r, "recorded command exited with status 1: false", folder=tmp_path)


def test_console_script_error_path(tmp_path):
    """Through mmu.cli.main as installed: one line on stderr, exit 2, no traceback."""
    code = "import sys; from mmu.cli import main; sys.argv = ['mmu'] + sys.argv[1:]; main()"
    p = subprocess.run(
        [sys.executable, "-c", code, "import", "lackey", str(tmp_path / "nope"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr == f"mmu: error: {tmp_path / 'nope'}: no such file\n"
