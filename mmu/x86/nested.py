"""The 2D (nested) page walk: gva -> gpa through the guest tables, each gpa -> hpa through EPT/NPT.

With nested paging the guest's CR3 and every guest paging-structure entry hold guest-physical
addresses, so the hardware translates each of them through the host tables before it can read
the guest entry, and finally translates the data gpa. A cold walk with n guest levels and m
host levels reads (n + 1)(m + 1) - 1 entries: 24 for 4 + 4, 35 for 5 + 5.

Kernels
-------
:func:`mmu.hw.walk2d.nested_walk_core` walks from any guest table at any level (the root, or a table a guest
paging-structure cache pointed to) and records every entry read in ``refs_out`` **in the order
the hardware issues them**: for each guest level, the m host references that translate the gpa
of the guest entry, then the guest entry itself; finally the m host references of the data gpa.

* The guest dimension applies every rule of the 1D walk (:mod:`mmu.x86.walk`): reserved bits,
  rights (R/W and U/S ANDed, XD ORed; CR0.WP, NXE, SMEP, SMAP, PKRU), the #PF error code, and
  A/D flags written only when the whole access succeeds.
* Guest A/D updates are guest-physical *writes* (SDM 28.2.3.2): an entry whose A (or, for a
  write, the leaf's D) must be set needs EPT write permission on the page holding it, or the
  walk ends in an EPT violation on that paging-structure gpa (exit qualification bit 1,
  bit 8 = 0). With EPT A/D on (EPTP bit 6) every guest paging-structure access is already
  treated as a write (28.2.3.2, minix86 ``o_fe12b1e2a880e0ce-1157``), and such a violation sets
  both bits 0 and 1 (footnote of SDM Table 27-7, quoted in Intel community thread 1062578).
* AMD nested paging (``npt``): host tables in the ordinary long-mode format, walked as user-mode
  accesses; guest page-table accesses are user *writes* at the nested level (AMD APM vol. 2,
  15.25.5; Bochs ``translate_linear_long_mode`` passes ``BX_RW`` for them; KVM's ``nested_access`` is
  ``PFERR_WRITE_MASK | PFERR_USER_MASK``). Faults are #NPF with bit 32 (final gpa) or bit 33
  (guest page table) of EXITINFO1 set.

Exit qualification (SDM vol. 3C Table 27-7, minix86 ``o_fe12b1e2a880e0ce-1126``/``-1127``):
bits 0/1/2 data read / data write / fetch; bits 3/4/5 the AND of bits 0/1/2 of the EPT entries
used to translate the faulting gpa (zeros ANDed in by a not-present entry); bit 6 the AND of
bit 10 (mode-based execute control only, else 0); bit 7 = 1 (the guest linear address is valid
for every violation modelled here: PAE PDPTE loads by MOV to CR3 are not); bit 8 = 1 iff the
faulting access was to the final gpa, 0 for a guest paging-structure access or A/D update.
Bits 9-11 ("advanced VM-exit information") and 12 (NMI unblocking) are reported as 0. An EPT
misconfiguration has no exit qualification (0).

Simulator choices (each an SDM/APM ambiguity)
---------------------------------------------
* Order: guest walk, guest rights check (#PF), EPT write checks of the guest A/D updates (top
  level first), then the translation of the data gpa; guest A/D flags are committed last, only
  on success (the 1D rule of :mod:`mmu.x86.walk`). A guest #PF therefore wins over an EPT fault
  on the data gpa, and an A/D-update violation is reported after all guest levels were read (a
  processor that sets A level by level could exit before reading the lower levels; the SDM does
  not fix the order). Such a violation sets exit-qualification bit 1 only: the SDM leaves bit 0
  of a read-modify-write to the implementation (27.2.1).
* EPT (or NPT) A/D flags of each gpa translation are written as soon as that translation
  succeeds and its guest-physical access happens, even if the 2D walk faults later: the SDM sets
  them "whenever the processor uses an EPT paging-structure entry" (28.2.4).
* The guest's MAXPHYADDR equals the host's (one ``maxphyaddr``).
* ``page_shift`` = min(guest page size, host page size of the data gpa).

:mod:`mmu.hw.walk2d` runs these rules on the hardware's caches (``nested_walk_core``); this
module holds the architecture only: the outcome codes, the reference layout and the fault
codes. :func:`mmu.hw.walk2d.walk_nested` is the Python wrapper (public API ``mmu.walk_nested``).
"""

from __future__ import annotations

import numpy as np

from mmu._jit import jit
from mmu.x86.bits import (
    WALK_GP,
    WALK_OK,
    WALK_PF,
)
from mmu.x86.ept import (
    EPT_MISCONFIG,
    EPT_VIOLATION,
    EQ_FINAL,
    EQ_GLA_VALID,
    EQ_READ,
    NPF_FINAL,
    NPF_TABLE,
    NPT_FAULT,
)
from mmu.x86.walk import (
    MAX_LEVELS,
    TR_ENTRY_PA,
    TR_LEVEL,
)

# --- outcome codes of a 2D walk -----------------------------------------------------------
NESTED_OK = WALK_OK  # 0
NESTED_PF = WALK_PF  # 1: guest #PF
NESTED_GP = WALK_GP  # 2: non-canonical gva
NESTED_EPT_VIOLATION = EPT_VIOLATION  # 3
NESTED_EPT_MISCONFIG = EPT_MISCONFIG  # 4
NESTED_NPF = NPT_FAULT  # 5: AMD #VMEXIT(NPF)

# --- ``refs_out`` rows: one per entry read, in hardware order --------------------------------
RF_DIM = 0  # DIM_GUEST or DIM_HOST
RF_LEVEL = 1  # level of the entry (5..1) in its own dimension
RF_HPA = 2  # host-physical address of the entry
RF_COLS = 3
DIM_GUEST = 0
DIM_HOST = 1
MAX_REFS = (MAX_LEVELS + 1) * (MAX_LEVELS + 1) - 1  # 35: a cold 5 + 5 walk

# --- ``gtrail`` rows: one per guest entry read (TR_* columns as in mmu.x86.walk, plus two) ----
# TR_ENTRY_PA holds the entry's gpa, TR_NEXT the gpa it points to, TR_ATTRS the guest rights.
GT_ENTRY_HPA = 4  # host-physical address the entry was read from
GT_HPERMS = 5  # EPT rights (PERM_* bits) of the host page holding the entry
GT_ROW = 6  # row of the host memory's ``data`` array holding the entry (A/D updates skip the hash)
GT_COLS = 7


@jit(inline="always")
def host_fault_code(hs, hq, table_access, ept_ad):
    """Exit qualification (EPT) or EXITINFO1 (NPT) of a failed gpa translation.

    ``table_access``: the gpa was that of a guest paging-structure entry (else the data gpa).
    """
    if hs == NPT_FAULT:
        return hq | (NPF_TABLE if table_access else NPF_FINAL)
    if hs == EPT_MISCONFIG:
        return np.int64(0)
    q = hq | EQ_GLA_VALID
    if table_access:
        if ept_ad:
            q |= EQ_READ  # a read treated as a write: bits 0 and 1 both set (Table 27-7 note 1)
    else:
        q |= EQ_FINAL
    return q


@jit(inline="always")
def _copy_host_refs(htrail, hn, refs_out, nr):
    for i in range(hn):
        refs_out[nr, RF_DIM] = DIM_HOST
        refs_out[nr, RF_LEVEL] = htrail[i, TR_LEVEL]
        refs_out[nr, RF_HPA] = htrail[i, TR_ENTRY_PA]
        nr += 1
    return nr
