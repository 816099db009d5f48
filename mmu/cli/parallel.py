"""Independent simulations on several processes (``mmu compare --workers``).

With N workers, this process and N - 1 spawned ones take jobs from one list, in order, each as
it becomes free; the spawned ones start only once a job here has run for a second with jobs
left (:data:`PATIENCE_S`). A spawned worker is a fresh interpreter (numba's compiled state does not
survive a fork cleanly) that ignores Ctrl-C (this process handles it and stops the workers),
loads the compiled kernels from numba's on-disk cache -- which the caller fills first
(:func:`mmu.cli.warm_kernels`), so that no worker compiles -- and only then asks for a job.
Starting one costs about a second and a half of CPU, which short jobs never pay.

An :class:`~mmu.errors.MMUInputError` raised by a job comes back as its message and is raised
again here, where the CLI turns it into its one-line error.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from mmu.errors import MMUInputError
from mmu.pool import cpu_count, spawn_pool, stop_pool

__all__ = ["PATIENCE_S", "cpu_count", "run_parallel"]

# A spawned worker costs about 1.5 s of CPU before its first job (interpreter, numba, loading the
# kernels from the cache): jobs that all finish within this many seconds of each other never
# start one, so comparing small inputs costs what running them one by one does.
PATIENCE_S = 1.0


def _nothing() -> None:
    """A worker's warm-up when the caller gives none."""


def _call(fn: Callable[..., Any], args: tuple) -> tuple[bool, Any]:
    try:
        return True, fn(*args)
    except MMUInputError as exc:
        return False, str(exc)


def run_parallel(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    workers: int,
    warm: tuple[Callable[..., Any], tuple] | None = None,
    on_done: Callable[[int], None] | None = None,
    patience: float | None = None,
) -> list[Any]:
    """``[fn(*job) for job in jobs]``, computed in this process and ``workers - 1`` spawned ones.

    Parameters
    ----------
    fn : callable
        A module-level function (workers import it by name); its arguments and result are pickled.
    jobs : sequence of tuple
        The arguments of each call.
    workers : int
        Processes to compute in, this one included (at most one per job; 1: here, in order).
    warm : (callable, args), optional
        What a spawned worker runs before it asks for its first job (loading kernels).
    on_done : callable(index), optional
        Called here as each job finishes, in completion order.
    patience : float, optional
        Seconds a job here may run, with jobs left to start, before the workers are spawned
        (default :data:`PATIENCE_S`).

    Returns
    -------
    list
        The results in the order of ``jobs``.

    Raises
    ------
    MMUInputError
        The first error a job reports; no further job starts, and the spawned workers are stopped.
    """
    n = len(jobs)
    patience = PATIENCE_S if patience is None else patience
    results: list[Any] = [None] * n
    workers = max(1, min(workers, n))
    if workers == 1:
        for i, job in enumerate(jobs):
            results[i] = fn(*job)
            if on_done is not None:
                on_done(i)
        return results

    lock = threading.Lock()
    cursor = [0]
    stopped = threading.Event()
    # ("free", None, warm-up future) | ("worker", index, future) | ("here", index, (ok, value) or exception)
    events: queue.Queue = queue.Queue()

    def take() -> int | None:
        with lock:
            if stopped.is_set() or cursor[0] >= n:
                return None
            cursor[0] += 1
            return cursor[0] - 1

    def here() -> None:
        while (i := take()) is not None:
            try:
                outcome: Any = _call(fn, jobs[i])
            except BaseException as exc:  # a bug: re-raised in the main thread
                outcome = exc
            events.put(("here", i, outcome))

    def give(pool: ProcessPoolExecutor) -> None:
        i = take()
        if i is not None:
            pool.submit(_call, fn, jobs[i]).add_done_callback(lambda f, i=i: events.put(("worker", i, f)))

    def start_pool() -> ProcessPoolExecutor:
        pool = spawn_pool(workers - 1)
        warm_fn, warm_args = warm or (_nothing, ())
        for _ in range(workers - 1):
            pool.submit(warm_fn, *warm_args).add_done_callback(lambda f: events.put(("free", None, f)))
        return pool

    pool = None
    try:
        threading.Thread(target=here, name="mmu-local-jobs", daemon=True).start()
        remaining = n
        while remaining:
            try:
                # workers start only once a job here has run for `patience` seconds with jobs left
                waiting = pool is None and cursor[0] < n
                kind, i, payload = events.get(timeout=patience if waiting else None)
            except queue.Empty:
                pool = start_pool()
                continue
            if isinstance(payload, Future):
                try:
                    payload = payload.result()
                except BrokenProcessPool:  # a worker died: SIGKILL (the OOM killer), a crash
                    what = f"job {i + 1} of {n}" if i is not None else "a worker starting up"
                    raise MMUInputError(
                        f"a worker process died running {what} (killed by the operating system: "
                        "out of memory?); try --workers 1"
                    ) from None
            if kind == "free" and pool is not None:
                give(pool)
                continue
            if isinstance(payload, BaseException):
                raise payload
            ok, value = payload
            if not ok:
                raise MMUInputError(value)
            results[i] = value
            remaining -= 1
            if on_done is not None:
                on_done(i)
            if kind == "worker" and pool is not None:
                give(pool)  # that worker is free: the next job is its
    finally:
        stopped.set()
        if pool is not None:
            stop_pool(pool)  # workers still loading kernels when the jobs ran out are not waited for
    return results
