"""The privileged instructions of the guest kernel, in whichever mode the machine runs.

MOV CR3 (:func:`load_cr3`, :func:`switch_to`), MOV from CR3 (in :func:`cpu_flush_tlb`) and
INVLPG (:func:`cpu_invlpg`) execute on the hardware natively and under nested paging; under
shadow paging they trap and the VMM does its part (root switch, resynchronisation of unsync
shadow pages) before the hardware's. Each is an event of the VM's event log
(:mod:`mmu.modes.vmm`, "Event log"), in every mode.
"""

from __future__ import annotations

from mmu._jit import inner
from mmu.guest.os import O_CUR, O_PCIDE, OS_OK, OS_OUT_OF_FRAMES, P_LOADS, P_PCID, P_ROOT, os_process
from mmu.hw.tlb import hw_invlpg, hw_mov_cr3
from mmu.modes.native import C_ASID, C_CTL
from mmu.modes.shadow import sh_invlpg, sh_load_cr3, sh_read_cr3
from mmu.modes.vmm import EV_CR3_LOAD, EV_CR3_READ, EV_INVLPG, MODE_SHADOW, V_MODE, log_event
from mmu.stats import S_CR3_LOADS
from mmu.x86.bits import CTL_LA57, CTL_USER


@inner
def load_cr3(gm, osst, tlb, psc, stats, cfg, row, no_flush):
    """MOV CR3 to process ``row``'s root and PCID (bit 63 = ``no_flush``). False if out of frames."""
    procs = osst.procs
    ometa = osst.ometa
    stats[S_CR3_LOADS] += 1
    vm = gm.vm
    log_event(vm, EV_CR3_LOAD, procs[row, P_ROOT], procs[row, P_PCID], 1 if no_flush else 0)
    if vm.vmeta[V_MODE] == MODE_SHADOW:
        # CR3 loads trap: the VMM switches shadow roots (and flushes on its own terms).
        ctl = cfg[C_CTL] | CTL_USER
        return sh_load_cr3(
            gm.mem, gm.halloc, vm, gm.sh, stats, ctl, procs[row, P_ROOT], procs[row, P_PCID], no_flush,
            ometa[O_PCIDE] != 0,
        )  # fmt: skip
    hw_mov_cr3(tlb, psc, cfg[C_ASID], ometa[O_PCIDE] != 0, procs[row, P_PCID], no_flush)
    return True


@inner
def switch_to(gm, galloc, osst, tlb, psc, stats, cfg, pid):
    """Make ``pid`` the current process (creating it on first sight) and load its CR3."""
    st, row, _created = os_process(osst, gm, galloc, pid)
    if st != OS_OK:
        return st
    procs = osst.procs
    ometa = osst.ometa
    ometa[O_CUR] = row
    # Linux keeps a PCID's translations across switches (CR3 bit 63 set) once it has run.
    no_flush = ometa[O_PCIDE] != 0 and procs[row, P_LOADS] > 0
    procs[row, P_LOADS] += 1
    if not load_cr3(gm, osst, tlb, psc, stats, cfg, row, no_flush):
        return OS_OUT_OF_FRAMES
    return OS_OK


@inner
def cpu_invlpg(gm, osst, tlb, psc, stats, cfg, va):
    """The guest kernel's INVLPG ``va`` in the current process (shadow: trapped)."""
    procs = osst.procs
    ometa = osst.ometa
    row = ometa[O_CUR]
    vm = gm.vm
    ctl = cfg[C_CTL] | CTL_USER
    log_event(vm, EV_INVLPG, va, 0, 0)
    if vm.vmeta[V_MODE] == MODE_SHADOW:
        sh_invlpg(gm.mem, vm, gm.sh, tlb, psc, stats, ctl, cfg[C_ASID], va)
    else:
        hw_invlpg(tlb, psc, va, cfg[C_ASID], procs[row, P_PCID], (ctl & CTL_LA57) != 0)


@inner
def cpu_flush_tlb(gm, osst, tlb, psc, stats, cfg):
    """The guest kernel's full local TLB flush, as Linux's ``native_flush_tlb_local``:
    ``write_cr3(read_cr3())`` with bit 63 clear flushes the current PCID's translations. Under
    shadow paging both the read and the load trap."""
    log_cr3_read(gm, osst)
    if gm.vm.vmeta[V_MODE] == MODE_SHADOW:
        sh_read_cr3(gm.sh, stats)
    return load_cr3(gm, osst, tlb, psc, stats, cfg, osst.ometa[O_CUR], False)


@inner
def log_cr3_read(gm, osst):
    """Log the guest kernel's MOV from CR3 (current process) as an ``EV_CR3_READ`` event; the
    caller counts the exit (shadow paging: CR3-store exiting)."""
    row = osst.ometa[O_CUR]
    log_event(gm.vm, EV_CR3_READ, osst.procs[row, P_ROOT], osst.procs[row, P_PCID], 0)
