"""The guest OS model: processes, their page tables, demand paging.

Every page-table edit is a store of a 64-bit entry to guest-physical memory,
made by :func:`guest_store` exactly where a kernel's ``set_pte`` would make it,
so each virtualization mode sees the edit the way its hardware would (native:
a plain store; nested: a store to the host page backing the guest frame, with an
EPT-violation exit on the frame's first touch; shadow: a write-protection trap).

State ``osst = OSState(procs, pid2slot, ometa, vmas, rc, image, oscratch)`` (a NamedTuple; other
modules read its fields by name, e.g. ``osst.ometa[O_CUR]``):

``procs``     int64[MAX_PROCS, P_COLS]  one row per process: pid, root table gpa, PCID,
                                          alive flag, times loaded into CR3
``pid2slot``  int64[65536]              process row of each 16-bit pid, or -1
``ometa``     int64[O_LEN]              current row, rows used so far, PCIDE flag, paging levels,
                                          shared frames in ``rc``, THP flag, free-row hint, the zero
                                          page's frame and the huge zero page's first frame (-1 until
                                          first used)
``vmas``      int64[MAX_PROCS, MAX_VMAS, VMA_COLS]  each process's mappings, sorted by address:
                                          first page, end page, PROT_* bits, image page (or
                                          VMA_ANON, VMA_FILE)
``rc``        int64[RC_SLOTS, 2]        reference counts of shared data frames (open addressing:
                                          frame number or 0, count >= 2); absent = one owner
``image``     uint64[n, 512]            contents of the program image pages a mapping may name
``oscratch``  int64[8, 4]               the guest kernel's page-table walk stack (rows 1..5),
                                          walk counters (rows 6, 7)

Demand paging follows Linux's ``do_anonymous_page`` (:mod:`mmu.guest.osops`): a
not-present write fault on a canonical user-half address maps a fresh 4 KiB frame with
Accessed, Dirty and R/W set; a read or fetch fault maps the shared zero page read-only with
Accessed set (``my_zero_pfn``: one guest frame, allocated on first use, never freed); the
first write to it is a copy-on-write fault (``wp_page_copy``). Missing intermediate tables
are allocated on the way down. With transparent huge pages (``ometa[O_THP]``) a fault whose
aligned 2 MiB has no page table yet may map a whole 2 MiB page instead (the huge zero page
on a read). A process without mappings (a plain access trace) does not have its fresh
frames cleared: traces carry no data, so those frames take no storage in
:class:`~mmu.memory.PhysicalMemory`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mmu._jit import inner, jit
from mmu.memory import alloc_frame, mem_read, mem_write
from mmu.modes.hooks import on_pt_store, zero_guest_frame
from mmu.modes.vmm import MODE_NATIVE, MODE_SHADOW, V_MODE, VM_OK, vm_back, vm_hpa
from mmu.stats import EXIT_EPT_VIOLATION, EXIT_HIDDEN_FAULT, S_EXIT_BASE, S_PROCESSES, S_PT_FRAMES, S_VM_EXITS
from mmu.x86.bits import CTL_NXE, TA_PKEY_SHIFT, TA_RW, TA_US, TA_XD
from mmu.x86.walk import access_fault

P_PID = 0
P_ROOT = 1
P_PCID = 2
P_ALIVE = 3
P_LOADS = 4
P_NVMAS = 5  # mappings in use in ``vmas[row]``
P_VMAS = 6  # 1: the process has mappings (mmap events); 0: the whole user half is anonymous memory
P_COLS = 8
MAX_PROCS = 4096

O_CUR = 0  # current process row, -1 before the first access
O_NPROCS = 1
O_PCIDE = 2
O_LEVELS = 3  # 4 or 5 paging levels
O_RC_USED = 4  # occupied slots of ``rc``
O_THP = 5  # transparent huge pages: THP_NEVER, THP_MADVISE or THP_ALWAYS
O_ROW_HINT = 6  # where the search for a free process row starts once every row has been used
O_ZERO_PFN = 7  # frame of the zero page (Linux's empty_zero_page), -1 until first mapped
O_HZERO_PFN = 8  # first frame of the huge zero page (an aligned 2 MiB block), -1 until first mapped
O_LEN = 10

THP_NEVER = 0  # Linux's /sys/kernel/mm/transparent_hugepage/enabled settings
THP_MADVISE = 1  # only mappings that ask (PROT_THP, as madvise(MADV_HUGEPAGE))
THP_ALWAYS = 2  # every anonymous mapping, and processes without mappings
THP_POLICIES = {"never": THP_NEVER, "madvise": THP_MADVISE, "always": THP_ALWAYS}

MAX_VMAS = 64  # mappings per process (adjacent anonymous mappings with the same prot merge)
VMA_FIRST = 0
VMA_END = 1
VMA_PROT = 2
VMA_IMAGE = 3  # row of ``image`` holding the mapping's first page, VMA_ANON or VMA_FILE
VMA_ANON = -1  # VMA_IMAGE of an anonymous mapping (zero page on reads, zeroed frames on writes)
VMA_FILE = -2  # VMA_IMAGE of a file mapping whose contents the model lacks (a replayed MAP_FILE): zeros
VMA_COLS = 4
RC_SLOTS = 1 << 20

PTE_USER_RW = np.uint64(0x7)  # P | R/W | U/S
PTE_TABLE = np.uint64(0x67)  # Linux's _PAGE_TABLE for an upper-level entry: P | R/W | U/S | A | D
_P = np.uint64(1)
_PS = np.uint64(0x80)
_ADDR = np.uint64(0x000F_FFFF_FFFF_F000)

# Status codes of the OS routines.
OS_OK = 0
OS_OUT_OF_FRAMES = 1
OS_BAD_ADDRESS = 2  # no mapping can be made (not a user-half canonical address)
OS_TOO_MANY_PROCS = 3


class OSState(NamedTuple):
    """The guest OS model's state (layouts in the module docstring)."""

    procs: np.ndarray
    pid2slot: np.ndarray
    ometa: np.ndarray
    vmas: np.ndarray
    rc: np.ndarray
    image: np.ndarray
    oscratch: np.ndarray


def make_os(pcide: bool = True, la57: bool = False, thp: int = THP_NEVER) -> OSState:
    """An empty guest OS state (no processes yet, no program image); ``thp``: a THP_* policy."""
    procs = np.zeros((MAX_PROCS, P_COLS), dtype=np.int64)
    pid2slot = np.full(1 << 16, -1, dtype=np.int64)
    ometa = np.zeros(O_LEN, dtype=np.int64)
    ometa[O_CUR] = -1
    ometa[O_PCIDE] = 1 if pcide else 0
    ometa[O_LEVELS] = 5 if la57 else 4
    ometa[O_THP] = thp
    ometa[O_ZERO_PFN] = -1
    ometa[O_HZERO_PFN] = -1
    # np.zeros leaves untouched pages uncommitted, so the big tables cost only what is used.
    vmas = np.zeros((MAX_PROCS, MAX_VMAS, VMA_COLS), dtype=np.int64)
    rc = np.zeros((RC_SLOTS, 2), dtype=np.int64)
    image = np.zeros((1, 512), dtype=np.uint64)
    oscratch = np.zeros((8, 4), dtype=np.int64)
    return OSState(procs, pid2slot, ometa, vmas, rc, image, oscratch)


# --- guest-physical memory as the guest kernel sees it ------------------------------------------
#
# ``gm = GuestMemory(mem, halloc, vm, stats, sh)`` (mmu.state): the memory holding guest-physical contents (the guest's
# own memory natively, host memory in a VM), the host frame allocator, the VM state
# (:mod:`mmu.modes.vmm`), the stats array (exits are counted there) and the shadow MMU
# (:mod:`mmu.modes.shadow`; a dummy outside shadow mode). Every guest-physical
# access of the guest kernel goes through :func:`guest_hpa`, so a mode sees it as its hardware
# would: natively it is the address itself; in a VM a first touch of a guest frame is an EPT
# violation exit after which the VMM backs the frame.


@inner
def guest_hpa(gm, gpa):
    """Where guest-physical ``gpa`` lives in ``gm.mem``, backing it first if needed; -1 if impossible."""
    vm = gm.vm
    if vm.vmeta[V_MODE] == MODE_NATIVE:
        return gpa
    hpa = vm_hpa(vm, gpa)
    if hpa >= 0:
        return hpa
    stats = gm.stats
    stats[S_VM_EXITS] += 1
    # nested: an EPT violation; shadow: a hidden fault on the kernel's mapping of the frame
    stats[S_EXIT_BASE + (EXIT_HIDDEN_FAULT if vm.vmeta[V_MODE] == MODE_SHADOW else EXIT_EPT_VIOLATION)] += 1
    if vm_back(gm.mem, gm.halloc, vm, gpa >> 12) != VM_OK:
        return np.int64(-1)
    return vm_hpa(vm, gpa)


@inner
def guest_read(gm, gpa):
    """A guest kernel load of the 64-bit word at guest-physical ``gpa`` (0 if it cannot be backed)."""
    hpa = guest_hpa(gm, gpa)
    if hpa < 0:
        return np.uint64(0)
    return mem_read(gm.mem, hpa)


@jit
def guest_store(gm, gpa, value):
    """A guest kernel store of a page-table entry to guest-physical ``gpa``. False if it could not land.

    Under shadow paging a store to a write-protected guest table traps to the VMM first.
    """
    hpa = guest_hpa(gm, gpa)
    if hpa < 0:
        return False
    on_pt_store(gm, gpa, value)  # the mode's hook: under shadow paging, a write-protected table traps
    mem_write(gm.mem, hpa, value)
    return True


@inner
def os_alloc_table(gm, galloc):
    """Allocate a guest frame for a page table and zero it (guest stores); its gpa, or -1."""
    gfn = alloc_frame(galloc)
    if gfn < 0:
        return np.int64(-1)
    hpa = guest_hpa(gm, gfn << 12)
    if hpa < 0:
        return np.int64(-1)
    zero_guest_frame(gm, gfn, hpa)  # under shadow paging, a recycled, still shadowed table traps
    return gfn << 12


@inner
def os_free_row(osst):
    """A process row a new process can take, or -1 if every row holds a live process.

    Rows are handed out in order; once all have been used, the rows of exited processes are
    reused (next fit from the last one taken), so a run may create any number of processes as
    long as at most ``MAX_PROCS`` are alive at once. A reused row keeps its PCID: the exit
    flushed that PCID's TLB and paging-structure-cache entries while it was current.
    """
    procs = osst.procs
    ometa = osst.ometa
    n = procs.shape[0]
    if ometa[O_NPROCS] < n:
        return ometa[O_NPROCS]
    start = ometa[O_ROW_HINT]
    for k in range(n):
        row = (start + k) % n
        # not the current row: after an exit CR3 still holds the dead process's root
        if procs[row, P_ALIVE] == 0 and row != ometa[O_CUR]:
            return np.int64(row)
    return np.int64(-1)


@inner
def os_process(osst, gm, galloc, pid):
    """Row of process ``pid``, creating it (with an empty root table) on first sight; a new
    process and its root table are counted in the stats (``gm.stats``).

    Returns (status, row, created).
    """
    procs = osst.procs
    pid2slot = osst.pid2slot
    ometa = osst.ometa
    row = pid2slot[pid]
    if row >= 0:
        return OS_OK, row, False
    row = os_free_row(osst)
    if row < 0:
        return OS_TOO_MANY_PROCS, -1, False
    root = os_alloc_table(gm, galloc)
    if root < 0:
        return OS_OUT_OF_FRAMES, -1, False
    if row == ometa[O_NPROCS]:
        ometa[O_NPROCS] = row + 1
    else:
        ometa[O_ROW_HINT] = (row + 1) % procs.shape[0]
    pid2slot[pid] = row
    procs[row, P_PID] = pid
    procs[row, P_ROOT] = root
    procs[row, P_PCID] = (row % 4095) + 1 if ometa[O_PCIDE] else 0
    procs[row, P_ALIVE] = 1
    procs[row, P_LOADS] = 0
    procs[row, P_NVMAS] = 0
    procs[row, P_VMAS] = 0
    stats = gm.stats
    stats[S_PROCESSES] += 1
    stats[S_PT_FRAMES] += 1  # its root table
    return OS_OK, row, True


@jit
def os_cr3(osst, row):
    """CR3 value of process ``row``: root table address with the PCID in bits 11:0."""
    procs = osst.procs
    return procs[row, P_ROOT] | procs[row, P_PCID]


@inner
def os_walk_allows(gm, root, levels, va, access, ctl, pkru):
    """The guest kernel's software check: do its page tables allow ``access`` to ``va`` now?

    Used to recognise a spurious #PF (a stale TLB entry was more restrictive than the tables).
    Reads entries through :func:`guest_read`; the model's tables never hold reserved bits.
    """
    table = root
    attrs = TA_RW | TA_US
    nxe = (ctl & CTL_NXE) != 0
    for level in range(levels, 0, -1):
        e = guest_read(gm, table + ((va >> (12 + 9 * (level - 1))) & 511) * 8)
        if (e & _P) == np.uint64(0):
            return False
        if (e & np.uint64(2)) == np.uint64(0):
            attrs &= ~TA_RW
        if (e & np.uint64(4)) == np.uint64(0):
            attrs &= ~TA_US
        if nxe and (e >> np.uint64(63)) != np.uint64(0):
            attrs |= TA_XD
        if level == 1 or (level <= 3 and (e & _PS) != np.uint64(0)):
            attrs |= np.int64((e >> np.uint64(59)) & np.uint64(15)) << TA_PKEY_SHIFT
            return access_fault(attrs, access, ctl, pkru) == 0
        table = np.int64(e & _ADDR)
    return False
