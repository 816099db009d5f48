"""Several single-process traces as processes of one guest, scheduled round robin.

``mmu replay A.trace B.trace … --quantum N`` runs trace *k* as process *k + 1*: the scheduler
takes ``N`` records from each trace in turn (a context switch, i.e. a CR3 load, between
slices), until every trace is done. Each input must hold one process's records (a lackey,
Pin or ChampSim recording does); its pid is rewritten to its position.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmu.errors import MMUInputError
from mmu.trace.format import RECORD_DTYPE, TraceReader

MAX_TRACES = 4096  # processes the guest OS model holds


class _Source:
    def __init__(self, path: Path, pid: int, chunk_size: int) -> None:
        self.path = path
        self.pid = pid
        self.it = TraceReader(path).chunks(chunk_size)
        self.buf = np.zeros(0, dtype=RECORD_DTYPE)
        self.pos = 0
        self.first_pid: int | None = None
        self.done = False

    def take(self, n: int) -> np.ndarray:
        """Up to ``n`` next records, pid rewritten; empty when the trace is exhausted."""
        parts = []
        while n > 0 and not self.done:
            if self.pos >= len(self.buf):
                nxt = next(self.it, None)
                if nxt is None:
                    self.done = True
                    break
                self.buf = np.array(nxt)
                self.pos = 0
                pids = np.unique(self.buf["pid"])
                if self.first_pid is None:
                    self.first_pid = int(pids[0])
                if len(pids) > 1 or int(pids[0]) != self.first_pid:
                    raise MMUInputError(
                        f"{self.path}: holds records of several processes; --quantum interleaves single-process traces"
                    )
                continue
            k = min(n, len(self.buf) - self.pos)
            part = self.buf[self.pos : self.pos + k].copy()
            part["pid"] = self.pid
            parts.append(part)
            self.pos += k
            n -= k
        return np.concatenate(parts) if parts else np.zeros(0, dtype=RECORD_DTYPE)


def interleave(paths: list[Path], quantum: int, chunk_size: int = 1 << 20) -> Iterator[np.ndarray]:
    """Chunks of the round-robin schedule of ``paths`` (trace *k* as pid *k + 1*), ``quantum``
    records per slice."""
    if quantum <= 0:
        raise MMUInputError(f"--quantum must be a positive number of records, not {quantum}")
    if not 1 <= len(paths) <= MAX_TRACES:
        raise MMUInputError(f"interleave 1 to {MAX_TRACES} traces, not {len(paths)}")
    sources = [_Source(Path(p), k + 1, chunk_size) for k, p in enumerate(paths)]
    out: list[np.ndarray] = []
    size = 0
    while True:
        progressed = False
        for s in sources:
            part = s.take(quantum)
            if len(part):
                progressed = True
                out.append(part)
                size += len(part)
                if size >= chunk_size:
                    yield np.concatenate(out)
                    out, size = [], 0
        if not progressed:
            break
    if out:
        yield np.concatenate(out)
