"""Plain-Python reference of the 1D x86-64 page walk (4-level and 5-level paging).

Written directly from the Intel SDM vol. 3A chapter 4, independently of ``mmu/x86/walk.py``:

* 4.5   4-level and 5-level paging: the walk, the entry formats (Tables 4-14..4-20) and their
        reserved bits;
* 4.6.1 determination of access rights (U/S, R/W with CR0.WP, XD with IA32_EFER.NXE, SMEP,
        SMAP with EFLAGS.AC);
* 4.6.2 protection keys (CR4.PKE, PKRU);
* 4.7   the page-fault error code;
* 4.8   accessed and dirty flags.

Physical memory is a plain ``dict`` ``{pa: u64}``; an absent key reads as 0. Every access is
modelled as an *explicit* access (no implicit supervisor-mode accesses), and PKS (supervisor
protection keys) is not modelled.

Simulator choice (documented in the project docs): A and D flags are written only when the
whole translation succeeds, so a faulting walk leaves memory unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Entry bits (SDM Tables 4-14..4-20).
P = 1 << 0
RW = 1 << 1
US = 1 << 2
PWT = 1 << 3
PCD = 1 << 4
A = 1 << 5
D = 1 << 6
PS = 1 << 7
G = 1 << 8
PAT_LARGE = 1 << 12
XD = 1 << 63

# #PF error code (SDM 4.7, Figure 4-12).
PF_P = 1 << 0
PF_W = 1 << 1
PF_U = 1 << 2
PF_RSVD = 1 << 3
PF_I = 1 << 4
PF_PK = 1 << 5

# Combined translation attributes (the encoding of mmu.x86.bits.TA_*, restated here).
TA_RW = 1 << 0
TA_US = 1 << 1
TA_XD = 1 << 2
TA_D = 1 << 3
TA_G = 1 << 4
TA_PWT = 1 << 5
TA_PCD = 1 << 6
TA_PKEY_SHIFT = 8

PAGE_4K = 1 << 12
PAGE_2M = 1 << 21
PAGE_1G = 1 << 30

LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
# Linear-address bits that index the table at each level: level L uses bits (12+9L-1):(12+9(L-1)).
LEVEL_SHIFT = {5: 48, 4: 39, 3: 30, 2: 21, 1: 12}

U64 = (1 << 64) - 1


@dataclass
class RefResult:
    """Outcome of :func:`ref_walk`, field for field what ``mmu.walk`` returns.

    ``attrs`` holds the combined attributes (``TA_*``) of a successful translation, 0 on a fault.
    ``level`` is the level of the leaf (success) or of the faulting entry (0 if none / #GP).
    """

    fault: str | None
    error_code: int
    pa: int | None
    page_size: int
    refs: list[int] = field(default_factory=list)
    attrs: int = 0
    level: int = 0


def addr_mask(maxphyaddr: int) -> int:
    """Bits (M-1):12 -- the physical-address field of an entry (and of CR3)."""
    return ((1 << maxphyaddr) - 1) & ~0xFFF


def reserved_addr_bits(maxphyaddr: int) -> int:
    """Bits 51:M -- reserved in every paging-structure entry (SDM 4.5, Tables 4-14..4-20)."""
    return ((1 << 52) - 1) & ~((1 << maxphyaddr) - 1)


def is_canonical(va: int, la57: bool) -> bool:
    """Bits 63:47 (4-level) or 63:56 (5-level) all equal (SDM 3.3.7.1 / 4.5)."""
    top_bit = 56 if la57 else 47
    upper = va >> top_bit  # bits 63:top_bit
    return upper == 0 or upper == (1 << (64 - top_bit)) - 1


def table_index(va: int, level: int) -> int:
    """The 9-bit index of ``va`` into the paging structure at ``level`` (5=PML5 .. 1=PT)."""
    return (va >> LEVEL_SHIFT[level]) & 0x1FF


def entry_reserved_bits(entry: int, level: int, leaf: bool, nxe: bool, maxphyaddr: int) -> int:
    """The bits of a *present* entry that are reserved (non-zero means a RSVD fault).

    Parameters
    ----------
    entry : int
        The 64-bit entry (P=1).
    level : int
        5 PML5E, 4 PML4E, 3 PDPTE, 2 PDE, 1 PTE.
    leaf : bool
        True if the entry maps a page (a PTE, or a PDPTE/PDE with PS=1).
    """
    rsvd = entry & reserved_addr_bits(maxphyaddr)
    if not nxe:
        rsvd |= entry & XD  # "If IA32_EFER.NXE = 0 ... the XD flag (bit 63) is reserved."
    if level >= 4:
        rsvd |= entry & PS  # PS is reserved (must be 0) in a PML5E and a PML4E.
    if leaf and level == 3:
        rsvd |= entry & (((1 << 30) - 1) & ~((1 << 13) - 1))  # 1-GByte page: bits 29:13
    if leaf and level == 2:
        rsvd |= entry & (((1 << 21) - 1) & ~((1 << 13) - 1))  # 2-MByte page: bits 20:13
    return rsvd


def ref_walk(
    memdict: dict[int, int],
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
    pge: bool = True,
) -> RefResult:
    """Translate ``va`` as the processor does; set A/D in ``memdict`` on success.

    Parameters
    ----------
    memdict : dict[int, int]
        Physical memory ``{pa: u64}`` (8-byte aligned keys; absent keys read as 0).
        Mutated: A on every entry used, D on the leaf for a write, only on success.
    cr3 : int
        CR3; bits (M-1):12 locate the root table (PML5 if ``la57`` else PML4), other bits ignored.
    va : int
        64-bit linear address (``0 <= va < 2**64``).
    access : {"r", "w", "x"}
        Data read, data write, instruction fetch.
    user : bool
        CPL = 3 (user-mode access); otherwise an explicit supervisor-mode access.
    wp, nxe, smep, smap, ac, la57, pke, pge : bool
        CR0.WP, IA32_EFER.NXE, CR4.SMEP, CR4.SMAP, EFLAGS.AC, CR4.LA57, CR4.PKE, CR4.PGE.
    maxphyaddr : int
        MAXPHYADDR (M).
    pkru : int
        PKRU: AD_k = bit 2k, WD_k = bit 2k+1.
    """
    if access not in ("r", "w", "x"):
        raise ValueError(f"access must be 'r', 'w' or 'x', not {access!r}")
    if not 0 <= va <= U64:
        raise ValueError("va must be a 64-bit unsigned integer")
    write = access == "w"
    fetch = access == "x"

    # Non-canonical linear address: #GP (or #SS), never a page walk.
    if not is_canonical(va, la57):
        return RefResult("gp", 0, None, 0, [])

    # Error-code bits that describe the access itself (SDM 4.7).
    access_bits = 0
    if write:
        access_bits |= PF_W
    if user:
        access_bits |= PF_U
    if fetch and (nxe or smep):
        access_bits |= PF_I  # I/D = 1 only for a fetch with SMEP=1 or (PAE/4-level and NXE=1)

    mask = addr_mask(maxphyaddr)
    table = cr3 & mask
    refs: list[int] = []
    used: list[tuple[int, int]] = []  # (entry pa, entry value) of each entry used, top down
    level = 5 if la57 else 4
    while True:
        epa = table | (table_index(va, level) << 3)
        refs.append(epa)
        entry = memdict.get(epa, 0)
        if not entry & P:
            # Not present: P=0 in the error code; other bits of the entry are not checked.
            return RefResult("pf", access_bits, None, 0, refs, level=level)
        leaf = level == 1 or (level in (2, 3) and bool(entry & PS))
        if entry_reserved_bits(entry, level, leaf, nxe, maxphyaddr):
            return RefResult("pf", access_bits | PF_P | PF_RSVD, None, 0, refs, level=level)
        used.append((epa, entry))
        if leaf:
            break
        table = entry & mask
        level -= 1

    page_size = 1 << LEVEL_SHIFT[level]
    leaf_entry = used[-1][1]
    pa = (leaf_entry & mask & ~(page_size - 1)) | (va & (page_size - 1))

    # Combined rights (SDM 4.6.1; 4.10.2.2): R/W and U/S ANDed, XD ORed (only meaningful with NXE).
    rw = all(e & RW for _, e in used)
    user_address = all(e & US for _, e in used)
    xd = nxe and any(e & XD for _, e in used)

    # Protection keys (SDM 4.6.2): user-mode addresses, data accesses only.
    pk_fault = False
    if pke and user_address and not fetch:
        key = (leaf_entry >> 59) & 0xF
        ad = (pkru >> (2 * key)) & 1
        wd = (pkru >> (2 * key + 1)) & 1
        pk_fault = bool(ad) or (bool(wd) and write and (user or wp))

    # Ordinary rights (SDM 4.6.1), explicit accesses only.
    if user:
        if not user_address:
            allowed = False  # user-mode accesses never reach a supervisor-mode address
        elif fetch:
            allowed = not xd
        elif write:
            allowed = rw
        else:
            allowed = True
    else:
        if fetch:
            allowed = not xd and not (smep and user_address)
        else:
            allowed = True
            if user_address and smap and not ac:
                allowed = False  # SMAP: explicit supervisor data access to a user-mode address
            if write and wp and not rw:
                allowed = False  # CR0.WP=1: supervisor writes honour R/W
    if pk_fault:
        allowed = False

    if not allowed:
        code = access_bits | PF_P | (PF_PK if pk_fault else 0)
        return RefResult("pf", code, None, 0, refs, level=level)

    # SDM 4.8: A on every entry used, D on the entry that maps the page for a write.
    # OR into the current memory value: an entry may be used at more than one level.
    for epa, _ in used:
        memdict[epa] = memdict.get(epa, 0) | A
    if write:
        memdict[used[-1][0]] |= D
    final_leaf = memdict[used[-1][0]]

    attrs = 0
    if rw:
        attrs |= TA_RW
    if user_address:
        attrs |= TA_US
    if xd:
        attrs |= TA_XD
    if final_leaf & D:
        attrs |= TA_D
    if pge and final_leaf & G:
        attrs |= TA_G
    if final_leaf & PWT:
        attrs |= TA_PWT
    if final_leaf & PCD:
        attrs |= TA_PCD
    attrs |= ((final_leaf >> 59) & 0xF) << TA_PKEY_SHIFT
    return RefResult(None, 0, pa, page_size, refs, attrs=attrs, level=level)


class TwinMemory:
    """Writes the same words to a ``PhysicalMemory``-like object and a reference dict.

    ``mem`` may be None (reference only). ``words`` is the dict handed to :func:`ref_walk`;
    it keeps every written address, zeros included, so its frames are the frames backed.
    """

    def __init__(self, mem=None):
        self.mem = mem
        self.words: dict[int, int] = {}

    def write(self, pa: int, value: int) -> None:
        self.words[pa] = value
        if self.mem is not None:
            self.mem.write_u64(pa, value)

    def read(self, pa: int) -> int:
        return self.words.get(pa, 0)

    def frames(self) -> set[int]:
        return {pa >> 12 for pa in self.words}
