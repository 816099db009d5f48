"""The MMUTRACE v1 file format: layout, round trip, chunked reading, atomic writes, bad files.

The byte layout is checked against a plain ``struct``/``json`` reading of the spec in
docs/trace-format.md, not against the reader itself.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmu.errors import MMUInputError, TraceFormatError
from mmu.trace.format import (
    MAGIC,
    OP_EXIT,
    OP_FETCH,
    OP_FORK,
    OP_MMAP,
    OP_MUNMAP,
    OP_READ,
    OP_SWITCH,
    OP_WRITE,
    PROT_READ,
    PROT_THP,
    PROT_WRITE,
    RECORD_DTYPE,
    TraceReader,
    TraceWriter,
    is_access,
    read_trace,
    write_trace,
)


def sample_records(n: int = 50, seed: int = 0) -> np.ndarray:
    """A mix of accesses and every OS event, all valid."""
    rng = np.random.default_rng(seed)
    r = np.zeros(n, dtype=RECORD_DTYPE)
    r["addr"] = rng.integers(0, 1 << 47, n, dtype=np.uint64)
    r["arg"] = rng.integers(1, 4097, n)
    r["pid"] = rng.integers(0, 4, n)
    r["op"] = rng.choice([OP_READ, OP_WRITE, OP_FETCH], n)
    events = [
        (OP_MMAP, 0x7F00_0000_0000, 512, PROT_READ | PROT_WRITE | PROT_THP),
        (OP_MUNMAP, 0x7F00_0000_0000, 512, 0),
        (OP_SWITCH, 0, 0, 0),
        (OP_FORK, 0, 9, 0),
        (OP_EXIT, 0, 0, 0),
    ]
    for i, (op, addr, arg, flags) in enumerate(events):
        if i * 7 < n:
            r[i * 7] = (addr, arg, 3, op, flags)
    return r


def files_in(d) -> list[str]:
    return sorted(os.listdir(d))


# --- layout ---------------------------------------------------------------------------------


def test_record_dtype_is_the_documented_16_bytes():
    assert RECORD_DTYPE.itemsize == 16
    assert RECORD_DTYPE.names == ("addr", "arg", "pid", "op", "flags")
    assert [RECORD_DTYPE.fields[n][1] for n in RECORD_DTYPE.names] == [0, 8, 12, 14, 15]
    assert RECORD_DTYPE == np.dtype([("addr", "<u8"), ("arg", "<u4"), ("pid", "<u2"), ("op", "u1"), ("flags", "u1")])


def test_op_codes_and_is_access():
    assert (OP_READ, OP_WRITE, OP_FETCH) == (0, 1, 2)
    assert (OP_SWITCH, OP_MMAP, OP_MUNMAP, OP_FORK, OP_EXIT) == (16, 17, 18, 19, 20)
    assert [is_access(o) for o in (0, 1, 2, 16, 20)] == [True, True, True, False, False]
    ops = np.array([0, 1, 2, 16, 17, 18, 19, 20], dtype=np.uint8)
    assert is_access(ops).tolist() == [True] * 3 + [False] * 5


def test_file_layout_byte_by_byte(tmp_path):
    recs = sample_records(3)
    p = tmp_path / "t.trace"
    write_trace(p, recs, {"source": "test", "notes": "ünïcode"})
    raw = p.read_bytes()
    assert raw[:8] == b"MMUTRACE"
    version, hlen = struct.unpack_from("<II", raw, 8)
    assert version == 1
    header = json.loads(raw[16 : 16 + hlen].decode("utf-8"))
    assert header["source"] == "test" and header["notes"] == "ünïcode" and "created" in header
    data = (16 + hlen + 15) // 16 * 16
    assert set(raw[16 + hlen : data]) <= {0}
    assert len(raw) == data + 16 * 3
    for i, rec in enumerate(recs):
        addr, arg, pid, op, flags = struct.unpack_from("<QIHBB", raw, data + 16 * i)
        assert (addr, arg, pid, op, flags) == tuple(int(x) for x in rec.item())


# --- round trip and chunking -------------------------------------------------------------------


def test_round_trip_and_counts(tmp_path):
    recs = sample_records(200)
    p = tmp_path / "t.trace"
    with TraceWriter(p, {"source": "test", "command": "x"}) as w:
        w.write(recs[:77])
        w.write(recs[77:])
        assert w.n_records == 200
    r = TraceReader(p)
    assert r.n_records == len(r) == 200
    assert r.header["source"] == "test" and r.header["command"] == "x"
    got = read_trace(p)
    assert got.dtype == RECORD_DTYPE
    np.testing.assert_array_equal(got, recs)
    np.testing.assert_array_equal(np.asarray(r.memmap()), recs)
    assert r.count_accesses() == int(np.count_nonzero(recs["op"] <= 2))
    by_op = r.count_by_op()
    assert sum(by_op.values()) == 200 and by_op[OP_MMAP] == 1


def test_empty_trace(tmp_path):
    p = tmp_path / "e.trace"
    write_trace(p, np.zeros(0, RECORD_DTYPE), {"source": "test"})
    r = TraceReader(p)
    assert r.n_records == 0 and r.count_accesses() == 0
    assert list(r.chunks(10)) == []
    assert read_trace(p).shape == (0,)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 70), chunk=st.integers(1, 80), start=st.integers(0, 10))
def test_any_chunk_size_gives_identical_records(tmp_path_factory, n, chunk, start):
    recs = sample_records(n, seed=n)
    p = tmp_path_factory.mktemp("c") / "t.trace"
    write_trace(p, recs, {"source": "test"})
    parts = list(TraceReader(p).chunks(chunk, start=start))
    assert all(0 < len(c) <= chunk for c in parts)
    got = np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE)
    np.testing.assert_array_equal(got, recs[start:])


def test_update_header_in_place_and_when_it_outgrows_its_room(tmp_path):
    recs = sample_records(40)
    small = tmp_path / "small.trace"
    with TraceWriter(small, {"source": "test"}) as w:
        w.write(recs)
        w.update_header(truncated=True)
    assert TraceReader(small).header["truncated"] is True
    np.testing.assert_array_equal(read_trace(small), recs)
    big = tmp_path / "big.trace"
    with TraceWriter(big, {"source": "test"}) as w:
        w.write(recs)
        w.update_header(notes="x" * 5000)
    r = TraceReader(big)
    assert r.header["notes"] == "x" * 5000 and r.data_offset % 16 == 0
    np.testing.assert_array_equal(read_trace(big), recs)
    assert files_in(tmp_path) == ["big.trace", "small.trace"]


# --- atomic writes ---------------------------------------------------------------------------------


def test_exception_inside_writer_leaves_nothing(tmp_path):
    p = tmp_path / "t.trace"
    with pytest.raises(RuntimeError):
        with TraceWriter(p, {"source": "test"}) as w:
            w.write(sample_records(10))
            raise RuntimeError("boom")
    assert files_in(tmp_path) == []


def test_failed_rewrite_keeps_previous_file(tmp_path):
    p = tmp_path / "t.trace"
    write_trace(p, sample_records(5), {"source": "old"})
    with pytest.raises(RuntimeError):
        with TraceWriter(p, {"source": "new"}) as w:
            w.write(sample_records(9))
            raise RuntimeError("boom")
    assert TraceReader(p).header["source"] == "old" and TraceReader(p).n_records == 5
    assert files_in(tmp_path) == ["t.trace"]


def test_writer_rejects_invalid_records(tmp_path):
    p = tmp_path / "t.trace"
    bad = sample_records(10)
    bad[4]["op"] = 3
    with pytest.raises(ValueError, match="record 4: unknown op code 3"):
        with TraceWriter(p, {}) as w:
            w.write(bad)
    assert files_in(tmp_path) == []


def test_writer_into_missing_directory(tmp_path):
    with pytest.raises(MMUInputError, match="no such directory"):
        TraceWriter(tmp_path / "nope" / "t.trace", {})


# --- bad files -------------------------------------------------------------------------------------


def good_file(tmp_path, n=20) -> bytes:
    p = tmp_path / "good.trace"
    write_trace(p, sample_records(n), {"source": "test"})
    return p.read_bytes()


def expect_error(path, *fragments):
    with pytest.raises(TraceFormatError) as ei:
        r = TraceReader(path)
        list(r.chunks(7))
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    for f in fragments:
        assert f in msg
    return msg


def test_missing_file(tmp_path):
    expect_error(tmp_path / "missing.trace", "no such file")


def test_directory(tmp_path):
    expect_error(tmp_path, "is a directory")


def test_wrong_magic(tmp_path):
    p = tmp_path / "x.trace"
    p.write_bytes(b"NOTATRACE" + good_file(tmp_path)[9:])
    expect_error(p, "not an mmu trace file")


def test_unsupported_version(tmp_path):
    raw = bytearray(good_file(tmp_path))
    raw[8:12] = struct.pack("<I", 2)
    p = tmp_path / "x.trace"
    p.write_bytes(bytes(raw))
    expect_error(p, "unsupported trace format version 2")


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{not json", "bad JSON header"),
        (b"[1, 2]", "expected an object"),
        (b"\xff\xfe{}", "bad JSON header"),
    ],
)
def test_bad_header_json(tmp_path, body, fragment):
    prefix = MAGIC + struct.pack("<II", 1, len(body)) + body
    prefix += b"\0" * (-len(prefix) % 16)
    p = tmp_path / "x.trace"
    p.write_bytes(prefix + sample_records(2).tobytes())
    expect_error(p, fragment)


def test_nonzero_padding(tmp_path):
    body = b'{"a":1}'
    prefix = MAGIC + struct.pack("<II", 1, len(body)) + body
    prefix += b"\x01" * (-len(prefix) % 16)
    p = tmp_path / "x.trace"
    p.write_bytes(prefix)
    expect_error(p, "padding")


@pytest.mark.parametrize("cut", [1, 5, 8, 12, 15, 16, 20, 32, 40])
def test_truncated_anywhere(tmp_path, cut):
    raw = good_file(tmp_path)
    p = tmp_path / "x.trace"
    p.write_bytes(raw[:-cut])
    if cut % 16 == 0:  # whole records cut: still a valid (shorter) trace
        assert TraceReader(p).n_records == 20 - cut // 16
    else:
        expect_error(p, "truncated")


@pytest.mark.parametrize("keep", [0, 3, 8, 13, 20])
def test_truncated_header(tmp_path, keep):
    p = tmp_path / "x.trace"
    p.write_bytes(good_file(tmp_path)[:keep])
    expect_error(p, "truncated")


def test_implausible_header_length(tmp_path):
    p = tmp_path / "x.trace"
    p.write_bytes(MAGIC + struct.pack("<II", 1, 0xFFFFFFF0) + b"\0" * 64)
    expect_error(p, "implausible")


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed):
    rng = np.random.default_rng(seed)
    p = tmp_path / "x.trace"
    p.write_bytes(rng.bytes(int(rng.integers(1, 5000))))
    expect_error(p)


def test_random_record_bytes_after_valid_header(tmp_path):
    rng = np.random.default_rng(1)
    raw = good_file(tmp_path, n=0)
    p = tmp_path / "x.trace"
    p.write_bytes(raw + rng.bytes(16 * 1000))
    expect_error(p, "record ")


@pytest.mark.parametrize(
    "rec, fragment",
    [
        ((0x1000, 4, 1, 7, 0), "unknown op code 7"),
        ((0x1000, 0, 1, OP_READ, 0), "read of size 0"),
        ((0x1000, 4097, 1, OP_FETCH, 0), "fetch of size 4097"),
        ((0x1000, 4, 1, OP_WRITE, 1), "reserved flags"),
        ((0x1001, 1, 1, OP_MMAP, 1), "not 4 KiB aligned"),
        ((0x1000, 0, 1, OP_MUNMAP, 0), "0 pages"),
        ((0x1000, 1, 1, OP_MMAP, 0x10), "reserved flags"),
        ((0xFFFF_FFFF_FFFF_F000, 2, 1, OP_MMAP, 1), "past 2**64"),
        ((0, 0, 1, OP_SWITCH, 1), "reserved flags"),
    ],
)
def test_invalid_record_named_by_index(tmp_path, rec, fragment):
    recs = sample_records(30)
    recs[23] = rec
    raw = good_file(tmp_path, n=0) + recs.tobytes()
    p = tmp_path / "x.trace"
    p.write_bytes(raw)
    r = TraceReader(p)  # header fine; records are checked as they are read
    msg = expect_error(p, "record 23", fragment)
    assert msg.startswith(str(p))
    with pytest.raises(TraceFormatError, match="record 23"):
        read_trace(p)
    # unvalidated access still works (for tools that want to look at a damaged file)
    assert len(np.concatenate(list(r.chunks(8, validate=False)))) == 30
