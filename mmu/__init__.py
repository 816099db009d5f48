"""mmu: a memory-virtualization lab.

Public API (stable names; importing compiles nothing -- kernels compile on first call
and are cached on disk):

* :class:`PhysicalMemory` -- sparse 4 KiB frames over a 52-bit physical space.
* :func:`walk` -- the SDM-exact 1D x86-64 page walk.
* :func:`walk_nested` -- the 2D walk (guest tables through EPT or AMD NPT).
"""

from __future__ import annotations

from mmu.errors import MMUInputError, TraceFormatError
from mmu.hw.walk2d import NestedWalkResult, walk_nested
from mmu.memory import FrameAllocator, PhysicalMemory
from mmu.x86.walk import WalkResult, walk

__version__ = "0.1.0"

__all__ = [
    "FrameAllocator",
    "MMUInputError",
    "NestedWalkResult",
    "PhysicalMemory",
    "TraceFormatError",
    "WalkResult",
    "walk",
    "walk_nested",
    "__version__",
]
