"""Replay trace files: read a file chunk by chunk into a :class:`~mmu.engine.Machine`.

Apart from :mod:`mmu.engine` so that the replay kernel's cache key does not cover the trace
reader (see :mod:`mmu._jit`): editing :mod:`mmu.trace.format` recompiles no kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mmu.engine import Machine, MachineConfig
from mmu.trace.format import TraceReader

__all__ = ["replay", "replay_interleaved"]


def replay(
    path: str | Path,
    config: MachineConfig | None = None,
    *,
    chunk_size: int = 1 << 20,
    emit_path: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Replay the trace at ``path`` and return its stats object.

    Parameters
    ----------
    emit_path : path, optional
        Write the guest-physical address of every access (uint64, trace order) as ``.npy``.
        Accesses with no translation are written as 2**64 - 1. Written chunk by chunk through
        one buffer (a memory map of the output would keep every page written resident, so
        memory would grow with the trace).
    progress : callable(done_records, total_records), optional
        Called between chunks.
    """
    reader = TraceReader(path)
    machine = Machine(config)
    total = reader.n_records
    out_file = None
    out_buf = None
    tmp_emit = None
    n_accesses = 0
    try:
        if emit_path is not None:
            emit_path = Path(emit_path)
            tmp_emit = emit_path.with_name(emit_path.name + ".partial")
            n_accesses = reader.count_accesses()
            out_file = open(tmp_emit, "wb")
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<u8")), "fortran_order": False}
            np.lib.format.write_array_header_1_0(out_file, {**header, "shape": (n_accesses,)})
            out_buf = np.empty(min(chunk_size, max(total, 1)), dtype="<u8")  # one chunk emits at most its length
        done = 0
        emitted = 0
        for chunk in reader.chunks(chunk_size):
            k = machine.run(chunk, out_buf, where=str(path))
            if out_file is not None:
                out_file.write(memoryview(out_buf[:k]))
            emitted += k
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        if out_file is not None:
            out_file.close()
            if emitted != n_accesses:  # the kernel emits one address per access record
                raise AssertionError(f"emitted {emitted} translations for {n_accesses} accesses")
            tmp_emit.replace(emit_path)
    except BaseException:
        if out_file is not None:
            out_file.close()
        if tmp_emit is not None and tmp_emit.exists():
            tmp_emit.unlink()
        raise
    return machine.result(extra={"trace": str(path), "records": total})


def replay_interleaved(
    paths: list[str | Path],
    config: MachineConfig | None = None,
    *,
    quantum: int = 10_000,
    chunk_size: int = 1 << 20,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Replay several single-process traces as processes of one guest, round robin with
    ``quantum`` records per slice (trace *k* is pid *k + 1*); returns the stats object."""
    from mmu.trace.interleave import interleave

    paths = [Path(p) for p in paths]
    total = sum(TraceReader(p).n_records for p in paths)
    machine = Machine(config)
    where = "interleaved " + " + ".join(p.name for p in paths)
    done = 0
    for chunk in interleave(paths, quantum, chunk_size):
        machine.run(chunk, where=where)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    return machine.result(extra={"trace": [str(p) for p in paths], "records": total, "quantum": quantum})
