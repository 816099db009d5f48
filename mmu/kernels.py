"""Every entry-point kernel of the engine, and warming numba's cache with them (``mmu cache warm``).

The kernels share one translation path (:func:`mmu.modes.dispatch.translate_access`) and one
guest kernel (:func:`mmu.guest.osops.os_event`, :func:`mmu.modes.cpuops.switch_to`), each
compiled once per process for one signature: every mode passes the same state types
(:class:`mmu.state.MachineState`). A cold compile is therefore the sum of the distinct
functions, and it splits into independent parts that separate processes can compile at the
same time, each writing numba's on-disk cache:

1. the *roots* below the entry points, in groups that share little code (the translation path,
   with the walk probe that needs only its hardware part; the guest kernel's events, context
   switch and privileged operations), one process per group;
2. the two entry points that need both (replay, executor), which then load those roots from
   the cache instead of compiling them.

:func:`warm` runs both phases on a process pool; :func:`is_warm` tells whether there is anything
to do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any

import numba
import numpy as np

from mmu.state import GuestMemory

# Phase 1: groups of internal roots compiled in parallel (each is typed from a real machine's
# state, exactly as its callers pass it). Phase 2: the entry points.
ROOT_GROUPS: tuple[tuple[str, ...], ...] = (
    ("translate_access", "warm_translate"),  # the probe needs only the hardware paths
    ("os_event", "switch_to", "guest_op_kernel"),  # guest stores and flushes: the guest kernel's side
)
ENTRY_GROUPS: tuple[tuple[str, ...], ...] = (
    ("replay_kernel",),
    ("cpu_slice", "cpu_event"),
)
# What Python calls (compiled in one of the phases above).
ENTRY_POINTS = ("replay_kernel", "cpu_slice", "cpu_event", "guest_op_kernel", "warm_translate")


def _dispatchers() -> dict[str, Any]:
    """name -> dispatcher of every root and entry point (imports only)."""
    from mmu.engine import guest_op_kernel, replay_kernel
    from mmu.guest.cpu import cpu_event, cpu_slice
    from mmu.guest.osops import os_event
    from mmu.modes.cpuops import switch_to
    from mmu.modes.dispatch import translate_access
    from mmu.modes.probe import warm_translate

    return {
        "translate_access": translate_access,
        "os_event": os_event,
        "switch_to": switch_to,
        "replay_kernel": replay_kernel,
        "cpu_slice": cpu_slice,
        "cpu_event": cpu_event,
        "guest_op_kernel": guest_op_kernel,
        "warm_translate": warm_translate,
    }


def _specs() -> dict[str, tuple[Any, tuple]]:
    """name -> (dispatcher, example arguments) for every root and entry point."""
    from mmu.engine import GOP_FLUSH, Machine, MachineConfig
    from mmu.guest.isa import USED_MASK_TABLE
    from mmu.modes.probe import MAX_REFS, W_COLS
    from mmu.stats import new_stats
    from mmu.trace.ops import RECORD_DTYPE

    d = _dispatchers()
    m = Machine(MachineConfig(mode="nested"))
    s = m.state
    gm = GuestMemory(s.mem, s.halloc, s.vm, s.stats, s.sh)
    i = np.int64(0)
    records = np.zeros(2, dtype=RECORD_DTYPE)
    fields = (records["addr"], records["arg"], records["pid"], records["op"], records["flags"])
    rec = (np.zeros(2, np.uint64), np.zeros(2, np.uint32), np.zeros(2, np.uint16), np.zeros(2, np.uint8))
    used = np.ascontiguousarray(USED_MASK_TABLE, dtype=np.uint64)
    return {
        "translate_access": (
            d["translate_access"],
            (gm, s.galloc, s.hcache, s.osst, s.tlb, s.psc, s.ptc, s.stats, s.cfg, i, i, i, s.scratch),
        ),
        "os_event": (d["os_event"], (gm, s.galloc, s.osst, s.tlb, s.psc, s.stats, s.cfg, i, i, i, i)),
        "switch_to": (d["switch_to"], (gm, s.galloc, s.osst, s.tlb, s.psc, s.stats, s.cfg, i)),
        "replay_kernel": (
            d["replay_kernel"],
            (*fields, i, i, s, np.zeros(0, np.uint64), np.zeros(1, np.int64)),
        ),
        "cpu_slice": (
            d["cpu_slice"],
            (s, np.zeros(32, np.uint64), np.zeros(16, np.int64), used, i, rec, np.zeros(1, np.int64)),
        ),
        "cpu_event": (d["cpu_event"], (s, i, i, i, i)),
        "guest_op_kernel": (d["guest_op_kernel"], (np.int64(GOP_FLUSH), i, np.uint64(0), s)),
        "warm_translate": (
            d["warm_translate"],
            (s, s.ptc, new_stats(), i, i, i, i, i, np.zeros((MAX_REFS, W_COLS), np.int64)),
        ),
    }


def signature_of(args: Iterable[Any]) -> tuple:
    """The numba argument types of ``args`` (what a call with them compiles for)."""
    return tuple(numba.typeof(a) for a in args)


def compile_group(names: Iterable[str]) -> list[tuple[str, float]]:
    """Compile (or load from the cache) the named kernels in this process; seconds for each."""
    specs = _specs()
    out = []
    for name in names:
        disp, args = specs[name]
        t0 = time.perf_counter()
        disp.compile(signature_of(args))
        out.append((name, time.perf_counter() - t0))
    return out


def warm(workers: int | None = None, on_done: Callable[[str, float], None] | None = None) -> float:
    """Compile every kernel into numba's on-disk cache, on ``workers`` processes (all cores by
    default); ``on_done(name, seconds)`` is called as each finishes. Returns the wall seconds.

    With one worker everything compiles in this process.
    """
    workers = max(1, workers or os.cpu_count() or 1)
    t0 = time.perf_counter()
    for groups in (ROOT_GROUPS, ENTRY_GROUPS):
        if workers == 1:
            for g in groups:
                for name, sec in compile_group(g):
                    if on_done:
                        on_done(name, sec)
            continue
        with ProcessPoolExecutor(max_workers=min(workers, len(groups)), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(compile_group, g) for g in groups]
            for f in as_completed(futures):
                for name, sec in f.result():
                    if on_done:
                        on_done(name, sec)
    return time.perf_counter() - t0


def is_warm() -> bool:
    """Whether numba's cache already holds every entry point for this source tree (then nothing
    compiles: an entry point loaded from the cache carries its callees)."""
    try:
        dispatchers = _dispatchers()
        for name in ENTRY_POINTS:
            if not os.path.exists(dispatchers[name]._cache._cache_file._index_path):
                return False
        return True
    except (AttributeError, OSError):
        return False


def kernel_names() -> list[str]:
    """Every kernel :func:`warm` compiles, in its order."""
    return [n for groups in (ROOT_GROUPS, ENTRY_GROUPS) for g in groups for n in g]
