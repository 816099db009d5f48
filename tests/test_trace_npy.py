"""npy importer: integer address arrays and structured record arrays; bad dtypes and shapes."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mmu.errors import MMUInputError, TraceFormatError
from mmu.trace.format import OP_FETCH, OP_MMAP, OP_READ, RECORD_DTYPE, TraceReader, read_trace
from mmu.trace.npy import import_npy

DATA = Path(__file__).parent / "data"


def test_address_array_sample(tmp_path):
    loads = np.load(DATA / "loads_echo.npy")
    s = import_npy(DATA / "loads_echo.npy", tmp_path / "l.trace", chunk=7)
    got = read_trace(tmp_path / "l.trace")
    assert got["addr"].tolist() == loads.tolist()
    assert set(got["op"].tolist()) == {OP_READ} and set(got["arg"].tolist()) == {8}
    assert set(got["pid"].tolist()) == {1}
    assert s.records == s.accesses == s.lines == loads.size
    assert TraceReader(tmp_path / "l.trace").header["layout"] == "addresses"


def test_structured_sample(tmp_path):
    rec = np.load(DATA / "records_echo.npy")
    import_npy(DATA / "records_echo.npy", tmp_path / "r.trace", chunk=50)
    got = read_trace(tmp_path / "r.trace")
    assert got["addr"].tolist() == rec["addr"].tolist()
    assert got["op"].tolist() == rec["op"].tolist()
    assert got["arg"].tolist() == rec["size"].tolist()
    assert set(got["pid"].tolist()) == {7}


@pytest.mark.parametrize("dtype", ["<u8", ">u8", "<i8", "<u4", "<i2"])
def test_integer_dtypes(tmp_path, dtype):
    a = np.array([0, 1, 0x7FFF], dtype=dtype)
    np.save(tmp_path / "a.npy", a)
    import_npy(tmp_path / "a.npy", tmp_path / "a.trace")
    assert read_trace(tmp_path / "a.trace")["addr"].tolist() == [0, 1, 0x7FFF]


@pytest.mark.parametrize("chunk", [1, 3, 64, 1000, 5000])
@pytest.mark.parametrize(
    "dtype",
    [">u8", "<u2", [("pid", ">u2"), ("addr", ">i8"), ("op", "u1"), ("size", "<u4")]],
    ids=["big-endian", "u16", "packed-structured"],
)
def test_streamed_chunks_equal_the_whole_array(tmp_path, chunk, dtype):
    # the importer converts the mapped file in pieces of ``chunk`` elements, dropping each piece's
    # pages once converted: any piece size, byte order
    # and packed field layout must give what converting the whole loaded array gives
    rng = np.random.default_rng(chunk)
    a = np.zeros(1000, dtype=dtype)
    if a.dtype.names is None:
        a[:] = rng.integers(0, min(int(np.iinfo(a.dtype).max), 1 << 62), 1000)
        expect = a.astype(np.uint64)
    else:
        a["addr"] = rng.integers(0, 1 << 47, 1000)
        a["op"] = rng.integers(0, 3, 1000)
        a["size"] = rng.integers(1, 4097, 1000)
        a["pid"] = rng.integers(0, 9, 1000)
        expect = a["addr"].astype(np.uint64)
    np.save(tmp_path / "a.npy", a)
    s = import_npy(tmp_path / "a.npy", tmp_path / "a.trace", chunk=chunk)
    got = read_trace(tmp_path / "a.trace")
    assert s.records == 1000 and s.bytes_read == a.nbytes
    assert got["addr"].tolist() == expect.tolist()
    if a.dtype.names is not None:
        assert got["op"].tolist() == a["op"].tolist() and got["arg"].tolist() == a["size"].tolist()
        assert got["pid"].tolist() == a["pid"].tolist()


def test_empty_array(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros(0, dtype=np.uint64))
    s = import_npy(tmp_path / "e.npy", tmp_path / "e.trace")
    assert s.records == 0 and read_trace(tmp_path / "e.trace").shape == (0,)


def test_own_record_dtype_imports_as_is_with_events(tmp_path):
    r = np.zeros(3, dtype=RECORD_DTYPE)
    r[0] = (0x7F0000000000, 16, 2, OP_MMAP, 3)
    r[1] = (0x7F0000000010, 4, 2, OP_READ, 0)
    r[2] = (0x401000, 2, 2, OP_FETCH, 0)
    np.save(tmp_path / "r.npy", r)
    s = import_npy(tmp_path / "r.npy", tmp_path / "r.trace")
    np.testing.assert_array_equal(read_trace(tmp_path / "r.trace"), r)
    assert s.records == 3 and s.accesses == 2


def test_structured_without_size_defaults_to_8(tmp_path):
    a = np.array([(0x1000, 0), (0x2000, 2)], dtype=[("addr", "<u8"), ("op", "u1")])
    np.save(tmp_path / "a.npy", a)
    import_npy(tmp_path / "a.npy", tmp_path / "a.trace", pid=9)
    assert read_trace(tmp_path / "a.trace").tolist() == [(0x1000, 8, 9, 0, 0), (0x2000, 8, 9, 2, 0)]


def test_max_accesses(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(100, dtype=np.uint64))
    s = import_npy(tmp_path / "a.npy", tmp_path / "a.trace", max_accesses=33, chunk=10)
    assert read_trace(tmp_path / "a.trace")["addr"].tolist() == list(range(33)) and s.truncated


def bad(tmp_path, arr_or_bytes, *fragments):
    p = tmp_path / "bad.npy"
    if isinstance(arr_or_bytes, bytes):
        p.write_bytes(arr_or_bytes)
    else:
        np.save(p, arr_or_bytes, allow_pickle=True)
    with pytest.raises(TraceFormatError) as ei:
        import_npy(p, tmp_path / "o.trace")
    msg = str(ei.value)
    assert msg.startswith(str(p)) and "\n" not in msg
    for f in fragments:
        assert f in msg
    assert sorted(os.listdir(tmp_path)) == ["bad.npy"]


def test_float_array(tmp_path):
    bad(tmp_path, np.array([1.0, 2.0]), "expected integer addresses", "float64")


def test_two_dimensional(tmp_path):
    bad(tmp_path, np.zeros((3, 2), dtype=np.uint64), "expected a 1-D array", "(3, 2)")


def test_negative_address(tmp_path):
    bad(tmp_path, np.array([5, -3], dtype=np.int64), "element 1: negative address -3")


def test_object_array_is_refused(tmp_path):
    bad(tmp_path, np.array([1, "x"], dtype=object), "not a readable .npy array")


def test_pickle_file_is_refused(tmp_path):
    bad(tmp_path, pickle.dumps([1, 2, 3]), "not a readable .npy array")


def test_random_bytes(tmp_path):
    bad(tmp_path, np.random.default_rng(0).bytes(300), "not a readable .npy array")


def test_truncated_npy(tmp_path):
    p = tmp_path / "full.npy"
    np.save(p, np.arange(1000, dtype=np.uint64))
    raw = p.read_bytes()
    p.unlink()
    bad(tmp_path, raw[:-100], "not a readable .npy array")


def test_structured_missing_op(tmp_path):
    bad(tmp_path, np.zeros(2, dtype=[("addr", "<u8"), ("size", "<u4")]), "missing field(s) op")


def test_structured_unknown_field(tmp_path):
    bad(
        tmp_path,
        np.zeros(2, dtype=[("addr", "<u8"), ("op", "u1"), ("colour", "u1")]),
        "unknown field(s) colour",
    )


def test_structured_invalid_record_named_by_element(tmp_path):
    a = np.zeros(4, dtype=[("addr", "<u8"), ("op", "u1"), ("size", "<u4")])
    a["size"] = 8
    a[2] = (0x1000, 0, 0)
    bad(tmp_path, a, "element 2: read of size 0")
    a[2] = (0x1000, 9, 8)
    bad(tmp_path, a, "element 2: unknown op code 9")


def test_structured_out_of_range_field(tmp_path):
    a = np.zeros(2, dtype=[("addr", "<u8"), ("op", "<u4"), ("pid", "<i4")])
    a["pid"] = [1, 70000]
    bad(tmp_path, a, "element 1: pid 70000 exceeds 65535")


def test_npz_archive(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(3))
    (tmp_path / "a.npz").rename(tmp_path / "bad.npy")
    with pytest.raises(TraceFormatError, match="npz"):
        import_npy(tmp_path / "bad.npy", tmp_path / "o.trace")


def test_missing_input(tmp_path):
    with pytest.raises(MMUInputError, match="no such file"):
        import_npy(tmp_path / "nope.npy", tmp_path / "o.trace")
