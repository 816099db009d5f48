"""Trace commands of the ``mmu`` CLI: ``import``, ``record``, ``info``.

``register(app)`` adds them to the main typer app. Bad input is reported with
:func:`mmu.cli.fail` (one line, exit status 2), inside the commands, so typer's
``CliRunner`` sees the same behaviour as the console script.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mmu.errors import MMUInputError

KINDS = ("lackey", "pin", "champsim", "npy")


def _fail(message: str) -> None:
    from mmu.cli.common import fail

    fail(message)


def _done(summary, quiet: bool, show_rate: bool = True) -> None:
    if quiet:
        return
    unit = "lines" if summary.source in ("lackey", "pin") else "items"
    rate = f", {summary.lines_per_second / 1e6:.1f} M {unit}/s" if show_rate else ""
    trunc = " (stopped at --max-accesses)" if summary.truncated else ""
    typer.echo(
        f"wrote {summary.output}: {summary.records:,} records ({summary.accesses:,} accesses) "
        f"from {summary.lines:,} input {unit} in {summary.seconds:.2f} s{rate}{trunc}",
        err=True,
    )


def import_cmd(
    kind: Annotated[str, typer.Argument(help="Input format: lackey, pin, champsim or npy.")],
    input: Annotated[Path, typer.Argument(help="The trace to convert (.xz/.gz/.bz2 decompressed by suffix).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The mmu trace file to write.")],
    pid: Annotated[int, typer.Option("--pid", help="Process id stored in every record.")] = 1,
    max_accesses: Annotated[int | None, typer.Option("--max-accesses", help="Stop after N access records.")] = None,
    fetch_ip: Annotated[
        bool, typer.Option("--fetch-ip", help="pin only: emit a fetch of the ip when it changes.")
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")] = False,
) -> None:
    """Convert a lackey, pin (pinatrace), champsim or npy trace to the mmu trace format."""
    kind = kind.lower()
    if kind not in KINDS:
        _fail(f"unknown trace kind {kind!r} (expected one of: {', '.join(KINDS)})")
    if fetch_ip and kind != "pin":
        _fail("--fetch-ip applies to pin traces only")
    if max_accesses is not None and max_accesses < 1:
        _fail(f"--max-accesses must be >= 1, got {max_accesses}")
    opts = {"pid": pid, "max_accesses": max_accesses}
    try:
        if kind == "lackey":
            from mmu.trace.lackey import import_lackey as fn
        elif kind == "pin":
            from mmu.trace.pin import import_pin as fn

            opts["fetch_ip"] = fetch_ip
        elif kind == "champsim":
            from mmu.trace.champsim import import_champsim as fn
        else:
            from mmu.trace.npy import import_npy as fn
        summary = fn(input, output, **opts)
    except MMUInputError as exc:
        _fail(str(exc))
    _done(summary, quiet)


def record_cmd(
    cmd: Annotated[list[str], typer.Argument(help="The command to trace, after '--'.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The mmu trace file to write.")],
    max_accesses: Annotated[
        int | None, typer.Option("--max-accesses", help="Stop after N access records (Valgrind is killed).")
    ] = None,
    pid: Annotated[int, typer.Option("--pid", help="Process id stored in every record.")] = 1,
    show_output: Annotated[
        bool, typer.Option("--show-output", help="Let the program's stdout/stderr through.")
    ] = False,
    allow_failure: Annotated[
        bool, typer.Option("--allow-failure", help="Keep the trace if the program fails.")
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")] = False,
) -> None:
    """Run CMD under valgrind --tool=lackey --trace-mem=yes and convert its accesses as it runs.

    Example: mmu record -o ls.mmut --max-accesses 500000 -- ls -l /usr
    """
    from mmu.trace.record import record

    try:
        summary = record(
            list(cmd),
            output,
            max_accesses=max_accesses,
            pid=pid,
            show_output=show_output,
            allow_failure=allow_failure,
        )
    except MMUInputError as exc:
        _fail(str(exc))
    _done(summary, quiet, show_rate=False)


def trace_info(path: Path, chunk_size: int = 1 << 20) -> dict:
    """Header, size and per-op counts of a trace, plus its footprint (validates every record and,
    in a version 2 file, every chunk checksum).

    Returns
    -------
    dict
        ``path``, ``header``, ``version``, ``chunk_records`` (records per checksummed chunk;
        0 for a version 1 file, which has no checksums), ``file_bytes``, ``records``, ``accesses``,
        ``ops`` (name -> count), ``pids`` (sorted list), ``pages_4k`` and ``regions_2m``
        (distinct 4 KiB pages / 2 MiB regions touched by accesses, by start address),
        ``min_addr``/``max_addr`` (of accesses, or None).
    """
    import numpy as np

    from mmu.trace.format import OP_FETCH, OP_NAMES, TraceReader

    reader = TraceReader(path)
    counts = np.zeros(256, dtype=np.int64)
    pages = np.empty(0, dtype=np.uint64)
    pids = np.empty(0, dtype=np.uint16)
    lo, hi = None, None
    for arr in reader.chunks(chunk_size):
        counts += np.bincount(arr["op"], minlength=256)
        pids = np.union1d(pids, np.unique(arr["pid"]))
        acc = arr["addr"][arr["op"] <= OP_FETCH]
        if acc.size:
            pages = np.union1d(pages, np.unique(acc >> np.uint64(12)))
            a, b = int(acc.min()), int(acc.max())
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    ops = {OP_NAMES[int(o)]: int(counts[o]) for o in np.flatnonzero(counts)}
    return {
        "path": str(path),
        "version": reader.version,
        "chunk_records": reader.chunk_records,
        "header": reader.header,
        "file_bytes": reader.file_size,
        "records": reader.n_records,
        "accesses": int(counts[: OP_FETCH + 1].sum()),
        "ops": ops,
        "pids": [int(p) for p in pids],
        "pages_4k": int(pages.size),
        "regions_2m": int(np.unique(pages >> np.uint64(9)).size),
        "min_addr": lo,
        "max_addr": hi,
    }


def info_renderable(info: dict):
    """Rich renderable (a group of two tables) for :func:`trace_info`'s result."""
    from rich.console import Group
    from rich.table import Table

    head = Table(title=f"{info['path']}", show_header=False, title_justify="left")
    head.add_column("field", style="bold")
    head.add_column("value", overflow="fold")
    head.add_row("format", f"mmu trace v{info['version']}, {info['file_bytes']:,} bytes")
    if info.get("chunk_records"):
        head.add_row("checksums", f"CRC-32 per {info['chunk_records']:,}-record chunk, all verified")
    else:
        head.add_row("checksums", "none (version 1 file: unchecked)")
    for key in sorted(info["header"]):
        value = info["header"][key]
        head.add_row(key, value if isinstance(value, str) else json.dumps(value))
    counts = Table(show_header=True)
    counts.add_column("op")
    counts.add_column("records", justify="right")
    counts.add_column("share", justify="right")
    total = max(info["records"], 1)
    for name, n in info["ops"].items():
        counts.add_row(name, f"{n:,}", f"{100 * n / total:.1f}%")
    counts.add_row("[bold]total[/bold]", f"[bold]{info['records']:,}[/bold]", "")
    foot = Table(show_header=False)
    foot.add_column("k", style="bold")
    foot.add_column("v", justify="right")
    foot.add_row("accesses", f"{info['accesses']:,}")
    foot.add_row("pids", ", ".join(map(str, info["pids"])) or "-")
    foot.add_row("4 KiB pages touched", f"{info['pages_4k']:,} ({info['pages_4k'] * 4 / 1024:.1f} MiB)")
    foot.add_row("2 MiB regions touched", f"{info['regions_2m']:,}")
    if info["min_addr"] is not None:
        foot.add_row("address range", f"{info['min_addr']:#x} .. {info['max_addr']:#x}")
    return Group(head, counts, foot)


def info_cmd(
    trace: Annotated[Path, typer.Argument(help="An mmu trace file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Print a trace's header, record counts by op and footprint."""
    try:
        info = trace_info(trace)
    except MMUInputError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    from rich.console import Console

    Console().print(info_renderable(info))


def register(app: typer.Typer) -> None:
    """Add the ``import``, ``record`` and ``info`` commands to ``app``."""
    app.command("import", no_args_is_help=True)(import_cmd)
    app.command(
        "record",
        no_args_is_help=True,
        context_settings={"allow_interspersed_args": False},
    )(record_cmd)
    app.command("info", no_args_is_help=True)(info_cmd)
