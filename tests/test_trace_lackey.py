"""Lackey importer against a plain-Python regex reference, on real Valgrind output.

``tests/data/lackey_echo.txt`` is real ``valgrind --tool=lackey --trace-mem=yes`` output
(see tests/data/README.md). The reference reads it with the regex from
docs/reference/trace-formats.md and maps I/L/S/M the documented way.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
from pathlib import Path

import numpy as np
import pytest

from mmu.errors import MMUInputError, TraceFormatError
from mmu.trace.format import OP_FETCH, OP_READ, OP_WRITE, RECORD_DTYPE, TraceReader, read_trace
from mmu.trace.lackey import import_lackey

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "lackey_echo.txt"
LINE = re.compile(r"^ ?([ILSM]) +([0-9a-fA-F]+),(\d+)\s*$")
MESSAGE = re.compile(r"^(==|--|\*\*)\d+(==|--|\*\*)")


def reference(text: str, pid: int = 1) -> np.ndarray:
    """Plain-Python reading of a lackey log: I -> fetch, L -> read, S -> write, M -> read, write."""
    out = []
    for line in text.splitlines():
        if not line.strip() or MESSAGE.match(line):
            continue
        m = LINE.match(line)
        assert m, line
        kind, addr, size = m.group(1), int(m.group(2), 16), int(m.group(3))
        ops = {"I": [OP_FETCH], "L": [OP_READ], "S": [OP_WRITE], "M": [OP_READ, OP_WRITE]}[kind]
        out += [(addr, size, pid, op, 0) for op in ops]
    return np.array(out, dtype=RECORD_DTYPE)


def files_in(d) -> list[str]:
    return sorted(os.listdir(d))


def test_real_sample_matches_reference(tmp_path):
    out = tmp_path / "echo.trace"
    s = import_lackey(SAMPLE, out)
    text = SAMPLE.read_text()
    ref = reference(text)
    got = read_trace(out)
    np.testing.assert_array_equal(got, ref)
    n_m = sum(1 for ln in text.splitlines() if ln.startswith(" M"))
    assert n_m > 0
    data_lines = sum(1 for ln in text.splitlines() if LINE.match(ln))
    assert s.records == s.accesses == data_lines + n_m  # each M counts twice
    assert s.lines == len(text.splitlines()) and s.bytes_read == len(text.encode())
    assert not s.truncated
    h = TraceReader(out).header
    assert h["source"] == "lackey" and h["pid"] == 1 and "M -> read then write" in h["notes"]


def test_modify_is_read_then_write(tmp_path):
    src = tmp_path / "m.txt"
    src.write_text(" M 1fff000690,8\n")
    out = tmp_path / "m.trace"
    import_lackey(src, out, pid=42)
    got = read_trace(out)
    assert got.tolist() == [(0x1FFF000690, 8, 42, OP_READ, 0), (0x1FFF000690, 8, 42, OP_WRITE, 0)]


@pytest.mark.parametrize("block_size", [64, 67, 100, 257, 1000])
@pytest.mark.parametrize("out_records", [2, 3, 5, 1 << 20])
def test_block_and_buffer_boundaries_change_nothing(tmp_path, block_size, out_records):
    out = tmp_path / "b.trace"
    s = import_lackey(SAMPLE, out, block_size=block_size, out_records=out_records)
    np.testing.assert_array_equal(read_trace(out), reference(SAMPLE.read_text()))
    assert s.lines == len(SAMPLE.read_text().splitlines())


def test_edge_lines(tmp_path):
    text = (
        "==123== Lackey, an example Valgrind tool\n"
        "\n"
        "   \t \n"
        "--123-- a valgrind warning\n"
        "**123** another valgrind message\n"
        "I  0,1\n"
        " L FFFFFFFFFFFFFFFF,4096\r\n"
        "L 00000000000000000000abc,2   \n"  # no leading space, long zero padding
        " S 1fff000698,8"  # last line without a newline
    )
    src = tmp_path / "e.txt"
    src.write_text(text)
    out = tmp_path / "e.trace"
    s = import_lackey(src, out)
    assert read_trace(out).tolist() == [
        (0, 1, 1, OP_FETCH, 0),
        (2**64 - 1, 4096, 1, OP_READ, 0),
        (0xABC, 2, 1, OP_READ, 0),
        (0x1FFF000698, 8, 1, OP_WRITE, 0),
    ]
    assert s.lines == 9


def test_empty_input_gives_empty_trace(tmp_path):
    src = tmp_path / "empty.txt"
    src.write_text("")
    s = import_lackey(src, tmp_path / "e.trace")
    assert s.records == 0 and TraceReader(tmp_path / "e.trace").n_records == 0


def test_compressed_input(tmp_path):
    raw = SAMPLE.read_bytes()
    (tmp_path / "s.txt.xz").write_bytes(lzma.compress(raw))
    (tmp_path / "s.txt.gz").write_bytes(gzip.compress(raw))
    ref = reference(raw.decode())
    for name in ("s.txt.xz", "s.txt.gz"):
        import_lackey(tmp_path / name, tmp_path / "c.trace")
        np.testing.assert_array_equal(read_trace(tmp_path / "c.trace"), ref)


@pytest.mark.parametrize("limit", [1, 2, 57, 200])
def test_max_accesses_cuts_exactly(tmp_path, limit):
    out = tmp_path / "m.trace"
    s = import_lackey(SAMPLE, out, max_accesses=limit, out_records=16)
    np.testing.assert_array_equal(read_trace(out), reference(SAMPLE.read_text())[:limit])
    assert s.truncated and s.records == limit


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("X  0401ab70,3", "not a lackey trace line"),
        ("I  0401ab70", "not a lackey trace line"),
        ("I  0401ab70,", "not a lackey trace line"),
        ("I  ,3", "not a lackey trace line"),
        ("I0401ab70,3", "not a lackey trace line"),
        ("I  0401ab7g,3", "not a lackey trace line"),
        (" L 1fff000698,8 trailing", "not a lackey trace line"),
        ("SB 04017a00", "not a lackey trace line"),
        ("== not a message", "not a lackey trace line"),
        (" L 1fff000698,0", "access size must be 1..4096"),
        (" L 1fff000698,4097", "access size must be 1..4096"),
        (" L 1fff000698,99999999999999999999", "access size must be 1..4096"),
        (" L 10000000000000000,8", "address does not fit in 64 bits"),
        ("\x00\x01\x02 binary", "not a lackey trace line"),
    ],
)
def test_garbage_line_names_file_and_line_number(tmp_path, bad, fragment):
    lines = SAMPLE.read_text().splitlines()
    lines.insert(100, bad)
    src = tmp_path / "bad.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "bad.trace"
    with pytest.raises(TraceFormatError) as ei:
        import_lackey(src, out, block_size=128)
    msg = str(ei.value)
    assert msg.startswith(f"{src}: line 101: {fragment}: ")
    assert repr(bad)[1:12] in msg and "\n" not in msg
    assert files_in(tmp_path) == ["bad.txt"]  # no partial output, no temp file


def test_long_garbage_line_is_quoted_truncated(tmp_path):
    src = tmp_path / "bad.txt"
    src.write_text("I  0401ab70,3\n" + "Z" * 500 + "\n")
    with pytest.raises(TraceFormatError, match=r"line 2: not a lackey trace line: 'Z{60}\.\.\.'$"):
        import_lackey(src, tmp_path / "o.trace")


def test_line_longer_than_block(tmp_path):
    src = tmp_path / "bin.txt"
    src.write_bytes(b"I  0401ab70,3\n" + b"\xff" * (3 << 20))
    with pytest.raises(TraceFormatError, match="line 2"):
        import_lackey(src, tmp_path / "o.trace", block_size=1 << 20)
    assert files_in(tmp_path) == ["bin.txt"]


def test_missing_input(tmp_path):
    with pytest.raises(MMUInputError, match=f"^{re.escape(str(tmp_path / 'nope.txt'))}: no such file$"):
        import_lackey(tmp_path / "nope.txt", tmp_path / "o.trace")
    assert files_in(tmp_path) == []


def test_corrupt_compressed_input(tmp_path):
    src = tmp_path / "c.txt.xz"
    src.write_bytes(lzma.compress(SAMPLE.read_bytes())[:-30])
    with pytest.raises(TraceFormatError, match="c.txt.xz: cannot read input"):
        import_lackey(src, tmp_path / "o.trace")
    assert files_in(tmp_path) == ["c.txt.xz"]


def test_bad_pid(tmp_path):
    with pytest.raises(MMUInputError, match="pid"):
        import_lackey(SAMPLE, tmp_path / "o.trace", pid=70000)
