"""The host side of a VM: guest-physical memory backed by host frames, and the EPT/NPT that maps it.

A hypervisor keeps two views of guest memory, as KVM does:

* the **memslot view** (software): ``gfn2hfn``, the host frame backing each guest frame, which
  the VMM (and this model's guest kernel stores) use; and
* the **hardware view**: the EPT (or AMD NPT) in host memory, which the 2D walker reads.

Both are filled together, lazily: the first touch of a guest frame -- by a guest kernel store
or by a hardware access that ends in an EPT violation -- is a VM exit after which the VMM
allocates a host page (4 KiB, 2 MiB or 1 GiB, ``host_shift``) and maps the whole aligned host
page in both views. With ``prepopulate`` the Python layer maps guest memory up front instead.

State ``vm = VMState(gfn2hfn, vmeta, hfn2gfn, large2gfn, elog)`` (a NamedTuple; other modules read
its fields by name, e.g. ``vm.vmeta[V_MODE]``):

``gfn2hfn``   int64[cap]   host frame of guest frame ``gfn``, or -1 (grows; the kernels ask)
``vmeta``     int64[V_LEN] mode, host root, levels, host page shift, npt flag, EPT A/D flag,
                           next frame of the large-page region, counters
``hfn2gfn``   int64[cap]   reverse map of 4 KiB backing frames (host frames below LARGE_BASE)
``large2gfn`` int64[cap]   first guest frame of each large backing page, by its index
``elog``      int64[n+1, 4] the guest events that reached the VMM, in order (see "Event log" below)

The reverse maps let the simulator name the guest-physical address of an access that hit in
a TLB holding gva -> hpa (the VMM's rmap; nothing architectural reads them).

Event log: row 0 is a header ``(kinds, count, in_fault, overflow)``: ``kinds`` a bit mask of the
``EV_*`` kinds to record (0: off, the default, and the array is one row), ``count`` rows used,
``in_fault`` 1 while the VMM handles a shadow page fault (a frame backed then is the fault's own
work, not the guest kernel touching a new frame), ``overflow`` 1 once an event found no room
(the Python layer raises). Rows ``1..count`` hold ``(kind, a, b, c)``:

=============  ===========================================================================
EV_ACCESS      va, access (0 read / 1 write / 2 fetch), 1 -- one translation attempt that
               missed the TLB fast path (:func:`mmu.modes.dispatch.translate_access`)
EV_GUEST_PF    va, #PF error code, 0 -- a page fault delivered to the guest
EV_PT_STORE    gpa, value (the 64 bits as int64), 0 -- a guest kernel store to guest memory
EV_ZERO_FRAME  gfn, 0, 0 -- the guest kernel clears a frame (clear_page)
EV_CR3_LOAD    root gpa, pcid, no_flush -- MOV to CR3
EV_CR3_READ    0, 0, 0 -- MOV from CR3
EV_INVLPG      va, 0, 0
EV_BACKED      gfn, 1 if during a shadow page fault, first gfn of the host page -- the host
               backs a guest frame (and its whole aligned host page)
EV_PREFAULT    va, access, 0 -- shadow ``--prefault``: the VMM fills the shadow entry for ``va``
               as the guest returns from the #PF it was given
=============  ===========================================================================

Host frames: 4 KiB backing pages and table frames come from the host memory's allocator;
2 MiB / 1 GiB backing pages from a separate aligned region starting at frame ``LARGE_BASE``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mmu._jit import inner, jit
from mmu.memory import A_NEXT, alloc_frame, mem_read, mem_write, mem_zero_frame

MODE_NATIVE = 0
MODE_NESTED = 1
MODE_SHADOW = 2
MODE_NAMES = {MODE_NATIVE: "native", MODE_NESTED: "nested", MODE_SHADOW: "shadow"}

V_MODE = 0
V_ROOT = 1  # hpa of the EPT / NPT root table
V_LEVELS = 2  # 4 or 5
V_HOST_SHIFT = 3  # 12, 21 or 30
V_NPT = 4
V_EPT_AD = 5
V_LARGE_NEXT = 6  # next free frame of the large-page region
V_TABLE_FRAMES = 7  # EPT/NPT table frames allocated
V_BACKED_PAGES = 8  # host pages backing guest memory
V_BACKED_FRAMES = 9  # 4 KiB frames of guest memory backed
V_LEN = 16

LARGE_BASE = 1 << 30  # frame number where 2M/1G backing pages start (4 TiB)

VM_OK = 0
VM_OUT_OF_FRAMES = 1
VM_NEED_ROOM = 2  # gfn2hfn too small: the Python layer grows it

_ADDR = np.uint64(0x000F_FFFF_FFFF_F000)
_EPT_TABLE = np.uint64(0x7 | (1 << 10))  # R, W, X, XU: the leaf alone decides the rights
_EPT_LEAF = np.uint64(0x7 | (6 << 3) | (1 << 10))  # R, W, X, WB memory type, XU
_NPT_TABLE = np.uint64(0x7)  # P, R/W, U/S
_NPT_LEAF = np.uint64(0x7)
_LARGE = np.uint64(1 << 7)  # EPT large page / PS


class VMState(NamedTuple):
    """The hypervisor's view of guest memory (layouts in the module docstring)."""

    gfn2hfn: np.ndarray
    vmeta: np.ndarray
    hfn2gfn: np.ndarray
    large2gfn: np.ndarray
    elog: np.ndarray


EV_ACCESS = 1
EV_GUEST_PF = 2
EV_PT_STORE = 3
EV_ZERO_FRAME = 4
EV_CR3_LOAD = 5
EV_CR3_READ = 6
EV_INVLPG = 7
EV_BACKED = 8
EV_PREFAULT = 9
EV_NAMES = {
    EV_ACCESS: "access", EV_GUEST_PF: "guest_pf", EV_PT_STORE: "pt_store", EV_ZERO_FRAME: "zero_frame",
    EV_CR3_LOAD: "cr3_load", EV_CR3_READ: "cr3_read", EV_INVLPG: "invlpg", EV_BACKED: "backed",
    EV_PREFAULT: "prefault",
}  # fmt: skip
EV_KINDS = 0  # elog[0, EV_KINDS]: bit mask (1 << kind) of the kinds recorded
EV_COUNT = 1  # elog[0, EV_COUNT]: rows used
EV_IN_FAULT = 2  # elog[0, EV_IN_FAULT]: 1 while the VMM handles a shadow page fault
EV_OVERFLOW = 3  # elog[0, EV_OVERFLOW]: 1 once an event found the log full


def make_event_log(capacity: int = 0, kinds: int = 0) -> np.ndarray:
    """An event log with room for ``capacity`` rows recording the kinds in the mask ``kinds``."""
    elog = np.zeros((capacity + 1, 4), dtype=np.int64)
    elog[0, EV_KINDS] = kinds
    return elog


@jit(inline="always")
def log_event(vm, kind, a, b, c):
    """Append ``(kind, a, b, c)`` to the VM's event log if it records ``kind`` (one load and a
    branch when it does not); a full log sets the overflow flag instead of dropping silently."""
    elog = vm.elog
    if (elog[0, EV_KINDS] >> kind) & 1 == 0:
        return
    k = elog[0, EV_COUNT] + 1
    if k >= elog.shape[0]:
        elog[0, EV_OVERFLOW] = 1
        return
    elog[k, 0] = kind
    elog[k, 1] = a
    elog[k, 2] = b
    elog[k, 3] = c
    elog[0, EV_COUNT] = k


def make_vm(mode: int, root: int = 0, levels: int = 4, host_shift: int = 12, npt: bool = False, ept_ad: bool = False):
    """An empty VM state (no guest frame backed)."""
    if host_shift not in (12, 21, 30):
        raise ValueError(f"host page shift must be 12, 21 or 30, not {host_shift}")
    vmeta = np.zeros(V_LEN, dtype=np.int64)
    vmeta[V_MODE] = mode
    vmeta[V_ROOT] = root
    vmeta[V_LEVELS] = levels
    vmeta[V_HOST_SHIFT] = host_shift
    vmeta[V_NPT] = 1 if npt else 0
    vmeta[V_EPT_AD] = 1 if ept_ad else 0
    vmeta[V_LARGE_NEXT] = LARGE_BASE
    empty = lambda: np.full(1024, -1, dtype=np.int64)  # noqa: E731
    return VMState(empty(), vmeta, empty(), empty(), make_event_log())


ROOM = 1 << 16  # frames of slack every map keeps (one record needs far fewer)


def _grown(a: np.ndarray, need: int) -> np.ndarray:
    size = a.shape[0]
    while size < need:
        size *= 2
    if size == a.shape[0]:
        return a
    new = np.full(size, -1, dtype=np.int64)
    new[: a.shape[0]] = a
    return new


def grow_vm(vm, guest_frames: int, host_frames: int):
    """A copy of ``vm`` whose maps have room for guest frames ``< guest_frames`` and host frames
    ``< host_frames`` (plus slack), as the allocators may hand them out next."""
    gfn2hfn, vmeta, hfn2gfn, large2gfn, elog = vm
    span_shift = int(vmeta[V_HOST_SHIFT]) - 12
    large_used = (int(vmeta[V_LARGE_NEXT]) - LARGE_BASE) >> span_shift
    span = 1 << span_shift  # backing a frame fills its whole aligned host page
    return VMState(
        _grown(gfn2hfn, int(guest_frames) + 2 * ROOM + span),
        vmeta,
        _grown(hfn2gfn, int(host_frames) + 2 * ROOM),
        _grown(large2gfn, large_used + (int(guest_frames) >> span_shift) + 2 * ROOM),
        elog,
    )


@inner
def vm_room(vm, galloc, halloc):
    """True if the maps have room for every frame the allocators may hand out during one record."""
    vmeta = vm.vmeta
    large_used = (vmeta[V_LARGE_NEXT] - LARGE_BASE) >> (vmeta[V_HOST_SHIFT] - 12)
    span = np.int64(1) << (vmeta[V_HOST_SHIFT] - 12)
    return (
        galloc.ameta[A_NEXT] + ROOM + span <= vm.gfn2hfn.shape[0]
        and halloc.ameta[A_NEXT] + ROOM <= vm.hfn2gfn.shape[0]
        and large_used + ROOM <= vm.large2gfn.shape[0]
    )


@inner
def host_table_map(hmem, halloc, vmeta, gpa, hpa, shift):
    """Map guest page ``gpa`` -> host page ``hpa`` of size ``1 << shift`` in the EPT/NPT.

    Creates missing tables (zeroed host frames). Returns VM_OK or VM_OUT_OF_FRAMES.
    """
    npt = vmeta[V_NPT] != 0
    table_flags = _NPT_TABLE if npt else _EPT_TABLE
    leaf_flags = _NPT_LEAF if npt else _EPT_LEAF
    leaf_level = (shift - 12) // 9 + 1
    table = vmeta[V_ROOT]
    for level in range(vmeta[V_LEVELS], leaf_level, -1):
        epa = table + ((gpa >> (12 + 9 * (level - 1))) & 511) * 8
        e = mem_read(hmem, epa)
        if (e & np.uint64(7)) == np.uint64(0):
            pfn = alloc_frame(halloc)
            if pfn < 0:
                return VM_OUT_OF_FRAMES
            mem_zero_frame(hmem, pfn)
            vmeta[V_TABLE_FRAMES] += 1
            mem_write(hmem, epa, np.uint64(pfn << 12) | table_flags)
            table = pfn << 12
        else:
            table = np.int64(e & _ADDR)
    epa = table + ((gpa >> shift) & 511) * 8
    leaf = np.uint64(hpa) | leaf_flags
    if leaf_level > 1:
        leaf |= _LARGE
    mem_write(hmem, epa, leaf)
    return VM_OK


@inner
def vm_back(hmem, halloc, vm, gfn):
    """Back guest frame ``gfn`` (and the rest of its aligned host page): the VMM's EPT-violation work.

    Returns VM_OK, VM_OUT_OF_FRAMES or VM_NEED_ROOM.
    """
    gfn2hfn = vm.gfn2hfn
    vmeta = vm.vmeta
    shift = vmeta[V_HOST_SHIFT]
    span = np.int64(1) << (shift - 12)
    first = gfn & ~(span - 1)
    if first + span > gfn2hfn.shape[0]:
        return VM_NEED_ROOM
    if span == 1:
        hfn = alloc_frame(halloc)
        if hfn < 0:
            return VM_OUT_OF_FRAMES
    else:
        hfn = vmeta[V_LARGE_NEXT]
        vmeta[V_LARGE_NEXT] = hfn + span
    if vmeta[V_MODE] != MODE_SHADOW:  # a shadowing VMM keeps the memslot view only
        st = host_table_map(hmem, halloc, vmeta, first << 12, hfn << 12, shift)
        if st != VM_OK:
            return st
    for k in range(span):
        gfn2hfn[first + k] = hfn + k
    if span == 1:
        vm.hfn2gfn[hfn] = first
    else:
        vm.large2gfn[(hfn - LARGE_BASE) >> (shift - 12)] = first
    vmeta[V_BACKED_PAGES] += 1
    vmeta[V_BACKED_FRAMES] += span
    log_event(vm, EV_BACKED, gfn, vm.elog[0, EV_IN_FAULT], first)
    return VM_OK


@jit
def vm_hpa(vm, gpa):
    """Host-physical address of ``gpa`` in the memslot view, or -1 if not backed."""
    gfn = gpa >> 12
    gfn2hfn = vm.gfn2hfn
    if gfn >= gfn2hfn.shape[0]:
        return np.int64(-1)
    hfn = gfn2hfn[gfn]
    if hfn < 0:
        return np.int64(-1)
    return (hfn << 12) | (gpa & 0xFFF)


@jit(inline="always")
def vm_gpa_of(vm, hpa):
    """Guest-physical address backed by host-physical ``hpa`` (the VMM's reverse map), or -1."""
    hfn = hpa >> 12
    if hfn < LARGE_BASE:
        if hfn >= vm.hfn2gfn.shape[0] or vm.hfn2gfn[hfn] < 0:
            return np.int64(-1)
        return (vm.hfn2gfn[hfn] << 12) | (hpa & 0xFFF)
    shift = vm.vmeta[V_HOST_SHIFT]
    idx = (hfn - LARGE_BASE) >> (shift - 12)
    if idx >= vm.large2gfn.shape[0] or vm.large2gfn[idx] < 0:
        return np.int64(-1)
    return (vm.large2gfn[idx] << 12) + (hpa - ((LARGE_BASE + (idx << (shift - 12))) << 12))


@jit
def vm_prepopulate(hmem, halloc, vm, frames):
    """Back guest frames ``[0, frames)`` up front (no EPT-violation exits for them later).

    Returns VM_OK, VM_OUT_OF_FRAMES or VM_NEED_ROOM (the caller grows the maps / memory first).
    """
    span = np.int64(1) << (vm.vmeta[V_HOST_SHIFT] - 12)
    gfn = np.int64(0)
    while gfn < frames:
        if vm.gfn2hfn[gfn] < 0:
            st = vm_back(hmem, halloc, vm, gfn)
            if st != VM_OK:
                return st
        gfn += span
    return VM_OK
