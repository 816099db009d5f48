"""ChampSim input_instr importer: raw and compressed samples, record order, bad sizes.

``tests/data/champsim_echo.trace`` (and .xz/.gz/.bz2) encode 54 instructions of the real
lackey sample as ChampSim records (tests/data/make_samples.py). The reference below reads
them with ``struct`` using the documented offsets (ip@0, dst_mem@16, src_mem@32).
"""

from __future__ import annotations

import lzma
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from mmu.errors import MMUInputError, TraceFormatError
from mmu.trace.champsim import CHAMPSIM_DTYPE, import_champsim
from mmu.trace.format import OP_FETCH, OP_READ, OP_WRITE, RECORD_DTYPE, TraceReader, read_trace

DATA = Path(__file__).parent / "data"
RAW = DATA / "champsim_echo.trace"


def reference(raw: bytes, pid: int = 1) -> np.ndarray:
    out = []
    for off in range(0, len(raw), 64):
        ip = struct.unpack_from("<Q", raw, off)[0]
        dst = struct.unpack_from("<2Q", raw, off + 16)
        src = struct.unpack_from("<4Q", raw, off + 32)
        if ip:
            out.append((ip, 4, pid, OP_FETCH, 0))
        out += [(a, 1, pid, OP_READ, 0) for a in src if a]
        out += [(a, 1, pid, OP_WRITE, 0) for a in dst if a]
    return np.array(out, dtype=RECORD_DTYPE)


def test_dtype_matches_the_c_struct():
    assert CHAMPSIM_DTYPE.itemsize == 64
    offsets = {name: CHAMPSIM_DTYPE.fields[name][1] for name in CHAMPSIM_DTYPE.names}
    want = {
        "ip": 0,
        "is_branch": 8,
        "branch_taken": 9,
        "dst_regs": 10,
        "src_regs": 12,
        "dst_mem": 16,
        "src_mem": 32,
    }
    assert offsets == want


@pytest.mark.parametrize("suffix", ["", ".xz", ".gz", ".bz2"])
def test_samples_match_reference(tmp_path, suffix):
    out = tmp_path / "c.trace"
    s = import_champsim(DATA / f"champsim_echo.trace{suffix}", out, pid=5, chunk_instrs=7)
    ref = reference(RAW.read_bytes(), pid=5)
    np.testing.assert_array_equal(read_trace(out), ref)
    assert s.lines == 54 and s.bytes_read == 54 * 64 and s.records == s.accesses == len(ref)
    assert TraceReader(out).header["source"] == "champsim"


def test_sample_has_loads_and_stores_of_one_instruction():
    recs = reference(RAW.read_bytes())
    # a lackey M line became the same address as a load and a store of one instruction
    loads = set(recs["addr"][recs["op"] == OP_READ].tolist())
    stores = set(recs["addr"][recs["op"] == OP_WRITE].tolist())
    assert loads & stores


def test_slot_order_and_empty_slots(tmp_path):
    instr = np.zeros(2, dtype=CHAMPSIM_DTYPE)
    instr[0]["ip"] = 0x401000
    instr[0]["src_mem"] = [0x10, 0, 0x30, 0x40]
    instr[0]["dst_mem"] = [0, 0x50]
    instr[1]["ip"] = 0x401004
    src = tmp_path / "t.champsim"
    src.write_bytes(instr.tobytes())
    import_champsim(src, tmp_path / "o.trace")
    assert read_trace(tmp_path / "o.trace")[["addr", "op", "arg"]].tolist() == [
        (0x401000, OP_FETCH, 4),
        (0x10, OP_READ, 1),
        (0x30, OP_READ, 1),
        (0x40, OP_READ, 1),
        (0x50, OP_WRITE, 1),
        (0x401004, OP_FETCH, 4),
    ]


def test_max_accesses(tmp_path):
    s = import_champsim(RAW, tmp_path / "m.trace", max_accesses=10, chunk_instrs=4)
    np.testing.assert_array_equal(read_trace(tmp_path / "m.trace"), reference(RAW.read_bytes())[:10])
    assert s.truncated


@pytest.mark.parametrize("extra", [1, 17, 63])
def test_raw_size_not_multiple_of_64(tmp_path, extra):
    src = tmp_path / "bad.champsim"
    src.write_bytes(RAW.read_bytes() + b"\0" * extra)
    with pytest.raises(TraceFormatError, match=f"size {54 * 64 + extra} is not a multiple of 64") as ei:
        import_champsim(src, tmp_path / "o.trace")
    assert str(ei.value).startswith(str(src)) and "\n" not in str(ei.value)
    assert sorted(os.listdir(tmp_path)) == ["bad.champsim"]


def test_compressed_stream_ending_inside_a_record(tmp_path):
    src = tmp_path / "bad.champsim.xz"
    src.write_bytes(lzma.compress(RAW.read_bytes()[:-10]))
    with pytest.raises(TraceFormatError, match="ends inside instruction 53"):
        import_champsim(src, tmp_path / "o.trace", chunk_instrs=16)
    assert sorted(os.listdir(tmp_path)) == ["bad.champsim.xz"]


@pytest.mark.parametrize("suffix", [".xz", ".gz", ".bz2"])
def test_corrupt_compressed_data(tmp_path, suffix):
    good = (DATA / f"champsim_echo.trace{suffix}").read_bytes()
    src = tmp_path / f"bad.trace{suffix}"
    src.write_bytes(good[: len(good) // 2])
    with pytest.raises(TraceFormatError, match="cannot read input") as ei:
        import_champsim(src, tmp_path / "o.trace")
    assert str(ei.value).startswith(str(src)) and "\n" not in str(ei.value)
    assert sorted(os.listdir(tmp_path)) == [src.name]


def test_not_compressed_despite_suffix(tmp_path):
    src = tmp_path / "fake.trace.xz"
    src.write_bytes(RAW.read_bytes())
    with pytest.raises(TraceFormatError, match="cannot read input"):
        import_champsim(src, tmp_path / "o.trace")


def test_missing_input(tmp_path):
    with pytest.raises(MMUInputError, match="no such file"):
        import_champsim(tmp_path / "nope.xz", tmp_path / "o.trace")
    assert os.listdir(tmp_path) == []
