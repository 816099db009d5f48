"""The MMUTRACE file format (v2 written, v1 still read): layout, round trip, chunked reading,
chunk checksums, atomic writes, bad files.

The byte layout is checked against a plain ``struct``/``json``/``zlib`` reading of the spec in
docs/trace-format.md, not against the reader itself; version 1 files are built by hand the same way.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import zlib

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
    record_error,
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


def v1_bytes(records: np.ndarray, header: dict | None = None) -> bytes:
    """A version 1 file (no chunk index), built from the spec: prefix, JSON, zero padding, records."""
    body = json.dumps(header or {"source": "v1"}).encode("utf-8")
    prefix = MAGIC + struct.pack("<II", 1, len(body)) + body
    return prefix + b"\0" * (-len(prefix) % 16) + records.tobytes()


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


@pytest.mark.parametrize("n, chunk", [(3, 1 << 16), (10, 4), (12, 4), (0, 4)])
def test_file_layout_byte_by_byte(tmp_path, n, chunk):
    recs = sample_records(n)
    p = tmp_path / "t.trace"
    with TraceWriter(p, {"source": "test", "notes": "ünïcode"}, chunk_records=chunk) as w:
        w.write(recs)
    raw = p.read_bytes()
    assert raw[:8] == b"MMUTRACE"
    version, hlen = struct.unpack_from("<II", raw, 8)
    assert version == 2
    header = json.loads(raw[16 : 16 + hlen].decode("utf-8"))
    assert header["source"] == "test" and header["notes"] == "ünïcode" and "created" in header
    data = (16 + hlen + 15) // 16 * 16
    assert set(raw[16 + hlen : data]) <= {0}
    for i, rec in enumerate(recs):
        addr, arg, pid, op, flags = struct.unpack_from("<QIHBB", raw, data + 16 * i)
        assert (addr, arg, pid, op, flags) == tuple(int(x) for x in rec.item())
    k = -(-n // chunk)  # chunks, the last one possibly short
    assert len(raw) == data + 16 * n + 4 * k + 32
    index = struct.unpack_from(f"<{k}I", raw, data + 16 * n)
    for j in range(k):
        chunk_bytes = raw[data + 16 * chunk * j : data + 16 * min(chunk * (j + 1), n)]
        assert index[j] == zlib.crc32(chunk_bytes)
    n_rec, c, header_crc, index_crc, zero = struct.unpack_from("<QIIII", raw, len(raw) - 32)
    assert (n_rec, c, zero) == (n, chunk, 0)
    assert header_crc == zlib.crc32(raw[:data])
    assert index_crc == zlib.crc32(raw[data + 16 * n : data + 16 * n + 4 * k])
    assert raw[-8:] == b"MMUCHUNK"


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
    raw[8:12] = struct.pack("<I", 3)
    p = tmp_path / "x.trace"
    p.write_bytes(bytes(raw))
    expect_error(p, "unsupported trace format version 3")


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


@pytest.mark.parametrize("cut", [1, 4, 5, 8, 12, 15, 16, 20, 32, 36, 40, 48, 100, 16 * 20])
def test_truncated_anywhere(tmp_path, cut):
    raw = good_file(tmp_path)
    p = tmp_path / "x.trace"
    p.write_bytes(raw[:-cut])
    expect_error(p, "truncated or corrupt")


@pytest.mark.parametrize("cut", [1, 5, 8, 12, 15, 16, 20, 32, 40])
def test_truncated_v1(tmp_path, cut):
    p = tmp_path / "x.trace"
    p.write_bytes(v1_bytes(sample_records(20))[:-cut])
    if cut % 16 == 0:  # whole records cut: a version 1 file cannot tell, it is a valid (shorter) trace
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
    p = tmp_path / "x.trace"
    p.write_bytes(v1_bytes(sample_records(0)) + rng.bytes(16 * 1000))
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
    p = tmp_path / "x.trace"
    p.write_bytes(v1_bytes(recs))  # a writer refuses invalid records, so build the file by hand
    r = TraceReader(p)  # header fine; records are checked as they are read
    msg = expect_error(p, "record 23", fragment)
    assert msg.startswith(str(p))
    with pytest.raises(TraceFormatError, match="record 23"):
        read_trace(p)
    # unvalidated access still works (for tools that want to look at a damaged file)
    assert len(np.concatenate(list(r.chunks(8, validate=False)))) == 30


# --- chunk checksums (version 2) and version 1 files -------------------------------------------------


def write_chunked(p, recs, chunk):
    with TraceWriter(p, {"source": "test"}, chunk_records=chunk) as w:
        w.write(recs)
    return TraceReader(p).data_offset


def flip_bit(p, byte, bit=0):
    raw = bytearray(p.read_bytes())
    raw[byte] ^= 1 << bit
    p.write_bytes(bytes(raw))


def test_flipped_address_bit_names_the_chunk(tmp_path):
    recs = sample_records(100)
    p = tmp_path / "t.trace"
    data = write_chunked(p, recs, chunk=16)
    flip_bit(p, data + 16 * 37 + 2, bit=5)  # record 37's addr, bits 16..23: chunk 2 = records 32..47
    r = TraceReader(p)  # header and index are intact: opening succeeds
    msg = expect_error(p, "chunk 2 (records 32..47): checksum mismatch", "the file is corrupted")
    assert msg.startswith(f"{p}: chunk 2 ")
    # the flipped record would still be a valid record: only the checksum catches it
    flipped = np.array(r.memmap()[37:38])  # memmap: unchecked, zero-copy
    assert int(flipped["addr"][0]) == int(recs["addr"][37]) ^ (1 << 21)
    assert record_error(flipped) is None
    with pytest.raises(TraceFormatError, match="chunk 2 "):
        read_trace(p)
    # random access that touches chunk 2 fails too, even for a record outside the flipped one
    with pytest.raises(TraceFormatError, match="chunk 2 "):
        list(r.chunks(3, start=46, stop=49))
    # chunks the flip did not touch still read
    np.testing.assert_array_equal(np.concatenate(list(r.chunks(5, start=0, stop=32))), recs[:32])
    np.testing.assert_array_equal(np.concatenate(list(r.chunks(7, start=48))), recs[48:])


def test_last_short_chunk_is_checked(tmp_path):
    recs = sample_records(50)
    p = tmp_path / "t.trace"
    data = write_chunked(p, recs, chunk=16)
    flip_bit(p, data + 16 * 49 + 14)  # op byte of the last record: chunk 3 holds records 48..49
    expect_error(p, "chunk 3 (records 48..49): checksum mismatch")


@pytest.mark.parametrize(
    "where, fragment",
    [
        ("header", "header: checksum mismatch"),
        ("index", "chunk index: checksum mismatch"),
        ("trailer", "truncated or corrupt"),
    ],
)
def test_flipped_bit_outside_records(tmp_path, where, fragment):
    p = tmp_path / "t.trace"
    data = write_chunked(p, sample_records(40), chunk=16)
    size = p.stat().st_size
    # header: a letter of "test" in the JSON; index: the second chunk CRC; trailer: its record count
    byte = {"header": p.read_bytes().index(b"test"), "index": data + 16 * 40 + 5, "trailer": size - 32}[where]
    flip_bit(p, byte, bit=1)
    msg = expect_error(p, fragment)
    assert msg.startswith(str(p))


def test_bytes_appended_to_a_v2_file(tmp_path):
    p = tmp_path / "t.trace"
    write_chunked(p, sample_records(40), chunk=16)
    p.write_bytes(p.read_bytes() + b"\0" * 16)
    expect_error(p, "truncated or corrupt")


def test_version_1_file_still_reads_unchecked(tmp_path):
    recs = sample_records(60)
    p = tmp_path / "v1.trace"
    p.write_bytes(v1_bytes(recs, {"source": "old"}))
    r = TraceReader(p)
    assert (r.version, r.n_records, r.header["source"], r.chunk_crcs) == (1, 60, "old", None)
    np.testing.assert_array_equal(read_trace(p), recs)
    np.testing.assert_array_equal(np.concatenate(list(r.chunks(7, start=3, stop=41))), recs[3:41])
    r.verify()  # nothing to check but the records
    # a flipped address bit goes unnoticed in version 1: that is what version 2 is for
    flip_bit(p, r.data_offset + 16 * 5 + 1)
    assert int(read_trace(p)["addr"][5]) == int(recs["addr"][5]) ^ (1 << 8)


def test_shipped_traces_read():
    from pathlib import Path

    traces = sorted((Path(__file__).resolve().parent.parent / "traces").glob("*.trace"))
    assert traces
    for t in traces:
        r = TraceReader(t)
        r.verify()
        assert r.count_accesses() > 0


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 90),
    chunk=st.integers(1, 40),
    splits=st.lists(st.integers(0, 90), max_size=4),
    read_chunk=st.integers(1, 50),
    start=st.integers(0, 95),
    stop=st.integers(0, 95),
    flip=st.integers(0, 16 * 90 * 8 - 1),
)
def test_chunked_round_trip_and_any_flip_is_caught(tmp_path_factory, n, chunk, splits, read_chunk, start, stop, flip):
    recs = sample_records(n, seed=n)
    p = tmp_path_factory.mktemp("h") / "t.trace"
    with TraceWriter(p, {"source": "test"}, chunk_records=chunk) as w:
        cuts = sorted({min(s, n) for s in splits} | {0, n})
        for a, b in itertools.pairwise(cuts):  # any split of the writes gives the same file
            w.write(recs[a:b])
    r = TraceReader(p)
    assert (r.version, r.n_records, r.chunk_records) == (2, n, chunk)
    parts = list(r.chunks(read_chunk, start=start, stop=stop))
    assert all(0 < len(c) <= read_chunk for c in parts)
    got = np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE)
    np.testing.assert_array_equal(got, recs[start:stop])
    if n == 0:
        return
    bit = flip % (16 * n * 8)
    rec = bit // 128
    flip_bit(p, r.data_offset + bit // 8, bit % 8)
    k = rec // chunk
    lo, hi = k * chunk, min((k + 1) * chunk, n) - 1
    with pytest.raises(TraceFormatError, match=rf"chunk {k} \(records {lo}\.\.{hi}\): checksum mismatch"):
        list(TraceReader(p).chunks(read_chunk, validate=False))
