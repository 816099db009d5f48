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
        Accesses with no translation are written as 2**64 - 1.
    progress : callable(done_records, total_records), optional
        Called between chunks.
    """
    reader = TraceReader(path)
    machine = Machine(config)
    total = reader.n_records
    out_arr = None
    tmp_emit = None
    if emit_path is not None:
        emit_path = Path(emit_path)
        tmp_emit = emit_path.with_name(emit_path.name + ".partial")
        out_arr = np.lib.format.open_memmap(tmp_emit, mode="w+", dtype=np.uint64, shape=(reader.count_accesses(),))
    try:
        done = 0
        emitted = 0
        for chunk in reader.chunks(chunk_size):
            view = None if out_arr is None else out_arr[emitted:]
            emitted += machine.run(chunk, view, where=str(path))
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        if out_arr is not None:
            out_arr.flush()
            del out_arr
            tmp_emit.replace(emit_path)
    except BaseException:
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
