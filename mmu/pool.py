"""Process pools for independent simulations (``mmu compare --workers``, ``mmu sweep``).

Workers are spawned, not forked (numba's compiled state does not survive a fork cleanly): each is
a fresh interpreter that loads the compiled kernels from numba's on-disk cache, which the caller
fills first (:func:`mmu.kernels.warm`), so that no worker compiles. Workers ignore Ctrl-C: the
calling process handles it and ends them with :func:`stop_pool`, at once, even mid-simulation.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

__all__ = ["cpu_count", "spawn_pool", "stop_pool"]


def cpu_count() -> int:
    """The processors this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes that ignore Ctrl-C."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_ignore_sigint)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (a simulation can take minutes)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
    else:
        for proc in procs:
            proc.terminate()
    for proc in procs:  # none is left behind when this process ends
        proc.join(5)
