"""The guest kernel's handlers: page faults and OS events (mmap, munmap, fork, exit).

These run inside the kernels (replay, executor). Every page-table edit is a
:func:`~mmu.guest.os.guest_store`, every table comes from :func:`~mmu.guest.os.os_alloc_table`,
every TLB invalidation is the instruction a kernel would issue (:mod:`mmu.modes.cpuops`), so
each virtualization mode sees what its hardware would.

Two kinds of process:

* **with mappings** (``procs[row, P_VMAS] = 1``, after its first mmap event, or inherited by
  fork): its address space is its VMAs (``osst.vmas``), each with PROT_* bits. A fault outside a
  mapping or against its protection fails (the process gets SIGSEGV). PTE bits follow the
  protection: present, user, R/W = PROT_WRITE, XD = not PROT_EXEC (when EFER.NXE is on).
* **without mappings** (trace replay; traces carry no mmap events): the whole canonical user
  half is anonymous read/write memory, demand-paged as before.

Demand paging of a process with mappings fills the new frame as Linux does (``clear_page``,
or the program image for the executor's text and data), so the kernel touches the frame.
Fork shares every data frame copy-on-write: writable leaf entries become read-only on both
sides, each shared frame's reference count (``osst.rc``, an open-addressing table of frames
with more than one owner) goes up, and the parent's TLB is flushed. A write fault on such a
page copies the frame, or just restores R/W when the faulting process is its last owner.
munmap and exit clear the entries with guest stores and give frames whose count drops to
zero back to the guest allocator; exit also frees every page table (zeroing happens when a
frame is reused as a table through ``os_alloc_table``). munmap invalidates with INVLPG per
page when at most :data:`FLUSH_CEILING` pages were cleared, else with a full flush (Linux's
``tlb_single_page_flush_ceiling``); like Linux's mmu_gather, the range is that of the
entries actually cleared. After munmap the page tables whose whole span lies in the
unmapped gap (between the neighbouring mappings) are freed, as Linux's ``free_pgtables``;
their first pages join the flushed range (``pte_free_tlb``).

Transparent huge pages (``osst.ometa[O_THP]``: Linux's ``enabled`` = never, madvise or always,
without khugepaged): a not-present fault in an anonymous mapping that may have them (always:
every one, and processes without mappings; madvise: mappings made with ``PROT_THP``, this ISA's
``madvise(MADV_HUGEPAGE)``) that covers the whole aligned 2 MiB around the address, whose
page-directory entry is still empty, maps a fresh zeroed 2 MiB page (an aligned block of 512
guest frames) with one PDE; if no block is free it falls back to 4 KiB (counted). Fork shares
a huge page copy-on-write whole (each of its 512 frames gets one more owner); a write fault
reuses it when no frame has another owner, else splits the mapping into a table of 512
entries and copies the one 4 KiB page (Linux >= 5.8); munmap of part of a huge page splits it
first. Every split INVLPGs the huge page, as Linux's ``pmdp_invalidate`` flush. Program-image
mappings stay 4 KiB (they are file-backed in a real kernel).
"""

from __future__ import annotations

import numpy as np

from mmu._jit import inner, jit
from mmu.guest.isa import PROT_EXEC, PROT_THP, PROT_WRITE
from mmu.guest.os import (
    MAX_VMAS,
    O_CUR,
    O_HZERO_PFN,
    O_LEVELS,
    O_RC_USED,
    O_THP,
    O_ZERO_PFN,
    OS_OK,
    OS_OUT_OF_FRAMES,
    OS_TOO_MANY_PROCS,
    P_ALIVE,
    P_NVMAS,
    P_ROOT,
    P_VMAS,
    PTE_TABLE,
    PTE_USER_RW,
    THP_ALWAYS,
    THP_MADVISE,
    VMA_ANON,
    VMA_COLS,
    VMA_END,
    VMA_FILE,
    VMA_FIRST,
    VMA_IMAGE,
    VMA_PROT,
    guest_hpa,
    guest_read,
    guest_store,
    os_alloc_table,
    os_free_row,
    os_process,
    os_walk_allows,
)
from mmu.memory import (
    BLOCK_FRAMES,
    alloc_block,
    alloc_frame,
    alloc_room,
    free_block,
    free_frame,
    mem_find,
    mem_frame,
    mem_read,
    mem_room,
)
from mmu.modes.cpuops import cpu_flush_tlb, cpu_invlpg, switch_to
from mmu.modes.hooks import zero_guest_frame
from mmu.modes.native import C_CTL, C_PKRU
from mmu.modes.vmm import MODE_NATIVE, V_MODE, vm_hpa
from mmu.stats import (
    S_BAD_ACCESSES,
    S_DATA_FRAMES,
    S_GUEST_PF_NOT_PRESENT,
    S_GUEST_PF_PROTECTION,
    S_PT_FRAMES,
    S_PT_FREED,
    S_SPURIOUS_PF,
    S_THP_FALLBACKS,
    S_THP_MAPPED,
    S_THP_SPLITS,
    S_ZERO_HUGE_MAPS,
    S_ZERO_PAGE_COW,
    S_ZERO_PAGE_MAPS,
)
from mmu.trace.ops import MAP_FILE, OP_EXIT, OP_FORK, OP_MMAP, OP_MUNMAP
from mmu.x86.bits import ACC_FETCH, ACC_WRITE, CTL_NXE, PF_P, PTE_A, PTE_D, PTE_P, PTE_PS, PTE_RW, PTE_US, PTE_XD

OS_UNSUPPORTED = 9  # an OS event this guest kernel cannot perform (bad pid, pid already in use)
OS_NEED_ROOM = 10  # the event needs more memory or free-list room than is reserved; nothing changed
PF_FIXED = 0  # the handler fixed the mapping: run the access again
PF_SEGV = 1  # no mapping can be made: the access fails (the process gets SIGSEGV)

FLUSH_CEILING = 33  # munmap: INVLPG per page up to this many pages, else a full flush (Linux)
EV_PROT_SHIFT = 32  # os_event OP_MMAP: arg = pages | (prot | EV_PROT_GIVEN) << EV_PROT_SHIFT
EV_PROT_GIVEN = 16  # the record's prot is known (else the mapping is read/write/execute)
EV_MAP_FILE = MAP_FILE  # a private file mapping (the trace format's flag, same bit)
EV_PAGES_MASK = 0xFFFF_FFFF
PROT_ALL = 7

_U0 = np.uint64(0)
_ADDR = np.uint64(0x000F_FFFF_FFFF_F000)
_ADDR_2M = np.uint64(0x000F_FFFF_FFE0_0000)  # frame bits of a 2 MiB leaf (bit 12 is its PAT bit)
_FLAGS_4K_OF_2M = np.uint64(0xFFF0_0000_0000_0F7F)  # a 2 MiB leaf's flags a 4 KiB leaf keeps (not PS)
HUGE = np.int64(1) << 21
_NOT_RW = ~PTE_RW
_NOT_A = ~PTE_A
_YOUNG_DIRTY_RW = PTE_A | PTE_D | PTE_RW  # maybe_mkwrite(pte_mkdirty(pte_mkyoung(...)))

# Walk kinds of _walk_tree.
_W_COUNT = 0  # count tables and present leaves in the range
_W_UNMAP = 1  # clear present leaves in the range, drop their frames
_W_TEARDOWN = 2  # clear and free everything (exit)
_W_FORK = 3  # copy the tree into the child's root, sharing leaves copy-on-write
_W_FREE = 4  # free the empty tables whose span lies within [floor, ceiling) (after munmap)

# Walk stack columns (osst.oscratch): per level, the table, the child's table, next index, base va.
_K_TABLE = 0
_K_CHILD = 1
_K_INDEX = 2
_K_BASE = 3


@inner
def _user_half(va, levels):
    return va >= 0 and va < (np.int64(1) << (47 if levels == 4 else 56))


# --- reference counts of shared frames -----------------------------------------------------------


@inner
def _rc_slot(rc, gfn):
    """Slot of ``gfn`` in the table, or of the empty slot that ends its probe sequence."""
    mask = rc.shape[0] - 1
    i = np.int64((np.uint64(gfn) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)) & mask
    while rc[i, 0] != 0 and rc[i, 0] != gfn:
        i = (i + 1) & mask
    return i


@jit
def rc_count(osst, gfn):
    """Owners of data frame ``gfn`` (1 unless it is shared)."""
    rc = osst.rc
    i = _rc_slot(rc, gfn)
    return rc[i, 1] if rc[i, 0] == gfn else np.int64(1)


@inner
def _rc_inc(osst, gfn):
    rc = osst.rc
    i = _rc_slot(rc, gfn)
    if rc[i, 0] == gfn:
        rc[i, 1] += 1
    else:
        rc[i, 0] = gfn
        rc[i, 1] = 2
        osst.ometa[O_RC_USED] += 1


@inner
def _rc_dec(osst, gfn):
    """Drop one owner of ``gfn``; returns the owners left (0: free the frame)."""
    rc = osst.rc
    i = _rc_slot(rc, gfn)
    if rc[i, 0] != gfn:
        return np.int64(0)
    rc[i, 1] -= 1
    left = rc[i, 1]
    if left > 1:
        return left
    # One owner left: remove the entry (backward-shift deletion keeps probe chains intact).
    mask = rc.shape[0] - 1
    osst.ometa[O_RC_USED] -= 1
    j = i
    while True:
        rc[j, 0] = 0
        rc[j, 1] = 0
        k = j
        while True:
            k = (k + 1) & mask
            if rc[k, 0] == 0:
                return np.int64(1)
            home = np.int64((np.uint64(rc[k, 0]) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)) & mask
            # move k back to j unless its home lies cyclically in (j, k]
            if (j < k and (home <= j or home > k)) or (j > k and home <= j and home > k):
                rc[j, 0] = rc[k, 0]
                rc[j, 1] = rc[k, 1]
                j = k
                break


# --- mappings (VMAs) -----------------------------------------------------------------------------


@jit
def vma_index(osst, row, vpn):
    """Index of the mapping of process ``row`` that holds page ``vpn``, or -1."""
    vmas = osst.vmas
    lo = np.int64(0)
    hi = osst.procs[row, P_NVMAS]
    while lo < hi:
        mid = (lo + hi) >> 1
        if vmas[row, mid, VMA_END] <= vpn:
            lo = mid + 1
        else:
            hi = mid
    if lo < osst.procs[row, P_NVMAS] and vmas[row, lo, VMA_FIRST] <= vpn:
        return lo
    return np.int64(-1)


@jit
def os_prot_of(osst, row, vpn):
    """PROT_* bits of page ``vpn`` in process ``row``: 0 if unmapped; PROT_ALL without mappings."""
    if osst.procs[row, P_VMAS] == 0:
        return np.int64(PROT_ALL)
    i = vma_index(osst, row, vpn)
    return osst.vmas[row, i, VMA_PROT] if i >= 0 else np.int64(0)


@jit(inline="always")
def _vma_copy(vmas, dst, src):
    for c in range(VMA_COLS):
        vmas[dst, c] = vmas[src, c]


@inner
def _vma_remove(osst, row, first, end):
    """Remove pages ``[first, end)`` from the mappings. False if a split finds no free slot."""
    vmas = osst.vmas[row]
    n = osst.procs[row, P_NVMAS]
    for i in range(n):
        s = vmas[i, VMA_FIRST]
        e = vmas[i, VMA_END]
        if s < first and e > end:  # split in two: only one mapping can hold the whole range
            if n >= MAX_VMAS:
                return False
            for j in range(n, i + 1, -1):
                _vma_copy(vmas, j, j - 1)
            _vma_copy(vmas, i + 1, i)
            vmas[i, VMA_END] = first
            vmas[i + 1, VMA_FIRST] = end
            if vmas[i, VMA_IMAGE] >= 0:
                vmas[i + 1, VMA_IMAGE] = vmas[i, VMA_IMAGE] + (end - s)
            osst.procs[row, P_NVMAS] = n + 1
            return True
    w = 0
    for i in range(n):
        s = vmas[i, VMA_FIRST]
        e = vmas[i, VMA_END]
        if e <= first or s >= end:
            pass
        elif s >= first and e <= end:
            continue
        elif s < first:
            vmas[i, VMA_END] = first
        else:
            if vmas[i, VMA_IMAGE] >= 0:
                vmas[i, VMA_IMAGE] += end - s
            vmas[i, VMA_FIRST] = end
        if w != i:
            _vma_copy(vmas, w, i)
        w += 1
    osst.procs[row, P_NVMAS] = w
    return True


@inner
def _vma_add(osst, row, first, end, prot, image):
    """Map pages ``[first, end)`` (replacing what was there). False if the table is full."""
    if not _vma_remove(osst, row, first, end):
        return False
    vmas = osst.vmas[row]
    n = osst.procs[row, P_NVMAS]
    at = 0
    while at < n and vmas[at, VMA_FIRST] < first:
        at += 1
    # Anonymous neighbours with the same protection merge (first fit only sees pages).
    if image == VMA_ANON and at > 0:
        p = at - 1
        if vmas[p, VMA_END] == first and vmas[p, VMA_PROT] == prot and vmas[p, VMA_IMAGE] == VMA_ANON:
            vmas[p, VMA_END] = end
            if (
                at < n
                and vmas[at, VMA_FIRST] == end
                and vmas[at, VMA_PROT] == prot
                and vmas[at, VMA_IMAGE] == VMA_ANON
            ):
                vmas[p, VMA_END] = vmas[at, VMA_END]
                for j in range(at, n - 1):
                    _vma_copy(vmas, j, j + 1)
                osst.procs[row, P_NVMAS] = n - 1
            return True
    if image == VMA_ANON and at < n:
        if vmas[at, VMA_FIRST] == end and vmas[at, VMA_PROT] == prot and vmas[at, VMA_IMAGE] == VMA_ANON:
            vmas[at, VMA_FIRST] = first
            return True
    if n >= MAX_VMAS:
        return False
    for j in range(n, at, -1):
        _vma_copy(vmas, j, j - 1)
    vmas[at, VMA_FIRST] = first
    vmas[at, VMA_END] = end
    vmas[at, VMA_PROT] = prot
    vmas[at, VMA_IMAGE] = image
    osst.procs[row, P_NVMAS] = n + 1
    return True


@jit
def os_mmap_place(osst, row, npages, base_vpn, top_vpn):
    """First fit: the lowest page ``>= base_vpn`` starting ``npages`` unmapped pages below ``top_vpn``.

    Returns the page number, or -1 if there is no room.
    """
    vmas = osst.vmas
    cur = base_vpn
    for i in range(osst.procs[row, P_NVMAS] if osst.procs[row, P_VMAS] != 0 else 0):
        s = vmas[row, i, VMA_FIRST]
        e = vmas[row, i, VMA_END]
        if e <= cur:
            continue
        if s >= top_vpn or s - cur >= npages:
            break
        cur = e
    if cur + npages > top_vpn:
        return np.int64(-1)
    return cur


# --- data frames ---------------------------------------------------------------------------------


@inner
def _clear_frame(gm, gfn):
    """The kernel clears guest frame ``gfn`` (clear_page); its host address, or -1."""
    hpa = guest_hpa(gm, gfn << 12)
    if hpa < 0:
        return hpa
    zero_guest_frame(gm, gfn, hpa)  # under shadow paging, a recycled, still shadowed table traps
    return hpa


@inner
def _new_data_frame(gm, galloc, osst, stats, src_gfn, image_row):
    """A fresh data frame holding a copy of ``src_gfn`` (if >= 0), image row ``image_row`` (if
    >= 0) or zeros. Returns its frame number, or -1 when out of frames."""
    gfn = alloc_frame(galloc)
    if gfn < 0:
        return np.int64(-1)
    stats[S_DATA_FRAMES] += 1
    hpa = _clear_frame(gm, gfn)
    if hpa < 0:
        return np.int64(-1)
    mem = gm.mem
    data = mem.data
    if src_gfn >= 0:
        shpa = guest_hpa(gm, src_gfn << 12)
        if shpa < 0:
            return np.int64(-1)
        srow = mem_find(mem, shpa >> 12)
        if srow >= 0:
            drow = mem_frame(mem, hpa >> 12)
            for k in range(512):
                data[drow, k] = data[srow, k]
    elif image_row >= 0:
        image = osst.image
        if image_row < image.shape[0]:
            drow = mem_frame(mem, hpa >> 12)
            for k in range(512):
                data[drow, k] = image[image_row, k]
    return gfn


@inner
def _zero_page(gm, galloc, osst, stats):
    """Frame of the shared zero page (Linux's ``empty_zero_page``, ``my_zero_pfn``), allocated
    and cleared on first use; never freed, never reference-counted. -1 when out of frames."""
    ometa = osst.ometa
    if ometa[O_ZERO_PFN] >= 0:
        return ometa[O_ZERO_PFN]
    gfn = alloc_frame(galloc)
    if gfn < 0:
        return np.int64(-1)
    stats[S_DATA_FRAMES] += 1
    if _clear_frame(gm, gfn) < 0:
        return np.int64(-1)
    ometa[O_ZERO_PFN] = gfn
    return gfn


@inner
def _huge_zero_page(gm, galloc, osst, stats):
    """First frame of the huge zero page (``mm_get_huge_zero_folio``: one aligned 2 MiB block,
    allocated and cleared on first use, then kept). -1 if no aligned block is free, -2 when out
    of frames while clearing it."""
    ometa = osst.ometa
    if ometa[O_HZERO_PFN] >= 0:
        return ometa[O_HZERO_PFN]
    head = alloc_block(galloc)
    if head < 0:
        return np.int64(-1)
    stats[S_DATA_FRAMES] += BLOCK_FRAMES
    for k in range(BLOCK_FRAMES):
        if _clear_frame(gm, head + k) < 0:
            return np.int64(-2)
    ometa[O_HZERO_PFN] = head
    return head


@inner
def _is_zero_leaf(osst, gfn, huge):
    """True if a leaf mapping frame ``gfn`` (the first frame of a 2 MiB leaf if ``huge``) maps
    the zero page or the huge zero page, which no process owns."""
    if huge:
        return gfn == osst.ometa[O_HZERO_PFN]
    return gfn == osst.ometa[O_ZERO_PFN]


@inner
def _leaf_bits(prot, ctl):
    """Flag bits of a 4 KiB leaf entry for a mapping with PROT_* ``prot``."""
    bits = PTE_P | PTE_US
    if (prot & PROT_WRITE) != 0:
        bits |= PTE_RW
    if (prot & PROT_EXEC) == 0 and (ctl & CTL_NXE) != 0:
        bits |= PTE_XD
    return bits


@inner
def _slot(gm, galloc, stats, root, levels, va, build, at):
    """Guest-physical address of the level-``at`` entry of ``va`` (1: the 4 KiB leaf, 2: the PDE);
    builds missing tables above it if ``build``.

    Returns -1 if a table is missing (and not built), -2 when out of frames, -3 if a large
    page above level ``at`` maps ``va``.
    """
    table = root
    for level in range(levels, at, -1):
        epa = table + ((va >> (12 + 9 * (level - 1))) & 511) * 8
        e = guest_read(gm, epa)
        if (e & PTE_P) == _U0:
            if not build:
                return np.int64(-1)
            nt = os_alloc_table(gm, galloc)
            if nt < 0:
                return np.int64(-2)
            stats[S_PT_FRAMES] += 1
            if not guest_store(gm, epa, np.uint64(nt) | PTE_TABLE):
                return np.int64(-2)
            table = nt
        else:
            if level <= 3 and (e & PTE_PS) != _U0:
                return np.int64(-3)
            table = np.int64(e & _ADDR)
    return table + ((va >> (12 + 9 * (at - 1))) & 511) * 8


@inner
def _huge_shared(osst, head):
    """True if a 4 KiB frame of the 2 MiB page at frame ``head`` has another owner.

    A 2 MiB mapping owns each of its 512 frames once (fork counts them one by one), so a
    huge page split in one process and still mapped whole in another stays accounted for.
    """
    if osst.ometa[O_RC_USED] == 0:
        return False
    for k in range(BLOCK_FRAMES):
        if rc_count(osst, head + k) > 1:
            return True
    return False


@inner
def _drop_huge(galloc, osst, head):
    """A 2 MiB mapping of the page at frame ``head`` goes away: free what no one else maps."""
    if not _huge_shared(osst, head):
        free_block(galloc, head)
        return
    for k in range(BLOCK_FRAMES):
        if _rc_dec(osst, head + k) == 0:
            free_frame(galloc, head + k)


@inner
def _split_huge(gm, galloc, osst, stats, epa, e):
    """Replace the 2 MiB leaf ``e`` at guest-physical ``epa`` by a table of 512 4 KiB leaves with
    the same frames and flags (Linux's ``__split_huge_pmd``); a mapping of the huge zero page
    becomes 512 read-only, young entries of the 4 KiB zero page (``__split_huge_zero_page_pmd``).
    Returns the new table entry, or 0 when out of frames. The caller invalidates the huge
    page's TLB entry."""
    flags = e & _FLAGS_4K_OF_2M
    base = e & _ADDR_2M
    step = np.uint64(1 << 12)
    if _is_zero_leaf(osst, np.int64(base >> np.uint64(12)), True):
        z = _zero_page(gm, galloc, osst, stats)
        if z < 0:
            return _U0
        base = np.uint64(z << 12)
        step = _U0
        flags |= PTE_A
    nt = os_alloc_table(gm, galloc)
    if nt < 0:
        return _U0
    stats[S_PT_FRAMES] += 1
    stats[S_THP_SPLITS] += 1
    for k in range(512):
        if not guest_store(gm, nt + k * 8, base | (np.uint64(k) * step) | flags):
            return _U0
    te = np.uint64(nt) | PTE_TABLE
    if not guest_store(gm, epa, te):
        return _U0
    return te


@inner
def _thp_fault(gm, galloc, osst, stats, root, levels, va, bits, write):
    """Map the 2 MiB-aligned page around ``va`` with one PDE if that PDE is empty, as Linux's
    ``do_huge_pmd_anonymous_page``: a write gets a fresh, zeroed huge page (leaf flags
    ``bits | D | PS``; ``bits`` carries A and the mapping's R/W); a read or fetch gets the
    huge zero page, read-only (``transparent_hugepage/use_zero_page`` = 1, the default).

    Returns 1 (mapped), 0 (not here: a page table is already in place, or no aligned 2 MiB
    block is free -- map 4 KiB pages instead), -1 (out of frames).
    """
    pmd = _slot(gm, galloc, stats, root, levels, va, True, 2)
    if pmd == -2:
        return -1
    if pmd < 0 or (guest_read(gm, pmd) & PTE_P) != _U0:
        return 0
    if not write:
        head = _huge_zero_page(gm, galloc, osst, stats)
        if head == -2:
            return -1
        if head < 0:
            stats[S_THP_FALLBACKS] += 1
            return 0
        stats[S_ZERO_HUGE_MAPS] += 1
        if not guest_store(gm, pmd, np.uint64(head << 12) | (bits & _NOT_RW) | PTE_PS):
            return -1
        return 1
    head = alloc_block(galloc)
    if head < 0:
        stats[S_THP_FALLBACKS] += 1
        return 0
    stats[S_THP_MAPPED] += 1
    stats[S_DATA_FRAMES] += BLOCK_FRAMES
    for k in range(BLOCK_FRAMES):  # clear_huge_page
        if _clear_frame(gm, head + k) < 0:
            return -1
    if not guest_store(gm, pmd, np.uint64(head << 12) | bits | PTE_D | PTE_PS):
        return -1
    return 1


# --- the page-fault handler ----------------------------------------------------------------------


@inner
def _fault_vma(gm, galloc, osst, stats, cfg, row, va, access):
    """Not-present fault in a process with mappings: map the page if its mapping allows ``access``."""
    vpn = va >> 12
    i = vma_index(osst, row, vpn)
    prot = osst.vmas[row, i, VMA_PROT] if i >= 0 else np.int64(0)
    if (
        prot == 0
        or (access == ACC_WRITE and (prot & PROT_WRITE) == 0)
        or (access == ACC_FETCH and (prot & PROT_EXEC) == 0)
    ):
        stats[S_BAD_ACCESSES] += 1
        return OS_OK, PF_SEGV
    levels = osst.ometa[O_LEVELS]
    root = osst.procs[row, P_ROOT]
    img = osst.vmas[row, i, VMA_IMAGE]
    hvpn = (va & ~(HUGE - 1)) >> 12
    thp = osst.ometa[O_THP]
    write = access == ACC_WRITE
    bits = _leaf_bits(prot, cfg[C_CTL]) | PTE_A  # vm_page_prot carries _PAGE_ACCESSED
    if (
        (thp == THP_ALWAYS or (thp == THP_MADVISE and (prot & PROT_THP) != 0))
        and img == VMA_ANON
        and osst.vmas[row, i, VMA_FIRST] <= hvpn
        and hvpn + BLOCK_FRAMES <= osst.vmas[row, i, VMA_END]
    ):
        # an anonymous mapping covers the whole aligned 2 MiB around va: a transparent huge page
        r = _thp_fault(gm, galloc, osst, stats, root, levels, va, bits, write)
        if r < 0:
            return OS_OUT_OF_FRAMES, PF_SEGV
        if r > 0:
            return OS_OK, PF_FIXED
    slot = _slot(gm, galloc, stats, root, levels, va, True, 1)
    if slot == -2:
        return OS_OUT_OF_FRAMES, PF_SEGV
    if slot < 0:
        stats[S_BAD_ACCESSES] += 1
        return OS_OK, PF_SEGV
    if (guest_read(gm, slot) & PTE_P) != _U0:
        return OS_OK, PF_FIXED  # another path mapped it already (the TLB was stale)
    if img == VMA_ANON and not write:
        # do_anonymous_page, read or fetch: the zero page, read-only (pte_mkspecial)
        z = _zero_page(gm, galloc, osst, stats)
        if z < 0 or not guest_store(gm, slot, np.uint64(z << 12) | (bits & _NOT_RW)):
            return OS_OUT_OF_FRAMES, PF_SEGV
        stats[S_ZERO_PAGE_MAPS] += 1
        return OS_OK, PF_FIXED
    # do_anonymous_page on a write (a zeroed frame), or a page of the program image (filled
    # from it: finish_fault -> set_pte_range); young, and dirty on a write (pte_mkdirty)
    gfn = _new_data_frame(
        gm, galloc, osst, stats, np.int64(-1), img + (vpn - osst.vmas[row, i, VMA_FIRST]) if img >= 0 else np.int64(-1)
    )
    if gfn < 0:
        return OS_OUT_OF_FRAMES, PF_SEGV
    if not guest_store(gm, slot, np.uint64(gfn << 12) | bits | (PTE_D if write else _U0)):
        return OS_OUT_OF_FRAMES, PF_SEGV
    return OS_OK, PF_FIXED


@inner
def _fault_anon(gm, galloc, osst, stats, row, va, access):
    """Not-present fault in a process without mappings (all of the user half is anonymous
    read/write/execute memory): Linux's ``do_anonymous_page`` (or, with THP ``always``,
    ``do_huge_pmd_anonymous_page``). A write gets a fresh frame, young, dirty and writable (not
    cleared: a trace carries no data, so the frame takes no storage); a read gets the zero page,
    read-only and young. A fetch is taken as code, which is file-backed in a real process
    (``filemap_fault`` maps a page-cache page, never the zero page): a fresh frame, young and
    clean."""
    write = access == ACC_WRITE
    levels = osst.ometa[O_LEVELS]
    root = osst.procs[row, P_ROOT]
    bits = PTE_USER_RW | PTE_A
    if osst.ometa[O_THP] == THP_ALWAYS and access != ACC_FETCH:  # no THP for file-backed code
        r = _thp_fault(gm, galloc, osst, stats, root, levels, va, bits, write)
        if r < 0:
            return OS_OUT_OF_FRAMES, PF_SEGV
        if r > 0:
            return OS_OK, PF_FIXED
    slot = _slot(gm, galloc, stats, root, levels, va, True, 1)
    if slot == -2:
        return OS_OUT_OF_FRAMES, PF_SEGV
    if slot < 0:
        stats[S_BAD_ACCESSES] += 1  # a large page the guest built itself maps va
        return OS_OK, PF_SEGV
    if (guest_read(gm, slot) & PTE_P) != _U0:
        return OS_OK, PF_FIXED
    if write or access == ACC_FETCH:
        gfn = alloc_frame(galloc)
        if gfn < 0:
            return OS_OUT_OF_FRAMES, PF_SEGV
        stats[S_DATA_FRAMES] += 1
        leaf = np.uint64(gfn << 12) | bits | (PTE_D if write else _U0)
    else:
        gfn = _zero_page(gm, galloc, osst, stats)
        if gfn < 0:
            return OS_OUT_OF_FRAMES, PF_SEGV
        stats[S_ZERO_PAGE_MAPS] += 1
        leaf = np.uint64(gfn << 12) | (bits & _NOT_RW)
    if not guest_store(gm, slot, leaf):
        return OS_OUT_OF_FRAMES, PF_SEGV
    return OS_OK, PF_FIXED


@inner
def _cow(gm, galloc, osst, tlb, psc, stats, cfg, row, va):
    """Write fault on a copy-on-write page: copy it (or reuse it when last owner) and INVLPG.

    A 2 MiB page is reused whole when no frame of it has another owner; otherwise its mapping
    is split into 4 KiB entries and the one page is copied (Linux >= 5.8 ``do_huge_pmd_wp_page``).
    """
    root = osst.procs[row, P_ROOT]
    levels = osst.ometa[O_LEVELS]
    current = osst.ometa[O_CUR] == row
    slot = _slot(gm, galloc, stats, root, levels, va, False, 1)
    if slot == -3:
        pmd = _slot(gm, galloc, stats, root, levels, va, False, 2)
        if pmd < 0:
            return OS_OK, PF_SEGV  # a 1 GiB page: this kernel never maps one
        e = guest_read(gm, pmd)
        if (e & PTE_RW) != _U0:
            return OS_OK, PF_SEGV
        head = np.int64((e & _ADDR_2M) >> np.uint64(12))
        if not _is_zero_leaf(osst, head, True) and not _huge_shared(osst, head):
            # do_huge_pmd_wp_page reuses it: pmd_mkyoung, pmd_mkdirty, maybe_pmd_mkwrite
            if not guest_store(gm, pmd, e | _YOUNG_DIRTY_RW):
                return OS_OUT_OF_FRAMES, PF_SEGV
            if current:
                cpu_invlpg(gm, osst, tlb, psc, stats, cfg, va)
            return OS_OK, PF_FIXED
        # shared, or the huge zero page (Linux >= 5.8 falls back to 4 KiB for both)
        if _split_huge(gm, galloc, osst, stats, pmd, e) == _U0:
            return OS_OUT_OF_FRAMES, PF_SEGV
        if current:
            cpu_invlpg(gm, osst, tlb, psc, stats, cfg, va)
        slot = _slot(gm, galloc, stats, root, levels, va, False, 1)
    if slot < 0:
        return OS_OK, PF_SEGV
    pte = guest_read(gm, slot)
    if (pte & PTE_P) == _U0 or (pte & PTE_RW) != _U0:
        return OS_OK, PF_SEGV
    old = np.int64((pte & _ADDR) >> np.uint64(12))
    # wp_page_copy / wp_page_reuse: the new entry is young, dirty and writable
    if _is_zero_leaf(osst, old, False):
        # a write to the zero page: a fresh zeroed frame, no copy (alloc_zeroed_user_highpage)
        gfn = _new_data_frame(gm, galloc, osst, stats, np.int64(-1), np.int64(-1))
        if gfn < 0:
            return OS_OUT_OF_FRAMES, PF_SEGV
        stats[S_ZERO_PAGE_COW] += 1
        new = (pte & ~_ADDR) | np.uint64(gfn << 12) | _YOUNG_DIRTY_RW
    elif rc_count(osst, old) > 1:
        gfn = _new_data_frame(gm, galloc, osst, stats, old, np.int64(-1))
        if gfn < 0:
            return OS_OUT_OF_FRAMES, PF_SEGV
        _rc_dec(osst, old)
        new = (pte & ~_ADDR) | np.uint64(gfn << 12) | _YOUNG_DIRTY_RW
    else:
        new = pte | _YOUNG_DIRTY_RW
    if not guest_store(gm, slot, new):
        return OS_OUT_OF_FRAMES, PF_SEGV
    if current:
        cpu_invlpg(gm, osst, tlb, psc, stats, cfg, va)
    return OS_OK, PF_FIXED


@inner
def os_page_fault(gm, galloc, osst, tlb, psc, stats, cfg, row, va, access, code, ctl):
    """The guest kernel's #PF handler for user access ``va`` of process ``row``.

    Returns (status, outcome): status OS_OK or OS_OUT_OF_FRAMES; outcome PF_FIXED or PF_SEGV.

    Not-present fault (``handle_pte_fault`` -> ``do_anonymous_page`` / ``do_fault``): outside
    the user half it fails; a process without mappings gets a page anywhere in the user half; a
    process with mappings gets one only inside a mapping whose protection allows the access. An
    anonymous page is a fresh frame on a write (A, D, R/W) and the shared zero page on a read
    or fetch (A, read-only); a program-image page is a frame filled from the image (A, and D
    on a write). Protection fault: spurious (a stale, more restrictive TLB entry) if the
    tables allow the access now; a write to a read-only page of a writable (or unmapped-anon)
    region is copy-on-write (``do_wp_page``), the zero page included; anything else fails.
    Frames are counted in ``stats``.
    """
    procs = osst.procs
    levels = osst.ometa[O_LEVELS]
    if (code & PF_P) == 0:
        stats[S_GUEST_PF_NOT_PRESENT] += 1
        if not _user_half(va, levels):
            stats[S_BAD_ACCESSES] += 1
            return OS_OK, PF_SEGV
        if procs[row, P_VMAS] != 0:
            return _fault_vma(gm, galloc, osst, stats, cfg, row, va, access)
        return _fault_anon(gm, galloc, osst, stats, row, va, access)
    stats[S_GUEST_PF_PROTECTION] += 1
    if os_walk_allows(gm, procs[row, P_ROOT], levels, va, access, ctl, cfg[C_PKRU]):
        stats[S_SPURIOUS_PF] += 1
        return OS_OK, PF_FIXED
    if access == ACC_WRITE and _user_half(va, levels) and (os_prot_of(osst, row, va >> 12) & PROT_WRITE) != 0:
        st, outcome = _cow(gm, galloc, osst, tlb, psc, stats, cfg, row, va)
        if st != OS_OK or outcome == PF_FIXED:
            return st, outcome
    stats[S_BAD_ACCESSES] += 1
    return OS_OK, PF_SEGV


# --- page-table tree walks (munmap, exit, fork) ---------------------------------------------------


@inner
def _table_empty(gm, table):
    """True if no entry of the guest table at ``table`` is present."""
    for k in range(512):
        if (guest_read(gm, table + k * 8) & PTE_P) != _U0:
            return False
    return True


@inner
def _walk_tree(gm, galloc, osst, tlb, psc, stats, cfg, kind, root, levels, lo, hi, croot, floor, ceiling, out):
    """Visit the present entries of the tree at ``root`` that map ``[lo, hi)``.

    ``out`` (int64[4]) receives: [0] tables seen (below the root), [1] 4 KiB frames mapped by
    the present leaves (a 2 MiB leaf counts 512; the zero pages count 0), [2] lowest and [3] one past the highest
    address cleared (_W_UNMAP: leaves; _W_FREE: the first page of each freed table's span
    within the range, as Linux's ``pte_free_tlb`` adds it to the flush range). ``osst.oscratch[6]``
    receives [0] 4 KiB leaves cleared (_W_UNMAP). _W_UNMAP splits a 2 MiB leaf the range covers
    in part; _W_FREE frees each empty table (not the root) whose whole span lies within
    ``[floor, ceiling)``, bottom-up. Returns OS_OK, or OS_OUT_OF_FRAMES (a fork or a split that
    could not allocate).
    """
    stk = osst.oscratch
    aux = stk[6]
    aux[0] = 0
    out[0] = 0
    out[1] = 0
    out[2] = -1
    out[3] = -1
    lv = levels
    stk[lv, _K_TABLE] = root
    stk[lv, _K_CHILD] = croot
    stk[lv, _K_INDEX] = 0
    stk[lv, _K_BASE] = 0
    while True:
        i = stk[lv, _K_INDEX]
        span = np.int64(1) << (12 + 9 * (lv - 1))
        if i == 512:
            if lv == levels:
                break
            if kind == _W_FREE:
                table = stk[lv, _K_TABLE]
                base = stk[lv, _K_BASE]
                if base >= floor and base + 512 * span <= ceiling and _table_empty(gm, table):
                    guest_store(gm, stk[lv + 1, _K_TABLE] + (stk[lv + 1, _K_INDEX] - 1) * 8, _U0)
                    free_frame(galloc, table >> 12)
                    stats[S_PT_FREED] += 1
                    a = max(base, lo)
                    if out[2] < 0 or a < out[2]:
                        out[2] = a
                    out[3] = max(out[3], a + 4096)
            lv += 1
            if kind == _W_TEARDOWN:
                # every entry below is gone: clear the parent's entry, free the table
                epa = stk[lv, _K_TABLE] + (stk[lv, _K_INDEX] - 1) * 8
                child = np.int64(guest_read(gm, epa) & _ADDR)
                guest_store(gm, epa, _U0)
                free_frame(galloc, child >> 12)
            continue
        stk[lv, _K_INDEX] = i + 1
        va = stk[lv, _K_BASE] + i * span
        if va + span <= lo or va >= hi:
            continue
        epa = stk[lv, _K_TABLE] + i * 8
        e = guest_read(gm, epa)
        if (e & PTE_P) == _U0:
            continue
        huge = lv == 2 and (e & PTE_PS) != _U0
        if huge and kind == _W_UNMAP and (va < lo or va + span > hi):
            e = _split_huge(gm, galloc, osst, stats, epa, e)
            if e == _U0:
                return OS_OUT_OF_FRAMES
            cpu_invlpg(gm, osst, tlb, psc, stats, cfg, va)  # Linux flushes the huge entry when splitting
            huge = False
        if lv > 1 and (e & PTE_PS) == _U0:
            out[0] += 1
            nchild = np.int64(0)
            if kind == _W_FORK:
                nchild = os_alloc_table(gm, galloc)
                if nchild < 0:
                    return OS_OUT_OF_FRAMES
                stats[S_PT_FRAMES] += 1
                if not guest_store(gm, stk[lv, _K_CHILD] + i * 8, np.uint64(nchild) | PTE_TABLE):
                    return OS_OUT_OF_FRAMES
            lv -= 1
            stk[lv, _K_TABLE] = np.int64(e & _ADDR)
            stk[lv, _K_CHILD] = nchild
            stk[lv, _K_INDEX] = 0
            stk[lv, _K_BASE] = va
            continue
        # a leaf: 4 KiB, or 2 MiB (a transparent huge page); a 1 GiB leaf (only a guest's own
        # table edits make one) is treated as one frame
        gfn = np.int64(((e & _ADDR_2M) if huge else (e & _ADDR)) >> np.uint64(12))
        zero = _is_zero_leaf(osst, gfn, huge)
        if not zero:  # the zero pages are never freed nor counted: they need no room
            out[1] += BLOCK_FRAMES if huge else 1
        if kind == _W_COUNT or kind == _W_FREE:
            continue
        if kind == _W_FORK:
            # copy_present_pte / copy_huge_pmd: a writable private page is write-protected on
            # both sides; the child's entry is old (pte_mkold), the zero pages' too; the zero
            # pages are shared without a reference count (vm_normal_page is NULL for them)
            leaf = e
            if (e & PTE_RW) != _U0:
                leaf = e & _NOT_RW
                if not guest_store(gm, epa, leaf):
                    return OS_OUT_OF_FRAMES
            if not guest_store(gm, stk[lv, _K_CHILD] + i * 8, leaf & _NOT_A):
                return OS_OUT_OF_FRAMES
            if zero:
                continue
            if huge:
                for k in range(BLOCK_FRAMES):
                    _rc_inc(osst, gfn + k)
            else:
                _rc_inc(osst, gfn)
            continue
        guest_store(gm, epa, _U0)
        if zero:
            pass  # the zero pages are never freed
        elif huge:
            _drop_huge(galloc, osst, gfn)
        elif _rc_dec(osst, gfn) == 0:
            free_frame(galloc, gfn)
        if out[2] < 0:
            out[2] = va
        out[3] = va + span
        if not huge:
            aux[0] += 1
    return OS_OK


@inner
def _ensure_current(gm, galloc, osst, tlb, psc, stats, cfg, pid):
    """(status, row) of live process ``pid``, switched to if it is not the current one: OS_OK,
    OS_UNSUPPORTED for an unknown or exited pid, OS_OUT_OF_FRAMES if the switch failed."""
    row = osst.pid2slot[pid]
    if row < 0 or osst.procs[row, P_ALIVE] == 0:
        return OS_UNSUPPORTED, np.int64(-1)
    if osst.ometa[O_CUR] != row:
        if switch_to(gm, galloc, osst, tlb, psc, stats, cfg, pid) != OS_OK:
            return OS_OUT_OF_FRAMES, np.int64(-1)
    return OS_OK, row


@inner
def _ev_mmap(gm, galloc, osst, stats, pid, addr, arg):
    st, row, _created = os_process(osst, gm, galloc, pid)
    if st != OS_OK:
        return st
    pages = arg & EV_PAGES_MASK
    flags = arg >> EV_PROT_SHIFT
    prot = flags & 15 if (flags & EV_PROT_GIVEN) != 0 else np.int64(PROT_ALL)
    image = np.int64(VMA_FILE) if (flags & EV_MAP_FILE) != 0 else np.int64(VMA_ANON)
    first = addr >> 12
    procs = osst.procs
    if procs[row, P_VMAS] == 0:
        procs[row, P_VMAS] = 1
        procs[row, P_NVMAS] = 0
    if not _vma_add(osst, row, first, first + pages, prot, image):
        return OS_UNSUPPORTED
    return OS_OK


@inner
def _gap(osst, row, lo, hi, top):
    """(floor, ceiling) of the unmapped gap around ``[lo, hi)`` of process ``row``: the end of
    the mapping below and the start of the mapping above (Linux's ``free_pgtables`` bounds). A
    process without mappings treats the range itself as the gap."""
    if osst.procs[row, P_VMAS] == 0:
        return lo, hi
    vmas = osst.vmas
    floor = np.int64(0)
    ceiling = top
    for i in range(osst.procs[row, P_NVMAS]):
        s = vmas[row, i, VMA_FIRST] << 12
        e = vmas[row, i, VMA_END] << 12
        if e <= lo:
            floor = e
        elif s >= hi:
            ceiling = s
            break
    return floor, ceiling


@inner
def _ev_munmap(gm, galloc, osst, tlb, psc, stats, cfg, pid, addr, arg, out):
    st, row = _ensure_current(gm, galloc, osst, tlb, psc, stats, cfg, pid)
    if st != OS_OK:
        return st
    procs = osst.procs
    levels = osst.ometa[O_LEVELS]
    root = procs[row, P_ROOT]
    top = np.int64(1) << (12 + 9 * levels)
    lo = addr
    hi = addr + ((arg & EV_PAGES_MASK) << 12)
    z = np.int64(0)
    _walk_tree(gm, galloc, osst, tlb, psc, stats, cfg, _W_COUNT, root, levels, lo, hi, z, z, top, out)
    if not alloc_room(galloc, out[0] + out[1]):
        return OS_NEED_ROOM
    if procs[row, P_VMAS] != 0 and not _vma_remove(osst, row, lo >> 12, hi >> 12):
        return OS_UNSUPPORTED
    st = _walk_tree(gm, galloc, osst, tlb, psc, stats, cfg, _W_UNMAP, root, levels, lo, hi, z, z, top, out)
    if st != OS_OK:
        return st
    first, end, small = out[2], out[3], osst.oscratch[6][0]
    # Free the page tables the gap no longer needs (Linux: free_pgtables).
    floor, ceiling = _gap(osst, row, lo, hi, top)
    _walk_tree(gm, galloc, osst, tlb, psc, stats, cfg, _W_FREE, root, levels, lo, hi, z, floor, ceiling, out)
    if out[2] >= 0:
        first = out[2] if first < 0 else min(first, out[2])
        end = max(end, out[3])
    if first < 0:
        return OS_OK  # nothing was mapped: nothing to invalidate
    # Linux's flush of the gathered range: one INVLPG per page (per 2 MiB when only huge leaves
    # and tables went), or a full flush above the ceiling.
    stride = np.int64(4096) if small > 0 else HUGE
    n = (end - first + stride - 1) // stride
    if n <= FLUSH_CEILING:
        for k in range(n):
            cpu_invlpg(gm, osst, tlb, psc, stats, cfg, first + k * stride)
    elif not cpu_flush_tlb(gm, osst, tlb, psc, stats, cfg):
        return OS_OUT_OF_FRAMES
    return OS_OK


@inner
def _ev_fork(gm, galloc, osst, tlb, psc, stats, cfg, pid, child_pid, out):
    st, prow = _ensure_current(gm, galloc, osst, tlb, psc, stats, cfg, pid)
    if st != OS_OK:
        return st
    if child_pid <= 0 or child_pid >= osst.pid2slot.shape[0] or osst.pid2slot[child_pid] >= 0:
        return OS_UNSUPPORTED
    procs = osst.procs
    ometa = osst.ometa
    levels = ometa[O_LEVELS]
    top = np.int64(1) << (12 + 9 * levels)
    z = np.int64(0)
    _walk_tree(gm, galloc, osst, tlb, psc, stats, cfg, _W_COUNT, procs[prow, P_ROOT], levels, z, top, z, z, top, out)
    # Room first, so a fork either happens whole or not at all.
    if 4 * (ometa[O_RC_USED] + out[1]) > 3 * osst.rc.shape[0]:
        return OS_OUT_OF_FRAMES  # the copy-on-write counts are full: a limit of the model
    if not mem_room(gm.mem, 4 * out[0] + 64):
        return OS_NEED_ROOM
    if os_free_row(osst) < 0:
        return OS_TOO_MANY_PROCS
    st, crow, _created = os_process(osst, gm, galloc, child_pid)
    if st != OS_OK:
        return st
    procs[crow, P_VMAS] = procs[prow, P_VMAS]
    procs[crow, P_NVMAS] = procs[prow, P_NVMAS]
    vmas = osst.vmas
    for i in range(procs[prow, P_NVMAS]):
        for c in range(VMA_COLS):
            vmas[crow, i, c] = vmas[prow, i, c]
    st = _walk_tree(
        gm, galloc, osst, tlb, psc, stats, cfg, _W_FORK, procs[prow, P_ROOT], levels, z, top,
        procs[crow, P_ROOT], z, top, out,
    )  # fmt: skip
    if st != OS_OK:
        return st
    # The parent's writable entries became read-only: flush its TLB (Linux: flush_tlb_mm).
    if not cpu_flush_tlb(gm, osst, tlb, psc, stats, cfg):
        return OS_OUT_OF_FRAMES
    return OS_OK


@inner
def _ev_exit(gm, galloc, osst, tlb, psc, stats, cfg, pid, out):
    st, row = _ensure_current(gm, galloc, osst, tlb, psc, stats, cfg, pid)
    if st != OS_OK:
        return st
    procs = osst.procs
    levels = osst.ometa[O_LEVELS]
    top = np.int64(1) << (12 + 9 * levels)
    root = procs[row, P_ROOT]
    z = np.int64(0)
    _walk_tree(gm, galloc, osst, tlb, psc, stats, cfg, _W_COUNT, root, levels, z, top, z, z, top, out)
    if not alloc_room(galloc, out[0] + out[1] + 1):
        return OS_NEED_ROOM
    # Flush while the tables are still whole (Linux flushes the mm in tlb_finish_mmu).
    if not cpu_flush_tlb(gm, osst, tlb, psc, stats, cfg):
        return OS_OUT_OF_FRAMES
    _walk_tree(gm, galloc, osst, tlb, psc, stats, cfg, _W_TEARDOWN, root, levels, z, top, z, z, top, out)
    free_frame(galloc, root >> 12)
    procs[row, P_ALIVE] = 0
    procs[row, P_NVMAS] = 0
    osst.pid2slot[pid] = -1  # the pid may name a new process later
    return OS_OK


@inner
def os_event(gm, galloc, osst, tlb, psc, stats, cfg, op, pid, addr, arg):
    """An OS event record of a trace (OP_MMAP .. OP_EXIT; OP_SWITCH is the engine's).

    Parameters
    ----------
    op, pid, addr, arg : int64
        OP_MMAP: ``addr`` = first address (4 KiB aligned), ``arg`` = pages, or'ed with
        ``(prot | EV_PROT_GIVEN) << EV_PROT_SHIFT`` when the protection is known (else the
        mapping is read/write/execute), and ``EV_MAP_FILE`` for a private file mapping (faults
        fill a frame, never the zero page); creates the process if new. OP_MUNMAP: ``addr``,
        ``arg`` = pages. OP_FORK: ``pid`` = parent, ``arg`` = child pid (must be unused).
        OP_EXIT: ``pid`` exits. munmap, fork and exit act on ``pid``'s address space and
        switch to it first if it is not the current process.

    Returns an OS_* status: OS_OK; OS_OUT_OF_FRAMES (also when memory, the free list or the
    reference-count table lacks room: the event was not performed); OS_TOO_MANY_PROCS;
    OS_UNSUPPORTED (unknown op, unknown or dead pid, child pid in use, mapping table full).
    """
    out = osst.oscratch[7]
    if op == OP_MMAP:
        return _ev_mmap(gm, galloc, osst, stats, pid, addr, arg)
    if op == OP_MUNMAP:
        return _ev_munmap(gm, galloc, osst, tlb, psc, stats, cfg, pid, addr, arg, out)
    if op == OP_FORK:
        return _ev_fork(gm, galloc, osst, tlb, psc, stats, cfg, pid, arg, out)
    if op == OP_EXIT:
        return _ev_exit(gm, galloc, osst, tlb, psc, stats, cfg, pid, out)
    return OS_UNSUPPORTED


# --- the kernel reading user memory (write() buffers) ----------------------------------------------


@jit
def os_range_mapped(osst, row, first, last):
    """True if every page ``first..last`` (inclusive) of process ``row`` is mapped (prot != 0)."""
    if osst.procs[row, P_VMAS] == 0:
        return True
    vpn = first
    while vpn <= last:
        i = vma_index(osst, row, vpn)
        if i < 0 or osst.vmas[row, i, VMA_PROT] == 0:
            return False
        vpn = osst.vmas[row, i, VMA_END]
    return True


@jit
def os_peek_user(mem, vm, osst, row, va, out):
    """Copy ``out.shape[0]`` bytes at ``va`` of process ``row`` into ``out`` (uint8, mutated).

    A software walk of the guest tables with raw reads: no TLB, no A bits, no exits, so a
    write() costs the same in every mode and a recorded trace replays to the same stats.
    Pages not faulted in read as their program-image page, or zero.
    """
    native = vm.vmeta[V_MODE] == MODE_NATIVE
    levels = osst.ometa[O_LEVELS]
    root = osst.procs[row, P_ROOT]
    n = out.shape[0]
    k = 0
    while k < n:
        a = va + k
        table = root
        hpa = np.int64(-1)
        for level in range(levels, 0, -1):
            epa = table + ((a >> (12 + 9 * (level - 1))) & 511) * 8
            hepa = epa if native else vm_hpa(vm, epa)
            e = mem_read(mem, hepa) if hepa >= 0 else _U0
            if (e & PTE_P) == _U0:
                break
            table = np.int64(e & _ADDR)
            if level == 2 and (e & PTE_PS) != _U0:  # a 2 MiB page: its 4 KiB frame holding a
                table = np.int64(e & _ADDR_2M) + (a & (HUGE - 1) & ~np.int64(0xFFF))
                hpa = table if native else vm_hpa(vm, table)
                break
            if level == 1:
                hpa = table if native else vm_hpa(vm, table)
        img = np.int64(-1)
        if hpa < 0 and osst.procs[row, P_VMAS] != 0:
            # not faulted in yet: the program image's page, if the mapping has one
            i = vma_index(osst, row, a >> 12)
            if i >= 0 and osst.vmas[row, i, VMA_IMAGE] >= 0:
                img = osst.vmas[row, i, VMA_IMAGE] + ((a >> 12) - osst.vmas[row, i, VMA_FIRST])
                if img >= osst.image.shape[0]:
                    img = -1
        chunk = min(n - k, 4096 - (a & 4095))
        for j in range(chunk):
            b = a + j
            if hpa >= 0:
                w = mem_read(mem, hpa + (b & 4095))
            elif img >= 0:
                w = osst.image[img, (b & 4095) >> 3]
            else:
                w = _U0
            out[k + j] = np.uint8((w >> np.uint64(8 * (b & 7))) & np.uint64(255))
        k += chunk
    return True
