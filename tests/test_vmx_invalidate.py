"""INVEPT and INVVPID (SDM vol. 3C 28.3.3): what each drops, and that no stale mapping survives.

Scenario: a nested machine replays part of a real trace; then the hypervisor moves one guest
frame to another host frame (rewrites the EPT leaf, as KVM does when it migrates a page).
Without INVEPT the hardware may keep using the old combined and guest-physical mappings (the
SDM allows it); after INVEPT it must use the new one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmu.engine import Machine, MachineConfig
from mmu.hw.ntlb import hw_invept, hw_invvpid
from mmu.hw.tlb import HW_GP, HW_OK, tlb_fill, tlb_lookup
from mmu.memory import alloc_frame, mem_read, mem_write
from mmu.modes.native import C_ASID
from mmu.modes.nested import hw_translate_nested
from mmu.modes.vmm import vm_hpa
from mmu.trace.format import TraceReader
from mmu.x86.bits import ACC_READ, CTL_USER, TA_G, TA_RW, TA_US, WALK_OK

TRACE = Path(__file__).resolve().parent.parent / "traces" / "ls-usr.trace"


def _machine() -> tuple[Machine, int]:
    records = np.array(TraceReader(TRACE).memmap()[:5000])
    m = Machine(MachineConfig(mode="nested"))
    m.run(records)
    va = int(records["addr"][records["op"] == 0][-1])
    return m, va


def _translate(m: Machine, va: int) -> tuple[int, int, int]:
    procs, ometa = m.osst.procs, m.osst.ometa
    row = int(ometa[0])
    cr3, pcid = int(procs[row, 1] | procs[row, 2]), int(procs[row, 2])
    trail, gtrail, htrail, refs = m._scratch
    st, _code, hpa, gpa = hw_translate_nested(
        m.mem.state, m.vm, m.hcache, m.tlb, m.psc, m.ptc, m.stats, m.cfg, np.int64(cr3), np.int64(pcid),
        np.int64(va), ACC_READ, np.int64(m.cfg[0] | CTL_USER), gtrail, htrail, refs,
    )  # fmt: skip
    assert st == WALK_OK
    return int(hpa), int(gpa), pcid


def _ept_leaf_hpa(m: Machine, gpa: int) -> int:
    table = int(m.vm.vmeta[1])
    for level in range(4, 1, -1):
        e = int(mem_read(m.mem.state, np.int64(table + ((gpa >> (12 + 9 * (level - 1))) & 511) * 8)))
        assert e & 7 and not e & 0x80, "a present EPT entry that references a table"
        table = e & 0x000F_FFFF_FFFF_F000
    return table + ((gpa >> 12) & 511) * 8


def _move_guest_frame(m: Machine, gpa: int) -> int:
    """The VMM moves guest frame ``gpa`` to a fresh host frame; returns the new hpa of ``gpa``."""
    leaf = _ept_leaf_hpa(m, gpa)
    old = int(mem_read(m.mem.state, np.int64(leaf)))
    new_hfn = int(alloc_frame(m.mem.alloc.state))
    m.mem.reserve(4)
    mem_write(m.mem.state, np.int64(leaf), np.uint64((new_hfn << 12) | (old & 0xFFF)))
    m.vm.gfn2hfn[gpa >> 12] = new_hfn
    m.vm.hfn2gfn[new_hfn] = gpa >> 12
    return (new_hfn << 12) | (gpa & 0xFFF)


def test_invept_removes_stale_gpa_mappings():
    m, va = _machine()
    hpa, gpa, _ = _translate(m, va)
    assert hpa == int(vm_hpa(m.vm, np.int64(gpa)))
    new_hpa = _move_guest_frame(m, gpa)
    assert new_hpa != hpa
    # Still cached: the combined TLB entry keeps the old frame (SDM: software must invalidate).
    assert _translate(m, va)[0] == hpa
    assert hw_invept(m.tlb, m.psc, m.hcache, 1) == HW_OK
    assert _translate(m, va)[0] == new_hpa
    ntlb_valid = int((m.hcache.ntlb.tag != -1).sum())
    assert ntlb_valid >= 1  # refilled by the walk after INVEPT


def test_invvpid_drops_combined_not_guest_physical():
    m, va = _machine()
    _translate(m, va)
    vpid = int(m.cfg[C_ASID])
    _, _, pcid = _translate(m, va)
    assert tlb_lookup(m.tlb, np.int64(va), vpid, pcid, 0)[0] > 0
    ntlb_before = int((m.hcache.ntlb.tag != -1).sum())
    assert hw_invvpid(m.tlb, m.psc, 0, vpid, np.int64(va)) == HW_OK
    assert tlb_lookup(m.tlb, np.int64(va), vpid, pcid, 0)[0] == 0
    assert int((m.hcache.ntlb.tag != -1).sum()) == ntlb_before  # guest-physical mappings stay


@pytest.mark.parametrize("kind, global_survives", [(1, False), (3, True)])
def test_invvpid_single_context_and_globals(kind, global_survives):
    m, _ = _machine()
    vpid = int(m.cfg[C_ASID])
    g_va, l_va = 0x7000_0000_0000, 0x7000_0010_0000
    tlb_fill(m.tlb, np.int64(g_va), vpid, 1, 0, np.int64(0x1234000), 12, TA_RW | TA_US | TA_G)
    tlb_fill(m.tlb, np.int64(l_va), vpid, 1, 0, np.int64(0x5678000), 12, TA_RW | TA_US)
    tlb_fill(m.tlb, np.int64(l_va), 0, 0, 0, np.int64(0x9999000), 12, TA_RW | TA_US)  # host (VPID 0)
    assert hw_invvpid(m.tlb, m.psc, kind, vpid, np.int64(0)) == HW_OK
    assert (tlb_lookup(m.tlb, np.int64(g_va), vpid, 1, 0)[0] > 0) == global_survives
    assert tlb_lookup(m.tlb, np.int64(l_va), vpid, 1, 0)[0] == 0
    assert tlb_lookup(m.tlb, np.int64(l_va), 0, 0, 0)[0] > 0  # other VPIDs untouched


def test_invvpid_all_contexts_spares_vpid_zero_and_bad_operands():
    m, va = _machine()
    vpid = int(m.cfg[C_ASID])
    tlb_fill(m.tlb, np.int64(va), 0, 0, 0, np.int64(0x9999000), 12, TA_RW | TA_US)
    assert hw_invvpid(m.tlb, m.psc, 2, 0, np.int64(0)) == HW_OK
    assert int(((m.tlb.ctx >> 12) == vpid)[m.tlb.tag != -1].sum()) == 0
    assert tlb_lookup(m.tlb, np.int64(va), 0, 0, 0)[0] > 0
    assert int(((m.psc.ctx >> 12) == vpid)[m.psc.tag != -1].sum()) == 0
    assert hw_invvpid(m.tlb, m.psc, 1, 0, np.int64(0)) == HW_GP  # VPID 0 is not a guest context
    assert hw_invvpid(m.tlb, m.psc, 7, vpid, np.int64(0)) == HW_GP
    assert hw_invept(m.tlb, m.psc, m.hcache, 0) == HW_GP
