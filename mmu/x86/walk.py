"""The 1D x86-64 page walk (Intel SDM vol. 3A, sections 4.5-4.8), exact to the bit.

Kernels
-------
:func:`walk_core` walks from any table at any level (the root, or a table a
paging-structure cache pointed to), checks reserved bits level by level,
combines rights (R/W and U/S ANDed, XD ORed, SDM 4.10.2.2), applies the access
rules of SDM 4.6 (CR0.WP, EFER.NXE, CR4.SMEP, CR4.SMAP with EFLAGS.AC,
protection keys with PKRU), builds the #PF error code of SDM 4.7, and on
success sets A on every entry it read and D on the leaf of a write (SDM 4.8).

Simulator choice (documented in docs/design.md): A/D bits are written only when
the translation succeeds, so a faulting access leaves memory unchanged. The SDM
permits this: it requires A to be set on entries used for a translation that is
cached or completes, and D only for writes that complete.

:func:`walk` is the Python wrapper named in ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmu._jit import inner, jit
from mmu.memory import PhysicalMemory, mem_read, mem_write
from mmu.x86.bits import (
    ACC_FETCH,
    ACC_READ,
    ACC_WRITE,
    CTL_AC,
    CTL_LA57,
    CTL_NXE,
    CTL_PGE,
    CTL_PKE,
    CTL_SMAP,
    CTL_SMEP,
    CTL_USER,
    CTL_WP,
    PF_I,
    PF_P,
    PF_PK,
    PF_RSVD,
    PF_U,
    PF_W,
    TA_D,
    TA_G,
    TA_PCD,
    TA_PKEY_SHIFT,
    TA_PWT,
    TA_RW,
    TA_US,
    TA_XD,
    WALK_GP,
    WALK_OK,
    WALK_PF,
)

# Columns of the ``trail`` scratch array a walk fills, one row per entry read.
TR_ENTRY_PA = 0  # physical address of the entry
TR_LEVEL = 1  # level of the entry (5 = PML5E, 4 = PML4E, 3 = PDPTE, 2 = PDE, 1 = PTE)
TR_NEXT = 2  # table (or page frame) the entry points to
TR_ATTRS = 3  # combined attrs from the start of the walk down to this entry
TR_COLS = 4
MAX_LEVELS = 5

_U0 = np.uint64(0)
_P = np.uint64(1)
_RW = np.uint64(2)
_US = np.uint64(4)
_PWT = np.uint64(8)
_PCD = np.uint64(16)
_A = np.uint64(32)
_D = np.uint64(64)
_PS = np.uint64(128)
_G = np.uint64(256)
_XD = np.uint64(1 << 63)
_LOW52 = np.uint64((1 << 52) - 1)
_RSVD_1G = np.uint64(((1 << 30) - 1) & ~((1 << 13) - 1))  # bits 29:13
_RSVD_2M = np.uint64(((1 << 21) - 1) & ~((1 << 13) - 1))  # bits 20:13


@jit
def is_canonical(va, la57):
    """True if int64 ``va`` is canonical: bits 63:47 (63:56 with LA57) all equal."""
    top = va >> (56 if la57 else 47)
    return top == 0 or top == -1


@jit(inline="always")
def access_fault(attrs, access, ctl, pkru):
    """#PF error code for ``access`` through a translation with combined ``attrs``, or 0 if allowed.

    Parameters
    ----------
    attrs : int
        TA_* bits: R/W and U/S ANDed over all levels, XD ORed (only set when NXE=1),
        protection key of the leaf.
    access : int
        ACC_READ, ACC_WRITE or ACC_FETCH.
    ctl : int
        CTL_* bits (CPL=3, CR0.WP, EFER.NXE, CR4.SMEP/SMAP/PKE, EFLAGS.AC).
    pkru : int
        The PKRU register (used when CTL_PKE is set).
    """
    user = (ctl & CTL_USER) != 0
    wp = (ctl & CTL_WP) != 0
    nxe = (ctl & CTL_NXE) != 0
    user_addr = (attrs & TA_US) != 0
    writable = (attrs & TA_RW) != 0
    xd = nxe and (attrs & TA_XD) != 0
    ok = True
    if user:
        # SDM 4.6.1, user-mode access: only user-mode addresses; writes need R/W=1 everywhere.
        if not user_addr:
            ok = False
        elif access == ACC_WRITE and not writable:
            ok = False
        elif access == ACC_FETCH and xd:
            ok = False
    elif access == ACC_FETCH:
        # Supervisor fetch: never from a user-mode address with SMEP; XD with NXE.
        if user_addr and (ctl & CTL_SMEP) != 0:
            ok = False
        elif xd:
            ok = False
    else:
        # Supervisor data access: SMAP blocks user-mode addresses unless EFLAGS.AC=1;
        # writes to read-only translations fault only with CR0.WP=1.
        if user_addr and (ctl & CTL_SMAP) != 0 and (ctl & CTL_AC) == 0:
            ok = False
        elif access == ACC_WRITE and wp and not writable:
            ok = False
    pk = False
    if (ctl & CTL_PKE) != 0 and access != ACC_FETCH and user_addr:
        key = (attrs >> TA_PKEY_SHIFT) & 15
        if (pkru >> (2 * key)) & 1:
            pk = True
        elif (pkru >> (2 * key + 1)) & 1 and access == ACC_WRITE and (user or wp):
            pk = True
    if ok and not pk:
        return 0
    return error_code_bits(PF_P, access, ctl) | (PF_PK if pk else 0)


@inner
def error_code_bits(base, access, ctl):
    """#PF error code: ``base`` (P and/or RSVD) plus W, U and I/D for this access (SDM 4.7)."""
    code = base
    if access == ACC_WRITE:
        code |= PF_W
    if (ctl & CTL_USER) != 0:
        code |= PF_U
    if access == ACC_FETCH and (ctl & (CTL_NXE | CTL_SMEP)) != 0:
        code |= PF_I
    return code


ENTRY_OK = 0
ENTRY_NOT_PRESENT = 1
ENTRY_RESERVED = 2


@jit(inline="always")
def entry_step(e, level, rsvd, nxe, ctl, attrs):
    """Apply one paging-structure entry ``e`` of ``level`` to a walk (SDM 4.5, 4.6, 4.10.2.2).

    ``rsvd`` is the mask of bits 51:M (plus XD when NXE=0) that are reserved at every level.
    Returns ``(kind, leaf, attrs)``: kind ENTRY_NOT_PRESENT (P=0; nothing else is checked),
    ENTRY_RESERVED (a reserved bit is set), or ENTRY_OK with ``attrs`` combining this entry
    (R/W and U/S ANDed, XD ORed, PWT/PCD of the entry; for a leaf also D, G with CR4.PGE, and
    the protection key). Shared by the 1D walker and the guest dimension of the 2D walker.
    """
    if (e & _P) == _U0:
        return ENTRY_NOT_PRESENT, False, attrs
    leaf = level == 1 or (level <= 3 and (e & _PS) != _U0)
    bad = (e & rsvd) != _U0
    if level >= 4 and (e & _PS) != _U0:
        bad = True
    elif leaf and level == 3 and (e & _RSVD_1G) != _U0:
        bad = True
    elif leaf and level == 2 and (e & _RSVD_2M) != _U0:
        bad = True
    if bad:
        return ENTRY_RESERVED, leaf, attrs
    if (e & _RW) == _U0:
        attrs &= ~TA_RW
    if (e & _US) == _U0:
        attrs &= ~TA_US
    if nxe and (e & _XD) != _U0:
        attrs |= TA_XD
    attrs &= ~(TA_PWT | TA_PCD)
    if (e & _PWT) != _U0:
        attrs |= TA_PWT
    if (e & _PCD) != _U0:
        attrs |= TA_PCD
    if leaf:
        if (e & _D) != _U0:
            attrs |= TA_D
        if (e & _G) != _U0 and (ctl & CTL_PGE) != 0:
            attrs |= TA_G
        attrs |= np.int64((e >> np.uint64(59)) & np.uint64(15)) << TA_PKEY_SHIFT
    return ENTRY_OK, leaf, attrs


@jit
def walk_core(mem, table_pa, level, attrs_in, va, access, ctl, pkru, maxphyaddr, trail, set_ad, fmap, mapped):
    """Walk ``va`` from the table at ``table_pa`` of ``level`` down to a leaf.

    Parameters
    ----------
    mem : tuple
        PhysicalMemory state; entries are read from it and A/D bits written to it.
    table_pa : int
        Physical address of the table to read first (CR3's root, or a table a PSC returned).
    level : int
        Level of that table: 5 (PML5), 4 (PML4), 3 (PDPT), 2 (PD), 1 (PT).
    attrs_in : int
        Combined rights of the levels above (``TA_RW | TA_US`` from the root).
    va : int64
        Linear address (canonical; the caller checks).
    access, ctl, pkru
        As for :func:`access_fault`.
    maxphyaddr : int
        MAXPHYADDR (M): entry bits 51:M are reserved.
    trail : int64[MAX_LEVELS, TR_COLS]
        Out: one row per entry read (entry pa, level, pointed-to address, combined attrs).
    set_ad : bool
        Write A (and D) bits on success; False for a side-effect-free probe.
    fmap : int64[:]
        A frame map, read when ``mapped``: the tables' addresses are in another physical space
        and ``mem`` holds them at frame ``fmap[frame]`` (-1 or beyond the map: not present, the
        entry reads as zeros). The shadow-paging VMM's software walk of the guest's tables
        passes its memslot map (guest frame -> host frame); ``trail`` then holds the entries'
        mapped addresses in TR_ENTRY_PA and unmapped ones in TR_NEXT. Unmapped walks pass an
        empty array.
    mapped : bool
        Whether to translate table addresses through ``fmap``.

    Returns
    -------
    (status, error_code, pa, page_shift, attrs, nrefs)
        status WALK_OK or WALK_PF; pa and page_shift valid on WALK_OK; attrs is the final
        combined TA_* set (with the leaf's D, G, PWT, PCD and protection key); nrefs = rows
        of ``trail`` filled. On a fault nothing is written to memory.
    """
    nxe = (ctl & CTL_NXE) != 0
    addr_mask = np.uint64(((1 << maxphyaddr) - 1) & ~0xFFF)
    rsvd = _LOW52 & ~np.uint64((1 << maxphyaddr) - 1)
    if not nxe:
        rsvd |= _XD
    attrs = attrs_in
    base = np.uint64(table_pa)
    n = 0
    while True:
        shift = 12 + 9 * (level - 1)
        entry_pa = np.int64(base) + ((va >> shift) & 511) * 8
        if mapped:
            f = entry_pa >> 12
            entry_pa = np.int64(-1) if f >= fmap.shape[0] or fmap[f] < 0 else (fmap[f] << 12) | (entry_pa & 0xFFF)
            e = _U0 if entry_pa < 0 else mem_read(mem, entry_pa)
        else:
            e = mem_read(mem, entry_pa)
        trail[n, TR_ENTRY_PA] = entry_pa
        trail[n, TR_LEVEL] = level
        n += 1
        kind, leaf, attrs = entry_step(e, level, rsvd, nxe, ctl, attrs)
        if kind == ENTRY_NOT_PRESENT:
            return WALK_PF, error_code_bits(0, access, ctl), 0, 0, attrs, n
        if kind == ENTRY_RESERVED:
            return WALK_PF, error_code_bits(PF_P | PF_RSVD, access, ctl), 0, 0, attrs, n
        if leaf:
            page_shift = shift
            frame = np.int64(e & addr_mask) & ~((np.int64(1) << page_shift) - 1)
            trail[n - 1, TR_NEXT] = frame
            trail[n - 1, TR_ATTRS] = attrs
            code = access_fault(attrs, access, ctl, pkru)
            if code != 0:
                return WALK_PF, code, 0, 0, attrs, n
            if set_ad:
                for i in range(n):
                    pa_i = trail[i, TR_ENTRY_PA]
                    v = mem_read(mem, pa_i)
                    nv = v | _A
                    if i == n - 1 and access == ACC_WRITE:
                        nv |= _D
                    if nv != v:
                        mem_write(mem, pa_i, nv)
                if access == ACC_WRITE:
                    attrs |= TA_D
            pa = frame | (va & ((np.int64(1) << page_shift) - 1))
            return WALK_OK, 0, pa, page_shift, attrs, n
        base = e & addr_mask
        trail[n - 1, TR_NEXT] = np.int64(base)
        trail[n - 1, TR_ATTRS] = attrs
        level -= 1


@jit
def walk_va(mem, cr3, va, access, ctl, pkru, maxphyaddr, trail):
    """Full walk from CR3 (no caches): canonical check, then :func:`walk_core` from the root.

    Returns the same tuple as :func:`walk_core`; status WALK_GP (nrefs 0) for a non-canonical va.
    """
    la57 = (ctl & CTL_LA57) != 0
    if not is_canonical(va, la57):
        return WALK_GP, 0, 0, 0, 0, 0
    root = cr3 & (((np.int64(1) << maxphyaddr) - 1) & ~np.int64(0xFFF))
    levels = 5 if la57 else 4
    return walk_core(
        mem, root, levels, TA_RW | TA_US, va, access, ctl, pkru, maxphyaddr, trail, True, trail[0, :0], False
    )


_ACCESS = {"r": ACC_READ, "w": ACC_WRITE, "x": ACC_FETCH}


def check_walk_args(access: str, maxphyaddr: int, pkru: int) -> int:
    """Validate the Python-level walk arguments shared by :func:`walk` and ``walk_nested``;
    returns the ACC_* code of ``access``."""
    if access not in _ACCESS:
        raise ValueError(f"access must be 'r', 'w' or 'x', not {access!r}")
    if not 32 <= int(maxphyaddr) <= 52:
        raise ValueError(f"maxphyaddr must be between 32 and 52, not {maxphyaddr}")
    if not 0 <= int(pkru) < 1 << 32:
        raise ValueError(f"pkru {pkru:#x} does not fit in 32 bits")
    return _ACCESS[access]


@dataclass(frozen=True)
class WalkResult:
    """Outcome of :func:`walk`.

    Attributes
    ----------
    fault : None | "pf" | "gp"
    error_code : int
        #PF error code (SDM 4.7); 0 unless ``fault == "pf"``.
    pa : int | None
        Physical address on success.
    page_size : int
        4096, 2 MiB or 1 GiB on success; 0 on a fault.
    refs : list[int]
        Physical address of each paging-structure entry read, in order.
    levels : list[int]
        Level of each entry in ``refs`` (5..1).
    attrs : int
        Combined TA_* rights of the translation (see mmu.x86.bits).
    """

    fault: str | None
    error_code: int
    pa: int | None
    page_size: int
    refs: list[int] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    attrs: int = 0


def to_int64(x: int) -> int:
    """Reinterpret a 64-bit unsigned value as int64 (two's complement)."""
    x = int(x)
    if not -(1 << 63) <= x < 1 << 64:
        raise ValueError(f"{x:#x} does not fit in 64 bits")
    return x - (1 << 64) if x >= 1 << 63 else x


def make_ctl(
    *,
    user: bool = False,
    wp: bool = True,
    nxe: bool = True,
    smep: bool = False,
    smap: bool = False,
    ac: bool = False,
    la57: bool = False,
    pke: bool = False,
    pge: bool = True,
) -> int:
    """Pack control-register state into the ``ctl`` bitmask kernels take."""
    ctl = 0
    for flag, bit in (
        (user, CTL_USER),
        (wp, CTL_WP),
        (nxe, CTL_NXE),
        (smep, CTL_SMEP),
        (smap, CTL_SMAP),
        (ac, CTL_AC),
        (la57, CTL_LA57),
        (pke, CTL_PKE),
        (pge, CTL_PGE),
    ):
        if flag:
            ctl |= bit
    return ctl


def walk(
    mem: PhysicalMemory,
    cr3: int,
    va: int,
    access: str = "r",
    user: bool = False,
    wp: bool = True,
    nxe: bool = True,
    smep: bool = False,
    smap: bool = False,
    ac: bool = False,
    la57: bool = False,
    maxphyaddr: int = 52,
    pke: bool = False,
    pkru: int = 0,
) -> WalkResult:
    """Translate ``va`` through the page tables rooted at ``cr3``, as the processor does.

    Sets A on every entry used and D on the leaf for a write, in ``mem``, when the
    translation succeeds (a faulting walk leaves memory unchanged).

    Parameters
    ----------
    mem : PhysicalMemory
    cr3 : int
        CR3 value; bits (M-1):12 locate the root table (PML4, or PML5 with ``la57``).
    va : int
        Linear address, 0 <= va < 2**64 (or a negative int64 spelling of one).
    access : {"r", "w", "x"}
        Data read, data write, or instruction fetch.
    user, wp, nxe, smep, smap, ac, la57, pke
        CPL=3, CR0.WP, IA32_EFER.NXE, CR4.SMEP, CR4.SMAP, EFLAGS.AC, CR4.LA57, CR4.PKE.
    maxphyaddr : int
        MAXPHYADDR, 32..52.
    pkru : int
        PKRU register (32 bits), used when ``pke``.
    """
    check_walk_args(access, maxphyaddr, pkru)
    ctl = make_ctl(user=user, wp=wp, nxe=nxe, smep=smep, smap=smap, ac=ac, la57=la57, pke=pke)
    trail = np.zeros((MAX_LEVELS, TR_COLS), dtype=np.int64)
    mem.reserve(0)
    status, code, pa, shift, attrs, n = walk_va(
        mem.state,
        np.int64(to_int64(cr3)),
        np.int64(to_int64(va)),
        _ACCESS[access],
        np.int64(ctl),
        np.int64(pkru),
        np.int64(maxphyaddr),
        trail,
    )
    refs = [int(x) for x in trail[:n, TR_ENTRY_PA]]
    levels = [int(x) for x in trail[:n, TR_LEVEL]]
    if status == WALK_GP:
        return WalkResult("gp", 0, None, 0, [], [], 0)
    if status == WALK_PF:
        return WalkResult("pf", int(code), None, 0, refs, levels, int(attrs))
    return WalkResult(None, 0, int(pa), 1 << int(shift), refs, levels, int(attrs))


@jit
def walk_many(mem, cr3, vas, access, ctl, pkru, maxphyaddr, trail, out_pa, out_status):
    """:func:`walk_va` over ``vas`` (int64[n]) in one call: no caches, every walk cold.

    Writes the physical address (or -1) to ``out_pa`` and the status to ``out_status``;
    returns the total number of entries read. Sets A/D bits like :func:`walk_va`.
    """
    refs = 0
    for i in range(vas.shape[0]):
        status, code, pa, shift, attrs, n = walk_va(mem, cr3, vas[i], access, ctl, pkru, maxphyaddr, trail)
        refs += n
        out_status[i] = status
        out_pa[i] = pa if status == WALK_OK else -1
    return refs
