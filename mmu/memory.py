"""Sparse physical memory and a frame allocator, as arrays the kernels use directly.

A :class:`PhysicalMemory` models a 52-bit physical address space in 4 KiB frames.
Only frames that were written hold storage, so memory use grows with frames
touched, not with the size of the space. The state is a named tuple of arrays
(``mem = MemState(data, keys, vals, meta)``) that numba kernels take as one argument:

``data``  uint64[nslots, 512]
    Frame contents, one row per backed frame, as little-endian 64-bit words.
``keys``  int64[hcap]
    Open-addressing hash table (linear probing, power-of-two capacity):
    the physical frame number held in each bucket, or -1 when empty.
``vals``  int64[hcap]
    The row of ``data`` that backs ``keys[i]``.
``meta``  int64[META_LEN]
    ``meta[M_USED]`` rows in use, ``meta[M_SHIFT]`` = 64 - log2(hcap).

Reading a frame that was never written returns zeros and allocates nothing.
Kernels never grow the arrays (they cannot replace their caller's arrays);
instead a kernel that may write checks :func:`mem_room` before each event and
returns a status asking the Python layer to :meth:`PhysicalMemory.reserve`
room, then resumes. Frames are never dropped, so ``data`` rows are stable.

A :class:`FrameAllocator` hands out frame numbers (``alloc = AllocState(ameta, afree)``):
a bump pointer over ``[base, limit)`` plus a LIFO free list.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mmu._jit import inner, jit

M_USED = 0
M_SHIFT = 1
META_LEN = 4

A_NEXT = 0  # next never-used frame number
A_LIMIT = 1  # one past the last frame number
A_FREE_TOP = 2  # entries in the free stack
A_LIVE = 3  # frames currently allocated
A_PEAK = 4  # most frames allocated at once
A_BLOCKS = 5  # free 2 MiB blocks, stacked from the far end of the free array
AMETA_LEN = 8


class MemState(NamedTuple):
    """Physical memory as the kernels take it (layouts in the module docstring)."""

    data: np.ndarray
    keys: np.ndarray
    vals: np.ndarray
    meta: np.ndarray


class AllocState(NamedTuple):
    """A frame allocator as the kernels take it: ``ameta`` counters (``A_*``), ``afree`` stacks."""

    ameta: np.ndarray
    afree: np.ndarray


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MAX_PHYS_BITS = 52
FRAME_WORDS = 512


@inner
def _hash_slot(pfn, shift):
    return np.int64((np.uint64(pfn) * _GOLDEN) >> np.uint64(shift))


@jit
def mem_find(mem, pfn):
    """Row of ``data`` backing frame ``pfn``, or -1 if the frame was never written."""
    keys = mem.keys
    vals = mem.vals
    mask = keys.shape[0] - 1
    i = _hash_slot(pfn, mem.meta[M_SHIFT])
    while True:
        k = keys[i]
        if k == pfn:
            return vals[i]
        if k == -1:
            return -1
        i = (i + 1) & mask


@inner
def mem_frame(mem, pfn):
    """Row of ``data`` backing ``pfn``, creating a zeroed one if needed.

    The caller must have ensured room (:func:`mem_room`).
    """
    keys = mem.keys
    vals = mem.vals
    meta = mem.meta
    mask = keys.shape[0] - 1
    i = _hash_slot(pfn, meta[M_SHIFT])
    while True:
        k = keys[i]
        if k == pfn:
            return vals[i]
        if k == -1:
            row = meta[M_USED]
            meta[M_USED] = row + 1
            keys[i] = pfn
            vals[i] = row
            return row
        i = (i + 1) & mask


@inner
def mem_room(mem, frames):
    """True if ``frames`` more frames can be backed without growing (load factor <= 1/2)."""
    used = mem.meta[M_USED]
    return used + frames <= mem.data.shape[0] and 2 * (used + frames) <= mem.keys.shape[0]


@jit
def mem_read(mem, pa):
    """The uint64 at physical address ``pa`` (8-byte aligned; low 3 bits ignored)."""
    row = mem_find(mem, pa >> 12)
    if row < 0:
        return np.uint64(0)
    return mem.data[row, (pa >> 3) & 511]


@jit
def mem_write(mem, pa, value):
    """Store uint64 ``value`` at physical address ``pa`` (8-byte aligned). Needs room for one frame."""
    row = mem_frame(mem, pa >> 12)
    mem.data[row, (pa >> 3) & 511] = value


@jit
def mem_zero_frame(mem, pfn):
    """Zero frame ``pfn`` if it is backed (an unbacked frame already reads as zero)."""
    row = mem_find(mem, pfn)
    if row >= 0:
        mem.data[row, :] = np.uint64(0)


@jit
def _rehash(keys, vals, new_keys, new_vals, shift):
    mask = new_keys.shape[0] - 1
    for j in range(keys.shape[0]):
        k = keys[j]
        if k == -1:
            continue
        i = _hash_slot(k, shift)
        while new_keys[i] != -1:
            i = (i + 1) & mask
        new_keys[i] = k
        new_vals[i] = vals[j]


@jit
def _read_many(mem, pas, out):
    for i in range(pas.shape[0]):
        out[i] = mem_read(mem, pas[i])


@jit
def _write_many(mem, pas, values):
    for i in range(pas.shape[0]):
        mem_write(mem, pas[i], values[i])


def _check_pa(pa: int, what: str = "physical address") -> int:
    pa = int(pa)
    if pa < 0 or pa >= 1 << MAX_PHYS_BITS:
        raise ValueError(f"{what} {pa:#x} is outside the 52-bit physical address space")
    if pa & 7:
        raise ValueError(f"{what} {pa:#x} is not 8-byte aligned")
    return pa


class PhysicalMemory:
    """Sparse 4 KiB frames over a 52-bit physical address space.

    Parameters
    ----------
    frames : int
        Initial number of frames with storage (grows on demand).
    alloc_base, alloc_limit : int
        Frame numbers handed out by :meth:`alloc_frame`, ``[alloc_base, alloc_limit)``.
        Frame 0 is never handed out by default, so a zero entry never looks like a table.

    Attributes
    ----------
    state : tuple
        ``MemState(data, keys, vals, meta)``, the arrays kernels take (see the module docstring).
        Replaced (not mutated in shape) by :meth:`reserve`.
    alloc : FrameAllocator
        The frame allocator of this address space.
    """

    def __init__(self, frames: int = 1024, alloc_base: int = 1, alloc_limit: int = 1 << 40):
        frames = max(16, int(frames))
        hcap = 1 << max(5, (2 * frames - 1).bit_length())
        data = np.zeros((frames, FRAME_WORDS), dtype=np.uint64)
        keys = np.full(hcap, -1, dtype=np.int64)
        vals = np.full(hcap, -1, dtype=np.int64)
        meta = np.zeros(META_LEN, dtype=np.int64)
        meta[M_SHIFT] = 64 - (hcap.bit_length() - 1)
        self.state = MemState(data, keys, vals, meta)
        self.alloc = FrameAllocator(alloc_base, alloc_limit)

    # -- capacity -------------------------------------------------------------------------------
    @property
    def frames_backed(self) -> int:
        """Frames that hold storage (were written at least once)."""
        return int(self.state.meta[M_USED])

    @property
    def nbytes(self) -> int:
        """Bytes of host memory the model holds."""
        return int(sum(a.nbytes for a in self.state))

    def reserve(self, frames: int) -> None:
        """Make room for ``frames`` more backed frames (doubling, never shrinking)."""
        data, keys, vals, meta = self.state
        used = int(meta[M_USED])
        need = used + int(frames)
        if need <= data.shape[0] and 2 * need <= keys.shape[0]:
            return
        nslots = data.shape[0]
        while nslots < need:
            nslots *= 2
        if nslots != data.shape[0]:
            new_data = np.zeros((nslots, FRAME_WORDS), dtype=np.uint64)
            new_data[:used] = data[:used]
            data = new_data
        hcap = keys.shape[0]
        while hcap < 2 * nslots:
            hcap *= 2
        if hcap != keys.shape[0]:
            new_keys = np.full(hcap, -1, dtype=np.int64)
            new_vals = np.full(hcap, -1, dtype=np.int64)
            shift = 64 - (hcap.bit_length() - 1)
            _rehash(keys, vals, new_keys, new_vals, shift)
            meta = meta.copy()
            meta[M_SHIFT] = shift
            keys, vals = new_keys, new_vals
        self.state = MemState(data, keys, vals, meta)

    # -- access ---------------------------------------------------------------------------------
    def read_u64(self, pa: int) -> int:
        """The 64-bit word at physical address ``pa`` (8-byte aligned)."""
        pa = _check_pa(pa)
        out = np.zeros(1, dtype=np.uint64)
        _read_many(self.state, np.array([pa], dtype=np.int64), out)
        return int(out[0])

    def write_u64(self, pa: int, value: int) -> None:
        """Store the 64-bit ``value`` at physical address ``pa`` (8-byte aligned)."""
        pa = _check_pa(pa)
        value = int(value)
        if not 0 <= value < 1 << 64:
            raise ValueError(f"value {value:#x} does not fit in 64 bits")
        self.reserve(1)
        _write_many(self.state, np.array([pa], dtype=np.int64), np.array([value], dtype=np.uint64))

    def read_frame(self, pfn: int) -> np.ndarray:
        """A copy of frame ``pfn`` as uint64[512] (zeros if never written)."""
        out = np.zeros(FRAME_WORDS, dtype=np.uint64)
        pas = (int(pfn) << 12) + 8 * np.arange(FRAME_WORDS, dtype=np.int64)
        _read_many(self.state, pas, out)
        return out

    def is_backed(self, pfn: int) -> bool:
        """True if frame ``pfn`` holds storage."""
        return int(mem_find(self.state, np.int64(pfn))) >= 0

    # -- allocation -----------------------------------------------------------------------------
    def alloc_frame(self) -> int:
        """Allocate a frame, zero it, and return its physical address."""
        pfn = self.alloc.alloc()
        mem_zero_frame(self.state, np.int64(pfn))
        return pfn << 12

    def free_frame(self, pa: int) -> None:
        """Return the frame at ``pa`` to the allocator (its contents stay until reused)."""
        self.alloc.free(int(pa) >> 12)


# --- frame allocator ----------------------------------------------------------------------------


@jit
def alloc_frame(alloc):
    """Next free frame number, or -1 when the range is exhausted."""
    ameta = alloc.ameta
    free = alloc.afree
    top = ameta[A_FREE_TOP]
    if top > 0:
        pfn = free[top - 1]
        ameta[A_FREE_TOP] = top - 1
    else:
        pfn = ameta[A_NEXT]
        if pfn >= ameta[A_LIMIT]:
            return np.int64(-1)
        ameta[A_NEXT] = pfn + 1
    ameta[A_LIVE] += 1
    if ameta[A_LIVE] > ameta[A_PEAK]:
        ameta[A_PEAK] = ameta[A_LIVE]
    return pfn


@jit
def free_frame(alloc, pfn):
    """Push ``pfn`` on the free list. Returns False if the free list is full (caller grows it)."""
    ameta = alloc.ameta
    free = alloc.afree
    top = ameta[A_FREE_TOP]
    if top + ameta[A_BLOCKS] >= free.shape[0]:
        return False
    free[top] = pfn
    ameta[A_FREE_TOP] = top + 1
    ameta[A_LIVE] -= 1
    return True


@jit
def alloc_room(alloc, frees):
    """True if ``frees`` more frames (or blocks) can be freed without growing the free list."""
    return alloc.ameta[A_FREE_TOP] + alloc.ameta[A_BLOCKS] + frees <= alloc.afree.shape[0]


BLOCK_FRAMES = 512  # frames of a 2 MiB block
ALIGN_ROOM = BLOCK_FRAMES  # free-list room alloc_block may need for the frames it skips to align


@jit
def alloc_block(alloc):
    """First frame of a free, 2 MiB-aligned block of 512 frames, or -1 if there is none.

    A freed block is reused first; otherwise the bump pointer is aligned up to 512 frames (the
    frames skipped go on the free list, so they are not lost) and the block is taken after it.
    Needs free-list room for :data:`ALIGN_ROOM` frames (else -1: callers keep that room).
    """
    ameta = alloc.ameta
    free = alloc.afree
    nb = ameta[A_BLOCKS]
    if nb > 0:
        head = free[free.shape[0] - nb]
        ameta[A_BLOCKS] = nb - 1
    else:
        nxt = ameta[A_NEXT]
        head = (nxt + (BLOCK_FRAMES - 1)) & ~np.int64(BLOCK_FRAMES - 1)
        if head + BLOCK_FRAMES > ameta[A_LIMIT] or not alloc_room(alloc, head - nxt):
            return np.int64(-1)
        top = ameta[A_FREE_TOP]
        for pfn in range(head - 1, nxt - 1, -1):  # the lowest skipped frame is reused first
            free[top] = pfn
            top += 1
        ameta[A_FREE_TOP] = top
        ameta[A_NEXT] = head + BLOCK_FRAMES
    ameta[A_LIVE] += BLOCK_FRAMES
    if ameta[A_LIVE] > ameta[A_PEAK]:
        ameta[A_PEAK] = ameta[A_LIVE]
    return head


@jit
def free_block(alloc, head):
    """Return the block of 512 frames at ``head`` for reuse by :func:`alloc_block`. False if the
    free list is full (caller grows it)."""
    ameta = alloc.ameta
    free = alloc.afree
    nb = ameta[A_BLOCKS]
    if ameta[A_FREE_TOP] + nb >= free.shape[0]:
        return False
    free[free.shape[0] - 1 - nb] = head
    ameta[A_BLOCKS] = nb + 1
    ameta[A_LIVE] -= BLOCK_FRAMES
    return True


class FrameAllocator:
    """Frame numbers from ``[base, limit)``: a bump pointer plus a LIFO free list.

    ``state = AllocState(ameta, afree)``: int64[AMETA_LEN] counters and int64[n] holding two stacks: free
    frames from the front, free 2 MiB blocks (first frame numbers) from the back.
    """

    def __init__(self, base: int = 1, limit: int = 1 << 40, free_capacity: int = 1024):
        if not 0 <= base < limit <= 1 << 40:
            raise ValueError(f"bad frame range [{base:#x}, {limit:#x})")
        ameta = np.zeros(AMETA_LEN, dtype=np.int64)
        ameta[A_NEXT] = base
        ameta[A_LIMIT] = limit
        self.state = AllocState(ameta, np.zeros(max(16, free_capacity), dtype=np.int64))

    def reserve_frees(self, n: int) -> None:
        """Grow the free list so ``n`` more frames can be freed."""
        ameta, free = self.state
        top, blocks = int(ameta[A_FREE_TOP]), int(ameta[A_BLOCKS])
        need = top + blocks + int(n)
        if need <= free.shape[0]:
            return
        size = free.shape[0]
        while size < need:
            size *= 2
        new = np.zeros(size, dtype=np.int64)
        new[:top] = free[:top]
        if blocks:
            new[size - blocks :] = free[free.shape[0] - blocks :]
        self.state = AllocState(ameta, new)

    def alloc(self) -> int:
        pfn = int(alloc_frame(self.state))
        if pfn < 0:
            raise MemoryError("frame allocator exhausted")
        return pfn

    def free(self, pfn: int) -> None:
        self.reserve_frees(1)
        free_frame(self.state, np.int64(pfn))

    @property
    def live(self) -> int:
        return int(self.state.ameta[A_LIVE])

    @property
    def peak(self) -> int:
        return int(self.state.ameta[A_PEAK])
