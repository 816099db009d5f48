"""Independent checks of a shadow MMU's state against the guest's page tables (plain Python).

Written from the rules a shadow entry must obey, not from the kernels: every present shadow
entry is derived from guest entries that exist now (for synchronised pages), grants at most
what the guest path grants, maps only host frames that back guest frames, and no writable
shadow entry maps a write-protected guest table.
"""

from __future__ import annotations

import numpy as np

from mmu.engine import Machine
from mmu.memory import mem_read
from mmu.modes import shadow as S
from mmu.modes.vmm import vm_gpa_of

ADDR = 0x000F_FFFF_FFFF_F000
P, RW, US, PS, D = 1, 2, 4, 0x80, 0x40
XD = 1 << 63
ACC_W, ACC_U, ACC_XD = 1, 2, 4  # role access bits (TA_RW, TA_US, TA_XD)


def _host(m: Machine, hpa: int) -> int:
    return int(mem_read(m.mem.state, hpa))


def _reachable(m: Machine) -> set[int]:
    """Shadow pages the hardware can reach from the current root: followed through present
    non-leaf shadow entries in host memory (not through the MMU's parent lists)."""
    spt, hfn2sp = m.sh.spt, m.sh.hfn2sp
    root = int(m.sh.roots[0, 1])
    seen = {root}
    todo = [root]
    while todo:
        sp = todo.pop()
        if int(spt[sp, S.SP_ROLE]) & 7 == 1:
            continue
        for i in range(512):
            e = _host(m, int(spt[sp, S.SP_HPA]) + 8 * i)
            if e & P and not e & PS:
                child = int(hfn2sp[(e & ADDR) >> 12])
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
    return seen


def child_access(acc: int, gpte: int, nxe: bool = True) -> int:
    """Rights of the path below guest entry ``gpte`` reached with rights ``acc`` (SDM 4.10.2.2)."""
    out = 0
    if acc & ACC_W and gpte & RW:
        out |= ACC_W
    if acc & ACC_U and gpte & US:
        out |= ACC_U
    if acc & ACC_XD or (nxe and gpte & XD):
        out |= ACC_XD
    return out


def check_shadow(m: Machine, include_unsync: bool = False) -> int:
    """Assert the invariants on every live shadow page; returns the present entries checked.

    Unsync pages may hold stale entries until the guest's next INVLPG or flush (that is their
    point), so their leaf entries are not checked against the guest. With ``include_unsync``
    (right after a flush) no unsync page may be left where the hardware can reach it: below the
    current root (KVM syncs those; unsync pages of other roots wait for a flush under their own
    root, as the other PCIDs' TLB entries would).
    """
    spt, rl, gfs, hfn2sp, _sph, _rt, _ulist, smeta = m.sh
    checked = 0
    if include_unsync:
        stale = [sp for sp in _reachable(m) if spt[sp, S.SP_FLAGS] & S.SPF_UNSYNC]
        assert not stale, f"unsync shadow pages {stale} below the current root after a flush"
    for sp in range(int(smeta[S.SM_NEXT])):
        flags = int(spt[sp, S.SP_FLAGS])
        if not flags & S.SPF_ALIVE:
            continue
        role = int(spt[sp, S.SP_ROLE])
        level = role & 7
        acc = (role >> S.R_ACC_SHIFT) & 7
        direct = bool(flags & S.SPF_DIRECT)
        unsync = bool(flags & S.SPF_UNSYNC)
        gfn = int(spt[sp, S.SP_GFN])
        assert hfn2sp[int(spt[sp, S.SP_HPA]) >> 12] == sp
        if not direct:
            assert gfs[gfn, S.GF_SPS] > 0
            if not unsync:
                assert gfs[gfn, S.GF_WP] > 0, f"shadowed guest table {gfn:#x} is not write-protected"
        for i in range(512):
            slot = sp * 512 + i
            e = _host(m, int(spt[sp, S.SP_HPA]) + 8 * i)
            if not e & P:
                assert rl[slot, S.RL_OWNER] == -1
                continue
            checked += 1
            target = (e & ADDR) >> 12
            g = None if direct else m.read_guest(gfn * 4096 + 8 * i)
            if level > 1 and e & PS:
                checked += _check_large(m, sp, i, level, e, acc, direct, gfn, g)
                continue
            if level > 1:
                child = int(hfn2sp[target])
                assert child >= 0 and spt[child, S.SP_FLAGS] & S.SPF_ALIVE, "upper entry to a dead shadow page"
                assert rl[slot, S.RL_OWNER] == 2 * child + 1
                assert e & (RW | US) == RW | US and not e & XD
                crole = int(spt[child, S.SP_ROLE])
                assert crole & 7 == level - 1
                if direct:
                    assert int(spt[child, S.SP_GFN]) == gfn + i * 512 ** (level - 1)
                    assert crole >> S.R_ACC_SHIFT & 7 == acc
                    continue
                assert g & P, f"shadow entry over a not-present guest entry (sp {sp}, index {i})"
                if level <= 3 and g & PS:
                    # a guest large page split by direct shadow pages
                    assert spt[child, S.SP_FLAGS] & S.SPF_DIRECT
                    base = (g & ADDR) >> 12 & ~(512 ** (level - 1) - 1)
                    assert int(spt[child, S.SP_GFN]) == base
                    want = child_access(acc, g)
                    if not g & D:
                        want &= ~ACC_W
                    assert crole >> S.R_ACC_SHIFT & 7 == want
                else:
                    assert int(spt[child, S.SP_GFN]) == (g & ADDR) >> 12
                    assert crole >> S.R_ACC_SHIFT & 7 == child_access(acc, g)
                continue
            # a leaf: it maps a host frame that backs a guest frame
            tgpa = int(vm_gpa_of(m.vm, np.int64(target << 12)))  # the VMM's reverse map of host memory
            tg = tgpa >> 12 if tgpa >= 0 else -1
            assert tg >= 0, f"shadow entry maps host frame {target:#x}, which backs no guest frame"
            assert rl[slot, S.RL_OWNER] == 2 * tg
            if e & RW:
                assert gfs[tg, S.GF_WP] == 0, f"writable shadow entry over write-protected guest frame {tg:#x}"
            if direct:
                assert tg == gfn + i
                rights = acc
                dirty = True  # a direct page's role already lacks W for a clean guest page
            else:
                if unsync:
                    continue
                assert g & P, f"shadow entry over a not-present guest PTE (sp {sp}, index {i})"
                assert (g & ADDR) >> 12 == tg, "shadow entry maps another frame than the guest PTE"
                rights = child_access(acc, g)
                dirty = bool(g & D)
            if e & RW:
                assert rights & ACC_W and dirty, "shadow entry writable where the guest's is not (or clean)"
            if e & US:
                assert rights & ACC_U
            if not e & XD:
                assert not rights & ACC_XD
    return checked


def _check_large(m: Machine, sp: int, i: int, level: int, e: int, acc: int, direct: bool, gfn: int, g) -> int:
    """A large shadow entry maps a whole guest large page, aligned, over host memory backing it,
    with no guest page table inside the region, and no more rights than the guest's."""
    gfs = m.sh.gfs
    span = 512 ** (level - 1)
    tgpa = int(vm_gpa_of(m.vm, np.int64(e & ADDR)))
    assert tgpa >= 0 and tgpa % (span * 4096) == 0, "large shadow entry over unaligned or unbacked memory"
    tg = tgpa >> 12
    assert m.sh.rl[sp * 512 + i, S.RL_OWNER] == 2 * tg
    assert not (gfs[tg : tg + span, S.GF_SPS] > 0).any(), "large shadow entry over a shadowed guest table"
    if direct:
        assert tg == gfn + i * span
        rights, dirty = acc, True
    else:
        assert g & P and g & PS, "large shadow entry where the guest has no large page"
        assert (g & ADDR) & ~(span * 4096 - 1) == tgpa
        rights, dirty = child_access(acc, g), bool(g & D)
    if e & RW:
        assert rights & ACC_W and dirty
    if e & US:
        assert rights & ACC_U
    if not e & XD:
        assert not rights & ACC_XD
    return 1
