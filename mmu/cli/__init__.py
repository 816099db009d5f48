"""The ``mmu`` command.

Bad input never produces a traceback: :class:`mmu.errors.MMUInputError` (and a
few OS errors on named files) become one line on stderr, ``mmu: error: ...``,
and exit status 2.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

from mmu.cli.common import fail
from mmu.errors import MMUInputError
from mmu.options import (
    flood_threshold_option,
    prefault_option,
    prefetch_option,
    roots_option,
    shadow_pages_option,
    thp_option,
)

app = typer.Typer(
    name="mmu",
    help="A memory-virtualization lab: native, shadow and nested paging on real traces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except MMUInputError as exc:
        sys.stderr.write(f"mmu: error: {exc}\n")
        sys.exit(2)


def _parse_costs(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            fail(f"--cost expects NAME=CYCLES (an integer), got {item!r}")
        out[name.strip()] = int(value)
    return out


def _run_replay(
    traces: list[Path],
    quantum: int | None,
    mode: str,
    cpu: str,
    as_json: bool,
    emit: Path | None,
    quiet: bool,
    costs: list[str],
    chunk_size: int,
    **machine: Any,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    from mmu.engine import MODES, MachineConfig
    from mmu.replayfile import replay, replay_interleaved
    from mmu.report.summary import summary_renderable
    from mmu.stats import to_json

    if mode not in MODES:
        fail(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if chunk_size <= 0:
        fail(f"--chunk-size must be positive, not {chunk_size}")
    if len(traces) > 1 or quantum is not None:
        if emit is not None:
            fail("--emit-translations takes one trace (not an interleaving of several)")
        quantum = 10_000 if quantum is None else quantum
    trace = traces[0]
    label = trace.name if len(traces) == 1 else f"{len(traces)} traces, quantum {quantum}"

    def run_it(config, progress=None):
        if quantum is not None:
            return replay_interleaved(traces, config, quantum=quantum, chunk_size=chunk_size, progress=progress)
        return replay(trace, config, chunk_size=chunk_size, emit_path=emit, progress=progress)

    config = MachineConfig(mode=mode, cpu=cpu, cost_overrides=_parse_costs(costs), **machine)
    err = Console(stderr=True)
    show_progress = not quiet and not as_json and err.is_terminal
    try:
        if show_progress:
            with Progress(
                TextColumn("[bold]replay[/] {task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            ) as bar:
                task = bar.add_task(label, total=None, rate="")
                t0 = time.perf_counter()

                def progress(done: int, total: int) -> None:
                    dt = time.perf_counter() - t0
                    rate = f"{done / dt / 1e6:.1f}M rec/s" if dt > 0 else ""
                    bar.update(task, completed=done, total=total, rate=rate)

                result = run_it(config, progress)
        else:
            result = run_it(config)
    except MMUInputError as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(to_json(result) + "\n")
    elif not quiet:
        Console().print(summary_renderable(result))


@app.command("replay")
def replay_cmd(
    traces: list[Path] = typer.Argument(
        ..., help="Trace in mmu's format (see `mmu import`); several are run as processes of one guest."
    ),
    quantum: int = typer.Option(
        None, "--quantum", help="With several traces: records per scheduling slice (default 10000)."
    ),
    mode: str = typer.Option("native", "--mode", help="Virtualization mode."),
    cpu: str = typer.Option("skylake", "--cpu", help="CPU preset: TLB/PSC geometry and costs."),
    as_json: bool = typer.Option(False, "--json", help="Print the stats object as JSON."),
    emit: Path = typer.Option(None, "--emit-translations", help="Write each access's gPA (uint64 .npy)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary."),
    cost: list[str] = typer.Option([], "--cost", help="Override a cost parameter: NAME=CYCLES (repeatable)."),
    chunk_size: int = typer.Option(1 << 20, "--chunk-size", help="Records per kernel call."),
    host_page: str = typer.Option("4k", "--host-page", help="Nested: host page size, 4k|2m|1g."),
    ept_levels: int = typer.Option(4, "--ept-levels", help="Nested: EPT/NPT levels, 4|5."),
    ept_ad: bool = typer.Option(False, "--ept-ad", help="Nested: EPT accessed/dirty flags (EPTP bit 6)."),
    npt: bool = typer.Option(False, "--npt", help="Nested: AMD NPT instead of Intel EPT."),
    ntlb: int = typer.Option(16, "--ntlb", help="Nested: nested-TLB entries (0 = off)."),
    no_host_psc: bool = typer.Option(False, "--no-host-psc", help="Nested: no host paging-structure caches."),
    prepopulate: int = typer.Option(
        0, "--prepopulate", help="Nested: MiB of guest memory the host backs before the run (0 = lazily)."
    ),
    no_psc: bool = typer.Option(False, "--no-psc", help="No paging-structure caches (guest dimension)."),
    no_unsync: bool = typer.Option(
        False, "--no-unsync", help="Shadow: never let leaf guest tables go unsync (emulate every store)."
    ),
    prefetch: int = prefetch_option(),
    roots: int = roots_option(),
    flood_threshold: int = flood_threshold_option(),
    shadow_pages: int = shadow_pages_option(),
    prefault: bool = prefault_option(),
    thp: str = thp_option(),
) -> None:
    """Replay a trace through the simulated MMU and report what translation cost."""
    _run_replay(
        traces, quantum, mode, cpu, as_json, emit, quiet, cost, chunk_size,
        host_page=host_page.lower(), ept_levels=ept_levels, ept_ad=ept_ad, npt=npt, ntlb_entries=ntlb,
        host_psc=not no_host_psc, prepopulate_mb=prepopulate, psc=not no_psc, unsync=not no_unsync,
        prefetch=prefetch, roots=roots, flood_threshold=flood_threshold, thp=thp, shadow_pages=shadow_pages,
        prefault=prefault,
    )  # fmt: skip


def find_shipped_trace(name: str) -> Path:
    """Path of a trace shipped in the repository's traces/ folder (or $MMU_TRACES)."""
    candidates = []
    env = os.environ.get("MMU_TRACES")
    if env:
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parents[2] / "traces")  # the repository root
    for folder in candidates:
        p = folder / name
        if p.is_file():
            return p
    fail(
        f"shipped trace {name!r} not found in {', '.join(str(c) for c in candidates)}; "
        "install from a clone with `pip install -e .` or set MMU_TRACES"
    )
    raise AssertionError("unreachable")


def _parse_modes(spec: str, host_page: str, thp: str = "madvise") -> list[tuple[str, str, str]]:
    """(mode, host page, guest THP policy) per item of ``MODE[:HOSTPAGE][+thp]`` (+thp: always)."""
    from mmu.guest.os import THP_POLICIES
    from mmu.sweep.spec import parse_mode

    if thp not in THP_POLICIES:
        fail(f"unknown THP policy {thp!r}; choose never, madvise or always")
    out = []
    for item in [x.strip() for x in spec.split(",") if x.strip()]:
        try:
            m = parse_mode(item)
        except MMUInputError as exc:
            fail(str(exc))
            raise
        # the default host page applies to nested modes; shadow mode backs guest memory with 4k pages
        hp = m.host_page or (host_page.lower() if m.mode == "nested" else "4k")
        out.append((m.mode, hp, "always" if m.thp else thp))
    if not out:
        fail("--modes is empty")
    return out


def _run_mode(source: Path, program: Any, args: list[int], config: Any, max_instructions: int) -> dict:
    """One mode of ``mmu compare``: replay the trace, or run the program (also in a worker process)."""
    if program is not None:
        from mmu.guest.run import run_program

        return run_program(program, args, config, max_instructions=max_instructions)
    from mmu.replayfile import replay

    return replay(source, config)


def _compare(
    source: Path,
    modes: list[tuple[str, str, str]],
    cpu: str,
    costs: list[str],
    quiet: bool,
    args: list[int] | None = None,
    max_instructions: int | None = None,
    workers: int = 0,
) -> list[dict]:
    """Run one input in each mode: a trace is replayed; a guest program (``.s``) is run.

    The modes run on ``workers`` processes (0: one per core; never more than one per mode; 1: here,
    one after another). Every input is checked before the first run starts. Returns the stats
    objects in the order of ``modes``.
    """
    from rich.console import Console

    from mmu.cli.parallel import cpu_count, run_parallel
    from mmu.engine import MachineConfig
    from mmu.guest.run import DEFAULT_MAX_INSTRUCTIONS

    if workers < 0:
        fail(f"--workers must be >= 0, not {workers}")
    if max_instructions is None:
        max_instructions = DEFAULT_MAX_INSTRUCTIONS
    if max_instructions < 0:
        fail(f"--max-instructions must be >= 0, not {max_instructions}")
    program = None
    try:
        if source.suffix == ".s":
            from mmu.guest.asm import assemble_file

            if not source.is_file():
                fail(f"{source}: no such file")
            program = assemble_file(source)
        else:
            from mmu.trace.format import TraceReader

            if args:
                fail("program arguments are only for a guest program (PROGRAM.s)")
            TraceReader(source)  # the header, before any run
        overrides = _parse_costs(costs)
        configs = [
            MachineConfig(mode=mode, cpu=cpu, cost_overrides=overrides, host_page=hp, thp=thp)
            for mode, hp, thp in modes
        ]
        for config in configs:
            config.check()  # what Machine() checks, without building a machine
    except MMUInputError as exc:
        fail(str(exc))
    jobs = [(source, program, list(args or []), config, max_instructions) for config in configs]
    workers = min(workers or cpu_count(), len(jobs))
    err = Console(stderr=True)
    spinner = not quiet and err.is_terminal
    verb = "running" if program is not None else "replaying"
    results: list[dict] = []
    try:
        if workers == 1:
            for (mode, _, _), job in zip(modes, jobs, strict=True):
                if spinner:
                    with err.status(f"{verb} {source.name} in {mode} mode (first run compiles kernels)..."):
                        results.append(_run_mode(*job))
                else:
                    results.append(_run_mode(*job))
        else:
            from mmu.kernels import compile_group

            warm_kernels(workers)  # workers load the kernels from the cache; none compiles
            kernels = ("cpu_slice", "cpu_event") if program is not None else ("replay_kernel",)
            warm = (compile_group, (kernels,))
            what = f"{verb} {source.name} in {len(jobs)} modes on {workers} processes"
            if spinner:
                with err.status(f"{what}...") as status:
                    done = [0]

                    def on_done(_index: int) -> None:
                        done[0] += 1
                        status.update(f"{what} ({done[0]}/{len(jobs)} done)...")

                    results = run_parallel(_run_mode, jobs, workers, warm, on_done)
            else:
                results = run_parallel(_run_mode, jobs, workers, warm)
    except MMUInputError as exc:
        fail(str(exc))
    if program is not None:
        consoles = {r["console"] for r in results}
        if len(consoles) != 1:
            fail(f"{source.name}: the guest's console output differs between modes (a simulator bug)")
    return results


def workers_option() -> Any:
    return typer.Option(
        0, "--workers", help="Processes to run the modes in (0: one per core, at most one per mode; 1: one by one)."
    )


def max_instructions_option() -> Any:
    return typer.Option(
        100_000_000, "--max-instructions", help="Guest program: stop after this many instructions (flagged)."
    )


COMPARE_HELP = (
    "Replay one trace (or run one guest program) in several modes and compare the costs.\n\n"
    "The modes run on up to --workers processes (one per core by default; the extra ones start only once a mode "
    "has run for a second), and the table lists them in the order --modes gives. A guest program stopped by "
    "--max-instructions is flagged under the table."
)


@app.command("compare", help=COMPARE_HELP)
def compare_cmd(
    trace: Path = typer.Argument(..., help="Trace in mmu's format, or a guest program (PROGRAM.s)."),
    args: list[str] = typer.Argument(None, help="A program's integer arguments (after --)."),
    modes: str = typer.Option(
        "native,shadow,nested",
        "--modes",
        help="Comma-separated MODE[:HOSTPAGE][+thp], e.g. native,shadow,nested:2m,nested:2m+thp.",
    ),
    cpu: str = typer.Option("skylake", "--cpu", help="CPU preset."),
    host_page: str = typer.Option("4k", "--host-page", help="Default host page for nested modes."),
    thp: str = thp_option(),
    cost: list[str] = typer.Option([], "--cost", help="Override a cost parameter: NAME=CYCLES."),
    as_json: bool = typer.Option(False, "--json", help="Print the per-mode stats objects as a JSON list."),
    csv_out: Path = typer.Option(None, "--csv", help="Write one CSV row per mode."),
    plot: Path = typer.Option(
        None,
        "--plot",
        help="Draw the cycle breakdown per mode to OUT.png, .svg or .pdf (needs matplotlib: the mmu-lab[plot] extra).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No spinner."),
    workers: int = workers_option(),
    max_instructions: int = max_instructions_option(),
) -> None:
    """Replay one trace (or run one guest program) in several modes and compare the costs."""
    from rich.console import Console

    from mmu.cli.guest import _parse_args
    from mmu.report.compare import compare_renderable
    from mmu.stats import to_csv_row, to_json

    if plot is not None:
        from mmu.report.plot import check_plot_target

        try:
            check_plot_target(plot)  # before the replays, which can take minutes
        except MMUInputError as exc:
            fail(str(exc))
    results = _compare(
        trace, _parse_modes(modes, host_page, thp), cpu, cost, quiet, _parse_args(args or []), max_instructions, workers
    )
    if trace.suffix == ".s":
        args_text = " ".join(str(a) for a in results[0]["args"])
        title = f"mmu compare — {trace.name} {args_text}".rstrip()
    else:
        title = f"mmu compare — {trace.name}"
    if csv_out is not None:
        import csv

        rows = [to_csv_row(r) for r in results]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(csv_out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    if as_json:
        sys.stdout.write(to_json(results) + "\n")
    else:
        if trace.suffix == ".s":
            sys.stdout.write(results[0]["console"])
        Console().print(compare_renderable(results, title=title))
    if plot is not None:
        from mmu.report.plot import plot_breakdown

        try:
            plot_breakdown(results, plot, title=title)
        except MMUInputError as exc:
            fail(str(exc))


DEMO_TRACES = ("ls-usr.trace", "gups-64m.trace")
DEMO_PROGRAM = ("forkwait.s", [40, 4])  # 40 fork+wait rounds, each child rewriting 4 pages
DEMO_WALK = ("gups-64m.trace", 82515)  # a TLB miss whose walk the PSCs and the NTLB cut to 4 references


def find_shipped_program(name: str) -> Path:
    """Path of a guest program shipped in traces/programs/."""
    return find_shipped_trace(f"programs/{name}")


DEMO_HELP = (
    "Show the whole story in one screen: native, shadow and nested paging side by side.\n\n"
    "Shipped real traces (valgrind lackey recordings) and a shipped guest program (forkwait) run natively, under "
    "shadow paging and under nested paging; then one nested page walk is drawn reference by reference, marked with "
    "what the warm TLB and caches serve at that point of the trace."
)


@app.command("demo", help=DEMO_HELP)
def demo_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the stats objects as JSON."),
    cpu: str = typer.Option("skylake", "--cpu", help="CPU preset."),
    workers: int = workers_option(),
    max_instructions: int = max_instructions_option(),
) -> None:
    """Show the whole story in one screen: native, shadow and nested paging side by side."""
    from rich.console import Console
    from rich.rule import Rule

    from mmu.report.compare import compare_renderable
    from mmu.stats import to_json

    modes = [("native", "4k", "madvise"), ("shadow", "4k", "madvise"), ("nested", "4k", "madvise")]
    modes.append(("nested", "2m", "madvise"))
    warm_kernels()  # a cold cache compiles on every core first
    everything = []
    console = Console()
    for name in DEMO_TRACES:
        trace = find_shipped_trace(name)
        results = _compare(trace, modes, cpu, [], as_json, workers=workers)
        everything.extend(results)
        if not as_json:
            console.print(compare_renderable(results, title=f"{name}: native vs shadow vs nested paging"))
            console.print()
    name, args = DEMO_PROGRAM
    results = _compare(find_shipped_program(name), modes, cpu, [], as_json, args, max_instructions, workers)
    everything.extend(results)
    if as_json:
        sys.stdout.write(to_json(everything) + "\n")
        return
    console.print(f"[bold]{name} {' '.join(map(str, args))}[/] prints: {results[0]['console'].strip()}")
    console.print(
        compare_renderable(results, title=f"{name} {' '.join(map(str, args))}: a page-table-update-heavy guest")
    )
    console.print()
    trace, index = DEMO_WALK
    console.print(Rule("one nested TLB miss: 24 references cold, and what the warm caches leave"))
    console.print(f"mmu walk --trace traces/{trace} --index {index} --mode nested", style="dim", highlight=False)
    from mmu.cli.report import _trace_view
    from mmu.report.walkview import walk_renderable

    try:
        view = _trace_view(find_shipped_trace(trace), index, None, None, True, "nested", "4k", 4, False, False)
    except MMUInputError as exc:
        fail(str(exc))
    console.print(walk_renderable(view))


@app.command("presets")
def presets_cmd() -> None:
    """List CPU presets and their cost parameters with sources."""
    from rich.console import Console
    from rich.table import Table

    from mmu.hw.cost import COST_PRESETS, cost_params

    console = Console()
    for name in sorted(COST_PRESETS):
        t = Table(title=f"cost preset {name}")
        t.add_column("parameter")
        t.add_column("cycles", justify="right")
        t.add_column("source", overflow="fold")
        for p in cost_params(name):
            t.add_row(p.name, str(p.value), p.source)
        console.print(t)


@app.command("cache")
def cache_cmd(
    action: str = typer.Argument(
        ...,
        help="'warm' compiles every kernel into the cache (in parallel); 'clear' removes mmu's compiled "
        "kernels; 'path' prints where they are.",
    ),
    workers: int = typer.Option(0, "--workers", help="warm: processes to compile in (0: one per core)."),
) -> None:
    """Manage numba's on-disk cache of compiled kernels."""
    import shutil

    from mmu._jit import cache_root

    where = cache_root()
    if action == "path":
        typer.echo(str(where))
        return
    if action == "warm":
        if workers < 0:
            fail(f"--workers must be >= 0, not {workers}")
        seconds = warm_kernels(workers or None, force=True)
        typer.echo(f"compiled or loaded every kernel in {seconds:.1f} s (cache: {where})")
        return
    if action != "clear":
        fail(f"unknown cache action {action!r}; use 'warm', 'clear' or 'path'")
    root = cache_root()  # every kernel's folder, and only mmu's kernels
    removed = 0
    if root.exists():
        removed = sum(1 for _ in root.rglob("*.nb[ic]"))
        shutil.rmtree(root)
    typer.echo(f"removed {removed} cached kernel files")


def warm_kernels(workers: int | None = None, force: bool = False) -> float:
    """Compile every kernel into the cache on all cores, with a progress bar on a terminal.

    Nothing to do, and no output, when the cache is already warm (unless ``force``).
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from mmu.kernels import is_warm, kernel_names, warm

    if not force and is_warm():
        return 0.0
    err = Console(stderr=True)
    if not err.is_terminal:
        return warm(workers)
    names = kernel_names()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=err, transient=True,
    ) as bar:  # fmt: skip
        what = "compiling the kernels" if force else "compiling the kernels (first run only)"
        task = bar.add_task(what, total=len(names))
        return warm(workers, on_done=lambda _name, _sec: bar.advance(task))


from mmu.cli.trace import register  # noqa: E402

register(app)
from mmu.cli.report import register as _register_report  # noqa: E402

_register_report(app)
from mmu.cli.guest import register as _register_guest  # noqa: E402

_register_guest(app)
from mmu.cli.sweep import register as _register_sweep  # noqa: E402

_register_sweep(app)
