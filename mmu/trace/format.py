"""The project's own binary trace format (version 2, reads 1 too): reader, writer, chunk checksums.

A trace file is, little-endian::

    offset     size  field
    0          8     magic  b"MMUTRACE"
    8          4     u32 format version (2; 1 is still read)
    12         4     u32 header length H (bytes of JSON that follow)
    16         H     header: UTF-8 JSON object (metadata; never pickle)
    16+H       P     zero padding so that records start on a 16-byte boundary
    D          16*N  N records of :data:`RECORD_DTYPE`
    -- version 2 only --
    D+16N      4*K   chunk index: u32 CRC-32 (zlib) of each chunk's 16*C record bytes (the last chunk
                     may be shorter); K = ceil(N / C)
    D+16N+4K   32    trailer: u64 N, u32 C, u32 CRC-32 of bytes [0, D), u32 CRC-32 of the index,
                     u32 0, 8-byte magic b"MMUCHUNK"

``D = 16 + H + P`` is the smallest multiple of 16 that is ``>= 16 + H``. A writer streams the
records and keeps one CRC per chunk (4 bytes per 1 MiB of records), then appends index and
trailer when it closes. The reader checks header and index at open, and each chunk's CRC
as it reads the chunk; a mismatch is a :class:`TraceFormatError` naming the chunk and its
records. Version 1 files have no index or trailer (N comes from the file size) and are read
unchecked. See ``docs/trace-format.md``. The record layout and op codes live in
:mod:`mmu.trace.ops` (kernels import them there) and are re-exported here.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmu.errors import MMUInputError, TraceFormatError
from mmu.trace.ops import (  # noqa: F401  (re-exported: kernels import the record layout from mmu.trace.ops)
    MAP_FILE,
    MAX_ACCESS_SIZE,
    MMAP_FLAGS,
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
VERSION = 2  # what writers write
VERSIONS = (1, 2)  # what the reader reads (1: no checksums)
TRAILER_MAGIC = b"MMUCHUNK"
TRAILER_DTYPE = np.dtype(
    [
        ("n_records", "<u8"),
        ("chunk_records", "<u4"),
        ("header_crc", "<u4"),
        ("index_crc", "<u4"),
        ("reserved", "<u4"),
        ("magic", "S8"),
    ]
)
TRAILER_SIZE = TRAILER_DTYPE.itemsize  # 32
CHUNK_RECORDS = 1 << 16  # records per checksummed chunk (1 MiB) that writers use
MAX_CHUNK_RECORDS = 1 << 26
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
    and its flags are PROT_* bits and MAP_FILE; other events have flags 0.
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
            | ((flags & ~np.uint8(MMAP_FLAGS)) != 0)
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
    elif vmop and not f & ~MMAP_FLAGS:
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


def encode_header(header: dict, reserve: int = 0, version: int = VERSION) -> bytes:
    """The file prefix (magic, version, length, JSON, padding) for ``header``.

    ``reserve`` spaces are appended inside the JSON text (JSON allows trailing white
    space), so a writer can later rewrite the header in place if it grows a little.
    """
    if not isinstance(header, dict):
        raise TypeError(f"header must be a dict, got {type(header).__name__}")
    body = json.dumps(header, sort_keys=True, ensure_ascii=False).encode("utf-8") + b" " * reserve
    prefix = MAGIC + np.array([version, len(body)], dtype="<u4").tobytes() + body
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
    chunk_records : int
        Records per checksummed chunk (default :data:`CHUNK_RECORDS`, 64 Ki = 1 MiB of
        records); the CRC-32 of each chunk goes to the index written at :meth:`close`.

    Examples
    --------
    >>> with TraceWriter("out.mmut", {"source": "test"}) as w:   # doctest: +SKIP
    ...     w.write(records)
    """

    def __init__(self, path: str | os.PathLike, header: dict | None = None, chunk_records: int = CHUNK_RECORDS) -> None:
        if not 1 <= chunk_records <= MAX_CHUNK_RECORDS:
            raise ValueError(f"chunk_records must be 1..{MAX_CHUNK_RECORDS}, not {chunk_records}")
        self.path = Path(path)
        self.chunk_records = int(chunk_records)
        self._crcs: list[int] = []  # CRC-32 of each finished chunk
        self._crc = 0  # running CRC-32 of the chunk being filled
        self._in_chunk = 0  # records in the chunk being filled
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
        raw = arr.view(np.uint8)
        self._file.write(raw)
        self._checksum(memoryview(raw))
        self.n_records += arr.shape[0]
        self.n_accesses += int(np.count_nonzero(arr["op"] <= OP_FETCH))

    def _checksum(self, raw: memoryview) -> None:
        """Fold record bytes ``raw`` into the chunk CRCs."""
        at = 0
        while at < len(raw):
            take = min(len(raw) - at, (self.chunk_records - self._in_chunk) * RECORD_SIZE)
            self._crc = zlib.crc32(raw[at : at + take], self._crc)
            self._in_chunk += take // RECORD_SIZE
            at += take
            if self._in_chunk == self.chunk_records:
                self._crcs.append(self._crc)
                self._crc, self._in_chunk = 0, 0

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

    def _append_index(self) -> None:
        """Append the chunk index and the trailer (after the header is final)."""
        crcs = self._crcs + ([self._crc] if self._in_chunk else [])
        index = np.array(crcs, dtype="<u4").tobytes()
        with open(self._tmp, "r+b") as f:
            head = f.read(PREFIX_SIZE)
            hlen = int(np.frombuffer(head, dtype="<u4", count=1, offset=12)[0])
            header_crc = zlib.crc32(f.read(_data_offset(hlen) - PREFIX_SIZE), zlib.crc32(head))
            trailer = np.zeros(1, dtype=TRAILER_DTYPE)
            trailer[0] = (self.n_records, self.chunk_records, header_crc, zlib.crc32(index), 0, TRAILER_MAGIC)
            f.seek(0, os.SEEK_END)
            f.write(index + trailer.tobytes())

    def close(self) -> None:
        """Finish the file (rewriting the header if it changed, appending the chunk index) and
        move it to ``path``."""
        if self._file is None:
            return
        f, self._file = self._file, None
        try:
            if self._header_dirty:
                self._rewrite_header(f)
            f.close()
            self._append_index()
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

    Opening reads and checks the magic, version and header and, in a version 2 file, the
    trailer, the size it implies, and the CRCs of the header and of the chunk index. Chunk
    CRCs (version 2) and records (see :func:`record_error`) are checked chunk by chunk as
    they are read.

    Parameters
    ----------
    path : str or Path
        A file written by :class:`TraceWriter`.

    Attributes
    ----------
    header : dict
        The JSON metadata.
    n_records : int
        Number of records (version 2: from the trailer; version 1: from the file size).
    version : int
        The file's format version (1 or 2).
    data_offset : int
        Byte offset of record 0.
    chunk_records : int
        Records per checksummed chunk (version 2); 0 for a version 1 file (unchecked).
    chunk_crcs : ndarray of uint32, shape (ceil(n_records / chunk_records),), or None
        Each chunk's stored CRC-32 (version 2); None for a version 1 file.

    Raises
    ------
    TraceFormatError
        Missing or unreadable file, wrong magic, unsupported version, bad header, a
        truncated or corrupt file (version 2: missing trailer, wrong size, header or index
        CRC mismatch; version 1: a size that is not a whole number of records). The message
        is one line naming the file.
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
                if version not in VERSIONS:
                    raise TraceFormatError(
                        f"{p}: unsupported trace format version {version} (this reader supports "
                        f"{', '.join(map(str, VERSIONS))})"
                    )
                if hlen > MAX_HEADER_BYTES:
                    raise TraceFormatError(f"{p}: header length {hlen} is implausible (corrupt file)")
                offset = _data_offset(hlen)
                if size < offset:
                    raise TraceFormatError(f"{p}: truncated trace file ({size} bytes; header needs {offset})")
                raw = f.read(offset - PREFIX_SIZE)
                tail = b""
                if version >= 2 and size >= offset + TRAILER_SIZE:
                    f.seek(size - TRAILER_SIZE)
                    tail = f.read(TRAILER_SIZE)
                    trailer = np.frombuffer(tail, dtype=TRAILER_DTYPE)[0]
                    n_chunks = -(-int(trailer["n_records"]) // max(int(trailer["chunk_records"]), 1))
                    if (
                        trailer["magic"] == TRAILER_MAGIC
                        and 1 <= trailer["chunk_records"] <= MAX_CHUNK_RECORDS
                        and size == offset + int(trailer["n_records"]) * RECORD_SIZE + 4 * n_chunks + TRAILER_SIZE
                    ):
                        f.seek(size - TRAILER_SIZE - 4 * n_chunks)
                        index = f.read(4 * n_chunks)
                    else:
                        tail = b""
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
        self.chunk_crcs: np.ndarray | None = None  # CRC-32 of each chunk (version 2), else None
        self.chunk_records = 0  # records per checksummed chunk (version 2), else 0
        if version == 1:
            rest = (size - offset) % RECORD_SIZE
            if rest:
                raise TraceFormatError(
                    f"{p}: truncated trace file: {size - offset} record bytes is not a multiple of "
                    f"{RECORD_SIZE} ({rest} trailing bytes)"
                )
            n_records = (size - offset) // RECORD_SIZE
        else:
            if not tail:
                raise TraceFormatError(
                    f"{p}: truncated or corrupt trace file ({size} bytes): no valid chunk index at its end "
                    f"(a version 2 file ends with a {TRAILER_SIZE}-byte trailer that gives its size)"
                )
            n_records = int(trailer["n_records"])
            self.chunk_records = int(trailer["chunk_records"])
            stored, computed = int(trailer["index_crc"]), zlib.crc32(index)
            if stored != computed:
                raise TraceFormatError(
                    f"{p}: chunk index: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): "
                    "the file is corrupted"
                )
            stored, computed = int(trailer["header_crc"]), zlib.crc32(raw, zlib.crc32(prefix))
            if stored != computed:
                raise TraceFormatError(
                    f"{p}: header: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): "
                    "the file is corrupted"
                )
            self.chunk_crcs = np.frombuffer(index, dtype="<u4")
        self.header: dict = header
        self.version = version
        self.data_offset = offset
        self.file_size = size
        self.n_records = n_records

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
        :data:`RECORD_DTYPE`; memory use is ``O(chunk_size + chunk_records)``. In a
        version 2 file every checksummed chunk that ``[start, stop)`` touches is read
        whole and checked before any of its records is yielded.

        Raises
        ------
        TraceFormatError
            If a chunk's checksum does not match (message names the file, the chunk and its
            records), a record is invalid (names the record index), or the file shrank while
            being read.
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
            pieces = self._checked(f, chunk_size, start, stop) if self.chunk_crcs is not None else None
            i = start
            while i < stop:
                n = min(chunk_size, stop - i)
                if pieces is None:
                    f.seek(self.data_offset + i * RECORD_SIZE)
                    arr = np.fromfile(f, dtype=RECORD_DTYPE, count=n)
                    if arr.shape[0] != n:
                        raise TraceFormatError(f"{self.path}: truncated while reading (record {i + arr.shape[0]})")
                else:
                    arr = next(pieces)
                if validate:
                    check_records(arr, self.path, i)
                yield arr
                i += n

    def _read_into(self, f, buf: np.ndarray, first: int) -> None:
        """Fill ``buf`` (records) from record ``first`` on."""
        want = buf.shape[0] * RECORD_SIZE
        f.seek(self.data_offset + first * RECORD_SIZE)
        got = f.readinto(memoryview(buf.view(np.uint8)))
        if got != want:
            raise TraceFormatError(f"{self.path}: truncated while reading (record {first + got // RECORD_SIZE})")

    def _verify(self, raw: np.ndarray, k: int) -> None:
        stored, computed = int(self.chunk_crcs[k]), zlib.crc32(memoryview(raw.view(np.uint8)))
        if stored != computed:
            lo = k * self.chunk_records
            hi = lo + raw.shape[0] - 1
            raise TraceFormatError(
                f"{self.path}: chunk {k} (records {lo}..{hi}): checksum mismatch "
                f"(stored {stored:#010x}, computed {computed:#010x}): the file is corrupted"
            )

    def _checked(self, f, chunk_size: int, start: int, stop: int):
        """Yield records ``[start, stop)`` in pieces of ``chunk_size``, each checksummed chunk
        verified before use. Whole chunks are read straight into the piece; a chunk only partly
        inside a piece is read once into a side buffer, kept for the next piece."""
        c = self.chunk_records
        held_k, held = -1, empty_records(0)  # the chunk that straddles two pieces
        i = start
        while i < stop:
            n = min(chunk_size, stop - i)
            out = np.empty(n, dtype=RECORD_DTYPE)
            filled = 0
            while filled < n:
                pos = i + filled
                k = pos // c
                lo, hi = k * c, min((k + 1) * c, self.n_records)
                take = min(n - filled, hi - pos)
                if pos == lo and take == hi - lo:  # a whole chunk: straight into the piece
                    piece = out[filled : filled + take]
                    self._read_into(f, piece, lo)
                    self._verify(piece, k)
                else:
                    if held_k != k:
                        held = np.empty(hi - lo, dtype=RECORD_DTYPE)
                        self._read_into(f, held, lo)
                        self._verify(held, k)
                        held_k = k
                    out[filled : filled + take] = held[pos - lo : pos - lo + take]
                filled += take
            yield out
            i += n

    def verify(self) -> None:
        """Check every chunk's checksum (version 2; a version 1 file has none) and every record.

        Raises
        ------
        TraceFormatError
            As :meth:`chunks`.
        """
        for _ in self.chunks(max(self.chunk_records, 1 << 16)):
            pass

    def memmap(self) -> np.ndarray:
        """All records as a read-only :class:`numpy.memmap` (zero-copy; neither checksums nor
        records are checked)."""
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
