"""What the guest's CPU does, in whichever virtualization mode the machine runs.

The replay engine and the guest executor both drive the guest through these kernels, so one
translation path serves every input:

* :func:`translate_access` -- a user-mode load, store or fetch: the hardware translation of
  the mode (native 1D walk; nested 2D walk with EPT-violation exits; shadow 1D walk of the
  shadow tables with shadow page-fault exits), then the guest kernel's #PF handler
  (:func:`mmu.guest.osops.os_page_fault`).

The guest kernel's privileged instructions (MOV CR3, INVLPG) are in :mod:`mmu.modes.cpuops`.

``gm = GuestMemory(mem, halloc, vm, stats, sh)`` (:mod:`mmu.state`) is the guest-memory context of :mod:`mmu.guest.os`.
``hcache`` is the nested TLB and host PSCs; outside nested mode it is a disabled one that is
never touched (one signature for every mode, so the path compiles once).
"""

from __future__ import annotations

import numpy as np

from mmu._jit import inner, jit
from mmu.guest.os import (
    OS_OK,
    OS_OUT_OF_FRAMES,
    P_PCID,
    P_ROOT,
    os_cr3,
)
from mmu.guest.osops import PF_FIXED, os_page_fault
from mmu.hw.ntlb import host_cache_drop
from mmu.hw.tlb import tlb_commit, tlb_peek
from mmu.modes.native import C_ASID, C_CTL, C_MAXPHYADDR, C_PKRU, hw_translate
from mmu.modes.nested import HW_EPT_MISCONFIG, HW_EPT_VIOLATION, hw_translate_nested
from mmu.modes.shadow import (
    SHF_EMULATED,
    SHF_NO_MEMSLOT,
    SHF_OUT_OF_FRAMES,
    SHF_RETRY,
    SM_PREFAULT,
    sh_before_entry,
    sh_page_fault,
    sh_pending,
    sh_root_hpa,
)
from mmu.modes.vmm import (
    EV_ACCESS,
    EV_GUEST_PF,
    EV_IN_FAULT,
    EV_PREFAULT,
    MODE_NATIVE,
    MODE_NESTED,
    MODE_SHADOW,
    V_MODE,
    VM_OK,
    log_event,
    vm_back,
    vm_gpa_of,
    vm_hpa,
)
from mmu.stats import (
    EXIT_EPT_MISCONFIG,
    EXIT_EPT_VIOLATION,
    S_BAD_ACCESSES,
    S_EXIT_BASE,
    S_GUEST_PF,
    S_VM_EXITS,
)
from mmu.x86.bits import ACC_FETCH, ACC_WRITE, CTL_LA57, CTL_USER, CTL_WP, TA_D, WALK_GP, WALK_OK, WALK_PF
from mmu.x86.walk import access_fault, is_canonical


@jit(inline="always")
def translate_hit(vm, sh, osst, tlb, cfg, row, va, access):
    """The TLB-hit fast path of :func:`translate_access`, inlined into the loops that call it.

    When the access is an L1 or L2 TLB hit that translate_access would complete without a walk
    or a fault (rights allow it; a write finds D set; shadow: no VMM flush pending), it applies
    the lookup (:func:`mmu.hw.tlb.tlb_commit`: counters, LRU, an L2 hit's copy into L1) and
    returns ``(True, gpa)``: what translate_access would have returned. Otherwise it changes
    nothing and returns ``(False, 0)``, and the caller calls translate_access. (A call passes
    the whole machine state by value, which costs several times the hit itself.)
    """
    mode = vm.vmeta[V_MODE]
    z = np.int64(0)
    if mode == MODE_SHADOW and sh_pending(sh):
        return False, z
    ctl = cfg[C_CTL] | CTL_USER
    if mode == MODE_SHADOW:
        ctl |= CTL_WP  # the hardware walks the shadow tables with CR0.WP forced on
    if not is_canonical(va, (ctl & CTL_LA57) != 0):
        return False, z
    side = 1 if access == ACC_FETCH else 0
    level, i, s, shift = tlb_peek(tlb, va, cfg[C_ASID], osst.procs[row, P_PCID], side)
    if level == 0:
        return False, z
    at = tlb.attrs[i]
    if access_fault(at, access, ctl, cfg[C_PKRU]) != 0 or (access == ACC_WRITE and (at & TA_D) == 0):
        return False, z
    level, frame, shift, at = tlb_commit(tlb, va, side, level, i, s, shift)
    pa = frame | (va & ((np.int64(1) << shift) - 1))
    if mode == MODE_NATIVE:
        return True, pa
    return True, vm_gpa_of(vm, pa)


@inner
def translate_access(gm, galloc, hcache, osst, tlb, psc, ptc, stats, cfg, row, va, access, scratch):
    """Translate one user access of process ``row``, running the VMM's exit handlers and the
    guest's #PF handler as needed.

    Returns (status, gpa): status OS_OK with the guest-physical address (or -1 when the guest
    could not map it), OS_OUT_OF_FRAMES.

    Each attempt is an ``EV_ACCESS`` in the VM's event log, and a fault delivered to the guest an
    ``EV_GUEST_PF`` (:mod:`mmu.modes.vmm`, "Event log"); a TLB hit of :func:`translate_hit` is
    neither.
    """
    mem = gm.mem
    vm = gm.vm
    sh = gm.sh
    trail, gtrail, htrail, refs = scratch
    procs = osst.procs
    cr3 = os_cr3(osst, row)
    pcid = procs[row, P_PCID]
    ctl = cfg[C_CTL] | CTL_USER
    shadow = vm.vmeta[V_MODE] == MODE_SHADOW
    nested = vm.vmeta[V_MODE] == MODE_NESTED
    for _attempt in range(8):
        log_event(vm, EV_ACCESS, va, access, 1)
        if nested:
            status, code, _hpa, pa = hw_translate_nested(
                mem, vm, hcache, tlb, psc, ptc, stats, cfg, cr3, pcid, va, access, ctl, gtrail, htrail, refs
            )
            if status == HW_EPT_VIOLATION:
                # VM exit: the VMM backs the guest frame, maps it in the EPT, resumes the guest.
                stats[S_VM_EXITS] += 1
                stats[S_EXIT_BASE + EXIT_EPT_VIOLATION] += 1
                if vm_hpa(vm, pa) >= 0:
                    stats[S_BAD_ACCESSES] += 1  # a rights violation the VMM did not cause
                    return OS_OK, np.int64(-1)
                st = vm_back(mem, gm.halloc, vm, pa >> 12)
                if st != VM_OK:
                    return OS_OUT_OF_FRAMES, np.int64(-1)
                host_cache_drop(hcache, pa)
                continue
            if status == HW_EPT_MISCONFIG:
                stats[S_VM_EXITS] += 1
                stats[S_EXIT_BASE + EXIT_EPT_MISCONFIG] += 1
                stats[S_BAD_ACCESSES] += 1
                return OS_OK, np.int64(-1)
        else:
            hcr3 = cr3
            hctl = ctl
            if shadow:
                if sh_pending(sh) and not sh_before_entry(mem, gm.halloc, vm, sh, tlb, psc, stats, ctl, cfg[C_ASID]):
                    return OS_OUT_OF_FRAMES, np.int64(-1)
                # The hardware walks the shadow tables, with CR0.WP forced on (as KVM runs it).
                hcr3 = sh_root_hpa(sh) | pcid
                hctl = ctl | CTL_WP
            status, code, pa = hw_translate(mem, tlb, psc, ptc, stats, cfg, hcr3, pcid, va, access, hctl, trail)
            if shadow:
                if status == WALK_OK:
                    pa = vm_gpa_of(vm, pa)
                elif status == WALK_PF:
                    # #PF exits to the VMM, which decides what the guest sees.
                    vm.elog[0, EV_IN_FAULT] = 1
                    r, v = sh_page_fault(
                        mem, gm.halloc, vm, sh, stats, cfg[C_PKRU], cfg[C_MAXPHYADDR], procs[row, P_ROOT], va, access,
                        ctl, trail, code, False,
                    )  # fmt: skip
                    vm.elog[0, EV_IN_FAULT] = 0
                    if r == SHF_RETRY:
                        continue
                    if r == SHF_EMULATED:
                        return OS_OK, v
                    if r == SHF_OUT_OF_FRAMES:
                        return OS_OUT_OF_FRAMES, np.int64(-1)
                    if r == SHF_NO_MEMSLOT:
                        stats[S_BAD_ACCESSES] += 1
                        return OS_OK, np.int64(-1)
                    code = v
        if status == WALK_OK:
            return OS_OK, pa
        if status == WALK_GP:
            stats[S_BAD_ACCESSES] += 1
            return OS_OK, np.int64(-1)
        stats[S_GUEST_PF] += 1
        log_event(vm, EV_GUEST_PF, va, code, 0)
        st, outcome = os_page_fault(gm, galloc, osst, tlb, psc, stats, cfg, row, va, access, code, ctl)
        if st != OS_OK:
            return st, np.int64(-1)
        if outcome != PF_FIXED:
            return OS_OK, np.int64(-1)
        if shadow and sh.smeta[SM_PREFAULT] != 0:
            # PVM's prefault: the VMM fills the shadow entry as the guest returns from the #PF
            if sh_pending(sh) and not sh_before_entry(mem, gm.halloc, vm, sh, tlb, psc, stats, ctl, cfg[C_ASID]):
                return OS_OUT_OF_FRAMES, np.int64(-1)
            log_event(vm, EV_PREFAULT, va, access, 0)
            vm.elog[0, EV_IN_FAULT] = 1
            r, _v = sh_page_fault(
                mem, gm.halloc, vm, sh, stats, cfg[C_PKRU], cfg[C_MAXPHYADDR], procs[row, P_ROOT], va, access, ctl,
                trail, 0, True,
            )  # fmt: skip
            vm.elog[0, EV_IN_FAULT] = 0
            if r == SHF_OUT_OF_FRAMES:
                return OS_OUT_OF_FRAMES, np.int64(-1)
    stats[S_BAD_ACCESSES] += 1
    return OS_OK, np.int64(-1)
