"""Import Valgrind Lackey memory traces (``valgrind --tool=lackey --trace-mem=yes``).

Lackey prints one line per event (``lackey/lk_main.c``)::

    I  0401ab70,3        instruction fetch  -> OP_FETCH
     L 1fff000698,8      data load          -> OP_READ
     S 1fff000690,8      data store         -> OP_WRITE
     M 1fff000690,8      data modify        -> OP_READ then OP_WRITE (same addr, size)

Valgrind's own messages (``==PID== ...``, ``--PID-- ...``, ``**PID** ...``) and blank
lines are skipped; any other line is an error naming the file, line number and text.

The input is read in blocks of whole lines (default 32 MiB) and each block is parsed by
one numba kernel call (:func:`_parse_lackey`), which stops at the first bad line and
returns a status code and the line's offset; the Python layer turns that into the
message. The same block driver (:func:`import_text`) serves the Pin importer.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import time
import zlib
from pathlib import Path

import numpy as np

from mmu._jit import jit
from mmu.errors import MMUInputError, TraceFormatError
from mmu.trace.format import (
    MAX_ACCESS_SIZE,
    RECORD_DTYPE,
    ImportSummary,
    TraceWriter,
    base_header,
)

BLOCK_SIZE = 32 << 20  # bytes of input text per kernel pass
OUT_RECORDS = 1 << 20  # records per output buffer (16 MiB)
MAX_LINE_BYTES = 1 << 20  # a longer line is an error (valid lines are < 64 bytes)

# Kernel status codes.
ST_DONE = 0  # consumed every line up to ``end``
ST_FULL = 1  # output buffer full; resume at the returned position
ST_BAD_LINE = 2  # a line that is not in the format
ST_BAD_SIZE = 3  # access size 0 or > MAX_ACCESS_SIZE
ST_BIG_ADDR = 4  # address does not fit in 64 bits

# hex digit value of each byte, -1 elsewhere
HEX_TABLE = np.full(256, -1, dtype=np.int8)
for _i, _c in enumerate(b"0123456789abcdef"):
    HEX_TABLE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    HEX_TABLE[_c] = 10 + _i
del _i, _c

_NL = 10
_SP = 32
_TAB = 9
_CR = 13


@jit
def _parse_lackey(buf, pos, end, hexv, out_addr, out_arg, out_op, max_size):
    """Parse lackey lines in ``buf[pos:end]`` into the output columns.

    Parameters
    ----------
    buf : uint8[:]
        Input bytes; ``buf[end - 1]`` is a newline (every line in range is complete).
    pos, end : int
        Byte range to parse.
    hexv : int8[256]
        :data:`HEX_TABLE`.
    out_addr : uint64[:], out_arg : uint32[:], out_op : uint8[:]
        Output columns (may be strided views of one record array); written from index 0.
    max_size : int
        Largest access size accepted.

    Returns
    -------
    (status, pos, n_out, n_lines)
        ``status`` one of ``ST_*``; ``pos`` the offset where parsing stopped (start of the
        bad line on error, where to resume on ``ST_FULL``); ``n_out`` records written;
        ``n_lines`` whole lines consumed.
    """
    cap = out_op.shape[0]
    n = 0
    lines = 0
    while pos < end:
        if n + 2 > cap:
            return ST_FULL, pos, n, lines
        start = pos
        c = buf[pos]
        if c == _SP:
            pos += 1
            c = buf[pos]
        if c == 73:  # I
            kind = 2
        elif c == 76:  # L
            kind = 0
        elif c == 83:  # S
            kind = 1
        elif c == 77:  # M
            kind = 3
        else:
            if (c == 61 or c == 45 or c == 42) and pos == start and buf[pos + 1] == c:
                # ==PID== / --PID-- / **PID** valgrind message: skip the line
                d = buf[pos + 2]
                if d >= 48 and d <= 57:
                    while buf[pos] != _NL:
                        pos += 1
                    pos += 1
                    lines += 1
                    continue
                return ST_BAD_LINE, start, n, lines
            while c == _SP or c == _TAB or c == _CR:
                pos += 1
                c = buf[pos]
            if c == _NL:  # blank line
                pos += 1
                lines += 1
                continue
            return ST_BAD_LINE, start, n, lines
        pos += 1
        if buf[pos] != _SP:
            return ST_BAD_LINE, start, n, lines
        while buf[pos] == _SP:
            pos += 1
        v = np.int64(0)
        nd = 0
        while True:
            d = hexv[buf[pos]]
            if d < 0:
                break
            if (v >> 60) != 0:
                return ST_BIG_ADDR, start, n, lines
            v = (v << 4) | d
            nd += 1
            pos += 1
        if nd == 0 or buf[pos] != 44:  # ','
            return ST_BAD_LINE, start, n, lines
        pos += 1
        size = np.int64(0)
        nd = 0
        while True:
            c = buf[pos]
            if c < 48 or c > 57:
                break
            if size <= 100000000:
                size = size * 10 + (np.int64(c) - 48)
            nd += 1
            pos += 1
        while c == _SP or c == _TAB or c == _CR:
            pos += 1
            c = buf[pos]
        if nd == 0 or c != _NL:
            return ST_BAD_LINE, start, n, lines
        if size < 1 or size > max_size:
            return ST_BAD_SIZE, start, n, lines
        a = np.uint64(v)
        if kind == 3:
            out_addr[n] = a
            out_arg[n] = size
            out_op[n] = 0
            n += 1
            kind = 1
        out_addr[n] = a
        out_arg[n] = size
        out_op[n] = kind
        n += 1
        pos += 1
        lines += 1
    return ST_DONE, pos, n, lines


def open_input(path: str | os.PathLike, compressed: bool = True):
    """Open ``path`` for binary reading, decompressing by suffix (.xz/.lzma, .gz, .bz2).

    Raises
    ------
    MMUInputError
        Missing, unreadable or a directory; one line naming the file.
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise MMUInputError(f"{p}: is a directory")
        f = open(p, "rb")
    except FileNotFoundError:
        raise MMUInputError(f"{p}: no such file") from None
    except OSError as exc:
        raise MMUInputError(f"{p}: cannot read: {exc.strerror or exc}") from None
    suffix = p.suffix.lower()
    if not compressed:
        return f
    if suffix in (".xz", ".lzma"):
        return lzma.open(f)
    if suffix == ".gz":
        return gzip.open(f)
    if suffix == ".bz2":
        return bz2.open(f)
    return f


DECOMPRESS_ERRORS = (lzma.LZMAError, zlib.error, EOFError, OSError)


def _line_text(buf: np.ndarray, pos: int, end: int, limit: int = 60) -> str:
    nl = pos
    stop = min(end, pos + limit + 1)
    while nl < stop and buf[nl] != _NL:
        nl += 1
    text = bytes(buf[pos:nl]).decode("utf-8", errors="replace")
    if nl - pos > limit or (nl == stop and nl < end):
        text = text[:limit] + "..."
    return repr(text)


def import_text(
    src,
    name: str,
    writer: TraceWriter,
    step,
    describe,
    block_size: int = BLOCK_SIZE,
    out_records: int = OUT_RECORDS,
    pid: int = 1,
    max_accesses: int | None = None,
) -> tuple[int, int, int, bool]:
    """Drive a line-parsing kernel over a text stream, block by block.

    Parameters
    ----------
    src : binary file object with ``readinto``
        The input (a file, a decompressing stream or a FIFO).
    name : str
        The input's name, for messages.
    writer : TraceWriter
        Receives the records.
    step : callable ``(buf, pos, end, out) -> (status, pos, n_out, n_lines)``
        Calls the format's kernel; ``out`` is the record buffer (``pid``/``flags`` preset).
    describe : callable ``(status) -> str``
        The message for a kernel error status.
    max_accesses : int or None
        Stop after this many records (every record these formats produce is an access).

    Returns
    -------
    (lines, bytes_read, records, truncated)
    """
    out_records = max(int(out_records), 2)  # the kernel needs room for one M line
    buf = bytearray(block_size + 1)  # +1: room for a final newline at EOF
    arr = np.frombuffer(buf, dtype=np.uint8)
    mv = memoryview(buf)
    out = np.zeros(out_records, dtype=RECORD_DTYPE)
    out["pid"] = pid
    lines = 0
    consumed = 0
    records = 0
    carry = 0
    eof = False
    limit = max_accesses if max_accesses is not None else -1
    while True:
        n = carry
        try:
            while n < block_size and not eof:
                k = src.readinto(mv[n:block_size])
                if not k:
                    eof = True
                else:
                    n += k
        except DECOMPRESS_ERRORS as exc:
            raise TraceFormatError(f"{name}: cannot read input: {exc}".splitlines()[0]) from None
        if n == 0:
            break
        if eof:
            if buf[n - 1] != _NL:
                buf[n] = _NL
                n += 1
            end = n
        else:
            last = buf.rfind(b"\n", 0, n)
            if last < 0:
                if block_size >= MAX_LINE_BYTES:
                    raise TraceFormatError(
                        f"{name}: line {lines + 1}: longer than {block_size} bytes (not a text trace?)"
                    )
                # a line longer than the block (a long valgrind message): grow the block
                block_size *= 2
                grown = bytearray(block_size + 1)
                grown[:n] = buf[:n]
                buf, carry = grown, n
                arr = np.frombuffer(buf, dtype=np.uint8)
                mv = memoryview(buf)
                continue
            end = last + 1
        pos = 0
        while pos < end:
            # near the limit, a smaller buffer makes the kernel stop within a line of it
            cap = out_records if limit < 0 else min(out_records, limit - records + 1)
            status, pos, n_out, n_lines = step(arr, pos, end, out[:cap])
            if status > ST_FULL:
                line_no = lines + n_lines + 1
                raise TraceFormatError(f"{name}: line {line_no}: {describe(status)}: {_line_text(arr, pos, end)}")
            lines += n_lines
            if limit >= 0 and records + n_out >= limit:
                writer.write(out[: limit - records], validate=False)
                records = limit
                return lines, consumed + pos, records, True
            writer.write(out[:n_out], validate=False)
            records += n_out
        consumed += end
        carry = n - end
        if carry:
            buf[:carry] = buf[end:n]
        if eof and carry == 0:
            break
    return lines, consumed, records, False


def _lackey_step(max_size: int):
    def step(buf, pos, end, out):
        return _parse_lackey(buf, pos, end, HEX_TABLE, out["addr"], out["arg"], out["op"], max_size)

    return step


def _lackey_describe(status: int) -> str:
    if status == ST_BAD_SIZE:
        return f"access size must be 1..{MAX_ACCESS_SIZE}"
    if status == ST_BIG_ADDR:
        return "address does not fit in 64 bits"
    return "not a lackey trace line"


LACKEY_NOTES = "lackey --trace-mem=yes: I -> fetch, L -> read, S -> write, M -> read then write (same address and size)"


def lackey_from_stream(
    src,
    name: str,
    writer: TraceWriter,
    pid: int = 1,
    max_accesses: int | None = None,
    block_size: int = BLOCK_SIZE,
    out_records: int = OUT_RECORDS,
) -> tuple[int, int, int, bool]:
    """Parse lackey text from a binary stream into ``writer``; see :func:`import_text`."""
    _check_pid(pid)
    return import_text(
        src,
        name,
        writer,
        _lackey_step(MAX_ACCESS_SIZE),
        _lackey_describe,
        block_size=block_size,
        out_records=out_records,
        pid=pid,
        max_accesses=max_accesses,
    )


def _check_pid(pid: int) -> None:
    if not 0 <= int(pid) <= 0xFFFF:
        raise MMUInputError(f"pid {pid} out of range 0..65535")


def import_lackey(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    pid: int = 1,
    max_accesses: int | None = None,
    block_size: int = BLOCK_SIZE,
    out_records: int = OUT_RECORDS,
    header: dict | None = None,
) -> ImportSummary:
    """Convert a Lackey ``--trace-mem=yes`` log to an mmu trace.

    Parameters
    ----------
    input_path : path
        Lackey output (as written by ``--log-file=``); ``.xz``/``.gz``/``.bz2`` are
        decompressed on the fly.
    output_path : path
        The trace to write (atomically; nothing is left there on error).
    pid : int
        Process id stored in every record (default 1).
    max_accesses : int, optional
        Stop after this many access records.
    block_size, out_records : int
        Input block bytes and output buffer records (tuning and tests).
    header : dict, optional
        Extra header fields.

    Returns
    -------
    ImportSummary
        ``lines`` counts every input line, including skipped valgrind messages.

    Raises
    ------
    MMUInputError, TraceFormatError
        One line naming the file (and line number for a bad line).
    """
    _check_pid(pid)
    t0 = time.perf_counter()
    h = base_header("lackey", input_path, "valgrind --tool=lackey --trace-mem=yes", LACKEY_NOTES, pid=pid)
    h.update(header or {})
    with open_input(input_path) as src, TraceWriter(output_path, h) as w:
        lines, nbytes, records, truncated = lackey_from_stream(
            src, str(input_path), w, pid, max_accesses, block_size, out_records
        )
    return ImportSummary(
        "lackey",
        str(input_path),
        str(output_path),
        records,
        records,
        lines,
        nbytes,
        time.perf_counter() - t0,
        truncated,
    )
