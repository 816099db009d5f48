"""The machine's state as the kernels see it: named tuples of the parts' own state.

Numba types a ``NamedTuple`` of arrays as a tuple (reading a field by name compiles to the same
code as by position) and caches it to disk, so every entry point takes the whole machine as
one argument, :class:`MachineState`, and one signature serves every mode. Each field is the
state of the module that owns it and documents its layout:

========  ==========================================================================
field     owner
========  ==========================================================================
mem       :mod:`mmu.memory` (physical memory: the machine's natively, the host's in a VM)
halloc    :mod:`mmu.memory` (the host frame allocator; the machine's natively)
galloc    :mod:`mmu.memory` (the guest's frame allocator; ``halloc`` natively)
vm        :mod:`mmu.modes.vmm` (memslots and EPT/NPT; mode native natively)
hcache    :mod:`mmu.hw.ntlb` (nested TLB and host PSCs; a disabled one outside nested mode)
sh        :mod:`mmu.modes.shadow` (the shadow MMU; a dummy outside shadow mode)
osst      :mod:`mmu.guest.os` (the guest OS: processes, VMAs, copy-on-write counts)
tlb       :mod:`mmu.hw.tlb`
psc       :mod:`mmu.hw.pwc` (paging-structure caches)
ptc       :mod:`mmu.hw.cache` (the walk-line caches: L2-like, LLC-like)
cost      :mod:`mmu.hw.cost` (cycle costs)
stats     :mod:`mmu.stats` (counters, mutated)
cfg       :mod:`mmu.modes.native` (``C_*`` configuration words)
scratch   :class:`Scratch`
========  ==========================================================================
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class GuestMemory(NamedTuple):
    """What the guest OS's kernels need to reach guest memory (``gm``): the memory holding its
    contents, the host allocator and the VMM's view (to back a frame first), the counters, and
    the shadow MMU (whose traps the page-table hooks of :mod:`mmu.modes.hooks` run)."""

    mem: tuple
    halloc: tuple
    vm: tuple
    stats: np.ndarray
    sh: tuple


class Scratch(NamedTuple):
    """Work arrays of one translation (no state survives a call)."""

    trail: np.ndarray  # int64[MAX_LEVELS, TR_COLS]: the 1D walk's entries (mmu.x86.walk)
    gtrail: np.ndarray  # int64[MAX_LEVELS, GT_COLS]: the 2D walk's guest entries (mmu.x86.nested)
    htrail: np.ndarray  # int64[MAX_LEVELS, HT_COLS]: one host walk's entries (mmu.x86.ept)
    refs: np.ndarray  # int64[MAX_REFS, RF_COLS]: a 2D walk's references in issue order


class MachineState(NamedTuple):
    """One machine, as every entry-point kernel takes it (see the module docstring)."""

    mem: tuple
    halloc: tuple
    galloc: tuple
    vm: tuple
    hcache: tuple
    sh: tuple
    osst: tuple
    tlb: tuple
    psc: tuple
    ptc: tuple
    cost: np.ndarray
    stats: np.ndarray
    cfg: np.ndarray
    scratch: Scratch
