"""Property tests: the numba walker behind ``mmu.walk`` equals the plain-Python reference.

Random page tables are built so that most walks follow a valid present chain down to a 4K, 2M
or 1G leaf (the deep paths are what matter), with random flag bits, random reserved bits,
not-present entries, reused (aliased) table frames and unrelated noise words sprinkled in.
Every field of the result (fault, error code, pa, page size, refs) and the whole memory after
the walk must be identical.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference.paging import (
    LEVEL_SHIFT,
    TA_D,
    TA_G,
    TA_PCD,
    TA_PKEY_SHIFT,
    TA_PWT,
    TA_RW,
    TA_US,
    TA_XD,
    TwinMemory,
    ref_walk,
    table_index,
)

import mmu

P, RW, US, PS = 1, 2, 4, 0x80
XD = 1 << 63
MAXPHYADDRS = [36, 39, 40, 46, 48, 52]
# Low flag bits a present entry may carry at random: PWT, PCD, A, D/ignored(6), G/ignored(8), 11:9.
RANDOM_LOW = 0x0F78


def chance(draw, percent: int) -> bool:
    """True with about ``percent``% probability; shrinks towards False."""
    return draw(st.integers(0, 99)) >= 100 - percent


@st.composite
def walk_cases(draw):
    la57 = draw(st.booleans())
    m = draw(st.sampled_from(MAXPHYADDRS))
    top = 5 if la57 else 4
    max_pfn = (1 << (m - 12)) - 1

    # Control state.
    ctl = {
        "access": draw(st.sampled_from(["r", "w", "x"])),
        "user": draw(st.booleans()),
        "wp": draw(st.booleans()),
        "nxe": not chance(draw, 25),
        "smep": draw(st.booleans()),
        "smap": draw(st.booleans()),
        "ac": draw(st.booleans()),
        "la57": la57,
        "maxphyaddr": m,
        "pke": draw(st.booleans()),
    }
    ctl["pkru"] = draw(
        st.one_of(
            st.just(0),
            st.integers(0, (1 << 32) - 1),
            st.integers(0, 15).map(lambda k: 1 << (2 * k)),
            st.integers(0, 15).map(lambda k: 2 << (2 * k)),
        )
    )

    # Linear address: random indices, sign-extended; sometimes non-canonical.
    width = 57 if la57 else 48
    va = draw(st.integers(0, (1 << width) - 1))
    if va >> (width - 1):
        va |= ((1 << 64) - 1) & ~((1 << width) - 1)
    if chance(draw, 6):
        # non-canonical: flip the sign bit (bit 47 or 56) or any bit above it
        va ^= 1 << draw(st.one_of(st.just(width - 1), st.integers(width - 1, 63)))

    # Table frames: a small pool, so tables get reused (aliasing, self-references).
    pool = draw(st.lists(st.integers(1, min(max_pfn, 1 << 20)), min_size=1, max_size=top + 1))
    cr3_pfn = pool[0]
    cr3 = cr3_pfn << 12
    if chance(draw, 20):
        cr3 |= draw(st.integers(0, 0xFFF)) | (draw(st.booleans()) << 63)
        if m < 52:
            cr3 |= 1 << draw(st.integers(m, 51))  # not part of the root address (bits (M-1):12)

    writes: list[tuple[int, int]] = []
    # Noise: unrelated words in the pool frames (written first; the chain may overwrite them).
    for _ in range(draw(st.integers(0, 3))):
        pfn = draw(st.sampled_from(pool))
        writes.append(((pfn << 12) | draw(st.integers(0, 511)) << 3, draw(st.integers(0, (1 << 64) - 1))))

    table = cr3_pfn << 12
    for level in range(top, 0, -1):
        epa = table | table_index(va & ((1 << 64) - 1), level) << 3
        roll = draw(st.integers(0, 99))
        if roll >= 96:
            # not present: P=0 and any other bits
            writes.append((epa, draw(st.integers(0, (1 << 64) - 1)) & ~P))
            break
        if level == 3:
            leaf = chance(draw, 25)
        elif level == 2:
            leaf = chance(draw, 30)
        else:
            leaf = level == 1
        if leaf:
            size_bits = LEVEL_SHIFT[level]
            frame = draw(st.integers(0, max_pfn >> (size_bits - 12))) << size_bits
            if level in (2, 3) and chance(draw, 50):
                frame |= 1 << 12  # PAT of a large leaf
            next_table = None
        else:
            if chance(draw, 15):
                next_pfn = draw(st.sampled_from(pool))  # reuse a table frame: aliasing
            else:
                next_pfn = draw(st.integers(1, min(max_pfn, 1 << 20)))
            frame = next_pfn << 12
            next_table = frame
        entry = frame | P
        entry |= RW if not chance(draw, 15) else 0
        entry |= US if not chance(draw, 15) else 0
        entry |= draw(st.integers(0, RANDOM_LOW)) & RANDOM_LOW
        if leaf and level in (2, 3):
            entry |= PS
        elif level == 1:
            entry |= PS if chance(draw, 20) else 0  # PAT of a PTE
        if chance(draw, 40):
            entry |= draw(st.integers(0, 0x7F)) << 52  # ignored bits 58:52
        if leaf or chance(draw, 20):
            entry |= draw(st.integers(0, 15)) << 59  # protection key (ignored in non-leaf entries)
        if chance(draw, 10):
            entry |= XD
        if leaf and level in (2, 3) and chance(draw, 8):
            entry |= 1 << draw(st.integers(13, LEVEL_SHIFT[level] - 1))  # reserved low address bits
        if m < 52 and chance(draw, 3):
            entry |= 1 << draw(st.integers(m, 51))  # reserved: at or above MAXPHYADDR
        if roll >= 90:
            # a present entry with a reserved bit of some kind
            kinds = ["xd"]
            if m < 52:
                kinds.append("addr")
            if level >= 4:
                kinds.append("ps")
            if leaf and level in (2, 3):
                kinds.append("large")
            kind = draw(st.sampled_from(kinds))
            if kind == "xd":
                entry |= XD  # reserved only when NXE=0
            elif kind == "addr":
                entry |= 1 << draw(st.integers(m, 51))
            elif kind == "ps":
                entry |= PS
            else:
                entry |= 1 << draw(st.integers(13, LEVEL_SHIFT[level] - 1))
        writes.append((epa, entry))
        if next_table is None:
            break
        table = next_table
    return cr3, va, ctl, writes


def build(writes):
    twin = TwinMemory(mmu.PhysicalMemory(frames=16))
    for pa, value in writes:
        twin.write(pa, value)
    return twin


def expected_levels(r, top):
    return list(range(top, top - len(r.refs), -1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walk_cases())
def test_kernel_equals_reference(case):
    cr3, va, ctl, writes = case
    twin = build(writes)
    ref_mem = dict(twin.words)
    ref = ref_walk(ref_mem, cr3, va, **ctl)
    got = mmu.walk(twin.mem, cr3, va, **ctl)

    got_pa = None if got.pa is None else int(got.pa)
    assert (got.fault, int(got.error_code), got_pa, int(got.page_size), [int(x) for x in got.refs]) == (
        ref.fault,
        ref.error_code,
        ref.pa,
        ref.page_size,
        ref.refs,
    )
    # the whole memory: every word written, every frame backed, nothing else backed
    for pa, value in ref_mem.items():
        assert twin.mem.read_u64(pa) == value, hex(pa)
    assert twin.mem.frames_backed == len(twin.frames())
    for pfn in twin.frames():
        frame = twin.mem.read_frame(pfn)
        for i in range(512):
            assert int(frame[i]) == ref_mem.get((pfn << 12) | i << 3, 0)


def _attr_fields(attrs: int) -> dict[str, int]:
    return {
        "RW": attrs & TA_RW,
        "US": attrs & TA_US,
        "XD": attrs & TA_XD,
        "D": attrs & TA_D,
        "PWT": attrs & TA_PWT,
        "PCD": attrs & TA_PCD,
        "PKEY": (attrs >> TA_PKEY_SHIFT) & 0xF,
        "G": attrs & TA_G,
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walk_cases())
def test_levels_and_attrs_of_successful_walks(case):
    """Extras beyond the contract: ``levels`` and the combined ``attrs`` of a success."""
    cr3, va, ctl, writes = case
    twin = build(writes)
    ref = ref_walk(dict(twin.words), cr3, va, **ctl)
    got = mmu.walk(twin.mem, cr3, va, **ctl)
    top = 5 if ctl["la57"] else 4
    if hasattr(got, "levels"):
        assert [int(x) for x in got.levels] == expected_levels(ref, top)
    if ref.fault is None and hasattr(got, "attrs"):
        assert _attr_fields(int(got.attrs)) == _attr_fields(ref.attrs)


@settings(max_examples=100, deadline=None)
@given(walk_cases(), st.integers(1, 3))
def test_repeated_walks_are_idempotent(case, times):
    """A second identical walk finds A/D already set and changes nothing more."""
    cr3, va, ctl, writes = case
    twin = build(writes)
    ref_mem = dict(twin.words)
    first = ref_walk(ref_mem, cr3, va, **ctl)
    for _ in range(times):
        got = mmu.walk(twin.mem, cr3, va, **ctl)
        assert got.fault == first.fault and [int(x) for x in got.refs] == first.refs
    for pa, value in ref_mem.items():
        assert twin.mem.read_u64(pa) == value


def test_rights_exhaustively():
    """Every combination of access kind, mode and control bits, on pages with every U/S, R/W,
    XD and key-rights combination: kernel == reference (a complete truth table of SDM 4.6)."""
    import itertools

    # va 0x7f12_3456_7abc: PML4 idx 254, PDPT idx 72, PD idx 418, PT idx 359, offset 0xabc
    va = 0x7F12_3456_7ABC
    entries = [0x1000 + 254 * 8, 0x2000 + 72 * 8, 0x3000 + 418 * 8, 0x4000 + 359 * 8]
    nexts = [0x2000, 0x3000, 0x4000, 0x12_3456_7000]
    key = 7
    pkrus = [0, 1 << (2 * key), 2 << (2 * key), 3 << (2 * key)]
    checked = 0
    for us_at, rw_at, xd_at in itertools.product([None, 0, 3], [None, 1, 3], [None, 2]):
        twin = TwinMemory(mmu.PhysicalMemory(frames=16))
        for i, (epa, nxt) in enumerate(zip(entries, nexts, strict=True)):
            entry = nxt | P | RW | US | (key << 59 if i == 3 else 0)
            entry &= ~(US if us_at == i else 0) & ~(RW if rw_at == i else 0)
            entry |= XD if xd_at == i else 0
            twin.write(epa, entry)
        snapshot = dict(twin.words)
        for access, user, wp, nxe, smep, smap, ac, pke, pkru in itertools.product("rwx", *[(False, True)] * 7, pkrus):
            if not pke and pkru:
                continue
            ctl = dict(access=access, user=user, wp=wp, nxe=nxe, smep=smep, smap=smap, ac=ac, pke=pke, pkru=pkru)
            ref_mem = dict(snapshot)
            ref = ref_walk(ref_mem, 0x1000, va, **ctl)
            got = mmu.walk(twin.mem, 0x1000, va, **ctl)
            assert (got.fault, int(got.error_code), got.pa, list(got.refs)) == (
                ref.fault,
                ref.error_code,
                ref.pa,
                ref.refs,
            ), ctl
            assert all(twin.mem.read_u64(pa) == v for pa, v in ref_mem.items()), ctl
            for pa, v in snapshot.items():  # restore the A/D bits for the next combination
                twin.mem.write_u64(pa, v)
            checked += 1
    assert checked == 18 * 3 * 64 * 5
