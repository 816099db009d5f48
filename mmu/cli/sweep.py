"""``mmu sweep``: a grid of runs on every core or on a Dask cluster, as a tidy table.

``register(app)`` adds the command to the main typer app. Every input, mode, parameter and
value is checked before the first run starts (one-line error, exit status 2).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from mmu.cli.common import fail
from mmu.errors import MMUInputError

SWEEP_HELP = (
    "Run a grid of simulations and write one row per run to a table.\n\n"
    "Every INPUT (a trace, or a guest program PROG.s with its arguments as PROG.s:40,4) runs in every "
    "--modes item (MODE[:HOSTPAGE][+thp]) at every combination of the --param values (machine "
    "options: host_page, stlb_entries, ntlb_entries, prefetch, roots, thp, cpu, ... -- every field of "
    "mmu.engine.MachineConfig) and --cost values (cost parameters, see `mmu presets`). The same grid can "
    "come from a TOML file (--spec; docs/sweeps.md).\n\n"
    "Cost parameters are free to sweep: cycles are a deterministic function of the event counts, so each "
    "(input, mode, machine) is simulated once and re-priced for every cost value (the walk-line cache "
    "geometry l2_lines ... llc_ways excepted: it changes the simulation). Grid points that differ only in "
    "a parameter their mode ignores (ntlb_entries under native) share a simulation too.\n\n"
    "The table (-o, CSV) is rewritten atomically as runs finish: an interrupted sweep keeps every finished "
    "row, and running the same command again runs only what is missing (failed rows are retried). A run "
    "that fails records its one-line error in the 'error' column and the sweep goes on; the exit status "
    "is then 1.\n\n"
    "Examples: mmu sweep traces/gups-64m.trace --modes native,shadow,nested --cost exit=500,1000,2000,4000 "
    "-o exit.csv --plot exit.png · mmu sweep traces/*.trace --param stlb_entries=512,1024,2048 "
    "--cost exit=500,4000 -o grid.csv --dask local"
)


def sweep_cmd(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(metavar="INPUT", help="Traces, or guest programs as PROG.s[:ARG,ARG...].", show_default=False),
    ] = None,
    modes: Annotated[
        str, typer.Option("--modes", help="Comma-separated MODE[:HOSTPAGE][+thp].")
    ] = "native,shadow,nested",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="A machine parameter to sweep: NAME=V1,V2,... (repeatable).")
    ] = None,
    cost: Annotated[
        list[str] | None, typer.Option("--cost", help="A cost parameter to sweep: NAME=V1,V2,... (repeatable).")
    ] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Read the grid from a TOML file instead.")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="The table, CSV (resumed if it exists).")] = Path(
        "sweep.csv"
    ),
    parquet: Annotated[
        Path | None, typer.Option("--parquet", help="Also write the table as Parquet (needs pyarrow).")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Draw the sweep to OUT.png, .svg or .pdf.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Processes (or Dask local workers); 0: one per core.")] = 0,
    dask: Annotated[
        str | None,
        typer.Option("--dask", help="Run on a Dask cluster: a scheduler address (tcp://host:8786) or 'local'."),
    ] = None,
    upload: Annotated[
        bool, typer.Option("--upload", help="With --dask: ship the inputs to the workers (no shared storage).")
    ] = False,
    max_instructions: Annotated[
        int, typer.Option("--max-instructions", help="Guest programs: stop each run after this many instructions.")
    ] = 100_000_000,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")] = False,
) -> None:
    from mmu.sweep.runner import run_sweep
    from mmu.sweep.spec import plan, spec_from_cli, spec_from_toml
    from mmu.sweep.table import SweepTable, require_pyarrow, write_parquet

    try:
        if workers < 0:
            raise MMUInputError(f"--workers must be >= 0, not {workers}")
        if upload and dask is None:
            raise MMUInputError("--upload goes with --dask (a local sweep reads its inputs itself)")
        if spec is not None:
            if inputs or param or cost:
                raise MMUInputError("--spec gives the whole grid: give no INPUT, --param or --cost with it")
            grid = spec_from_toml(spec)
        else:
            grid = spec_from_cli(inputs or [], modes, param or [], cost or [], max_instructions)
        if plot is not None:
            from mmu.report.plot import check_plot_target

            check_plot_target(plot)
            if len(grid.swept) >= 2:
                from mmu.report.sweep_plot import ratio_modes

                ratio_modes([m.label for m in grid.modes])
        if parquet is not None:
            require_pyarrow()
        tasks = plan(grid)
        table = SweepTable(out)
    except MMUInputError as exc:
        fail(str(exc))
        return
    if dask is None or dask == "local":
        from mmu.cli import warm_kernels

        warm_kernels()  # compiled once, before the workers start: they load the kernels from the cache
    from rich.console import Console

    err = Console(stderr=True)
    total = sum(len(t.prices) for t in tasks)
    t0 = time.perf_counter()
    try:
        if quiet or not err.is_terminal:
            outcome = run_sweep(tasks, table, workers=workers or None, dask=dask, upload=upload)
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(
                TextColumn("[bold]sweep[/] runs"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err, transient=True,
            ) as bar:  # fmt: skip
                job = bar.add_task("runs", total=total, rate="")

                def progress(done: int, _total: int) -> None:
                    dt = time.perf_counter() - t0
                    bar.update(job, completed=done, rate=f"{done / dt:.1f} runs/s" if dt > 0 and done else "")

                outcome = run_sweep(tasks, table, workers=workers or None, dask=dask, upload=upload, progress=progress)
    except KeyboardInterrupt:
        ok = sum(1 for r in table.rows.values() if r.get("status") == "ok")
        sys.stderr.write(f"mmu: interrupted: {ok} of {total} runs are in {out}; run the same command again to finish\n")
        raise typer.Exit(130) from None
    except MMUInputError as exc:
        fail(str(exc))
        return
    rows = table.ordered()
    try:
        if parquet is not None:
            write_parquet(rows, table.columns, parquet)
        if plot is not None:
            from mmu.report.sweep_plot import plot_sweep

            plot_sweep(rows, grid.swept, plot, title=f"mmu sweep — {out.name}")
    except MMUInputError as exc:
        fail(str(exc))
        return
    if not quiet:
        seconds = time.perf_counter() - t0
        shared = outcome.rows - outcome.skipped - outcome.simulations
        also = "".join(f", {p}" for p in (parquet, plot) if p is not None)
        what = [f"{outcome.simulations} simulations"]
        if shared > 0:
            what.append(f"{shared} rows re-priced or shared")
        if outcome.skipped:
            what.append(f"{outcome.skipped} rows already done")
        typer.echo(f"{outcome.rows} runs in {out}{also}", err=True)
        typer.echo(f"{'; '.join(what)}; {seconds:.1f} s", err=True)
    if outcome.failed:
        sys.stderr.write(f"mmu: {outcome.failed} runs failed; their 'error' column says why ({out})\n")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``mmu sweep`` to ``app``."""
    app.command("sweep", help=SWEEP_HELP, no_args_is_help=True)(sweep_cmd)
