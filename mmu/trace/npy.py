"""Import numpy ``.npy`` arrays of addresses or of records.

Two shapes of input are accepted (loaded with ``np.load(allow_pickle=False, mmap_mode="r")``
and converted chunk by chunk, each chunk's pages dropped once converted, so a large file
streams in ``O(chunk)`` memory):

* a 1-D array of integers (any width, signed or unsigned; negative values are an error):
  each element is a load address -> OP_READ, size :data:`NPY_LOAD_SIZE` = 8;
* a 1-D structured array with fields

  ======== ========= ==========================================================
  field    required  meaning
  ======== ========= ==========================================================
  addr     yes       integer address (>= 0)
  op       yes       integer op code (OP_READ=0, OP_WRITE=1, OP_FETCH=2, events 16..20)
  size     no        access size in bytes (default 8); alias ``arg`` (the record
                     field: pages for mmap/munmap, child pid for fork)
  pid      no        process id (default: the ``pid`` option)
  flags    no        PROT_* bits for mmap (default 0)
  ======== ========= ==========================================================

  so an array of :data:`mmu.trace.format.RECORD_DTYPE` imports as is. Every record is
  validated (unknown op, size 0, ...) and an error names the element index.

Anything else (floats, 2-D, object arrays, pickles, a bad file) is an error.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import numpy as np

from mmu.errors import MMUInputError, TraceFormatError
from mmu.trace.format import (
    OP_FETCH,
    OP_READ,
    RECORD_DTYPE,
    ImportSummary,
    TraceWriter,
    base_header,
    check_records,
)
from mmu.trace.lackey import _check_pid

NPY_LOAD_SIZE = 8
CHUNK = 1 << 20
_FIELDS = {"addr", "op", "size", "arg", "pid", "flags"}
_LIMITS = {"op": 0xFF, "arg": 0xFFFFFFFF, "pid": 0xFFFF, "flags": 0xFF}


def _load(p: Path) -> np.ndarray:
    if p.is_dir():
        raise MMUInputError(f"{p}: is a directory")
    try:
        arr = np.load(p, allow_pickle=False, mmap_mode="r")
    except FileNotFoundError:
        raise MMUInputError(f"{p}: no such file") from None
    except PermissionError as exc:
        raise MMUInputError(f"{p}: cannot read: {exc.strerror}") from None
    except (ValueError, OSError, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraceFormatError(f"{p}: not a readable .npy array: {msg}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise TraceFormatError(f"{p}: expected a .npy array, got an .npz archive")
    return arr


def _chunks(arr: np.ndarray, p: Path, chunk: int):
    """Yield ``(index of first element, elements)`` of the 1-D ``arr`` in pieces of ``chunk``.

    Zero-copy views of the file's memory map; once a piece is used (when the next is asked
    for) its pages are dropped from the process (``MADV_DONTNEED``; the kernel keeps them in
    its page cache), so memory stays ``O(chunk)`` where walking the map would leave the whole
    input resident, counted in the process's RSS, until the end.
    """
    n = arr.shape[0]
    mm = getattr(arr, "_mmap", None)  # np.memmap keeps its mmap.mmap here
    if mm is None or not hasattr(mm, "madvise"):
        for i in range(0, n, chunk):
            yield i, arr[i : i + chunk]
        return
    size = arr.dtype.itemsize
    page = mmap.PAGESIZE
    first = arr.offset % mmap.ALLOCATIONGRANULARITY  # where element 0 is in the map (np.memmap's rule)
    dropped = 0  # bytes [0, dropped) of the map already given back
    for i in range(0, n, chunk):
        yield i, arr[i : i + chunk]
        end = (first + min(i + chunk, n) * size) // page * page
        if end > dropped:
            mm.madvise(mmap.MADV_DONTNEED, dropped, end - dropped)
            dropped = end


def _int_column(col: np.ndarray, p: Path, name: str, base: int, limit: int | None) -> np.ndarray:
    """``col`` as uint64, checking it is non-negative (and <= limit)."""
    if col.dtype.kind == "i":
        neg = np.flatnonzero(col < 0)
        if neg.size:
            i = int(neg[0])
            raise TraceFormatError(f"{p}: element {base + i}: negative {name} {int(col[i])}")
    out = col.astype(np.uint64)
    if limit is not None:
        big = np.flatnonzero(out > np.uint64(limit))
        if big.size:
            i = int(big[0])
            raise TraceFormatError(f"{p}: element {base + i}: {name} {int(out[i])} exceeds {limit}")
    return out


def import_npy(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    pid: int = 1,
    max_accesses: int | None = None,
    chunk: int = CHUNK,
    header: dict | None = None,
) -> ImportSummary:
    """Convert a ``.npy`` array (addresses or records) to an mmu trace.

    Parameters
    ----------
    input_path : path
        The ``.npy`` file (see the module docstring for accepted dtypes).
    output_path : path
        The trace to write (atomically).
    pid : int
        Stored in records without a ``pid`` field.
    max_accesses : int, optional
        Stop after this many access records (OS events before the cut are kept).

    Returns
    -------
    ImportSummary
        ``lines`` counts array elements consumed.

    Raises
    ------
    TraceFormatError
        Wrong dtype or shape, a negative address, an invalid record (element index named).
    """
    _check_pid(pid)
    t0 = time.perf_counter()
    p = Path(input_path)
    arr = _load(p)
    names = arr.dtype.names
    if arr.ndim != 1:
        raise TraceFormatError(f"{p}: expected a 1-D array, got shape {arr.shape}")
    if names is None:
        if arr.dtype.kind not in "iu":
            raise TraceFormatError(f"{p}: expected integer addresses or a structured array, got dtype {arr.dtype}")
        layout = "addresses"
    else:
        unknown = sorted(set(names) - _FIELDS)
        missing = sorted({"addr", "op"} - set(names))
        if missing or unknown:
            what = f"missing field(s) {', '.join(missing)}" if missing else f"unknown field(s) {', '.join(unknown)}"
            raise TraceFormatError(f"{p}: structured array {what} (fields: addr, op, optional size|arg, pid, flags)")
        if "size" in names and "arg" in names:
            raise TraceFormatError(f"{p}: structured array has both 'size' and 'arg'")
        for name in names:
            sub = arr.dtype.fields[name][0]
            if sub.kind not in "iub" or sub.shape != ():
                raise TraceFormatError(f"{p}: field {name!r} must be a scalar integer, got {sub}")
        layout = "records"
    h = base_header(
        "npy",
        p,
        "numpy .npy",
        "integer array: each element a read of size 8"
        if layout == "addresses"
        else "structured array: addr, op, size|arg (default 8), pid, flags",
        pid=pid,
        layout=layout,
    )
    h.update(header or {})
    records = accesses = done = 0
    truncated = False
    with TraceWriter(output_path, h) as w:
        for i, part in _chunks(arr, p, chunk):
            out = np.zeros(part.shape[0], dtype=RECORD_DTYPE)
            if layout == "addresses":
                out["addr"] = _int_column(part, p, "address", i, None)
                out["op"] = OP_READ
                out["arg"] = NPY_LOAD_SIZE
                out["pid"] = pid
            else:
                out["addr"] = _int_column(part["addr"], p, "addr", i, None)
                out["op"] = _int_column(part["op"], p, "op", i, _LIMITS["op"])
                size = "size" if "size" in names else "arg" if "arg" in names else None
                if size is None:
                    out["arg"] = np.where(out["op"] <= OP_FETCH, NPY_LOAD_SIZE, 0)
                else:
                    out["arg"] = _int_column(part[size], p, size, i, _LIMITS["arg"])
                out["pid"] = _int_column(part["pid"], p, "pid", i, _LIMITS["pid"]) if "pid" in names else pid
                if "flags" in names:
                    out["flags"] = _int_column(part["flags"], p, "flags", i, _LIMITS["flags"])
                check_records(out, p, i, what="element")
            acc = out["op"] <= OP_FETCH
            if max_accesses is not None and accesses + int(np.count_nonzero(acc)) >= max_accesses:
                cut = int(np.flatnonzero(acc)[max_accesses - accesses - 1]) + 1 if max_accesses > accesses else 0
                out = out[:cut]
                acc = acc[:cut]
                truncated = True
            w.write(out, validate=False)
            records += out.shape[0]
            accesses += int(np.count_nonzero(acc))
            done += out.shape[0]
            if truncated:
                break
    return ImportSummary(
        "npy",
        str(input_path),
        str(output_path),
        records,
        accesses,
        done,
        done * arr.dtype.itemsize,
        time.perf_counter() - t0,
        truncated,
    )
