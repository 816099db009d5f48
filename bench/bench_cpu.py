"""Guest executor speed: instructions per second of ``mmu run`` in native mode.

``seqscan`` over 64 pages (the whole working set fits the L1 DTLB, the code one ITLB page)
is the TLB-friendly program of the issue's target (>= 10M guest instructions/s); ``gups``
over a 2 MiB table (512 pages: STLB hits, some walks) shows the price of TLB misses. Each
round runs the whole program on a fresh machine; the kernels are compiled (or loaded from
the cache) in a warm-up run outside the timing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mmu.engine import MachineConfig
from mmu.guest.asm import assemble_file
from mmu.guest.run import run_program

PROGRAMS = Path(__file__).resolve().parent.parent / "traces" / "programs"
CASES = {"seqscan_64p": ("seqscan", [64, 400, 8]), "gups_2m": ("gups", [18, 1 << 20])}


@pytest.mark.parametrize("case", sorted(CASES))
def test_executor_native(benchmark, case):
    name, args = CASES[case]
    prog = assemble_file(PROGRAMS / f"{name}.s")
    run_program(prog, [4, 1, 8] if name == "seqscan" else [8, 16], MachineConfig())  # compile outside

    result = benchmark.pedantic(lambda: run_program(prog, args, MachineConfig()), rounds=3, warmup_rounds=1)
    assert result["exit_code"] == 0
    n = result["instructions"]
    benchmark.extra_info["instructions"] = n
    benchmark.extra_info["instructions_per_s"] = n / benchmark.stats.stats.mean
    benchmark.extra_info["kernel_instructions_per_s"] = result["instructions_per_s"]
    benchmark.extra_info["l1_dtlb_hit_rate"] = result["tlb_l1_hits"] / result["translations"]
