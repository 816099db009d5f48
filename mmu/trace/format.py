"""The project's own binary trace format (version 1): reader, writer, record layout.

A trace file is, little-endian::

    offset  size  field
    0       8     magic  b"MMUTRACE"
    8       4     u32 format version (1)
    12      4     u32 header length H (bytes of JSON that follow)
    16      H     header: UTF-8 JSON object (metadata; never pickle)
    16+H    P     zero padding so that records start on a 16-byte boundary
    D       16*N  N records of :data:`RECORD_DTYPE` to end of file

``D = 16 + H + P`` is the smallest multiple of 16 that is ``>= 16 + H``. The record
count is derived from the file size, so a writer can stream; a size that is not
``D + 16*N`` is a truncated file. See ``docs/trace-format.md`` for the op codes.

Records (``RECORD_DTYPE``, 16 bytes)::

    addr  <u8   virtual address (accesses), start address (mmap/munmap), else 0
    arg   <u4   access size in bytes 1..4096; pages for mmap/munmap; child pid for fork
    pid   <u2   process issuing the access / switched to / forking (parent) / exiting
    op    u1    OP_* code
    flags u1    PROT_* bits for mmap; 0 otherwise (reserved)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmu.errors import MMUInputError, TraceFormatError
from mmu.trace.ops import (  # noqa: F401  (re-exported: kernels import the record layout from mmu.trace.ops)
    MAX_ACCESS_SIZE,
    OP_EXIT,
    OP_FETCH,
    OP_FORK,
    OP_MMAP,
    OP_MUNMAP,
    OP_NAMES,
    OP_READ,
    OP_SWITCH,
    OP_WRITE,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_MASK,
    PROT_READ,
    PROT_THP,
    PROT_WRITE,
    RECORD_DTYPE,
    RECORD_SIZE,
    is_access,
)

MAGIC = b"MMUTRACE"
VERSION = 1
PREFIX_SIZE = 16  # magic + version + header length
ALIGN = 16
MAX_HEADER_BYTES = 1 << 24  # a header longer than 16 MiB is treated as corrupt
HEADER_RESERVE = 256  # spaces a writer leaves in the JSON so update_header can rewrite in place

_VALID_OP = np.zeros(256, dtype=np.bool_)
_VALID_OP[list(OP_NAMES)] = True


def _where(path: Path | str | None) -> str:
    return str(path) if path is not None else "<records>"


def record_error(records: np.ndarray, base: int = 0) -> tuple[int, str] | None:
    """First invalid record in ``records``, as ``(index, reason)``, or None if all are valid.

    Parameters
    ----------
    records : ndarray of RECORD_DTYPE, shape (n,)
        Not mutated.
    base : int
        Index of ``records[0]`` in the whole trace; added to the returned index.

    Notes
    -----
    Checks: the op code is known; an access has size 1..4096 and flags 0; an mmap/munmap
    start is 4 KiB aligned, its length is >= 1 page, it does not wrap the 64-bit space
    and its flags are PROT_* bits; other events have flags 0.
    """
    if records.shape[0] == 0:
        return None
    op = records["op"]
    arg = records["arg"]
    flags = records["flags"]
    bad = ~_VALID_OP[op]
    acc = op <= OP_FETCH
    bad |= acc & ((arg == 0) | (arg > MAX_ACCESS_SIZE) | (flags != 0))
    vm = (op == OP_MMAP) | (op == OP_MUNMAP)
    if vm.any():
        addr = records["addr"]
        end_page = (addr >> np.uint64(12)) + arg.astype(np.uint64)
        bad |= vm & (
            ((addr & np.uint64(PAGE_SIZE - 1)) != 0)
            | (arg == 0)
            | (end_page > np.uint64(1 << 52))
            | ((flags & ~np.uint8(PROT_MASK)) != 0)
        )
    bad |= ~acc & ~vm & (flags != 0)
    hits = np.flatnonzero(bad)
    if hits.size == 0:
        return None
    i = int(hits[0])
    r = records[i]
    o, a, f = int(r["op"]), int(r["arg"]), int(r["flags"])
    vmop = o in (OP_MMAP, OP_MUNMAP)
    if o not in OP_NAMES:
        reason = f"unknown op code {o}"
    elif o <= OP_FETCH and not 1 <= a <= MAX_ACCESS_SIZE:
        reason = f"{OP_NAMES[o]} of size {a} (must be 1..{MAX_ACCESS_SIZE})"
    elif vmop and int(r["addr"]) % PAGE_SIZE:
        reason = f"{OP_NAMES[o]} start {int(r['addr']):#x} is not 4 KiB aligned"
    elif vmop and a == 0:
        reason = f"{OP_NAMES[o]} of 0 pages"
    elif vmop and not f & ~PROT_MASK:
        reason = f"{OP_NAMES[o]} range {int(r['addr']):#x} + {a} pages runs past 2**64"
    else:
        reason = f"{OP_NAMES[o]} with reserved flags {f:#x}"
    return base + i, reason


def check_records(records: np.ndarray, where: Path | str | None, base: int = 0, what: str = "record") -> None:
    """Raise :class:`TraceFormatError` naming ``where`` and the index if a record is invalid."""
    err = record_error(records, base)
    if err is not None:
        raise TraceFormatError(f"{_where(where)}: {what} {err[0]}: {err[1]}")


def as_records(records: Any) -> np.ndarray:
    """``records`` as a contiguous 1-D array of :data:`RECORD_DTYPE` (no copy when it already is one).

    Raises
    ------
    ValueError
        If ``records`` is not a 1-D structured array with the record fields.
    """
    arr = np.asarray(records)
    if arr.dtype != RECORD_DTYPE:
        if arr.dtype.names is None or set(arr.dtype.names) != set(RECORD_DTYPE.names):
            raise ValueError(f"records must have dtype {RECORD_DTYPE}, got {arr.dtype}")
        arr = arr.astype(RECORD_DTYPE)
    if arr.ndim != 1:
        raise ValueError(f"records must be 1-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def empty_records(n: int) -> np.ndarray:
    """A zeroed record array of length ``n``."""
    return np.zeros(n, dtype=RECORD_DTYPE)


def _data_offset(header_len: int) -> int:
    return (PREFIX_SIZE + header_len + ALIGN - 1) // ALIGN * ALIGN


def utc_now() -> str:
    """Current UTC time as an ISO 8601 string (seconds precision), for the ``created`` field."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def encode_header(header: dict, reserve: int = 0) -> bytes:
    """The file prefix (magic, version, length, JSON, padding) for ``header``.

    ``reserve`` spaces are appended inside the JSON text (JSON allows trailing white
    space), so a writer can later rewrite the header in place if it grows a little.
    """
    if not isinstance(header, dict):
        raise TypeError(f"header must be a dict, got {type(header).__name__}")
    body = json.dumps(header, sort_keys=True, ensure_ascii=False).encode("utf-8") + b" " * reserve
    prefix = MAGIC + np.array([VERSION, len(body)], dtype="<u4").tobytes() + body
    return prefix + b"\0" * (_data_offset(len(body)) - len(prefix))


class TraceWriter:
    """Stream records into a new trace file, atomically.

    Records go to a temporary file in the destination directory, renamed over ``path``
    when the ``with`` block (or :meth:`close`) ends normally. On an exception (or
    :meth:`abort`) the temporary file is deleted, so a partial trace never appears at
    ``path``.

    Parameters
    ----------
    path : str or Path
        Destination file.
    header : dict
        JSON-serialisable metadata (``source``, ``command``, ``tool``, ``notes``, ...).
        ``created`` (UTC ISO time) is added if absent. :meth:`update_header` changes it
        before the file is closed (facts known only at the end: truncation, exit status).

    Examples
    --------
    >>> with TraceWriter("out.mmut", {"source": "test"}) as w:   # doctest: +SKIP
    ...     w.write(records)
    """

    def __init__(self, path: str | os.PathLike, header: dict | None = None) -> None:
        self.path = Path(path)
        self.header = dict(header or {})
        self.header.setdefault("created", utc_now())
        self.n_records = 0
        self.n_accesses = 0
        prefix = encode_header(self.header, HEADER_RESERVE)
        self._header_len = len(prefix)
        self._header_dirty = False
        directory = self.path.parent
        if self.path.is_dir():
            raise MMUInputError(f"cannot write {self.path}: is a directory")
        if not directory.is_dir():
            raise MMUInputError(f"cannot write {self.path}: no such directory {directory}")
        self._tmp = directory / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise MMUInputError(f"cannot write {self.path}: {exc.strerror}") from None
        self._file = os.fdopen(fd, "wb")
        try:
            self._file.write(prefix)
        except BaseException:
            self.abort()
            raise

    def write(self, records: np.ndarray, validate: bool = True) -> None:
        """Append ``records`` (1-D array of :data:`RECORD_DTYPE`; not mutated).

        ``validate=False`` skips the record checks, for importers whose kernels only
        produce valid records.

        Raises
        ------
        ValueError
            If a record is invalid (unknown op, access of size 0, ...): the writer never
            produces a file its reader would reject.
        """
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        arr = as_records(records)
        if validate:
            err = record_error(arr, self.n_records)
            if err is not None:
                raise ValueError(f"{self.path}: record {err[0]}: {err[1]}")
        self._file.write(arr.view(np.uint8))
        self.n_records += arr.shape[0]
        self.n_accesses += int(np.count_nonzero(arr["op"] <= OP_FETCH))

    def update_header(self, **fields: Any) -> None:
        """Set header ``fields``; written when the file is closed."""
        self.header.update(fields)
        self._header_dirty = True

    def _rewrite_header(self, f) -> None:
        body = json.dumps(self.header, sort_keys=True, ensure_ascii=False).encode("utf-8")
        room = self._header_len - PREFIX_SIZE  # JSON bytes that keep record 0 where it is
        f.flush()
        if len(body) <= room:
            f.seek(0)
            f.write(MAGIC + np.array([VERSION, room], dtype="<u4").tobytes() + body + b" " * (room - len(body)))
            f.seek(0, os.SEEK_END)
            return
        # the header outgrew its room: copy the records behind a new prefix
        tmp2 = self._tmp.with_suffix(".tmp2")
        try:
            with open(self._tmp, "rb") as src, open(tmp2, "wb") as dst:
                dst.write(encode_header(self.header))
                src.seek(self._header_len)
                shutil.copyfileobj(src, dst, 1 << 22)
            os.replace(tmp2, self._tmp)
        finally:
            _unlink(tmp2)

    def close(self) -> None:
        """Finish the file (rewriting the header if it changed) and move it to ``path``."""
        if self._file is None:
            return
        f, self._file = self._file, None
        try:
            if self._header_dirty:
                self._rewrite_header(f)
            f.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            _unlink(self._tmp)
            raise

    def abort(self) -> None:
        """Discard everything written; ``path`` is left untouched."""
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            finally:
                _unlink(self._tmp)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # a writer dropped without close() leaves no temp file
        try:
            self.abort()
        except Exception:
            pass


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class TraceReader:
    """Read a trace file in chunks (constant memory whatever its size).

    Opening reads and checks the magic, version and header; records are checked
    chunk by chunk as they are read (see :func:`record_error`).

    Parameters
    ----------
    path : str or Path
        A file written by :class:`TraceWriter`.

    Attributes
    ----------
    header : dict
        The JSON metadata.
    n_records : int
        Number of records (from the file size).
    data_offset : int
        Byte offset of record 0.

    Raises
    ------
    TraceFormatError
        Missing or unreadable file, wrong magic, unsupported version, bad header, or a
        size that is not a whole number of records. The message is one line naming the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        p = self.path
        try:
            with open(p, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                prefix = f.read(PREFIX_SIZE)
                if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
                    if MAGIC.startswith(prefix):
                        raise TraceFormatError(f"{p}: truncated trace file ({size} bytes)")
                    raise TraceFormatError(f"{p}: not an mmu trace file (bad magic {prefix[:8]!r})")
                if len(prefix) < PREFIX_SIZE:
                    raise TraceFormatError(f"{p}: truncated trace file ({size} bytes)")
                version, hlen = (int(x) for x in np.frombuffer(prefix, dtype="<u4", count=2, offset=8))
                if version != VERSION:
                    raise TraceFormatError(
                        f"{p}: unsupported trace format version {version} (this reader supports {VERSION})"
                    )
                if hlen > MAX_HEADER_BYTES:
                    raise TraceFormatError(f"{p}: header length {hlen} is implausible (corrupt file)")
                offset = _data_offset(hlen)
                if size < offset:
                    raise TraceFormatError(f"{p}: truncated trace file ({size} bytes; header needs {offset})")
                raw = f.read(offset - PREFIX_SIZE)
        except FileNotFoundError:
            raise TraceFormatError(f"{p}: no such file") from None
        except IsADirectoryError:
            raise TraceFormatError(f"{p}: is a directory") from None
        except OSError as exc:
            raise TraceFormatError(f"{p}: cannot read: {exc.strerror or exc}") from None
        body, pad = raw[:hlen], raw[hlen:]
        if pad.strip(b"\0"):
            raise TraceFormatError(f"{p}: corrupt header padding (nonzero bytes)")
        try:
            header = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TraceFormatError(f"{p}: bad JSON header: {msg}") from None
        if not isinstance(header, dict):
            raise TraceFormatError(f"{p}: bad JSON header: expected an object, got {type(header).__name__}")
        rest = (size - offset) % RECORD_SIZE
        if rest:
            raise TraceFormatError(
                f"{p}: truncated trace file: {size - offset} record bytes is not a multiple of "
                f"{RECORD_SIZE} ({rest} trailing bytes)"
            )
        self.header: dict = header
        self.version = version
        self.data_offset = offset
        self.file_size = size
        self.n_records = (size - offset) // RECORD_SIZE

    def __repr__(self) -> str:
        return f"TraceReader({str(self.path)!r}, n_records={self.n_records})"

    def __len__(self) -> int:
        return self.n_records

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pass

    def chunks(self, chunk_size: int = 1 << 20, start: int = 0, stop: int | None = None, validate: bool = True):
        """Yield the records ``[start, stop)`` as arrays of at most ``chunk_size`` records.

        Each yielded array is a fresh, writeable, contiguous 1-D array of
        :data:`RECORD_DTYPE`; memory use is ``O(chunk_size)``.

        Raises
        ------
        TraceFormatError
            If a record is invalid (message names the file and the record index), or the
            file shrank while being read.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        stop = self.n_records if stop is None else min(stop, self.n_records)
        start = max(0, start)
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise TraceFormatError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        with f:
            f.seek(self.data_offset + start * RECORD_SIZE)
            i = start
            while i < stop:
                n = min(chunk_size, stop - i)
                arr = np.fromfile(f, dtype=RECORD_DTYPE, count=n)
                if arr.shape[0] != n:
                    raise TraceFormatError(f"{self.path}: truncated while reading (record {i + arr.shape[0]})")
                if validate:
                    check_records(arr, self.path, i)
                yield arr
                i += n

    def memmap(self) -> np.ndarray:
        """All records as a read-only :class:`numpy.memmap` (zero-copy; not validated)."""
        if self.n_records == 0:
            return empty_records(0)
        return np.memmap(self.path, dtype=RECORD_DTYPE, mode="r", offset=self.data_offset, shape=(self.n_records,))

    def count_by_op(self, chunk_size: int = 1 << 20) -> dict[int, int]:
        """Number of records of each op code present, ``{op: count}`` (validates every record)."""
        counts = np.zeros(256, dtype=np.int64)
        for arr in self.chunks(chunk_size):
            counts += np.bincount(arr["op"], minlength=256)
        return {int(o): int(counts[o]) for o in np.flatnonzero(counts)}

    def count_accesses(self, chunk_size: int = 1 << 20) -> int:
        """Number of access records (read, write, fetch); validates every record."""
        total = 0
        for arr in self.chunks(chunk_size):
            total += int(np.count_nonzero(arr["op"] <= OP_FETCH))
        return total


def read_trace(path: str | os.PathLike) -> np.ndarray:
    """The whole trace at ``path`` as one validated array of :data:`RECORD_DTYPE`."""
    reader = TraceReader(path)
    if reader.n_records == 0:
        return empty_records(0)
    return np.concatenate(list(reader.chunks(max(reader.n_records, 1))))


def write_trace(path: str | os.PathLike, records: np.ndarray, header: dict | None = None) -> None:
    """Write ``records`` (1-D :data:`RECORD_DTYPE`) with ``header`` to ``path`` atomically."""
    with TraceWriter(path, header) as w:
        w.write(records)


@dataclass
class ImportSummary:
    """What an importer did.

    Attributes
    ----------
    records : int
        Records written (accesses + OS events).
    accesses : int
        Access records written (read, write, fetch).
    lines : int
        Input units consumed: text lines (lackey, pin), instruction records (champsim),
        array elements (npy).
    bytes_read : int
        Input bytes consumed (decompressed bytes for compressed champsim files).
    seconds : float
        Wall time of the import.
    """

    source: str
    input: str
    output: str
    records: int
    accesses: int
    lines: int
    bytes_read: int
    seconds: float
    truncated: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def lines_per_second(self) -> float:
        """Input units per second of wall time."""
        return self.lines / self.seconds if self.seconds > 0 else float("inf")


def base_header(source: str, input_path: str | os.PathLike | None, tool: str, notes: str = "", **extra) -> dict:
    """The common header fields importers write."""
    h = {"source": source, "tool": tool, "created": utc_now(), "notes": notes}
    if input_path is not None:
        h["input"] = os.path.basename(os.fspath(input_path))
    h.update(extra)
    return h
