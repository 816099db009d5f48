"""Memory traces: the project's own binary format, importers and a recorder.

* :mod:`mmu.trace.format` -- the ``MMUTRACE`` file format (v2: CRC-32 per chunk; v1 read):
  :class:`TraceWriter`, :class:`TraceReader`, :func:`read_trace`.
* :mod:`mmu.trace.ops` -- :data:`RECORD_DTYPE`, op codes, PROT_* bits (what kernels import).
* importers -- :func:`import_lackey`, :func:`import_pin`, :func:`import_champsim`,
  :func:`import_npy`, each ``(input_path, output_path, **opts) -> ImportSummary``.
* :func:`record` -- run a program under Valgrind Lackey and write its trace.

Importing this package compiles nothing; the parsing kernels compile (or load from
numba's cache) on first use. See ``docs/trace-format.md``.
"""

from __future__ import annotations

from mmu.trace.champsim import CHAMPSIM_DTYPE, import_champsim
from mmu.trace.format import (
    MAGIC,
    OP_EXIT,
    OP_FETCH,
    OP_FORK,
    OP_MMAP,
    OP_MUNMAP,
    OP_NAMES,
    OP_READ,
    OP_SWITCH,
    OP_WRITE,
    PROT_EXEC,
    PROT_READ,
    PROT_THP,
    PROT_WRITE,
    RECORD_DTYPE,
    VERSION,
    ImportSummary,
    TraceReader,
    TraceWriter,
    is_access,
    read_trace,
    write_trace,
)
from mmu.trace.lackey import import_lackey
from mmu.trace.npy import import_npy
from mmu.trace.pin import import_pin
from mmu.trace.record import record

__all__ = [
    "CHAMPSIM_DTYPE",
    "MAGIC",
    "OP_EXIT",
    "OP_FETCH",
    "OP_FORK",
    "OP_MMAP",
    "OP_MUNMAP",
    "OP_NAMES",
    "OP_READ",
    "OP_SWITCH",
    "OP_WRITE",
    "PROT_EXEC",
    "PROT_READ",
    "PROT_THP",
    "PROT_WRITE",
    "RECORD_DTYPE",
    "VERSION",
    "ImportSummary",
    "TraceReader",
    "TraceWriter",
    "import_champsim",
    "import_lackey",
    "import_npy",
    "import_pin",
    "is_access",
    "read_trace",
    "record",
    "write_trace",
]
