"""The guest kernel's handlers: page faults and OS events (mmap, munmap, fork, exit).

These run inside the kernels (replay, executor). Every page-table edit is a
:func:`~mmu.guest.os.guest_store`, every TLB invalidation the instruction a kernel would
issue (:mod:`mmu.modes.cpuops`), so each virtualization mode sees what its hardware would.
"""

from __future__ import annotations

import numpy as np

from mmu._jit import jit
from mmu.guest.os import (
    O_LEVELS,
    OS_BAD_ADDRESS,
    OS_OK,
    OS_OUT_OF_FRAMES,
    P_ROOT,
    os_map_anon,
    os_walk_allows,
)
from mmu.modes.native import C_PKRU
from mmu.stats import S_BAD_ACCESSES, S_GUEST_PF_NOT_PRESENT, S_GUEST_PF_PROTECTION, S_SPURIOUS_PF
from mmu.x86.bits import PF_P

OS_UNSUPPORTED = 9  # an OS event this guest kernel does not implement
PF_FIXED = 0  # the handler fixed the mapping: run the access again
PF_SEGV = 1  # no mapping can be made: the access fails (the process gets SIGSEGV)


@jit
def _user_half(va, levels):
    return va >= 0 and va < (np.int64(1) << (47 if levels == 4 else 56))


@jit
def os_page_fault(gm, galloc, osst, tlb, psc, stats, cfg, row, va, access, code, ctl, counts):
    """The guest kernel's #PF handler for user access ``va`` of process ``row``.

    Returns (status, outcome): status OS_OK or OS_OUT_OF_FRAMES; outcome PF_FIXED or PF_SEGV.
    Demand paging: a not-present fault anywhere in the user half maps a zero-filled page; a
    protection fault is spurious (a stale, more restrictive TLB entry) if the tables allow the
    access now, else fatal.
    """
    procs = osst[0]
    levels = osst[2][O_LEVELS]
    if (code & PF_P) == 0:
        stats[S_GUEST_PF_NOT_PRESENT] += 1
        if not _user_half(va, levels):
            stats[S_BAD_ACCESSES] += 1
            return OS_OK, PF_SEGV
        st = os_map_anon(gm, galloc, procs[row, P_ROOT], levels, va, counts)
        if st == OS_OUT_OF_FRAMES:
            return st, PF_SEGV
        if st == OS_BAD_ADDRESS:
            stats[S_BAD_ACCESSES] += 1
            return OS_OK, PF_SEGV
        return OS_OK, PF_FIXED
    stats[S_GUEST_PF_PROTECTION] += 1
    if not os_walk_allows(gm, procs[row, P_ROOT], levels, va, access, ctl, cfg[C_PKRU]):
        stats[S_BAD_ACCESSES] += 1
        return OS_OK, PF_SEGV
    stats[S_SPURIOUS_PF] += 1
    return OS_OK, PF_FIXED


@jit
def os_event(gm, galloc, osst, tlb, psc, stats, cfg, op, pid, addr, arg):
    """An OS event record of a trace (OP_MMAP .. OP_EXIT; OP_SWITCH is the engine's).

    Returns an OS_* status; OS_UNSUPPORTED for an event this kernel does not implement yet.
    """
    return OS_UNSUPPORTED
