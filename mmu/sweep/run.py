"""One task of a sweep, run wherever a worker is: a process of the pool, or a Dask worker.

:func:`run_task` simulates once and returns one flat row per cost setting of the task. It never
raises for a failed run: the row says ``status = "error"`` with the one-line reason, and the
sweep goes on.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mmu.engine import MachineConfig
from mmu.errors import MMUInputError
from mmu.replayfile import replay
from mmu.stats import reprice, to_csv_row
from mmu.sweep.spec import PARAMS, Task

# the input's own path (the row's input column names it), a program's text output and per-pid details
_DROP = ("trace", "program", "args", "console", "faults", "statuses")


def _version() -> str:
    from mmu import __version__

    return __version__


def _simulate(task: Task, path: str, program: Any = None) -> dict[str, Any]:
    config = MachineConfig(mode=task.mode.mode, cost_overrides=dict(task.geometry) or None, **task.config)
    if task.input.program:
        from mmu.guest.asm import assemble_file
        from mmu.guest.run import run_program

        if program is not None:
            return run_program(program, list(task.input.args), config, max_instructions=task.max_instructions)
        return run_program(
            assemble_file(Path(path)), list(task.input.args), config, max_instructions=task.max_instructions
        )
    return replay(path, config)


def _params(task: Task, k: int) -> dict[str, Any]:
    defaults = MachineConfig()
    out = {f"param.{p}": getattr(defaults, p) for p in PARAMS}
    out.update({f"param.{p}": v for p, v in task.config.items()})
    out.update({f"param.{p}": v for p, v in task.grid[k].items()})
    return out


def run_task(task: Task, path: str | None = None, program: Any = None) -> list[dict[str, Any]]:
    """Simulate ``task`` and return its rows: its input read at ``path`` (default: the task's own),
    or for a guest program, ``program`` already assembled if given."""
    t0 = time.perf_counter()
    error = ""
    result: dict[str, Any] = {}
    try:
        result = _simulate(task, path or task.input.path, program)
    except MMUInputError as exc:
        error = str(exc)
    except MemoryError:
        error = "out of memory"
    except Exception as exc:  # a simulator bug: recorded in its row, so that the sweep goes on
        error = f"internal error: {type(exc).__name__}: {exc}"
    return _rows(task, result, error, round(time.perf_counter() - t0, 3))


def error_rows(task: Task, error: str) -> list[dict[str, Any]]:
    """The rows of ``task`` when it could not run at all (``status = "error"``)."""
    return _rows(task, {}, error, 0.0)


def _rows(task: Task, result: dict[str, Any], error: str, wall: float) -> list[dict[str, Any]]:
    rows = []
    for k in range(len(task.prices)):
        row: dict[str, Any] = {
            "run": task.indices[k],
            "key": task.key(k),
            "input": task.input.label,
            "input_kind": "program" if task.input.program else "trace",
            "input_sha256": task.input_sha256,
            "mode": task.mode.mode,
            "mode_label": task.mode.label,
            "status": "error" if error else "ok",
            "error": error.replace("\n", " "),
            "simulated": k == 0,
            "wall_s": wall if k == 0 else 0.0,
            "mmu_version": _version(),
            **_params(task, k),
        }
        if not error:
            priced = reprice(result, dict(task.prices[k])) if task.prices[k] else result
            if task.input.program:
                priced["cut"] = priced.get("reason") == "limit"
            flat = to_csv_row({k2: v for k2, v in priced.items() if k2 not in _DROP})
            row.update({c: json.dumps(v) if isinstance(v, list) else v for c, v in flat.items()})
        rows.append(row)
    return rows


def run_task_uploaded(task: Task, data: Any) -> list[dict[str, Any]]:
    """:func:`run_task` on a worker without the input on its disk: ``data`` is a trace's bytes (kept
    in the worker's temporary folder under its content hash) or a guest program, assembled."""
    if task.input.program:
        return run_task(task, program=data)
    folder = Path(tempfile.gettempdir()) / "mmu-sweep-inputs"
    folder.mkdir(exist_ok=True)
    local = folder / (task.input_sha256 + Path(task.input.path).suffix)
    if not local.exists():
        fd, tmp = tempfile.mkstemp(dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, local)
    return run_task(task, str(local))
