"""PhysicalMemory: sparse 4 KiB frames over a 52-bit physical space, and its frame allocator.

The reference model is a plain dict ``{pa: u64}`` (absent = 0).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmu

TOP = 1 << 52
U64_MAX = (1 << 64) - 1

aligned_pa = st.one_of(
    st.integers(0, TOP // 8 - 1).map(lambda q: q * 8),  # anywhere in the 52-bit space
    st.integers(0, 64 * 512 - 1).map(lambda q: 0x7_0000_0000 + q * 8),  # a cluster of 64 frames
    st.sampled_from([0, 8, 0xFF8, 0x1000, TOP - 8, TOP - 0x1000]),  # edges
)
u64 = st.one_of(st.integers(0, U64_MAX), st.sampled_from([0, 1, U64_MAX, 1 << 63]))


# --- untouched memory --------------------------------------------------------------------------


def test_untouched_frames_read_zero_and_back_nothing():
    mem = mmu.PhysicalMemory()
    for pa in (0, 8, 0x1000, 0xDEAD_BEE8, TOP - 8):
        assert mem.read_u64(pa) == 0
    assert not mem.read_frame(0x12345).any()
    assert not mem.is_backed(0) and not mem.is_backed(0x12345)
    assert mem.frames_backed == 0


def test_write_backs_exactly_one_frame():
    mem = mmu.PhysicalMemory()
    mem.write_u64(0x5008, 0)  # even a zero store backs the frame
    assert mem.frames_backed == 1 and mem.is_backed(5) and not mem.is_backed(4)
    for off in range(0, 0x1000, 8):
        mem.write_u64(0x5000 + off, off)
    assert mem.frames_backed == 1
    frame = mem.read_frame(5)
    assert [int(x) for x in frame] == list(range(0, 0x1000, 8))


# --- round trips against a dict model ----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), aligned_pa, u64), max_size=120),
    st.sampled_from([16, 64, 1024]),
)
def test_reads_and_writes_match_a_dict(ops, frames):
    mem = mmu.PhysicalMemory(frames=frames)
    model: dict[int, int] = {}
    for is_write, pa, value in ops:
        if is_write:
            mem.write_u64(pa, value)
            model[pa] = value
        else:
            assert mem.read_u64(pa) == model.get(pa, 0)
    for pa, value in model.items():
        assert mem.read_u64(pa) == value
    touched = {pa >> 12 for pa in model}
    assert mem.frames_backed == len(touched)
    for pfn in touched:
        assert mem.is_backed(pfn)
        frame = mem.read_frame(pfn)
        assert [int(x) for x in frame] == [model.get((pfn << 12) + 8 * i, 0) for i in range(512)]


@settings(max_examples=30, deadline=None)
@given(st.sets(st.integers(0, (TOP >> 12) - 1), min_size=17, max_size=300))
def test_growth_preserves_contents(pfns):
    # start with room for 16 frames: every later frame forces reserve() to grow and rehash
    mem = mmu.PhysicalMemory(frames=16)
    for pfn in pfns:
        mem.write_u64((pfn << 12) | 0x7F8, pfn ^ 0xA5A5_A5A5_A5A5_A5A5)
    assert mem.frames_backed == len(pfns)
    for pfn in pfns:
        assert mem.read_u64((pfn << 12) | 0x7F8) == pfn ^ 0xA5A5_A5A5_A5A5_A5A5
        assert mem.read_u64(pfn << 12) == 0


def test_memory_grows_with_frames_touched_not_address_span():
    mem = mmu.PhysicalMemory(frames=16)
    start = mem.nbytes
    mem.write_u64(0, 1)
    mem.write_u64(TOP - 8, 2)  # 4 PiB apart
    assert mem.frames_backed == 2
    assert mem.nbytes == start  # two frames fit in the initial storage
    # 1000 frames scattered over the whole space cost the same as 1000 adjacent ones
    sparse = mmu.PhysicalMemory(frames=16)
    dense = mmu.PhysicalMemory(frames=16)
    stride = (TOP >> 12) // 1000
    for i in range(1000):
        sparse.write_u64((i * stride) << 12, i)
        dense.write_u64(i << 12, i)
    assert sparse.frames_backed == dense.frames_backed == 1000
    assert sparse.nbytes == dense.nbytes
    assert sparse.nbytes < 1000 * 4096 * 3  # bounded by the frames touched, not the span


# --- frame allocator ---------------------------------------------------------------------------


def test_alloc_frame_returns_distinct_aligned_zeroed_frames():
    mem = mmu.PhysicalMemory()
    for pfn in range(1, 9):  # garbage in the frames the allocator will hand out
        mem.write_u64((pfn << 12) | 0x10, 0xBAD)
    pas = [mem.alloc_frame() for _ in range(100)]
    assert len(set(pas)) == 100
    assert all(pa % 4096 == 0 and 0 < pa < TOP for pa in pas)  # frame 0 is never handed out
    for pa in pas:
        assert not mem.read_frame(pa >> 12).any()
    assert mem.alloc.live == 100


def test_free_frame_recycles_and_realloc_zeroes():
    mem = mmu.PhysicalMemory()
    a, b, c = (mem.alloc_frame() for _ in range(3))
    mem.write_u64(b + 0x100, 0x1234)
    mem.free_frame(b)
    assert mem.alloc.live == 2
    again = mem.alloc_frame()
    assert again == b  # recycled before any new frame
    assert mem.read_u64(b + 0x100) == 0  # and zeroed again
    d = mem.alloc_frame()
    assert d not in (a, b, c)
    assert mem.alloc.peak == 4


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), max_size=200))
def test_allocator_matches_a_set_model(ops):
    mem = mmu.PhysicalMemory()
    live: list[int] = []
    freed: list[int] = []
    for do_alloc in ops:
        if do_alloc or not live:
            pa = mem.alloc_frame()
            assert pa not in live
            if freed:
                assert pa == freed.pop()  # LIFO reuse
            live.append(pa)
        else:
            pa = live.pop(len(live) // 2)
            mem.free_frame(pa)
            freed.append(pa)
    assert mem.alloc.live == len(live)


def test_allocator_exhaustion():
    mem = mmu.PhysicalMemory(alloc_base=1, alloc_limit=3)
    assert {mem.alloc_frame(), mem.alloc_frame()} == {0x1000, 0x2000}
    with pytest.raises(MemoryError):
        mem.alloc_frame()
    mem.free_frame(0x1000)
    assert mem.alloc_frame() == 0x1000


# --- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize("pa", [1, 4, 7, 0x1004, TOP - 4])
def test_unaligned_addresses_raise(pa):
    mem = mmu.PhysicalMemory()
    with pytest.raises(ValueError):
        mem.write_u64(pa, 1)
    with pytest.raises(ValueError):
        mem.read_u64(pa)
    assert mem.frames_backed == 0


@pytest.mark.parametrize("pa", [-8, TOP, TOP + 8, 1 << 63, 1 << 64])
def test_out_of_range_addresses_raise(pa):
    mem = mmu.PhysicalMemory()
    with pytest.raises(ValueError):
        mem.write_u64(pa, 1)
    with pytest.raises(ValueError):
        mem.read_u64(pa)
    assert mem.frames_backed == 0


@pytest.mark.parametrize("value", [1 << 64, (1 << 64) + 5, -1, -(1 << 63)])
def test_values_outside_u64_raise(value):
    mem = mmu.PhysicalMemory()
    with pytest.raises(ValueError):
        mem.write_u64(0x1000, value)
    assert mem.frames_backed == 0
    assert mem.read_u64(0x1000) == 0
