"""The host dimension of a nested walk: EPT (Intel) and NPT (AMD) gPA -> hPA translation.

Kernels
-------
:func:`ept_walk_core` walks a guest-physical address (gpa) through the EPT paging structures
from any level (the EPTP root, or a table a paging-structure cache pointed to), exactly as
SDM vol. 3C section 28.2 describes it:

* an entry is **not present** iff bits 2:0 are 000b (and, with mode-based execute control,
  bit 10 is 0 too);
* **EPT misconfiguration** (28.2.3.1, minix86 ``o_fe12b1e2a880e0ce-1155``/``-1156``): bits 2:0 =
  010b or 110b (write without read); execute-only (R = W = 0) when the processor does not
  support it; a reserved bit set -- bits 51:M of any entry, bits 7:3 of an EPT PML5E/PML4E,
  bits 6:3 of a PDPTE/PDE that references a table, bits 29:12 of a 1-GByte PDPTE, bits 20:12 of
  a 2-MByte PDE (Tables 28-1..28-6, minix86 ``-1152``..``-1154``); or a leaf memory type
  (bits 5:3) of 2, 3 or 7;
* **EPT violation** (28.2.3.2, minix86 ``-1156``/``-1157``): no misconfiguration, but an entry is
  not present, or the access is not allowed by the AND of the rights of every entry used
  (read: bit 0; write: bit 1; fetch: bit 2, or bit 10 for a user-mode linear address under
  mode-based execute control);
* **EPT A/D** (28.2.4, minix86 ``-1159``): with EPTP bit 6 set, the accessed flag (bit 8) of every
  entry used and, for a write, the dirty flag (bit 9) of the leaf, written when the translation
  succeeds (the guest-physical access then happens). A faulting translation writes nothing.

:func:`host_translate` is the gPA translation the 2D walker uses: a width check, then either
:func:`ept_walk_core` from the EPTP root, or, for AMD nested paging (``npt``), :func:`npt_walk_core`
from nCR3. NPT tables have exactly the format of ordinary page tables, and every nested access
is a *user-mode* access (AMD APM vol. 2, 15.25.5; Bochs ``nested_walk_long_mode`` and QEMU walk
the nested dimension with a user-mode index), so :func:`npt_walk_core` is the 1D walk of
:mod:`mmu.x86.walk` with CPL = 3, host EFER.NXE = 1 and no protection keys (the reference model
checks it against the plain 1D reference walk). A nested fault is a #NPF whose EXITINFO1 is an
ordinary #PF error code (P, W, U=1, RSVD, I/D) plus bit 32 (fault on the final gPA) or bit 33
(fault on a guest page-table access) (APM 15.25.6; Bochs ``nested_page_fault``; Linux
``PFERR_GUEST_FINAL_MASK``/``PFERR_GUEST_PAGE_MASK``).

Simulator choices (SDM/APM ambiguities, resolved here and in the 2D walker)
----------------------------------------------------------------------------
* A gpa wider than the host walk (bits 51:48 set with a 4-level EPT/NPT; possible when
  MAXPHYADDR > 48) is an EPT violation (an NPF with P=0) with no entries read. SDM 28.2.2 (2016
  edition) says the 4-level walk "uses only bits 47:0" and that no processor of that edition
  could produce a wider gpa; rather than silently aliasing bits 51:48 away, the access exits to
  the VMM, which sees the full gpa.
* 1-GByte EPT pages are supported (IA32_VMX_EPT_VPID_CAP bit 17); execute-only EPT entries are
  supported unless ``xonly`` is False (IA32_VMX_EPT_VPID_CAP bit 0). Under mode-based execute
  control an entry with R = W = 0 and X or XU set counts as execute-only.
* NPT walks run with host EFER.NXE = 1, so nested NX (bit 63) is honoured, not reserved.

:class:`EptBuilder` and :class:`NptBuilder` (Python) build host tables in a
:class:`~mmu.memory.PhysicalMemory` for tests, docs and the host model; :func:`decode_ept_entry`
decodes an entry for views.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmu._jit import inner, jit
from mmu.memory import PhysicalMemory, mem_find
from mmu.x86.bits import (
    ACC_FETCH,
    ACC_READ,
    ACC_WRITE,
    CTL_NXE,
    CTL_USER,
    CTL_WP,
    EPTP_AD,
    EPTP_WALK_SHIFT,
    PAGE_1G,
    PAGE_2M,
    PAGE_4K,
    PF_P,
    PF_RSVD,
)
from mmu.x86.walk import MAX_LEVELS, TR_ATTRS, TR_COLS, TR_ENTRY_PA, TR_LEVEL, TR_NEXT, error_code_bits

# --- outcome codes of a gPA translation (shared with the 2D walker's status codes) ----------
EPT_OK = 0
EPT_VIOLATION = 3
EPT_MISCONFIG = 4
NPT_FAULT = 5  # AMD #VMEXIT(NPF)

# --- exit qualification for EPT violations (SDM vol. 3C Table 27-7, minix86
# o_fe12b1e2a880e0ce-1126/-1127; older edition: manualshelf vol. 3B p. 266) ----------------
EQ_READ = 1 << 0  # the access was a data read
EQ_WRITE = 1 << 1  # the access was a data write
EQ_FETCH = 1 << 2  # the access was an instruction fetch
EQ_READABLE = 1 << 3  # AND of bit 0 of the EPT entries used
EQ_WRITABLE = 1 << 4  # AND of bit 1
EQ_EXECUTABLE = 1 << 5  # AND of bit 2 (supervisor-mode execute under MBEC)
EQ_USER_EXECUTABLE = 1 << 6  # AND of bit 10 (only with mode-based execute control; else 0)
EQ_GLA_VALID = 1 << 7  # the guest-linear-address field is valid
EQ_FINAL = 1 << 8  # (bit 7 = 1) access to the translation of the linear address, not to a paging entry

# --- #NPF EXITINFO1 (AMD APM vol. 2, 15.25.6): a #PF error code plus these ---------------------
NPF_FINAL = 1 << 32  # fault while translating the guest's final physical address
NPF_TABLE = 1 << 33  # fault while translating a guest page-table access

# Control bits of every nested (NPT) access: user mode, host EFER.NXE = 1.
NPT_CTL = CTL_USER | CTL_WP | CTL_NXE

# EPT walk rights as returned in ``perms`` (entry bit positions): R, W, X and, with mode-based
# execute control, XU (bit 10).
PERM_R = 1 << 0
PERM_W = 1 << 1
PERM_X = 1 << 2
PERM_XU = 1 << 10

EPT_MT_UC = 0
EPT_MT_WC = 1
EPT_MT_WT = 4
EPT_MT_WP = 5
EPT_MT_WB = 6

# Optional memo columns of a host ``trail`` (``HT_COLS`` wide): per row, the host frame number of
# the table last read at that position and the row of ``hmem``'s data array that backs it. A
# 2D walk translates five gpas through the same upper EPT tables; with the memo the repeated
# tables skip the hash lookup, and the next load no longer waits on the entry just read (only
# on a predicted compare). Rows never move while a kernel runs and kernels never back new
# frames, so a memo is valid for as long as ``hmem`` is the same memory: reset ``HT_PFN`` to -1
# when it may not be (the 2D walker does so at the start of every walk).
HT_PFN = TR_COLS
HT_ROW = TR_COLS + 1
HT_COLS = TR_COLS + 2

_U0 = np.uint64(0)
_R = np.uint64(1)
_W = np.uint64(2)
_RWX = np.uint64(7)
_LARGE = np.uint64(1 << 7)
_A = np.uint64(1 << 8)
_D = np.uint64(1 << 9)
_XU = np.uint64(1 << 10)
_LOW52 = np.uint64((1 << 52) - 1)
_RSVD_7_3 = np.uint64(0xF8)  # EPT PML5E / PML4E
_RSVD_6_3 = np.uint64(0x78)  # EPT PDPTE / PDE that references a table
_RSVD_1G = np.uint64(((1 << 30) - 1) & ~((1 << 12) - 1))  # bits 29:12 of a 1-GByte PDPTE
_RSVD_2M = np.uint64(((1 << 21) - 1) & ~((1 << 12) - 1))  # bits 20:12 of a 2-MByte PDE
# ordinary (NPT) entries, SDM Tables 4-14..4-20 / APM 5.3.3
_P1 = np.uint64(1)
_PT_RW = np.uint64(2)
_PT_US = np.uint64(4)
_PT_A = np.uint64(1 << 5)
_PT_D = np.uint64(1 << 6)
_PT_XD = np.uint64(1 << 63)
_PT_RSVD_1G = np.uint64(((1 << 30) - 1) & ~((1 << 13) - 1))  # bits 29:13 (bit 12 is PAT)
_PT_RSVD_2M = np.uint64(((1 << 21) - 1) & ~((1 << 13) - 1))  # bits 20:13


@jit(inline="always")
def read_host_entry(hmem, trail, n, memo, entry_hpa, level):
    """Read the host paging-structure entry at ``entry_hpa`` as row ``n`` of ``trail``.

    Records the entry's address and level; with an ``HT_COLS``-wide trail, reuses (or stores)
    the host frame -> data row lookup of that row (the memo described at ``HT_PFN``).
    """
    pfn = entry_hpa >> 12
    if memo and trail[n, HT_PFN] == pfn:
        row = trail[n, HT_ROW]
    else:
        row = mem_find(hmem, pfn)
        if memo:
            trail[n, HT_PFN] = pfn
            trail[n, HT_ROW] = row
    trail[n, TR_ENTRY_PA] = entry_hpa
    trail[n, TR_LEVEL] = level
    return hmem[0][row, (entry_hpa >> 3) & 511] if row >= 0 else _U0


@jit(inline="always")
def set_host_ad(hmem, trail, n, memo, a_bit, d_bit, write):
    """Set ``a_bit`` on the ``n`` host entries of ``trail`` and ``d_bit`` on the last for a write.

    Every entry of a successful walk was present, so its frame is backed (its row exists).
    """
    data = hmem[0]
    for i in range(n):
        pa_i = trail[i, TR_ENTRY_PA]
        row_i = trail[i, HT_ROW] if memo else mem_find(hmem, pa_i >> 12)
        v = data[row_i, (pa_i >> 3) & 511]
        nv = v | a_bit
        if i == n - 1 and write:
            nv |= d_bit
        if nv != v:
            data[row_i, (pa_i >> 3) & 511] = nv


@inner
def ept_walk_core(hmem, table_hpa, level, gpa, access, ad, mbec, user_mode, maxphyaddr, trail, set_ad, xonly=True):
    """Translate ``gpa`` through the EPT from the table at ``table_hpa`` of ``level``.

    Parameters
    ----------
    hmem : tuple
        PhysicalMemory state of the host; EPT entries are read from it, A/D flags written to it.
    table_hpa : int
        Host-physical address of the EPT table to read first (EPTP[51:12], or a cached table).
    level : int
        Its level: 5 (EPT PML5), 4 (PML4), 3 (PDPT), 2 (PD), 1 (PT).
    gpa : int64
        Guest-physical address (the caller checks it fits the walk, see :func:`host_translate`).
    access : int
        ACC_READ, ACC_WRITE or ACC_FETCH. Guest paging-structure accesses are ACC_READ, or
        ACC_WRITE when EPT A/D is on (SDM 28.2.3.2): the caller decides.
    ad : bool
        EPTP bit 6: A/D flags are maintained.
    mbec : bool
        Mode-based execute control for EPT: bit 10 is execute for user-mode linear addresses.
    user_mode : bool
        The linear address being translated is a user-mode address (guest U/S = 1 at every level);
        selects bit 10 instead of bit 2 for a fetch under ``mbec``.
    maxphyaddr : int
        MAXPHYADDR (M): entry bits 51:M are reserved.
    trail : int64[MAX_LEVELS, TR_COLS] or int64[MAX_LEVELS, HT_COLS]
        Out: one row per entry read: entry hpa, level, pointed-to hpa, rights ANDed so far
        (``PERM_*`` bits). With ``HT_COLS`` columns it also carries the frame -> row memo
        described at ``HT_PFN`` (in and out).
    set_ad : bool
        Write the A/D flags (with ``ad``) on success; False for a side-effect-free probe.
    xonly : bool
        Execute-only entries (R = W = 0) are supported; otherwise they are misconfigurations.

    Returns
    -------
    (status, qual, hpa, page_shift, perms, nrefs) : tuple of int64
        status EPT_OK, EPT_VIOLATION or EPT_MISCONFIG. ``qual`` (violations only) holds exit
        qualification bits 0-6: the access kind and the rights ANDed over the entries used (a
        not-present entry ANDs in zeros). ``perms`` are those rights as ``PERM_*`` bits (XU only
        under ``mbec``). hpa and page_shift are valid on EPT_OK. ``nrefs`` = rows of ``trail``.
    """
    addr_mask = np.uint64(((1 << maxphyaddr) - 1) & ~0xFFF)
    rsvd_addr = _LOW52 & ~np.uint64((1 << maxphyaddr) - 1)
    perms = _RWX | _XU if mbec else _RWX
    if access == ACC_READ:
        need = _R
        qacc = np.int64(EQ_READ)
    elif access == ACC_WRITE:
        need = _W
        qacc = np.int64(EQ_WRITE)
    else:
        need = _XU if (mbec and user_mode) else np.uint64(4)
        qacc = np.int64(EQ_FETCH)
    base = np.uint64(table_hpa)
    memo = trail.shape[1] >= HT_COLS
    clean = True  # every entry read already has A set (then no A/D write is needed)
    n = 0
    while True:
        shift = 12 + 9 * (level - 1)
        e = read_host_entry(hmem, trail, n, memo, np.int64(base) + ((gpa >> shift) & 511) * 8, level)
        n += 1
        if (e & _A) == _U0:
            clean = False
        rights = e & (_RWX | _XU) if mbec else e & _RWX
        if rights == _U0:
            return EPT_VIOLATION, qacc, np.int64(0), np.int64(0), np.int64(0), np.int64(n)
        # Misconfigurations (SDM 28.2.3.1) are checked on every entry as it is read, so one
        # anywhere on the path wins over a violation, which needs the whole path.
        bad = False
        if (e & _W) != _U0 and (e & _R) == _U0:
            bad = True  # 010b write-only, 110b write/execute
        elif not xonly and (e & (_R | _W)) == _U0:
            bad = True  # execute-only, not supported
        leaf = level == 1 or (level <= 3 and (e & _LARGE) != _U0)
        if (e & rsvd_addr) != _U0:
            bad = True
        if leaf:
            mt = (e >> np.uint64(3)) & np.uint64(7)
            if mt == np.uint64(2) or mt == np.uint64(3) or mt == np.uint64(7):
                bad = True
            if level == 3 and (e & _RSVD_1G) != _U0:
                bad = True
            elif level == 2 and (e & _RSVD_2M) != _U0:
                bad = True
        elif level >= 4:
            if (e & _RSVD_7_3) != _U0:
                bad = True
        elif (e & _RSVD_6_3) != _U0:
            bad = True
        if bad:
            return EPT_MISCONFIG, np.int64(0), np.int64(0), np.int64(0), np.int64(0), np.int64(n)
        perms &= rights
        if leaf:
            page_shift = shift
            frame = np.int64(e & addr_mask) & ~((np.int64(1) << page_shift) - 1)
            trail[n - 1, TR_NEXT] = frame
            trail[n - 1, TR_ATTRS] = np.int64(perms)
            if (perms & need) == _U0:
                return EPT_VIOLATION, qacc | perm_qual(np.int64(perms)), np.int64(0), np.int64(0), np.int64(perms), n
            if set_ad and ad and not (clean and (access != ACC_WRITE or (e & _D) != _U0)):
                set_host_ad(hmem, trail, n, memo, _A, _D, access == ACC_WRITE)
            hpa = frame | (gpa & ((np.int64(1) << page_shift) - 1))
            return EPT_OK, np.int64(0), hpa, np.int64(page_shift), np.int64(perms), np.int64(n)
        base = e & addr_mask
        trail[n - 1, TR_NEXT] = np.int64(base)
        trail[n - 1, TR_ATTRS] = np.int64(perms)
        level -= 1


@jit(inline="always")
def perm_qual(perms):
    """Exit-qualification bits 3-6 for EPT rights ``perms`` (``PERM_*`` bits)."""
    return ((perms & 7) << 3) | (((perms >> 10) & 1) << 6)


@inner
def npt_walk_core(hmem, table_hpa, level, gpa, access, maxphyaddr, trail, set_ad):
    """Translate ``gpa`` through AMD nested page tables from the table at ``table_hpa`` of ``level``.

    :func:`mmu.x86.walk.walk_core` specialised to what a nested walk is (APM 15.25.5): every
    access is a user-mode access, host EFER.NXE = 1, no protection keys; plus the frame -> row
    memo of ``HT_COLS``-wide trails (see ``HT_PFN``). Same entry formats, reserved bits, rights
    (U/S and R/W ANDed, NX ORed), error code (SDM 4.7 / APM 8.4.2) and A/D flags (on success only).

    Returns
    -------
    (status, code, hpa, page_shift, perms, nrefs) : tuple of int64
        status EPT_OK or NPT_FAULT; ``code`` the #PF-style error code of a fault (P, W, U=1,
        RSVD, I/D); ``perms`` the rights as ``PERM_*`` bits (R, W if R/W = 1 at every level, X if
        no level has NX); ``trail`` rows as :func:`ept_walk_core` fills them.
    """
    addr_mask = np.uint64(((1 << maxphyaddr) - 1) & ~0xFFF)
    rsvd = _LOW52 & ~np.uint64((1 << maxphyaddr) - 1)
    writable = True
    user = True
    nx = False
    base = np.uint64(table_hpa)
    memo = trail.shape[1] >= HT_COLS
    z = np.int64(0)
    clean = True  # every entry read already has A set (then no A/D write is needed)
    n = 0
    while True:
        shift = 12 + 9 * (level - 1)
        e = read_host_entry(hmem, trail, n, memo, np.int64(base) + ((gpa >> shift) & 511) * 8, level)
        n += 1
        if (e & _PT_A) == _U0:
            clean = False
        if (e & _P1) == _U0:
            return np.int64(NPT_FAULT), error_code_bits(0, access, NPT_CTL), z, z, z, np.int64(n)
        leaf = level == 1 or (level <= 3 and (e & _LARGE) != _U0)
        bad = (e & rsvd) != _U0
        if level >= 4 and (e & _LARGE) != _U0:
            bad = True  # PS is reserved in a PML5E / PML4E
        elif leaf and level == 3 and (e & _PT_RSVD_1G) != _U0:
            bad = True
        elif leaf and level == 2 and (e & _PT_RSVD_2M) != _U0:
            bad = True
        if bad:
            return np.int64(NPT_FAULT), error_code_bits(PF_P | PF_RSVD, access, NPT_CTL), z, z, z, np.int64(n)
        if (e & _PT_RW) == _U0:
            writable = False
        if (e & _PT_US) == _U0:
            user = False
        if (e & _PT_XD) != _U0:
            nx = True
        if leaf:
            page_shift = shift
            frame = np.int64(e & addr_mask) & ~((np.int64(1) << page_shift) - 1)
            trail[n - 1, TR_NEXT] = frame
            perms = PERM_R | (PERM_W if writable else 0) | (0 if nx else PERM_X)
            trail[n - 1, TR_ATTRS] = perms
            if not user or (access == ACC_WRITE and not writable) or (access == ACC_FETCH and nx):
                return np.int64(NPT_FAULT), error_code_bits(PF_P, access, NPT_CTL), z, z, z, np.int64(n)
            if set_ad and not (clean and (access != ACC_WRITE or (e & _PT_D) != _U0)):
                set_host_ad(hmem, trail, n, memo, _PT_A, _PT_D, access == ACC_WRITE)
            hpa = frame | (gpa & ((np.int64(1) << page_shift) - 1))
            return np.int64(EPT_OK), z, hpa, np.int64(page_shift), np.int64(perms), np.int64(n)
        base = e & addr_mask
        trail[n - 1, TR_NEXT] = np.int64(base)
        trail[n - 1, TR_ATTRS] = PERM_R | (PERM_W if writable else 0) | (0 if nx else PERM_X)
        level -= 1


@jit
def host_translate(hmem, hroot, hlevels, ept_ad, npt, gpa, access, user_mode, mbec, xonly, maxphyaddr, htrail):
    """Translate ``gpa`` from the host root (EPTP or nCR3 table) with no caches.

    Parameters
    ----------
    hmem : tuple
        Host PhysicalMemory state (A/D flags of the host tables are written on success).
    hroot : int
        Host-physical address of the root table (EPT PML4/PML5, or the nested PML4/PML5).
    hlevels : int
        4 or 5.
    ept_ad : bool
        EPTP bit 6 (EPT only; NPT always maintains A/D in the nested tables).
    npt : bool
        AMD nested paging: ordinary long-mode tables, every access user-mode.
    gpa, access, user_mode, mbec, xonly, maxphyaddr
        As for :func:`ept_walk_core` (``user_mode``/``mbec``/``xonly`` unused by NPT).
    htrail : int64[MAX_LEVELS, TR_COLS] or int64[MAX_LEVELS, HT_COLS]
        Out: the host entries read (as :func:`ept_walk_core` / :func:`npt_walk_core` fill it);
        with ``HT_COLS`` columns also the frame -> row memo (see ``HT_PFN``).

    Returns
    -------
    (status, code, hpa, page_shift, perms, nrefs) : tuple of int64
        status EPT_OK, EPT_VIOLATION, EPT_MISCONFIG or NPT_FAULT. ``code`` is the exit
        qualification bits 0-6 of a violation, or the #PF-style NPF error code (without bits
        32/33, which the caller adds) of an NPT_FAULT.
    """
    if (gpa >> (12 + 9 * hlevels)) != 0:
        z = np.int64(0)
        if npt:
            return np.int64(NPT_FAULT), np.int64(error_code_bits(0, access, NPT_CTL)), z, z, z, z
        if access == ACC_READ:
            q = EQ_READ
        elif access == ACC_WRITE:
            q = EQ_WRITE
        else:
            q = EQ_FETCH
        return np.int64(EPT_VIOLATION), np.int64(q), z, z, z, z
    if npt:
        return npt_walk_core(hmem, hroot, hlevels, gpa, access, maxphyaddr, htrail, True)
    return ept_walk_core(hmem, hroot, hlevels, gpa, access, ept_ad, mbec, user_mode, maxphyaddr, htrail, True, xonly)


# --- Python layer ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GpaResult:
    """Outcome of :func:`translate_gpa`.

    Attributes
    ----------
    fault : None | "ept_violation" | "ept_misconfig" | "npf"
    code : int
        EPT violation: exit-qualification bits 0-6 (access kind and the rights ANDed over the
        entries used; bits 7/8 depend on the guest access and are added by the 2D walker).
        NPF: the #PF-style error code (P, W, U, RSVD, I/D; bits 32/33 added by the 2D walker).
    hpa : int | None
    page_size : int
        Host page size on success, else 0.
    perms : int
        ``PERM_*`` rights of the translation (also reported with a permission violation).
    refs : list of (int, int)
        (level, hpa) of each host entry read, in order.
    """

    fault: str | None
    code: int
    hpa: int | None
    page_size: int
    perms: int
    refs: list[tuple[int, int]] = field(default_factory=list)


_ACCESS = {"r": ACC_READ, "w": ACC_WRITE, "x": ACC_FETCH}
_HOST_FAULTS = {EPT_VIOLATION: "ept_violation", EPT_MISCONFIG: "ept_misconfig", NPT_FAULT: "npf"}


def host_root_and_mode(
    eptp: int, ept_levels: int | None, ept_ad: bool | None, npt: bool, maxphyaddr: int
) -> tuple[int, int, bool]:
    """(root hpa, walk length, A/D) from an EPTP (or nCR3) and the explicit overrides.

    EPT: the walk length is EPTP bits 5:3 + 1 and A/D is EPTP bit 6, unless ``ept_levels`` /
    ``ept_ad`` are given (they win). A bare root (bits 5:3 = 0) means a 4-level walk. NPT: the
    root is nCR3[51:12], the walk length ``ept_levels`` (default 4), A/D always maintained.
    """
    eptp = int(eptp)
    if not 0 <= eptp < 1 << 64:
        raise ValueError(f"EPTP/nCR3 {eptp:#x} does not fit in 64 bits")
    root = eptp & 0x000F_FFFF_FFFF_F000
    if root >> maxphyaddr:
        raise ValueError(f"host root {root:#x} is beyond MAXPHYADDR = {maxphyaddr}")
    if npt:
        levels = 4 if ept_levels is None else int(ept_levels)
        ad = False
    else:
        fields = decode_eptp(eptp)
        if ept_levels is not None:
            levels = int(ept_levels)
        elif eptp & 0x38 == 0:
            levels = 4
        else:
            levels = int(fields["levels"])
        ad = bool(fields["ad"]) if ept_ad is None else bool(ept_ad)
    if levels not in (4, 5):
        raise ValueError(f"the host walk length must be 4 or 5, not {levels}")
    return root, levels, ad


def translate_gpa(
    hmem: PhysicalMemory,
    eptp: int,
    gpa: int,
    access: str = "r",
    user_addr: bool = False,
    npt: bool = False,
    ept_levels: int | None = None,
    ept_ad: bool | None = None,
    mbec: bool = False,
    execute_only: bool = True,
    maxphyaddr: int = 52,
) -> GpaResult:
    """Translate one ``gpa`` through the EPT at ``eptp`` (or the NPT at nCR3 with ``npt``).

    A cold host walk (no caches) as the 2D walker does it for each gpa: sets the EPT A/D flags
    on success when A/D is on (NPT: always). ``user_addr`` says the access is to a user-mode
    linear address (fetches need bit 10 under ``mbec``). ``ept_levels``/``ept_ad`` override
    EPTP bits 5:3 and 6 (see :func:`host_root_and_mode`).
    """
    if access not in _ACCESS:
        raise ValueError(f"access must be 'r', 'w' or 'x', not {access!r}")
    gpa = int(gpa)
    if not 0 <= gpa < 1 << 52:
        raise ValueError(f"gpa {gpa:#x} is outside the 52-bit physical address space")
    root, levels, ad = host_root_and_mode(eptp, ept_levels, ept_ad, npt, int(maxphyaddr))
    htrail = np.zeros((MAX_LEVELS, TR_COLS), dtype=np.int64)
    hmem.reserve(0)
    status, code, hpa, shift, perms, n = host_translate(
        hmem.state,
        np.int64(root),
        np.int64(levels),
        ad,
        bool(npt),
        np.int64(gpa),
        _ACCESS[access],
        bool(user_addr),
        bool(mbec),
        bool(execute_only),
        np.int64(maxphyaddr),
        htrail,
    )
    refs = [(int(lv), int(pa)) for pa, lv in htrail[: int(n), [TR_ENTRY_PA, TR_LEVEL]]]
    if int(status) == EPT_OK:
        return GpaResult(None, 0, int(hpa), 1 << int(shift), int(perms), refs)
    return GpaResult(_HOST_FAULTS[int(status)], int(code), None, 0, int(perms), refs)


def make_eptp(root: int, levels: int = 4, ad: bool = False, memtype: int = EPT_MT_WB) -> int:
    """EPTP value: bits 2:0 paging-structure memory type, 5:3 walk length - 1, 6 A/D, 51:12 root."""
    if levels not in (4, 5):
        raise ValueError(f"EPT walk length must be 4 or 5, not {levels}")
    if root & 0xFFF or not 0 <= root < 1 << 52:
        raise ValueError(f"EPT root {root:#x} is not a 4 KiB-aligned 52-bit address")
    return root | (levels - 1) << EPTP_WALK_SHIFT | (EPTP_AD if ad else 0) | memtype


def decode_eptp(eptp: int) -> dict[str, int | bool]:
    """Fields of an EPTP value: ``root``, ``levels`` (bits 5:3 + 1), ``ad`` (bit 6), ``memtype``."""
    return {
        "root": eptp & 0x000F_FFFF_FFFF_F000,
        "levels": ((eptp >> EPTP_WALK_SHIFT) & 7) + 1,
        "ad": bool(eptp & EPTP_AD),
        "memtype": eptp & 7,
    }


def decode_ept_entry(value: int) -> dict[str, int | bool]:
    """Decode an EPT paging-structure entry into named fields (Python layer, for views).

    ``MT``/``IPAT``/``D`` mean something only in a leaf, ``LARGE`` only in a PDPTE/PDE, ``A``/``D``
    only with EPTP[6] = 1 and ``XU`` only under mode-based execute control.
    """
    return {
        "R": bool(value & 1),
        "W": bool(value >> 1 & 1),
        "X": bool(value >> 2 & 1),
        "MT": (value >> 3) & 7,
        "IPAT": bool(value >> 6 & 1),
        "LARGE": bool(value >> 7 & 1),
        "A": bool(value >> 8 & 1),
        "D": bool(value >> 9 & 1),
        "XU": bool(value >> 10 & 1),
        "SVE": bool(value >> 63 & 1),
        "ADDR": value & 0x000F_FFFF_FFFF_F000,
        "present": bool(value & 7),
    }


def _perm_bits(perms: str | int) -> int:
    if isinstance(perms, int):
        return perms
    bits = 0
    for ch in perms:
        bits |= {"r": PERM_R, "w": PERM_W, "x": PERM_X, "u": PERM_XU, "-": 0}[ch]
    return bits


_LEAF_LEVEL = {PAGE_4K: 1, PAGE_2M: 2, PAGE_1G: 3}


class _HostTables:
    """Radix tables over a PhysicalMemory, shared by the EPT and NPT builders."""

    TABLE_FLAGS = 0

    def __init__(self, mem: PhysicalMemory, levels: int = 4, root: int | None = None):
        if levels not in (4, 5):
            raise ValueError(f"host tables have 4 or 5 levels, not {levels}")
        self.mem = mem
        self.levels = levels
        self.root = self.new_table() if root is None else int(root)

    def new_table(self) -> int:
        """Allocate a zeroed table frame from the memory's allocator; return its address."""
        return self.mem.alloc_frame()

    @staticmethod
    def index(gpa: int, level: int) -> int:
        return (gpa >> (12 + 9 * (level - 1))) & 511

    def _is_table(self, entry: int, level: int) -> bool:
        raise NotImplementedError

    def _present(self, entry: int) -> bool:
        raise NotImplementedError

    def _walk_to(self, gpa: int, leaf_level: int) -> int:
        """Address of the entry at ``leaf_level`` on the path of ``gpa``, creating tables."""
        if gpa >> (12 + 9 * self.levels):
            raise ValueError(f"gpa {gpa:#x} does not fit a {self.levels}-level walk")
        table = self.root
        for level in range(self.levels, leaf_level, -1):
            epa = table + 8 * self.index(gpa, level)
            entry = self.mem.read_u64(epa)
            if not self._present(entry):
                nxt = self.new_table()
                self.mem.write_u64(epa, nxt | self.TABLE_FLAGS)
                table = nxt
            elif self._is_table(entry, level):
                table = entry & 0x000F_FFFF_FFFF_F000
            else:
                raise ValueError(f"gpa {gpa:#x}: a large page already maps level {level}")
        return table + 8 * self.index(gpa, leaf_level)

    def entry_hpa(self, gpa: int, level: int) -> int | None:
        """Host address of the entry of ``level`` on the path of ``gpa`` (None past a leaf or hole)."""
        table = self.root
        for lv in range(self.levels, level, -1):
            entry = self.mem.read_u64(table + 8 * self.index(gpa, lv))
            if not self._present(entry) or not self._is_table(entry, lv):
                return None
            table = entry & 0x000F_FFFF_FFFF_F000
        return table + 8 * self.index(gpa, level)

    def path(self, gpa: int) -> dict[int, int]:
        """{level: entry hpa} of the entries a walk of ``gpa`` reads (down to a leaf or a hole)."""
        out = {}
        table = self.root
        for level in range(self.levels, 0, -1):
            epa = table + 8 * self.index(gpa, level)
            out[level] = epa
            entry = self.mem.read_u64(epa)
            if not self._present(entry) or not self._is_table(entry, level):
                break
            table = entry & 0x000F_FFFF_FFFF_F000
        return out

    def _check_range(self, gpa: int, hpa: int, size: int, page_size: int) -> None:
        if page_size not in _LEAF_LEVEL:
            raise ValueError(f"page size must be 4 KiB, 2 MiB or 1 GiB, not {page_size:#x}")
        for name, x in (("gpa", gpa), ("hpa", hpa), ("size", size)):
            if x % page_size:
                raise ValueError(f"{name} {x:#x} is not a multiple of the page size {page_size:#x}")
        if size <= 0 or not 0 <= hpa < hpa + size <= 1 << 52:
            raise ValueError(f"bad host range {hpa:#x} + {size:#x}")


class EptBuilder(_HostTables):
    """Builds EPT paging structures in a :class:`PhysicalMemory` (Python layer).

    Tables come from ``mem.alloc_frame()``. Non-leaf entries grant R/W/X and XU (bits 0-2, 10),
    so the leaf alone decides the rights; :attr:`eptp` is the EPTP value to run the guest with.

    Parameters
    ----------
    mem : PhysicalMemory
        Host memory that holds the EPT (mutated).
    levels : {4, 5}
        EPT page-walk length.
    ad : bool
        Set EPTP bit 6 (accessed and dirty flags for EPT).
    root : int, optional
        Existing EPT root table; a new one is allocated by default.
    """

    TABLE_FLAGS = PERM_R | PERM_W | PERM_X | PERM_XU

    def __init__(self, mem: PhysicalMemory, levels: int = 4, ad: bool = False, root: int | None = None):
        super().__init__(mem, levels, root)
        self.ad = ad

    @property
    def eptp(self) -> int:
        """EPTP value: root, walk length - 1 in bits 5:3, A/D in bit 6, WB paging structures."""
        return make_eptp(self.root, self.levels, self.ad)

    def _present(self, entry: int) -> bool:
        return bool(entry & 7) or bool(entry & PERM_XU)

    def _is_table(self, entry: int, level: int) -> bool:
        return level >= 4 or (level > 1 and not entry & 0x80)

    def map(
        self,
        gpa: int,
        hpa: int,
        size: int | None = None,
        page_size: int = PAGE_4K,
        perms: str | int = "rwx",
        memtype: int = EPT_MT_WB,
        ipat: bool = False,
        user_exec: bool | None = None,
        extra: int = 0,
    ) -> None:
        """Map ``[gpa, gpa + size)`` to ``[hpa, hpa + size)`` with leaves of ``page_size``.

        Parameters
        ----------
        size : int, optional
            Bytes to map, a multiple of ``page_size`` (default: one page).
        perms : str or int
            Letters of ``"rwx"`` (and ``"u"`` for XU), or raw bits 2:0 (| bit 10).
        memtype : int
            EPT memory type, bits 5:3 of the leaf (0 UC, 1 WC, 4 WT, 5 WP, 6 WB).
        user_exec : bool, optional
            Bit 10 (user-mode execute under MBEC); defaults to the X right.
        extra : int
            Raw bits ORed into every leaf (A/D, suppress-#VE, or deliberately reserved bits).
        """
        size = page_size if size is None else int(size)
        self._check_range(gpa, hpa, size, page_size)
        bits = _perm_bits(perms)
        if user_exec is None:
            user_exec = bool(bits & PERM_X)
        if user_exec:
            bits |= PERM_XU
        leaf_level = _LEAF_LEVEL[page_size]
        for off in range(0, size, page_size):
            epa = self._walk_to(gpa + off, leaf_level)
            value = (hpa + off) | bits | (memtype & 7) << 3 | (0x40 if ipat else 0) | extra
            if leaf_level > 1:
                value |= 0x80
            self.mem.write_u64(epa, value)

    def protect(self, gpa: int, perms: str | int, user_exec: bool | None = None) -> None:
        """Change the R/W/X (and XU) rights of the leaf that maps ``gpa``."""
        leaf = self._leaf(gpa)
        bits = _perm_bits(perms)
        if user_exec is None:
            user_exec = bool(bits & PERM_X)
        if user_exec:
            bits |= PERM_XU
        value = self.mem.read_u64(leaf)
        self.mem.write_u64(leaf, (value & ~(7 | PERM_XU)) | bits)

    def unmap(self, gpa: int) -> None:
        """Clear the leaf that maps ``gpa`` (the entry becomes not present)."""
        self.mem.write_u64(self._leaf(gpa), 0)

    def _leaf(self, gpa: int) -> int:
        path = self.path(gpa)
        level = min(path)
        if not self._present(self.mem.read_u64(path[level])):
            raise ValueError(f"gpa {gpa:#x} is not mapped")
        return path[level]

    def translate(self, gpa: int) -> int | None:
        """hPA of ``gpa`` ignoring rights, or None if unmapped (Python helper, no side effects)."""
        path = self.path(gpa)
        level = min(path)
        entry = self.mem.read_u64(path[level])
        if not self._present(entry) or self._is_table(entry, level):
            return None
        size = 1 << (12 + 9 * (level - 1))
        return (entry & 0x000F_FFFF_FFFF_F000 & ~(size - 1)) | (gpa & (size - 1))


class NptBuilder(_HostTables):
    """Builds AMD nested page tables (ordinary long-mode format) in a :class:`PhysicalMemory`.

    Every nested access is a user-mode access, so every entry has U/S = 1. :attr:`ncr3` is the
    nested CR3 to run the guest with.
    """

    TABLE_FLAGS = 0x7  # P | R/W | U/S

    @property
    def ncr3(self) -> int:
        return self.root

    def _present(self, entry: int) -> bool:
        return bool(entry & 1)

    def _is_table(self, entry: int, level: int) -> bool:
        return level >= 4 or (level > 1 and not entry & 0x80)

    def map(
        self,
        gpa: int,
        hpa: int,
        size: int | None = None,
        page_size: int = PAGE_4K,
        writable: bool = True,
        executable: bool = True,
        user: bool = True,
        extra: int = 0,
    ) -> None:
        """Map ``[gpa, gpa + size)`` to ``[hpa, hpa + size)`` with leaves of ``page_size``."""
        size = page_size if size is None else int(size)
        self._check_range(gpa, hpa, size, page_size)
        flags = 0x1 | (0x2 if writable else 0) | (0x4 if user else 0) | (0 if executable else 1 << 63) | extra
        leaf_level = _LEAF_LEVEL[page_size]
        for off in range(0, size, page_size):
            epa = self._walk_to(gpa + off, leaf_level)
            self.mem.write_u64(epa, (hpa + off) | flags | (0x80 if leaf_level > 1 else 0))


__all__ = [
    "EPT_MISCONFIG",
    "EPT_OK",
    "EPT_VIOLATION",
    "EQ_EXECUTABLE",
    "EQ_FETCH",
    "EQ_FINAL",
    "EQ_GLA_VALID",
    "EQ_READ",
    "EQ_READABLE",
    "EQ_USER_EXECUTABLE",
    "EQ_WRITABLE",
    "EQ_WRITE",
    "EptBuilder",
    "HT_COLS",
    "HT_PFN",
    "HT_ROW",
    "GpaResult",
    "NPF_FINAL",
    "NPF_TABLE",
    "NPT_CTL",
    "NPT_FAULT",
    "NptBuilder",
    "PERM_R",
    "PERM_W",
    "PERM_X",
    "PERM_XU",
    "decode_ept_entry",
    "decode_eptp",
    "ept_walk_core",
    "host_translate",
    "make_eptp",
    "npt_walk_core",
    "translate_gpa",
]
