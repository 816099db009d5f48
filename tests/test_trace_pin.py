"""Pin pinatrace importer against a plain-Python reference.

``tests/data/pinatrace_echo.out`` is the real lackey sample's data accesses re-encoded
exactly as pinatrace.cpp prints them (``"%p: R %p"``, ``#eof``); see tests/data/README.md
(Pin itself is not installed here).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from mmu.errors import MMUInputError, TraceFormatError
from mmu.trace.format import OP_FETCH, OP_READ, OP_WRITE, RECORD_DTYPE, TraceReader, read_trace
from mmu.trace.pin import import_pin

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "pinatrace_echo.out"
LINE = re.compile(r"^(0x[0-9a-fA-F]+|\(nil\)): ([RW]) (0x[0-9a-fA-F]+|\(nil\))\s*$")


def num(tok: str) -> int:
    return 0 if tok == "(nil)" else int(tok, 16)


def reference(text: str, pid: int = 1, fetch_ip: bool = False) -> np.ndarray:
    out = []
    prev = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, line
        ip, addr = num(m.group(1)), num(m.group(3))
        if fetch_ip and ip != prev and ip != 0:
            out.append((ip, 4, pid, OP_FETCH, 0))
        prev = ip
        out.append((addr, 1, pid, OP_READ if m.group(2) == "R" else OP_WRITE, 0))
    return np.array(out, dtype=RECORD_DTYPE)


def lackey_data_accesses() -> list[tuple[int, int]]:
    """(op, addr) of the data accesses in the lackey sample the pin sample was made from."""
    out = []
    for line in (DATA / "lackey_echo.txt").read_text().splitlines():
        m = re.match(r"^ ([LSM]) ([0-9a-f]+),\d+$", line)
        if m:
            a = int(m.group(2), 16)
            out += (
                [(OP_READ, a), (OP_WRITE, a)]
                if m.group(1) == "M"
                else [(OP_READ if m.group(1) == "L" else OP_WRITE, a)]
            )
    return out


@pytest.mark.parametrize("fetch_ip", [False, True])
def test_sample_matches_reference(tmp_path, fetch_ip):
    out = tmp_path / "p.trace"
    s = import_pin(SAMPLE, out, fetch_ip=fetch_ip, pid=3)
    got = read_trace(out)
    np.testing.assert_array_equal(got, reference(SAMPLE.read_text(), 3, fetch_ip))
    assert s.extra["eof_marker"] is True
    assert TraceReader(out).header["source"] == "pin"
    if not fetch_ip:
        # same data accesses as the lackey log it was derived from, in order
        assert [(int(o), int(a)) for o, a in zip(got["op"], got["addr"], strict=True)] == lackey_data_accesses()


@pytest.mark.parametrize("block_size", [40, 97, 500])
def test_block_boundaries_change_nothing(tmp_path, block_size):
    out = tmp_path / "p.trace"
    import_pin(SAMPLE, out, fetch_ip=True, block_size=block_size, out_records=3)
    np.testing.assert_array_equal(read_trace(out), reference(SAMPLE.read_text(), fetch_ip=True))


def test_nil_and_edge_lines(tmp_path):
    src = tmp_path / "e.out"
    src.write_text("(nil): R 0x10\n\n0x400000: W (nil)\n0x400000: R 0xFFFFFFFFFFFFFFFF\r\n# comment\n#eof\n")
    out = tmp_path / "e.trace"
    s = import_pin(src, out, fetch_ip=True)
    assert read_trace(out).tolist() == [
        (0x10, 1, 1, OP_READ, 0),
        (0x400000, 4, 1, OP_FETCH, 0),
        (0, 1, 1, OP_WRITE, 0),
        (2**64 - 1, 1, 1, OP_READ, 0),
    ]
    assert s.lines == 6 and s.extra["eof_marker"]


def test_missing_eof_marker_is_noted(tmp_path):
    src = tmp_path / "n.out"
    src.write_text("0x1: R 0x2\n#eof\n0x1: W 0x2\n")
    s = import_pin(src, tmp_path / "n.trace")
    assert s.extra["eof_marker"] is False
    h = TraceReader(tmp_path / "n.trace").header
    assert h["eof_marker"] is False and "no final #eof" in h["notes"]


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("0x401ab73: X 0x1fff000688", "not a pinatrace line"),
        ("0x401ab73 R 0x1fff000688", "not a pinatrace line"),
        ("401ab73: R 0x1fff000688", "not a pinatrace line"),
        ("0x401ab73: R 1fff000688", "not a pinatrace line"),
        ("0x401ab73: R 0x", "not a pinatrace line"),
        ("0x401ab73: R (nul)", "not a pinatrace line"),
        ("0x401ab73: R 0x1fff000688 extra", "not a pinatrace line"),
        ("I  0401ab70,3", "not a pinatrace line"),
        ("0x401ab73: W 0x10000000000000000", "address does not fit in 64 bits"),
    ],
)
def test_garbage_line_names_file_and_line_number(tmp_path, bad, fragment):
    lines = SAMPLE.read_text().splitlines()
    lines.insert(20, bad)
    src = tmp_path / "bad.out"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceFormatError) as ei:
        import_pin(src, tmp_path / "o.trace", block_size=64)
    msg = str(ei.value)
    assert msg.startswith(f"{src}: line 21: {fragment}: {bad[:10]!r}"[:-1]) and "\n" not in msg
    assert sorted(os.listdir(tmp_path)) == ["bad.out"]


def test_missing_input(tmp_path):
    with pytest.raises(MMUInputError, match="no such file"):
        import_pin(tmp_path / "pinatrace.out", tmp_path / "o.trace")
    assert os.listdir(tmp_path) == []
