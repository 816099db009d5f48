"""What every ``mmu`` subcommand shares: the one-line error exit."""

from __future__ import annotations

import sys

import typer

__all__ = ["fail"]


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    sys.stderr.write(f"mmu: error: {message}\n")
    raise typer.Exit(2)
