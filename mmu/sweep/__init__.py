"""Sweeps: a grid of runs (inputs x modes x machine and cost parameters) as one tidy table.

:mod:`mmu.sweep.spec` checks and plans the grid, :mod:`mmu.sweep.run` runs one task wherever a
worker is, :mod:`mmu.sweep.runner` drives a process pool or a Dask cluster, and
:mod:`mmu.sweep.table` keeps the table (CSV, rewritten atomically; Parquet). docs/sweeps.md.
"""

from mmu.sweep.runner import SweepOutcome, run_sweep
from mmu.sweep.spec import SweepSpec, Task, plan, spec_from_cli, spec_from_toml
from mmu.sweep.table import SweepTable, write_parquet

__all__ = [
    "SweepOutcome",
    "SweepSpec",
    "SweepTable",
    "Task",
    "plan",
    "run_sweep",
    "spec_from_cli",
    "spec_from_toml",
    "write_parquet",
]
