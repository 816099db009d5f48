"""``mmu run``: run a guest program on the simulated machine and report what translation cost."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mmu.errors import MMUInputError
from mmu.options import (
    flood_threshold_option,
    prefault_option,
    prefetch_option,
    roots_option,
    shadow_pages_option,
    thp_option,
)


def _parse_args(items: list[str]) -> list[int]:
    from mmu.cli.common import fail

    out = []
    for item in items:
        try:
            out.append(int(item.replace("_", ""), 0))
        except ValueError:
            fail(f"program arguments must be integers (decimal, 0x.., 0b.., 0o..), got {item!r}")
    return out


def register(app: typer.Typer) -> None:
    """Add the ``run`` command to ``app``."""

    @app.command("run")
    def run_cmd(
        program: Path = typer.Argument(..., help="Guest program (assembler source, see docs/isa.md)."),
        args: list[str] = typer.Argument(None, help="Integer arguments the program reads with getarg."),
        mode: str = typer.Option("native", "--mode", help="Virtualization mode: native, nested or shadow."),
        cpu: str = typer.Option("skylake", "--cpu", help="CPU preset: TLB/PSC geometry and costs."),
        as_json: bool = typer.Option(False, "--json", help="Print the stats object (with the console) as JSON."),
        record: Path = typer.Option(None, "--record", help="Write a trace of the run; `mmu replay` repeats it."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the program's console output."),
        max_instructions: int = typer.Option(100_000_000, "--max-instructions", help="Stop after this many."),
        quantum: int = typer.Option(10_000, "--quantum", help="Scheduler slice in instructions."),
        host_page: str = typer.Option("4k", "--host-page", help="Nested/shadow: host page size, 4k|2m|1g."),
        no_unsync: bool = typer.Option(False, "--no-unsync", help="Shadow: emulate every store to a leaf table."),
        prefetch: int = prefetch_option(),
        roots: int = roots_option(),
        flood_threshold: int = flood_threshold_option(),
        shadow_pages: int = shadow_pages_option(),
        prefault: bool = prefault_option(),
        thp: str = thp_option(),
    ) -> None:
        """Run PROGRAM.s in a fresh guest: print its console output and the stats."""
        from rich.console import Console

        from mmu.cli.common import fail
        from mmu.engine import MODES, MachineConfig
        from mmu.guest.asm import assemble_file
        from mmu.guest.run import run_program
        from mmu.report.summary import summary_renderable
        from mmu.stats import to_json

        if mode not in MODES:
            fail(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
        if not program.is_file():
            fail(f"{program}: no such file")
        if max_instructions < 0:
            fail(f"--max-instructions must be >= 0, not {max_instructions}")
        values = _parse_args(args or [])
        try:
            prog = assemble_file(program)
            config = MachineConfig(
                mode=mode, cpu=cpu, host_page=host_page.lower(), unsync=not no_unsync, prefetch=prefetch,
                roots=roots, flood_threshold=flood_threshold, thp=thp, shadow_pages=shadow_pages,
                prefault=prefault,
            )  # fmt: skip
            result = run_program(
                prog, values, config, record_path=record,
                max_instructions=max_instructions, quantum=quantum,
            )  # fmt: skip
        except MMUInputError as exc:
            fail(str(exc))
        extra = result
        if as_json:
            sys.stdout.write(to_json(result) + "\n")
            return
        sys.stdout.write(extra["console"])
        sys.stdout.flush()
        err = Console(stderr=True)
        for message in extra["faults"]:
            err.print(f"[red]{message}[/]", highlight=False)
        if not quiet:
            Console().print(summary_renderable(result))
            ips = extra["instructions_per_s"]
            rate = f", {ips / 1e6:.1f}M instructions/s" if ips else ""
            typer.echo(
                f"{extra['reason']}: exit code {extra['exit_code']}, {extra['instructions']} instructions, "
                f"{extra['guest_processes']} processes, {extra['switches']} switches{rate}"
            )
