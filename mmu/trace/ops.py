"""The trace record layout and op codes: what compiled kernels need of the trace format.

Kept apart from :mod:`mmu.trace.format` (reader, writer, checksums) on purpose: numba's
cache key of a kernel covers every ``mmu`` file it imports (see :mod:`mmu._jit`), so
kernels import their constants from here and an edit of the file format code recompiles
nothing. :mod:`mmu.trace.format` re-exports every name. Imports only numpy.

Records (``RECORD_DTYPE``, 16 bytes)::

    addr  <u8   virtual address (accesses), start address (mmap/munmap), else 0
    arg   <u4   access size in bytes 1..4096; pages for mmap/munmap; child pid for fork
    pid   <u2   process issuing the access / switched to / forking (parent) / exiting
    op    u1    OP_* code
    flags u1    PROT_* bits for mmap, plus MAP_FILE for a file-backed mapping; 0 otherwise (reserved)
"""

from __future__ import annotations

import numpy as np

RECORD_DTYPE = np.dtype([("addr", "<u8"), ("arg", "<u4"), ("pid", "<u2"), ("op", "u1"), ("flags", "u1")])
RECORD_SIZE = RECORD_DTYPE.itemsize  # 16

# Accesses: addr = virtual address, arg = size in bytes (1..MAX_ACCESS_SIZE).
OP_READ = 0
OP_WRITE = 1
OP_FETCH = 2
# OS events.
OP_SWITCH = 16  # pid = process switched to
OP_MMAP = 17  # addr = start (4 KiB aligned), arg = length in 4 KiB pages, flags = PROT_* bits
OP_MUNMAP = 18  # addr, arg as for OP_MMAP; flags = 0
OP_FORK = 19  # pid = parent, arg = child pid
OP_EXIT = 20  # pid = exiting process

PROT_READ = 1
PROT_WRITE = 2
PROT_EXEC = 4
PROT_THP = 8  # transparent huge pages allowed in this mapping
PROT_MASK = PROT_READ | PROT_WRITE | PROT_EXEC | PROT_THP
# mmap of a private file mapping (a program's text and data): its pages are filled from the file
# (contents not in the trace: zeros) on every fault, never mapped to the zero page.
MAP_FILE = 32
MMAP_FLAGS = PROT_MASK | MAP_FILE

MAX_ACCESS_SIZE = 4096
PAGE_SIZE = 4096

OP_NAMES: dict[int, str] = {
    OP_READ: "read",
    OP_WRITE: "write",
    OP_FETCH: "fetch",
    OP_SWITCH: "switch",
    OP_MMAP: "mmap",
    OP_MUNMAP: "munmap",
    OP_FORK: "fork",
    OP_EXIT: "exit",
}


def is_access(op):
    """True where ``op`` is a memory access (read, write, fetch).

    Parameters
    ----------
    op : int or ndarray of integer
        Op code(s); an array gives a boolean array of the same shape.
    """
    return op <= OP_FETCH
