"""The ``mmu`` command.

Bad input never produces a traceback: :class:`mmu.errors.MMUInputError` (and a
few OS errors on named files) become one line on stderr, ``mmu: error: ...``,
and exit status 2.
"""

from __future__ import annotations

import sys

import typer

from mmu.errors import MMUInputError

app = typer.Typer(
    name="mmu",
    help="A memory-virtualization lab: native, shadow and nested paging on real traces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    sys.stderr.write(f"mmu: error: {message}\n")
    raise typer.Exit(2)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except MMUInputError as exc:
        sys.stderr.write(f"mmu: error: {exc}\n")
        sys.exit(2)
