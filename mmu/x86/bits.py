"""Bit definitions from the Intel SDM (vol. 3A ch. 4, vol. 3C ch. 28).

Raw entry words are ``uint64``; constants that are compared or masked against
them inside kernels are ``np.uint64`` so that numba never promotes to float64.
Plain ``int`` copies (suffix-free names in ``INT``) are for the Python layer.
"""

from __future__ import annotations

import numpy as np

U = np.uint64

# --- 4-level / 5-level paging entries (SDM Tables 4-15..4-20) -------------------------------
PTE_P = U(1 << 0)  # present
PTE_RW = U(1 << 1)  # read/write
PTE_US = U(1 << 2)  # user/supervisor
PTE_PWT = U(1 << 3)
PTE_PCD = U(1 << 4)
PTE_A = U(1 << 5)  # accessed
PTE_D = U(1 << 6)  # dirty (leaf only)
PTE_PS = U(1 << 7)  # page size (PDPTE/PDE); PAT in a 4K PTE
PTE_G = U(1 << 8)  # global (leaf only, CR4.PGE=1)
PTE_PAT_LARGE = U(1 << 12)  # PAT bit of a 2M/1G leaf
PTE_XD = U(1 << 63)  # execute-disable (IA32_EFER.NXE=1; reserved otherwise)
PKEY_SHIFT = 59  # protection key, bits 62:59 of a leaf (CR4.PKE=1)
PKEY_MASK = U(0xF << PKEY_SHIFT)
ADDR_MASK_52 = U(0x000F_FFFF_FFFF_F000)  # bits 51:12

# --- #PF error code (SDM 4.7) ---------------------------------------------------------------
PF_P = 1 << 0  # 0: not-present; 1: protection violation
PF_W = 1 << 1  # write access
PF_U = 1 << 2  # user-mode access
PF_RSVD = 1 << 3  # reserved bit set in some paging-structure entry
PF_I = 1 << 4  # instruction fetch (with NXE=1 or SMEP=1)
PF_PK = 1 << 5  # protection-key violation

# --- access kinds (shared by walkers, TLBs and traces) -------------------------------------
ACC_READ = 0
ACC_WRITE = 1
ACC_FETCH = 2

# --- walk control flags, packed into one int64 argument (``ctl``) -------------------------
CTL_USER = 1 << 0  # CPL = 3
CTL_WP = 1 << 1  # CR0.WP
CTL_NXE = 1 << 2  # IA32_EFER.NXE
CTL_SMEP = 1 << 3  # CR4.SMEP
CTL_SMAP = 1 << 4  # CR4.SMAP
CTL_AC = 1 << 5  # EFLAGS.AC
CTL_LA57 = 1 << 6  # CR4.LA57 (5-level paging)
CTL_PKE = 1 << 7  # CR4.PKE (PKRU passed separately)
CTL_PGE = 1 << 8  # CR4.PGE (G bit honoured)

# --- walk outcome codes returned by kernels --------------------------------------------------
WALK_OK = 0
WALK_PF = 1
WALK_GP = 2

# --- page sizes -----------------------------------------------------------------------------
PAGE_4K = 1 << 12
PAGE_2M = 1 << 21
PAGE_1G = 1 << 30

# --- EPT entries (SDM vol. 3C 28.3.2) --------------------------------------------------------
EPT_R = U(1 << 0)
EPT_W = U(1 << 1)
EPT_X = U(1 << 2)
EPT_MT_SHIFT = 3  # memory type, bits 5:3 (leaf)
EPT_MT_MASK = U(0x7 << EPT_MT_SHIFT)
EPT_IPAT = U(1 << 6)  # ignore PAT (leaf)
EPT_LARGE = U(1 << 7)  # 2M PDE / 1G PDPTE
EPT_A = U(1 << 8)  # accessed (EPTP[6]=1)
EPT_D = U(1 << 9)  # dirty (leaf, EPTP[6]=1)
EPT_XU = U(1 << 10)  # user-mode execute (MBEC)
EPT_SVE = U(1 << 63)  # suppress #VE
EPTP_AD = 1 << 6  # EPTP bit 6: enable accessed/dirty flags
EPTP_WALK_SHIFT = 3  # EPTP bits 5:3 = page-walk length - 1


def phys_addr_mask(maxphyaddr: int) -> int:
    """Mask of address bits (M-1):12 for MAXPHYADDR = ``maxphyaddr``."""
    return ((1 << maxphyaddr) - 1) & ~0xFFF


def decode_pte(value: int) -> dict[str, int | bool]:
    """Decode a paging-structure entry into named fields (Python layer, for views and errors)."""
    return {
        "P": bool(value & 1),
        "RW": bool(value >> 1 & 1),
        "US": bool(value >> 2 & 1),
        "PWT": bool(value >> 3 & 1),
        "PCD": bool(value >> 4 & 1),
        "A": bool(value >> 5 & 1),
        "D": bool(value >> 6 & 1),
        "PS": bool(value >> 7 & 1),
        "G": bool(value >> 8 & 1),
        "XD": bool(value >> 63 & 1),
        "PKEY": (value >> PKEY_SHIFT) & 0xF,
        "ADDR": value & int(ADDR_MASK_52),
    }


def pf_error_string(code: int) -> str:
    """Human-readable #PF error code, e.g. ``"P|W|U"``."""
    names = [(PF_P, "P"), (PF_W, "W"), (PF_U, "U"), (PF_RSVD, "RSVD"), (PF_I, "I"), (PF_PK, "PK")]
    parts = [n for bit, n in names if code & bit]
    return "|".join(parts) if parts else "0"


# --- combined translation attributes ("attrs"), as walkers return them and TLB/PSC entries
# hold them. R/W and U/S are the AND over all levels used, XD the OR (SDM 4.10.2.2/4.10.3.1);
# D, G and the protection key come from the leaf.
TA_RW = 1 << 0
TA_US = 1 << 1
TA_XD = 1 << 2
TA_D = 1 << 3  # leaf dirty flag (a write through a clean entry must re-walk to set D)
TA_G = 1 << 4  # global (leaf G with CR4.PGE=1)
TA_PWT = 1 << 5
TA_PCD = 1 << 6
TA_PKEY_SHIFT = 8  # 4 bits: protection key of the leaf
TA_PKEY_MASK = 0xF << TA_PKEY_SHIFT
TA_ALL_RIGHTS = TA_RW | TA_US  # starting value of the AND over levels
