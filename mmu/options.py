"""Command-line options shared by ``mmu replay`` and ``mmu run`` (one definition, one help text)."""

from __future__ import annotations

from typing import Any

import typer


def prefetch_option() -> Any:
    return typer.Option(8, "--prefetch", help="Shadow: entries prefetched around a fill (0 = off).")


def roots_option() -> Any:
    return typer.Option(3, "--roots", help="Shadow: previous roots in the root cache (0..11).")


def flood_threshold_option() -> Any:
    return typer.Option(
        3, "--flood-threshold", help="Shadow: emulated writes that zap an upper-level shadow page (0 = never)."
    )


def shadow_pages_option() -> Any:
    return typer.Option(
        0,
        "--shadow-pages",
        help="Shadow: most shadow pages kept, oldest reclaimed first (KVM's n_max_mmu_pages; 0 = no cap).",
    )


def prefault_option() -> Any:
    return typer.Option(
        False,
        "--prefault",
        help="Shadow: fill the shadow entry when the guest returns from a reflected #PF (PVM's prefault).",
    )


def thp_option() -> Any:
    return typer.Option(
        "madvise",
        "--thp",
        help="Guest transparent 2 MiB pages: never | madvise (mappings made with PROT_THP) | always.",
    )
