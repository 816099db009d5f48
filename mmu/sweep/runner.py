"""Run a planned sweep on this machine's cores or on a Dask cluster, writing rows as they finish."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmu.errors import MMUInputError
from mmu.pool import cpu_count, spawn_pool, stop_pool
from mmu.sweep.run import error_rows
from mmu.sweep.spec import Task
from mmu.sweep.table import SweepTable

Progress = Callable[[int, int], None]  # (rows done, rows in the sweep)


@dataclass
class SweepOutcome:
    """What a sweep did: rows in the grid, rows skipped as already done, simulations run, failures."""

    rows: int
    skipped: int
    simulations: int
    failed: int
    table: SweepTable


def pending(tasks: list[Task], table: SweepTable) -> list[Task]:
    """The tasks with a row not yet in ``table`` (or failed there)."""
    return [t for t in tasks if not all(table.done(t.key(k)) for k in range(len(t.prices)))]


def run_sweep(
    tasks: list[Task],
    table: SweepTable,
    *,
    workers: int | None = None,
    dask: str | None = None,
    upload: bool = False,
    progress: Progress | None = None,
) -> SweepOutcome:
    """Run every pending task of ``tasks``, adding its rows to ``table`` as it finishes.

    ``dask``: None runs on a local process pool of ``workers`` (default: one per core; 1 runs
    in this process); ``"local"`` starts a Dask ``LocalCluster`` of ``workers`` processes; any
    other value is the address of a running scheduler (``tcp://host:8786``). With ``upload``
    the inputs' bytes are shipped to the workers instead of read there by path.
    A KeyboardInterrupt leaves every finished row in the table and propagates.
    """
    total = sum(len(t.prices) for t in tasks)
    todo = pending(tasks, table)
    skipped = total - sum(len(t.prices) for t in todo)
    done = skipped
    failed = 0
    if progress is not None:
        progress(done, total)

    def finished(rows: list[dict[str, Any]]) -> None:
        nonlocal done, failed
        table.add(rows)
        done += len(rows)
        failed += sum(1 for r in rows if r["status"] != "ok")
        if progress is not None:
            progress(done, total)

    if todo:
        if dask is not None:
            _run_dask(todo, dask, workers, upload, finished)
        elif (workers or cpu_count()) <= 1 or len(todo) == 1:
            from mmu.sweep.run import run_task

            for task in todo:
                finished(run_task(task))
        else:
            _run_pool(todo, min(workers or cpu_count(), len(todo)), finished)
    return SweepOutcome(rows=total, skipped=skipped, simulations=len(todo), failed=failed, table=table)


WORKER_DIED = "the worker process running this simulation died (killed by the operating system: out of memory?) twice"


def _run_pool(todo: list[Task], workers: int, finished: Callable[[list[dict[str, Any]]], None]) -> None:
    """Run ``todo`` on a pool of ``workers`` spawned processes. A worker that dies (the OS's
    out-of-memory killer) breaks the pool: the simulations it left unfinished run again, each in
    a pool of its own, and one whose worker dies again gets an error row."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    from mmu.sweep.run import run_task

    left = _largest_first(todo)
    attempts: dict[int, int] = {}
    while left:
        # after a death, one simulation per pool, so that a second death names its simulation
        pool = spawn_pool(workers if not attempts else 1)
        batch = left if not attempts else left[:1]
        unfinished = []
        try:
            futures = {pool.submit(run_task, t): t for t in batch}
            for fut in as_completed(futures):
                try:
                    rows = fut.result()
                except BrokenProcessPool:
                    unfinished.append(futures[fut])
                    continue
                finished(rows)
        except BaseException:
            stop_pool(pool)
            raise
        stop_pool(pool)
        done_ids = {id(t) for t in batch} - {id(t) for t in unfinished}
        left = [t for t in left if id(t) not in done_ids]
        for t in unfinished:
            attempts[id(t)] = attempts.get(id(t), 0) + 1
            if attempts[id(t)] >= 2 and len(unfinished) == 1:
                finished(error_rows(t, WORKER_DIED))
                left = [x for x in left if x is not t]


def _largest_first(todo: list[Task]) -> list[Task]:
    """Long simulations first, so that the pool does not end waiting on one (by input size)."""

    def size(t: Task) -> int:
        try:
            return os.path.getsize(t.input.path) * (8 if t.input.program else 1)
        except OSError:
            return 0

    return sorted(todo, key=size, reverse=True)


def _payload(task: Task) -> Any:
    """What ``--upload`` ships for an input: a trace's bytes, or a guest program assembled here
    (with the files it includes, which a worker could not find)."""
    if task.input.program:
        from mmu.guest.asm import assemble_file

        return assemble_file(Path(task.input.path))
    return Path(task.input.path).read_bytes()


def _run_dask(
    todo: list[Task],
    address: str,
    workers: int | None,
    upload: bool,
    finished: Callable[[list[dict[str, Any]]], None],
) -> None:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise MMUInputError(
            '--dask needs dask.distributed, which is not installed: pip install "mmu-lab[dask]"'
        ) from None
    from mmu.sweep.run import run_task, run_task_uploaded

    cluster = None
    try:
        if address == "local":
            cluster = LocalCluster(
                n_workers=workers or cpu_count(), threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)
        else:
            try:
                client = Client(address, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise MMUInputError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        with client:
            if upload:
                blobs = {}
                for t in todo:
                    if t.input_sha256 not in blobs:
                        blobs[t.input_sha256] = client.scatter(_payload(t), broadcast=False)
                futures = [client.submit(run_task_uploaded, t, blobs[t.input_sha256], pure=False) for t in todo]
            else:
                futures = [client.submit(run_task, t, pure=False) for t in _largest_first(todo)]
            try:
                for fut in as_completed(futures):
                    finished(fut.result())
            except BaseException:
                client.cancel(futures)
                raise
    finally:
        if cluster is not None:
            cluster.close()
