"""Import ChampSim binary traces (``input_instr``, 64-byte records, ChampSim ``inc/trace_instruction.h``).

Layout (little-endian, no file header)::

    0   u64     ip
    8   u8      is_branch
    9   u8      branch_taken
    10  u8[2]   destination_registers
    12  u8[4]   source_registers
    16  u64[2]  destination_memory   (stores)
    32  u64[4]  source_memory        (loads)

Each instruction becomes, in this order: an OP_FETCH of ``ip`` (size
:data:`CHAMPSIM_FETCH_SIZE` = 4, the mean x86 instruction length; ChampSim records none),
then an OP_READ per nonzero ``source_memory`` slot, then an OP_WRITE per nonzero
``destination_memory`` slot (an instruction reads its operands before it writes its
result). ChampSim uses 0 for an empty slot, so address 0 is never emitted (nor is a
fetch of ip 0). ChampSim records no access sizes: loads and stores get size
:data:`CHAMPSIM_DATA_SIZE` = 1, so no page crossing is invented.

Files are raw or compressed by suffix (``.xz``/``.lzma``, ``.gz``, ``.bz2``, as ChampSim's
``tracereader.cc``), decompressed as a stream; conversion is vectorised numpy per chunk.
The ``cloudsuite_instr`` variant (96 bytes) is not supported.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from mmu.errors import TraceFormatError
from mmu.trace.format import (
    OP_FETCH,
    OP_READ,
    OP_WRITE,
    RECORD_DTYPE,
    ImportSummary,
    TraceWriter,
    base_header,
)
from mmu.trace.lackey import DECOMPRESS_ERRORS, _check_pid, open_input

CHAMPSIM_DTYPE = np.dtype(
    [
        ("ip", "<u8"),
        ("is_branch", "u1"),
        ("branch_taken", "u1"),
        ("dst_regs", "u1", (2,)),
        ("src_regs", "u1", (4,)),
        ("dst_mem", "<u8", (2,)),
        ("src_mem", "<u8", (4,)),
    ]
)
assert CHAMPSIM_DTYPE.itemsize == 64
CHAMPSIM_RECORD = 64
CHAMPSIM_FETCH_SIZE = 4
CHAMPSIM_DATA_SIZE = 1
CHUNK_INSTRS = 1 << 16  # instructions per conversion chunk (4 MiB of input)

# slot order within one instruction: fetch, 4 loads, 2 stores
_SLOT_OP = np.array([OP_FETCH] + [OP_READ] * 4 + [OP_WRITE] * 2, dtype=np.uint8)
_COMPRESSED = (".xz", ".lzma", ".gz", ".bz2")


def champsim_to_records(
    instrs: np.ndarray,
    pid: int = 1,
    fetch_size: int = CHAMPSIM_FETCH_SIZE,
    data_size: int = CHAMPSIM_DATA_SIZE,
) -> np.ndarray:
    """Convert ChampSim instructions to mmu records.

    Parameters
    ----------
    instrs : ndarray of CHAMPSIM_DTYPE, shape (n,)
        Not mutated.
    pid : int
        Stored in every record.
    fetch_size, data_size : int
        Sizes recorded for fetches and for loads/stores.

    Returns
    -------
    ndarray of RECORD_DTYPE, shape (m,)
        Per instruction: fetch of ip, loads (``src_mem`` order), stores (``dst_mem`` order),
        skipping zero addresses.
    """
    n = instrs.shape[0]
    addr = np.empty((n, 7), dtype=np.uint64)
    addr[:, 0] = instrs["ip"]
    addr[:, 1:5] = instrs["src_mem"]
    addr[:, 5:7] = instrs["dst_mem"]
    keep = addr != 0
    m = int(np.count_nonzero(keep))
    out = np.zeros(m, dtype=RECORD_DTYPE)
    out["addr"] = addr[keep]
    op = np.broadcast_to(_SLOT_OP, (n, 7))[keep]
    out["op"] = op
    out["arg"] = np.where(op == OP_FETCH, fetch_size, data_size)
    out["pid"] = pid
    return out


def _read_exact(src, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        b = src.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def import_champsim(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    pid: int = 1,
    max_accesses: int | None = None,
    fetch_size: int = CHAMPSIM_FETCH_SIZE,
    data_size: int = CHAMPSIM_DATA_SIZE,
    chunk_instrs: int = CHUNK_INSTRS,
    header: dict | None = None,
) -> ImportSummary:
    """Convert a ChampSim ``input_instr`` trace (raw, .xz, .gz or .bz2) to an mmu trace.

    Parameters
    ----------
    input_path : path
        The ChampSim trace; compression chosen by suffix.
    output_path : path
        The trace to write (atomically).
    pid : int
        Stored in every record.
    max_accesses : int, optional
        Stop after this many access records.
    fetch_size, data_size : int
        Sizes recorded for fetches (default 4) and loads/stores (default 1).

    Returns
    -------
    ImportSummary
        ``lines`` counts instructions (64-byte input records).

    Raises
    ------
    TraceFormatError
        A raw file whose size is not a multiple of 64, a decompressed stream that ends
        inside a record, or corrupt compressed data.
    """
    _check_pid(pid)
    for name, v in (("fetch_size", fetch_size), ("data_size", data_size)):
        if not 1 <= v <= 4096:
            raise ValueError(f"{name} must be 1..4096, got {v}")
    t0 = time.perf_counter()
    p = Path(input_path)
    compressed = p.suffix.lower() in _COMPRESSED
    src = open_input(p)
    with src:
        if not compressed:
            size = os.fstat(src.fileno()).st_size
            if size % CHAMPSIM_RECORD:
                raise TraceFormatError(
                    f"{p}: size {size} is not a multiple of {CHAMPSIM_RECORD} bytes "
                    f"(not a ChampSim input_instr trace, or truncated)"
                )
        h = base_header(
            "champsim",
            p,
            "ChampSim input_instr (64-byte records)",
            f"fetch of ip (size {fetch_size}), then loads (src_mem), then stores (dst_mem), "
            f"size {data_size}; zero slots skipped",
            pid=pid,
        )
        h.update(header or {})
        instrs_done = 0
        nbytes = 0
        records = 0
        truncated = False
        with TraceWriter(output_path, h) as w:
            while True:
                try:
                    data = _read_exact(src, chunk_instrs * CHAMPSIM_RECORD)
                except DECOMPRESS_ERRORS as exc:
                    raise TraceFormatError(f"{p}: cannot read input: {exc}".splitlines()[0]) from None
                if not data:
                    break
                nbytes += len(data)
                whole = len(data) // CHAMPSIM_RECORD
                if len(data) % CHAMPSIM_RECORD:
                    raise TraceFormatError(
                        f"{p}: ends inside instruction {instrs_done + whole} "
                        f"({nbytes} bytes is not a multiple of {CHAMPSIM_RECORD}; truncated)"
                    )
                instrs = np.frombuffer(data, dtype=CHAMPSIM_DTYPE)
                out = champsim_to_records(instrs, pid, fetch_size, data_size)
                if max_accesses is not None and records + out.shape[0] >= max_accesses:
                    keep = max_accesses - records
                    out = out[:keep]
                    truncated = True
                w.write(out, validate=False)
                records += out.shape[0]
                instrs_done += whole
                if truncated:
                    break
    return ImportSummary(
        "champsim",
        str(input_path),
        str(output_path),
        records,
        records,
        instrs_done,
        nbytes,
        time.perf_counter() - t0,
        truncated,
    )
