"""Shadow paging: the VMM's software MMU, modelled on KVM's shadow MMU (arch/x86/kvm/mmu).

The hardware walks **shadow page tables** that map guest-virtual straight to host-physical
addresses, through the same TLBs and paging-structure caches as native mode; the VMM keeps
them coherent with the guest's own tables in software:

* **Shadow pages** (``struct kvm_mmu_page``) live in host frames and are keyed by
  (guest frame, role). The role holds the level, the access rights inherited from the guest
  entries above (W/U/XD), the "direct" flag (a shadow page that splits a guest large page and
  shadows no guest table), CR0.WP and EFER.NXE, so one guest table can have several shadows.
* **Reverse maps.** Every shadow-entry slot (``sp * 512 + index``) is a node of one doubly
  linked list: a leaf entry sits in the list of the guest frame it maps, a non-leaf entry in
  the parent list of the shadow page it points to. Write-protecting a guest frame and
  unlinking a zapped shadow page are therefore O(entries affected).
* **Write protection.** A guest frame with a (synchronised) shadow page is mapped read-only in
  every shadow entry; the guest kernel's stores to it trap (:func:`sh_guest_store`).
  Upper-level guest tables are always write-tracked and their stores emulated (tracing);
  a leaf table may go **unsync** instead (writable until the guest's next INVLPG, or a
  TLB-flushing CR3 load of a root it lies below, resynchronises it).
* **Faults** on the shadow tables exit to :func:`sh_page_fault`, which walks the guest tables
  in software (setting guest A, and D on a write, as the hardware would), then either injects
  a true guest #PF or fills the shadow path (hidden fault), emulates a write to a tracked page
  (tracing), or makes a clean page writable after setting its guest D (A/D emulation).
* **Refinements** with KVM's defaults, each a knob: unsync leaf tables; write-flooding
  detection (zap an upper-level shadow page after 3 emulated writes with no use in between);
  prefetch of the 8-entry group around a fill; a cache of the current root plus 3 previous
  roots keyed by guest CR3 (with its PCID).

What the VMM changes in shadow entries reaches the hardware through flushes, as in KVM: a
change that removes rights requests a flush of the VM's TLB entries and paging-structure
caches (INVVPID single context), done before the guest resumes.

State ``sh = ShadowState(spt, rl, gfs, hfn2sp, sph, roots, ulist, smeta)`` (a NamedTuple;
other modules read its fields by name, e.g. ``sh.smeta[SM_LEVELS]``):

``spt``     int64[cap, SP_COLS]      shadow pages (guest frame, role, host table address,
                                     flags, flood count, root count, hash link, parent list,
                                     position in the unsync list, free link, creation stamp)
``rl``      int64[cap * 512, 3]      reverse-map links of every shadow-entry slot
``gfs``     int64[guest frames, 4]   per guest frame: leaf rmap head, write-protecting shadow
                                     pages, upper-level shadow pages, shadow pages
``hfn2sp``  int64[host frames]       shadow page held by a host frame, or -1
``sph``     int64[HBUCKETS]          hash of shadow pages by guest frame (chained)
``roots``   int64[MAX_ROOTS, 2]      root cache: (guest CR3 with PCID, shadow page), row 0 current
``ulist``   int64[cap]               unsync shadow pages
``smeta``   int64[SM_LEN]            knobs, allocation state, pending requests
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mmu._jit import inner, jit
from mmu.hw.ntlb import INVVPID_ADDRESS, hw_invvpid
from mmu.hw.pwc import psc_flush_asid
from mmu.hw.tlb import tlb_flush_asid
from mmu.memory import A_NEXT, alloc_frame, mem_read, mem_write, mem_zero_frame
from mmu.modes.vmm import VM_OK, vm_back, vm_gpa_of, vm_hpa
from mmu.stats import (
    EXIT_AD_DIRTY,
    EXIT_CR3_LOAD,
    EXIT_CR3_READ,
    EXIT_HIDDEN_FAULT,
    EXIT_INVLPG,
    EXIT_PF_INJECT,
    EXIT_TRACING_WRITE,
    EXIT_UNPROTECT_RETRY,
    EXIT_WP_UNSYNC,
    N_WORK,
    S_EXIT_BASE,
    S_SH_CREATED,
    S_SH_EMULATED,
    S_SH_FLOODED,
    S_SH_LARGE_SPTES,
    S_SH_LIVE,
    S_SH_LPAGE_REFUSED,
    S_SH_PEAK,
    S_SH_PREFAULTS,
    S_SH_PREFETCHED,
    S_SH_RECLAIMED,
    S_SH_RESYNCED,
    S_SH_ROOT_HITS,
    S_SH_ROOT_MISSES,
    S_SH_SPTE_WRITES,
    S_SH_SW_WALK_STEPS,
    S_SH_SYNC_ENTRIES,
    S_SH_UNSYNCED,
    S_SH_VMM_FLUSHES,
    S_SH_WP_SPTES,
    S_SH_ZAPPED,
    S_VM_EXITS,
    S_WORK_BASE,
    U_SP_ALLOC,
    U_SPTE_WRITE,
    U_SW_WALK_STEP,
    U_SYNC_ENTRY,
    U_VMM_FLUSH,
)
from mmu.x86.bits import (
    ACC_WRITE,
    ADDR_MASK_52,
    CTL_NXE,
    CTL_USER,
    CTL_WP,
    PF_P,
    PTE_A,
    PTE_D,
    PTE_P,
    PTE_PS,
    PTE_RW,
    PTE_US,
    PTE_XD,
    TA_D,
    TA_PKEY_SHIFT,
    TA_RW,
    TA_US,
    TA_XD,
    WALK_OK,
)
from mmu.x86.walk import ENTRY_OK, TR_ATTRS, TR_LEVEL, TR_NEXT, entry_step, walk_core

# --- shadow-page table columns -------------------------------------------------------------------
SP_GFN = 0  # guest frame shadowed (direct: first guest frame of the range mapped)
SP_ROLE = 1
SP_HPA = 2  # host address of the shadow table
SP_FLAGS = 3
SP_FLOOD = 4  # emulated writes since the page was last used by a fill
SP_ROOTS = 5  # references from the root cache
SP_HNEXT = 6  # next shadow page in the same hash bucket
SP_PHEAD = 7  # first slot of the parent list
SP_UIDX = 8  # position in the unsync list, or -1
SP_NEXT_FREE = 9
SP_STAMP = 10  # creation order (the oldest pages are reclaimed first under the cap)
SP_COLS = 11

SPF_ALIVE = 1
SPF_UNSYNC = 2
SPF_DIRECT = 4
SPF_INVALID = 8  # zapped while the root cache still referenced it

# role bits: level (3 bits), direct, inherited rights (TA_RW | TA_US | TA_XD), CR0.WP, EFER.NXE
R_DIRECT = 1 << 3
R_ACC_SHIFT = 4
R_ACC_MASK = TA_RW | TA_US | TA_XD
R_WP = 1 << 8
R_NXE = 1 << 9

# reverse-map link columns
RL_NEXT = 0
RL_PREV = 1
RL_OWNER = 2  # 2 * gfn: leaf list of a guest frame; 2 * sp + 1: parent list of a shadow page

# per-guest-frame columns
GF_RHEAD = 0
GF_WP = 1  # shadow pages of this frame that keep it write-protected (not unsync)
GF_UPPER = 2  # upper-level shadow pages of this frame (always write-tracked)
GF_SPS = 3  # shadow pages of this frame (not direct)
GF_LP2 = 4  # at a 2 MiB-aligned frame: frames of that 2 MiB region holding shadowed guest tables
GF_LP3 = 5  # at a 1 GiB-aligned frame: the same for the 1 GiB region
GF_COLS = 6

# smeta
SM_UNSYNC = 0  # knob: leaf tables may go unsync
SM_PREFETCH = 1  # knob: entries prefetched around a fill (power of two; <= 1 off)
SM_NROOTS = 2  # knob: previous roots cached
SM_FLOOD = 3  # knob: emulated writes that zap an upper-level shadow page (0: never)
SM_FREE = 4  # free shadow-page slot list head
SM_NEXT = 5  # next never-used slot
SM_NUNSYNC = 6
SM_FLUSH = 7  # a flush of the VM's TLB entries is pending
SM_RELOAD = 8  # a cached root was zapped: free it (and reload the current one) before resuming
SM_REASON = 9  # exit reason being handled (handler work is charged to it)
SM_ROLE_FLAGS = 10
SM_LEVELS = 11
SM_HOST_SHIFT = 12  # host page size backing guest memory (12, 21, 30)
SM_MAX_PAGES = 13  # knob: most shadow pages kept (KVM's n_max_mmu_pages); 0: no cap
SM_STAMP = 14  # shadow pages created so far (the next creation stamp)
SM_PREFAULT = 15  # knob: fill the faulting address's shadow entry when the guest returns from a reflected #PF
SM_LEN = 16

MIN_FREE_PAGES = 5  # KVM_MIN_FREE_MMU_PAGES: below this many free, reclaim ...
REFILL_PAGES = 25  # ... up to KVM_REFILL_PAGES free

HBUCKETS = 1 << 16
HBITS = 16
MAX_ROOTS = 12  # 1 current + up to 11 previous (KVM_MMU_NUM_PREV_ROOTS_MAX in a downstream tree)

# fault outcomes of :func:`sh_page_fault`
SHF_RETRY = 0  # shadow fixed: run the access again
SHF_INJECT = 1  # true guest fault: deliver #PF with the returned error code
SHF_EMULATED = 2  # the VMM emulated the access (write to a write-tracked frame)
SHF_OUT_OF_FRAMES = 3
SHF_NO_MEMSLOT = 4  # the guest maps a frame beyond its memory: the access cannot complete

_U0 = np.uint64(0)
_NONLEAF = PTE_P | PTE_RW | PTE_US | PTE_A  # upper shadow entries grant everything
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ACC = np.int64(R_ACC_MASK)


class ShadowState(NamedTuple):
    """The shadow MMU's state (layouts in the module docstring)."""

    spt: np.ndarray
    rl: np.ndarray
    gfs: np.ndarray
    hfn2sp: np.ndarray
    sph: np.ndarray
    roots: np.ndarray
    ulist: np.ndarray
    smeta: np.ndarray


def make_shadow(
    capacity: int = 256,
    guest_frames: int = 1024,
    host_frames: int = 1024,
    *,
    unsync: bool = True,
    prefetch: int = 8,
    roots: int = 3,
    flood_threshold: int = 3,
    ctl: int = 0,
    levels: int = 4,
    host_shift: int = 12,
    max_pages: int = 0,
    prefault: bool = False,
):
    """An empty shadow MMU (no shadow pages) with KVM's default policy knobs; ``max_pages`` caps
    the shadow pages kept (0: no cap); ``prefault`` turns on PVM's prefault (off in KVM)."""
    spt = np.zeros((capacity, SP_COLS), dtype=np.int64)
    spt[:, SP_UIDX] = -1
    rl = np.full((capacity * 512, 3), -1, dtype=np.int64)
    gfs = np.zeros((guest_frames, GF_COLS), dtype=np.int64)
    gfs[:, GF_RHEAD] = -1
    hfn2sp = np.full(host_frames, -1, dtype=np.int64)
    sph = np.full(HBUCKETS, -1, dtype=np.int64)
    rt = np.full((MAX_ROOTS, 2), -1, dtype=np.int64)
    ulist = np.zeros(capacity, dtype=np.int64)
    smeta = np.zeros(SM_LEN, dtype=np.int64)
    smeta[SM_UNSYNC] = 1 if unsync else 0
    smeta[SM_PREFETCH] = prefetch
    smeta[SM_NROOTS] = roots
    smeta[SM_FLOOD] = flood_threshold
    smeta[SM_FREE] = -1
    smeta[SM_LEVELS] = levels
    smeta[SM_HOST_SHIFT] = host_shift
    smeta[SM_MAX_PAGES] = max_pages
    smeta[SM_PREFAULT] = 1 if prefault else 0
    role_flags = 0
    if ctl & CTL_WP:
        role_flags |= R_WP
    if ctl & CTL_NXE:
        role_flags |= R_NXE
    smeta[SM_ROLE_FLAGS] = role_flags
    return ShadowState(spt, rl, gfs, hfn2sp, sph, rt, ulist, smeta)


def dummy_shadow():
    """A minimal shadow state for modes that do not shadow (keeps one kernel signature)."""
    return make_shadow(capacity=1, guest_frames=1, host_frames=1)


def _grown_rows(a: np.ndarray, rows: int, fill: int) -> np.ndarray:
    size = a.shape[0]
    if size >= rows:
        return a
    while size < rows:
        size *= 2
    new = np.full((size,) + a.shape[1:], fill, dtype=a.dtype)
    new[: a.shape[0]] = a
    return new


SP_PER_RECORD = 128  # shadow pages one record may create at most (2 pages x 8 attempts x 7 levels)
FRAMES_PER_RECORD = 1280  # guest or host frames one record may take at most (a 2 MiB page fault: up
# to 511 frames skipped to align + 512), with slack
FRAME_ROOM = 1 << 16


def grow_shadow(sh, guest_frames: int, host_frames: int):
    """A copy of ``sh`` with room for a few more records' worth of shadow pages and the given
    numbers of guest and host frames (plus slack)."""
    spt, rl, gfs, hfn2sp, sph, rt, ulist, smeta = sh
    cap = spt.shape[0]
    need = int(smeta[SM_NEXT]) + 4 * SP_PER_RECORD
    if need > cap:
        new_cap = cap
        while new_cap < need:
            new_cap *= 2
        spt2 = np.zeros((new_cap, SP_COLS), dtype=np.int64)
        spt2[:, SP_UIDX] = -1
        spt2[:cap] = spt
        spt = spt2
        rl = _grown_rows(rl, new_cap * 512, -1)
        ulist = _grown_rows(ulist, new_cap, 0)
    gfs_new = _grown_rows(gfs, int(guest_frames) + FRAME_ROOM, 0)
    if gfs_new is not gfs:
        gfs_new[gfs.shape[0] :, GF_RHEAD] = -1
    hfn2sp = _grown_rows(hfn2sp, int(host_frames) + FRAME_ROOM, -1)
    return ShadowState(spt, rl, gfs_new, hfn2sp, sph, rt, ulist, smeta)


@inner
def sh_budget(sh, galloc, halloc):
    """How many records can run before the shadow state's arrays might need to grow (0: now)."""
    a = (sh.spt.shape[0] - sh.smeta[SM_NEXT]) // SP_PER_RECORD
    b = (sh.gfs.shape[0] - galloc.ameta[A_NEXT]) // FRAMES_PER_RECORD
    c = (sh.hfn2sp.shape[0] - halloc.ameta[A_NEXT]) // FRAMES_PER_RECORD
    return max(np.int64(0), min(a, min(b, c)))


# --- small helpers -------------------------------------------------------------------------------


@inner
def _charge(sh, stats, work, n):
    """Count ``n`` units of handler work ``work`` (a ``U_*``) to the exit reason being handled
    (priced after the run, :func:`mmu.stats.price`)."""
    stats[S_WORK_BASE + sh.smeta[SM_REASON] * N_WORK + work] += n


@inner
def _request_flush(sh, stats):
    if sh.smeta[SM_FLUSH] == 0:
        sh.smeta[SM_FLUSH] = 1
        _charge(sh, stats, U_VMM_FLUSH, 1)


@inner
def _bucket(gfn):
    return np.int64((np.uint64(gfn) * _GOLDEN) >> np.uint64(64 - HBITS))


@inner
def _head(sh, owner):
    if owner & 1:
        return sh.spt[owner >> 1, SP_PHEAD]
    return sh.gfs[owner >> 1, GF_RHEAD]


@inner
def _set_head(sh, owner, slot):
    if owner & 1:
        sh.spt[owner >> 1, SP_PHEAD] = slot
    else:
        sh.gfs[owner >> 1, GF_RHEAD] = slot


@inner
def _rl_add(sh, slot, owner):
    rl = sh.rl
    h = _head(sh, owner)
    rl[slot, RL_NEXT] = h
    rl[slot, RL_PREV] = -1
    rl[slot, RL_OWNER] = owner
    if h >= 0:
        rl[h, RL_PREV] = slot
    _set_head(sh, owner, slot)


@inner
def _rl_del(sh, slot):
    rl = sh.rl
    owner = rl[slot, RL_OWNER]
    if owner < 0:
        return
    n = rl[slot, RL_NEXT]
    p = rl[slot, RL_PREV]
    if p >= 0:
        rl[p, RL_NEXT] = n
    else:
        _set_head(sh, owner, n)
    if n >= 0:
        rl[n, RL_PREV] = p
    rl[slot, RL_NEXT] = -1
    rl[slot, RL_PREV] = -1
    rl[slot, RL_OWNER] = -1


@inner
def _slot_pa(sh, slot):
    return sh.spt[slot >> 9, SP_HPA] + (slot & 511) * 8


@inner
def sh_find(sh, gfn, role):
    """The live shadow page of (``gfn``, ``role``), or -1."""
    spt = sh.spt
    s = sh.sph[_bucket(gfn)]
    while s >= 0:
        if spt[s, SP_GFN] == gfn and spt[s, SP_ROLE] == role and (spt[s, SP_FLAGS] & SPF_INVALID) == 0:
            return s
        s = spt[s, SP_HNEXT]
    return np.int64(-1)


@inner
def _hash_remove(sh, sp):
    spt = sh.spt
    sph = sh.sph
    b = _bucket(spt[sp, SP_GFN])
    s = sph[b]
    prev = np.int64(-1)
    while s >= 0:
        if s == sp:
            if prev < 0:
                sph[b] = spt[s, SP_HNEXT]
            else:
                spt[prev, SP_HNEXT] = spt[s, SP_HNEXT]
            spt[s, SP_HNEXT] = -1
            return
        prev = s
        s = spt[s, SP_HNEXT]


@inner
def _ulist_add(sh, sp):
    smeta = sh.smeta
    k = smeta[SM_NUNSYNC]
    sh.ulist[k] = sp
    sh.spt[sp, SP_UIDX] = k
    smeta[SM_NUNSYNC] = k + 1


@inner
def _ulist_remove(sh, sp):
    smeta = sh.smeta
    ulist = sh.ulist
    spt = sh.spt
    k = spt[sp, SP_UIDX]
    last = smeta[SM_NUNSYNC] - 1
    moved = ulist[last]
    ulist[k] = moved
    spt[moved, SP_UIDX] = k
    spt[sp, SP_UIDX] = -1
    smeta[SM_NUNSYNC] = last


@inner
def _write_protect_gfn(mem, sh, stats, gfn):
    """Clear R/W in every leaf shadow entry that maps guest frame ``gfn``; True if any was writable."""
    rl = sh.rl
    changed = False
    s = sh.gfs[gfn, GF_RHEAD]
    while s >= 0:
        pa = _slot_pa(sh, s)
        e = mem_read(mem, pa)
        if (e & PTE_RW) != _U0:
            mem_write(mem, pa, e & ~PTE_RW)
            stats[S_SH_WP_SPTES] += 1
            changed = True
        s = rl[s, RL_NEXT]
    return changed


@inner
def _drop_spte(mem, sh, stats, sp, idx):
    """Zap one shadow entry (unlinking it from its reverse map); True if it was present."""
    pa = sh.spt[sp, SP_HPA] + idx * 8
    e = mem_read(mem, pa)
    if (e & PTE_P) == _U0:
        return False
    _rl_del(sh, sp * 512 + idx)
    mem_write(mem, pa, _U0)
    stats[S_SH_SPTE_WRITES] += 1
    return True


@inner
def _release_root(mem, sh, stats, sp):
    """Drop one root-cache reference; a zapped (invalid) page is freed with its last one."""
    if sp < 0:
        return
    spt = sh.spt
    spt[sp, SP_ROOTS] -= 1
    if spt[sp, SP_ROOTS] == 0 and (spt[sp, SP_FLAGS] & SPF_INVALID) != 0:
        _free_slot(sh, stats, sp)


@inner
def _free_slot(sh, stats, sp):
    spt = sh.spt
    smeta = sh.smeta
    spt[sp, SP_FLAGS] = 0
    spt[sp, SP_NEXT_FREE] = smeta[SM_FREE]
    smeta[SM_FREE] = sp
    stats[S_SH_LIVE] -= 1


@inner
def _zap_page(mem, sh, stats, sp):
    """Unshadow one shadow page (``__kvm_mmu_prepare_zap_page``): clear its entries and the parent
    entries pointing to it, stop write-protecting its guest frame, free it (or mark it invalid
    while the root cache still holds it: ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS`` frees it, and
    reloads the current root, before the guest resumes)."""
    spt = sh.spt
    gfs = sh.gfs
    rl = sh.rl
    flags = spt[sp, SP_FLAGS]
    if (flags & SPF_ALIVE) == 0:
        return
    flush = False
    for idx in range(512):
        if _drop_spte(mem, sh, stats, sp, idx):
            flush = True
    s = spt[sp, SP_PHEAD]
    while s >= 0:
        nxt = rl[s, RL_NEXT]
        mem_write(mem, _slot_pa(sh, s), _U0)
        rl[s, RL_NEXT] = -1
        rl[s, RL_PREV] = -1
        rl[s, RL_OWNER] = -1
        stats[S_SH_SPTE_WRITES] += 1
        flush = True
        s = nxt
    spt[sp, SP_PHEAD] = -1
    gfn = spt[sp, SP_GFN]
    level = spt[sp, SP_ROLE] & 7
    if (flags & SPF_DIRECT) == 0:
        if (flags & SPF_UNSYNC) != 0:
            _ulist_remove(sh, sp)
        else:
            gfs[gfn, GF_WP] -= 1
        gfs[gfn, GF_SPS] -= 1
        if gfs[gfn, GF_SPS] == 0:
            _account_frame(mem, sh, stats, gfn, -1)
        if level > 1:
            gfs[gfn, GF_UPPER] -= 1
    _hash_remove(sh, sp)
    stats[S_SH_ZAPPED] += 1
    if flush:
        _request_flush(sh, stats)
    if spt[sp, SP_ROOTS] > 0:
        spt[sp, SP_FLAGS] = (flags & ~(SPF_UNSYNC | SPF_ALIVE)) | SPF_INVALID
        sh.smeta[SM_RELOAD] = 1
    else:
        _free_slot(sh, stats, sp)


@inner
def _unsync_below(sh, sp):
    """True if an unsync shadow page is linked below shadow page ``sp`` (KVM's
    ``sp->unsync_children``, kept there as marks propagated up the parents; found here from the
    unsync list through the parent lists)."""
    if (sh.spt[sp, SP_ROLE] & 7) <= 1:
        return False
    ulist = sh.ulist
    for k in range(sh.smeta[SM_NUNSYNC]):
        if _reaches(sh, ulist[k], sp):
            return True
    return False


@inner
def sh_zap(mem, sh, stats, sp):
    """Zap shadow page ``sp`` (``kvm_mmu_prepare_zap_page``): first the unsync pages linked below
    it (``mmu_zap_unsync_children``), then the page itself."""
    spt = sh.spt
    if (spt[sp, SP_FLAGS] & SPF_ALIVE) == 0:
        return
    if (spt[sp, SP_ROLE] & 7) > 1:
        ulist = sh.ulist
        k = sh.smeta[SM_NUNSYNC] - 1
        while k >= 0:
            # downwards: a zap moves the last entry (already visited) into slot k
            if k < sh.smeta[SM_NUNSYNC] and _reaches(sh, ulist[k], sp):
                _zap_page(mem, sh, stats, ulist[k])
            k -= 1
    _zap_page(mem, sh, stats, sp)


@inner
def _wp_large(mem, sh, stats, base, level):
    """Write-protect the large shadow entries of ``level`` that map the region starting at guest
    frame ``base`` (``kvm_mmu_slot_gfn_write_protect`` from 4K up to 1G: reads through them
    keep working; the first write faults, and the fault splits the mapping)."""
    spt = sh.spt
    rl = sh.rl
    s = sh.gfs[base, GF_RHEAD]
    while s >= 0:
        if (spt[s >> 9, SP_ROLE] & 7) == level:
            pa = _slot_pa(sh, s)
            e = mem_read(mem, pa)
            if (e & PTE_RW) != _U0:
                mem_write(mem, pa, e & ~PTE_RW)
                stats[S_SH_WP_SPTES] += 1
                _request_flush(sh, stats)
        s = rl[s, RL_NEXT]


@inner
def _account_frame(mem, sh, stats, gfn, delta):
    """Guest frame ``gfn`` starts (+1) or stops (-1) holding a shadowed guest table: KVM's
    ``disallow_lpage`` counters (``account_shadowed``). No new large shadow entry may map a
    region holding one; those that already do are write-protected, not zapped."""
    gfs = sh.gfs
    b2 = gfn & ~np.int64(511)
    b3 = gfn & ~np.int64((1 << 18) - 1)
    gfs[b2, GF_LP2] += delta
    gfs[b3, GF_LP3] += delta
    if delta > 0:
        _wp_large(mem, sh, stats, b2, 2)
        _wp_large(mem, sh, stats, b3, 3)


@inner
def _sh_alloc(mem, halloc, sh, stats, gfn, role):
    """A new shadow page for (``gfn``, ``role``) (``kvm_mmu_alloc_shadow_page`` +
    ``account_shadowed``); -1 if the host is out of frames."""
    spt = sh.spt
    smeta = sh.smeta
    gfs = sh.gfs
    sp = smeta[SM_FREE]
    if sp >= 0:
        smeta[SM_FREE] = spt[sp, SP_NEXT_FREE]
        mem_zero_frame(mem, spt[sp, SP_HPA] >> 12)
    else:
        hfn = alloc_frame(halloc)
        if hfn < 0:
            return np.int64(-1)
        sp = smeta[SM_NEXT]
        smeta[SM_NEXT] = sp + 1
        spt[sp, SP_HPA] = hfn << 12
        sh.hfn2sp[hfn] = sp
    direct = (role & R_DIRECT) != 0
    level = role & 7
    spt[sp, SP_GFN] = gfn
    spt[sp, SP_ROLE] = role
    spt[sp, SP_FLAGS] = SPF_ALIVE | (SPF_DIRECT if direct else 0)
    spt[sp, SP_FLOOD] = 0
    spt[sp, SP_ROOTS] = 0
    spt[sp, SP_PHEAD] = -1
    spt[sp, SP_UIDX] = -1
    spt[sp, SP_STAMP] = smeta[SM_STAMP]
    smeta[SM_STAMP] += 1
    b = _bucket(gfn)
    spt[sp, SP_HNEXT] = sh.sph[b]
    sh.sph[b] = sp
    stats[S_SH_CREATED] += 1
    stats[S_SH_LIVE] += 1
    if stats[S_SH_LIVE] > stats[S_SH_PEAK]:
        stats[S_SH_PEAK] = stats[S_SH_LIVE]
    _charge(sh, stats, U_SP_ALLOC, 1)
    if not direct:
        if level > 1:
            # A frame now used as an upper-level table: its unsync leaf shadows go (KVM zaps them).
            s = sh.sph[b]
            while s >= 0:
                nxt = spt[s, SP_HNEXT]
                if spt[s, SP_GFN] == gfn and (spt[s, SP_FLAGS] & SPF_UNSYNC) != 0:
                    sh_zap(mem, sh, stats, s)
                s = nxt
            gfs[gfn, GF_UPPER] += 1
        if gfs[gfn, GF_SPS] == 0:
            _account_frame(mem, sh, stats, gfn, 1)
        gfs[gfn, GF_SPS] += 1
        gfs[gfn, GF_WP] += 1
        if _write_protect_gfn(mem, sh, stats, gfn):
            _request_flush(sh, stats)
    return sp


@inner
def _make_room(mem, sh, stats):
    """Keep the shadow pages under the cap (``make_mmu_pages_available``): when fewer than
    :data:`MIN_FREE_PAGES` are left, zap the oldest pages not in use as roots until
    :data:`REFILL_PAGES` are free (``kvm_mmu_zap_oldest_mmu_pages``). Runs before a fault's
    fill and a root load, as KVM's do."""
    cap = sh.smeta[SM_MAX_PAGES]
    if cap <= 0 or cap - stats[S_SH_LIVE] >= MIN_FREE_PAGES:
        return
    spt = sh.spt
    while cap - stats[S_SH_LIVE] < REFILL_PAGES:
        oldest = np.int64(-1)
        for sp in range(sh.smeta[SM_NEXT]):
            if (spt[sp, SP_FLAGS] & SPF_ALIVE) != 0 and spt[sp, SP_ROOTS] == 0:
                if oldest < 0 or spt[sp, SP_STAMP] < spt[oldest, SP_STAMP]:
                    oldest = sp
        if oldest < 0:
            return  # only roots are left
        sh_zap(mem, sh, stats, oldest)
        stats[S_SH_RECLAIMED] += 1


@inner
def _get_sp(mem, halloc, vm, sh, stats, ctl, gfn, role):
    """Find or create the shadow page of (gfn, role) (``kvm_mmu_get_shadow_page``). A found page's
    write-flooding count is cleared; a found unsync page is synchronised with its guest table
    but neither write-protected nor marked synchronised (``kvm_mmu_find_shadow_page`` calls
    ``kvm_sync_page``: write protection waits until the guest flushes its TLB)."""
    sp = sh_find(sh, gfn, role)
    if sp >= 0:
        sh.spt[sp, SP_FLOOD] = 0
        if (sh.spt[sp, SP_FLAGS] & SPF_UNSYNC) != 0:
            _sync_entries(mem, vm, sh, stats, ctl, sp)
        return sp
    return _sh_alloc(mem, halloc, sh, stats, gfn, role)


@inner
def _gwp(sh, gfn):
    """Shadow pages keeping guest frame ``gfn`` write-protected (0 beyond the tracked range)."""
    gfs = sh.gfs
    if gfn < 0 or gfn >= gfs.shape[0]:
        return np.int64(0)
    return gfs[gfn, GF_WP]


@inner
def _gsps(sh, gfn):
    """Shadow pages (not direct) of guest frame ``gfn``, synchronised or not (0 beyond the range)."""
    gfs = sh.gfs
    if gfn < 0 or gfn >= gfs.shape[0]:
        return np.int64(0)
    return gfs[gfn, GF_SPS]


@inner
def _tracked(sh, gfn):
    """True if writes to guest frame ``gfn`` must be emulated (it cannot go unsync)."""
    gfs = sh.gfs
    return gfs[gfn, GF_UPPER] > 0 or (sh.smeta[SM_UNSYNC] == 0 and gfs[gfn, GF_SPS] > 0)


@inner
def _unsync_gfn(sh, stats, gfn):
    """Let the guest write leaf table ``gfn`` freely (``mmu_try_to_unsync_pages``)."""
    spt = sh.spt
    s = sh.sph[_bucket(gfn)]
    while s >= 0:
        f = spt[s, SP_FLAGS]
        if spt[s, SP_GFN] == gfn and (f & SPF_ALIVE) != 0 and (f & (SPF_DIRECT | SPF_UNSYNC)) == 0:
            spt[s, SP_FLAGS] = f | SPF_UNSYNC
            sh.gfs[gfn, GF_WP] -= 1
            _ulist_add(sh, s)
            stats[S_SH_UNSYNCED] += 1
        s = spt[s, SP_HNEXT]


@inner
def _leaf_spte(hpa, attrs, writable, accessed):
    """A leaf shadow entry mapping host frame ``hpa`` with the rights in TA_* ``attrs``."""
    e = np.uint64(hpa) | PTE_P
    if writable:
        e |= PTE_RW
    if (attrs & TA_US) != 0:
        e |= PTE_US
    if (attrs & TA_XD) != 0:
        e |= PTE_XD
    if accessed:
        e |= PTE_A
    e |= np.uint64((attrs >> TA_PKEY_SHIFT) & 15) << np.uint64(59)
    return e


@inner
def _install_leaf(mem, sh, stats, sp, idx, new, gfn):
    """Write leaf entry ``new`` (mapping guest frame ``gfn``) at ``sp[idx]``; True if rights shrank."""
    pa = sh.spt[sp, SP_HPA] + idx * 8
    old = mem_read(mem, pa)
    mask = ~(PTE_A | PTE_D)
    if (old & PTE_P) != _U0:
        if (old & mask) == (new & mask):
            return False
        _rl_del(sh, sp * 512 + idx)
    mem_write(mem, pa, new)
    _rl_add(sh, sp * 512 + idx, 2 * gfn)
    stats[S_SH_SPTE_WRITES] += 1
    _charge(sh, stats, U_SPTE_WRITE, 1)
    if (old & PTE_P) == _U0:
        return False
    lost_w = (old & PTE_RW) != _U0 and (new & PTE_RW) == _U0
    lost_u = (old & PTE_US) != _U0 and (new & PTE_US) == _U0
    gained_xd = (old & PTE_XD) == _U0 and (new & PTE_XD) != _U0
    return lost_w or lost_u or gained_xd or (old & ADDR_MASK_52) != (new & ADDR_MASK_52)


@inner
def _link_child(mem, sh, stats, sp, idx, child):
    pa = sh.spt[sp, SP_HPA] + idx * 8
    mem_write(mem, pa, np.uint64(sh.spt[child, SP_HPA]) | _NONLEAF)
    _rl_add(sh, sp * 512 + idx, 2 * child + 1)
    stats[S_SH_SPTE_WRITES] += 1
    _charge(sh, stats, U_SPTE_WRITE, 1)


# --- synchronisation -------------------------------------------------------------------------------


@inner
def _gpte_attrs(sh, ctl, sp, gpte):
    """(ok, attrs) of leaf guest entry ``gpte`` in non-direct shadow page ``sp`` (rights inherited
    from its role); ok is False for an entry a fill may not use (not present, reserved bits, or
    A clear -- KVM prefetches and keeps only accessed entries)."""
    nxe = (ctl & CTL_NXE) != 0
    rsvd = np.uint64(0x000F_FFFF_FFFF_FFFF) & ~np.uint64((1 << 52) - 1)
    if not nxe:
        rsvd |= PTE_XD
    role_attrs = (sh.spt[sp, SP_ROLE] >> R_ACC_SHIFT) & _ACC
    kind, _leaf, attrs = entry_step(gpte, 1, rsvd, nxe, ctl, role_attrs)
    if kind != ENTRY_OK or (gpte & PTE_A) == _U0:
        return False, attrs
    return True, attrs


@inner
def _sync_spte(mem, vm, sh, stats, ctl, sp, idx):
    """Bring shadow entry ``sp[idx]`` in line with its guest entry (``kvm_sync_spte`` ->
    ``FNAME(sync_spte)``): a present entry is compared with its guest entry (one unit of work) and
    dropped if the guest entry no longer maps the same frame, else its rights are recomputed --
    read-only over any frame that has shadow pages, unsync ones included (``make_spte`` with
    ``can_unsync`` false). A not-present entry costs nothing. True if a flush is needed."""
    pa = sh.spt[sp, SP_HPA] + idx * 8
    e = mem_read(mem, pa)
    if (e & PTE_P) == _U0:
        return False
    stats[S_SH_SYNC_ENTRIES] += 1
    _charge(sh, stats, U_SYNC_ENTRY, 1)
    ghpa = vm_hpa(vm, (sh.spt[sp, SP_GFN] << 12) + idx * 8)
    gpte = _U0 if ghpa < 0 else mem_read(mem, ghpa)
    ok, attrs = _gpte_attrs(sh, ctl, sp, gpte)
    tgfn = np.int64(gpte & ADDR_MASK_52) >> 12
    cur = vm_gpa_of(vm, np.int64(e & ADDR_MASK_52))
    if not ok or cur < 0 or (cur >> 12) != tgfn:
        _drop_spte(mem, sh, stats, sp, idx)
        _charge(sh, stats, U_SPTE_WRITE, 1)
        return True
    w = (attrs & TA_RW) != 0 and (attrs & TA_D) != 0 and _gsps(sh, tgfn) == 0
    new = _leaf_spte(np.int64(e & ADDR_MASK_52), attrs, w, (e & PTE_A) != _U0) | (e & PTE_D)
    return _install_leaf(mem, sh, stats, sp, idx, new, tgfn)


@inner
def _sync_entries(mem, vm, sh, stats, ctl, sp):
    """``kvm_sync_page``: compare the present entries of shadow page ``sp`` with the guest's."""
    flush = False
    for idx in range(512):
        if _sync_spte(mem, vm, sh, stats, ctl, sp, idx):
            flush = True
    stats[S_SH_RESYNCED] += 1
    if flush:
        _request_flush(sh, stats)


@inner
def sh_sync_page(mem, vm, sh, stats, ctl, sp):
    """Resynchronise unsync shadow page ``sp`` as a guest TLB flush does (``mmu_sync_children``):
    write-protect its guest frame again, mark it synchronised, then ``kvm_sync_page``."""
    spt = sh.spt
    gfn = spt[sp, SP_GFN]
    spt[sp, SP_FLAGS] &= ~SPF_UNSYNC
    _ulist_remove(sh, sp)
    sh.gfs[gfn, GF_WP] += 1
    if _write_protect_gfn(mem, sh, stats, gfn):
        _request_flush(sh, stats)
    _sync_entries(mem, vm, sh, stats, ctl, sp)


@inner
def _reaches(sh, sp, root):
    """True if shadow page ``sp`` is linked below shadow page ``root`` (its parent lists lead
    there within four steps: a leaf page under a 4- or 5-level root)."""
    spt = sh.spt
    rl = sh.rl
    a = spt[sp, SP_PHEAD]
    while a >= 0:
        p1 = a >> 9
        if p1 == root:
            return True
        b = spt[p1, SP_PHEAD]
        while b >= 0:
            p2 = b >> 9
            if p2 == root:
                return True
            c = spt[p2, SP_PHEAD]
            while c >= 0:
                p3 = c >> 9
                if p3 == root:
                    return True
                d = spt[p3, SP_PHEAD]
                while d >= 0:
                    if (d >> 9) == root:
                        return True
                    d = rl[d, RL_NEXT]
                c = rl[c, RL_NEXT]
            b = rl[b, RL_NEXT]
        a = rl[a, RL_NEXT]
    return False


@inner
def sh_sync_root(mem, vm, sh, stats, ctl, root):
    """Resynchronise the unsync shadow pages reachable from shadow page ``root`` (KVM's
    ``kvm_mmu_sync_roots``: ``mmu_sync_children`` follows ``unsync_child_bitmap`` down from the
    current root). Unsync pages of other roots stay unsync until a flush under their own root,
    an INVLPG, or a fault that links them (``_get_sp`` syncs a found unsync page)."""
    ulist = sh.ulist
    k = sh.smeta[SM_NUNSYNC] - 1
    while k >= 0:
        # downwards: a sync moves the last entry (already visited) into slot k
        sp = ulist[k]
        if _reaches(sh, sp, root):
            sh_sync_page(mem, vm, sh, stats, ctl, sp)
        k -= 1


# --- roots ------------------------------------------------------------------------------------------


@inner
def _root_role(sh, levels):
    return np.int64(levels) | np.int64((TA_RW | TA_US) << R_ACC_SHIFT) | sh.smeta[SM_ROLE_FLAGS]


@inner
def _new_root(mem, halloc, vm, sh, stats, ctl, root_gpa):
    _make_room(mem, sh, stats)
    sp = _get_sp(mem, halloc, vm, sh, stats, ctl, root_gpa >> 12, _root_role(sh, sh.smeta[SM_LEVELS]))
    if sp >= 0:
        sh.spt[sp, SP_ROOTS] += 1
    return sp


@jit(inline="always")
def sh_root_hpa(sh):
    """Host address of the current shadow root (what the hardware's CR3 holds)."""
    return sh.spt[sh.roots[0, 1], SP_HPA]


@inner
def sh_load_cr3(mem, halloc, vm, sh, stats, ctl, root_gpa, pcid, no_flush, pcide):
    """The VMM's handling of a trapped guest MOV CR3 (``kvm_set_cr3``).

    Loading the CR3 value already current looks nothing up. Otherwise ``kvm_mmu_new_pgd``: the
    root is looked for among the previous roots (``cached_root_find_and_keep_current``, LRU; a
    hit clears the root's write-flooding count); on a miss the least recently used cached root
    is dropped and the root shadow page is found or built, then -- wherever the load came from,
    also with the no-flush bit -- the unsync pages below it are resynchronised and the VM's TLB
    entries flushed (``kvm_mmu_load``: ``kvm_mmu_sync_roots``, "the provenance of the root is
    unknown"). A flushing load (bit 63 clear) then does ``kvm_invalidate_pcid``: resync below the
    current root, flush, and with CR4.PCIDE drop the previous roots cached under the same PCID.
    Returns False if the host ran out of frames."""
    smeta = sh.smeta
    rt = sh.roots
    spt = sh.spt
    smeta[SM_REASON] = EXIT_CR3_LOAD
    stats[S_VM_EXITS] += 1
    stats[S_EXIT_BASE + EXIT_CR3_LOAD] += 1
    key = root_gpa | pcid
    n = 1 + smeta[SM_NROOTS]
    cur = rt[0, 1]
    same = rt[0, 0] == key and cur >= 0 and (spt[cur, SP_FLAGS] & SPF_INVALID) == 0
    if not same:
        found = -1
        for k in range(1, n):
            if rt[k, 0] == key and rt[k, 1] >= 0 and (spt[rt[k, 1], SP_FLAGS] & SPF_INVALID) == 0:
                found = k
                break
        if found >= 0:
            stats[S_SH_ROOT_HITS] += 1
            hit = rt[found, 1]
            for k in range(found, 0, -1):
                rt[k, 0] = rt[k - 1, 0]
                rt[k, 1] = rt[k - 1, 1]
            rt[0, 0] = key
            rt[0, 1] = hit
            spt[hit, SP_FLOOD] = 0
        else:
            stats[S_SH_ROOT_MISSES] += 1
            _release_root(mem, sh, stats, rt[n - 1, 1])
            for k in range(n - 1, 0, -1):
                rt[k, 0] = rt[k - 1, 0]
                rt[k, 1] = rt[k - 1, 1]
            sp = _new_root(mem, halloc, vm, sh, stats, ctl, root_gpa)
            rt[0, 0] = key
            rt[0, 1] = sp
            if sp < 0:
                return False
            sh_sync_root(mem, vm, sh, stats, ctl, sp)
            _request_flush(sh, stats)
    if not no_flush:
        sh_sync_root(mem, vm, sh, stats, ctl, rt[0, 1])
        _request_flush(sh, stats)
        if pcide:
            for k in range(1, n):
                if rt[k, 1] >= 0 and (rt[k, 0] & 0xFFF) == pcid:
                    _release_root(mem, sh, stats, rt[k, 1])
                    rt[k, 0] = -1
                    rt[k, 1] = -1
    return True


@inner
def sh_read_cr3(sh, stats):
    """The VMM's handling of a trapped guest MOV from CR3: without EPT, VMX turns on CR3-store
    exiting together with CR3-load exiting (``vmx.c``: ``CPU_BASED_CR3_STORE_EXITING``), and
    ``handle_cr`` returns the cached guest CR3. Linux's full local TLB flush is
    ``native_write_cr3(__native_read_cr3())``: this exit, then a CR3 load."""
    sh.smeta[SM_REASON] = EXIT_CR3_READ
    stats[S_VM_EXITS] += 1
    stats[S_EXIT_BASE + EXIT_CR3_READ] += 1


@jit(inline="always")
def sh_needs_root(sh):
    """True if the current root was zapped: the VMM builds a new one before the guest resumes."""
    cur = sh.roots[0, 1]
    return sh.smeta[SM_RELOAD] != 0 and cur >= 0 and (sh.spt[cur, SP_FLAGS] & SPF_INVALID) != 0


@jit(inline="always")
def sh_pending(sh):
    """True if the VMM has requests to carry out before the guest resumes."""
    return sh.smeta[SM_FLUSH] != 0 or sh.smeta[SM_RELOAD] != 0


@inner
def sh_before_entry(mem, halloc, vm, sh, tlb, psc, stats, ctl, asid):
    """Pending VMM requests, done before the guest resumes: free the zapped (obsolete) roots of
    the root cache and, if the current root was one, load a new one with a resync and a flush
    (``kvm_mmu_free_obsolete_roots``, then ``kvm_mmu_load``); flush the VM's TLB entries and
    paging-structure caches. False if out of frames."""
    smeta = sh.smeta
    rt = sh.roots
    spt = sh.spt
    if smeta[SM_RELOAD] != 0:
        smeta[SM_RELOAD] = 0
        for k in range(1, 1 + smeta[SM_NROOTS]):
            p = rt[k, 1]
            if p >= 0 and (spt[p, SP_FLAGS] & SPF_INVALID) != 0:
                _release_root(mem, sh, stats, p)
                rt[k, 0] = -1
                rt[k, 1] = -1
        old = rt[0, 1]
        if old >= 0 and (spt[old, SP_FLAGS] & SPF_INVALID) != 0:
            root_gpa = spt[old, SP_GFN] << 12
            _release_root(mem, sh, stats, old)
            sp = _new_root(mem, halloc, vm, sh, stats, ctl, root_gpa)
            rt[0, 1] = sp
            if sp < 0:
                return False
            sh_sync_root(mem, vm, sh, stats, ctl, sp)
            _request_flush(sh, stats)
    if smeta[SM_FLUSH] != 0:
        smeta[SM_FLUSH] = 0
        tlb_flush_asid(tlb, asid, False)
        psc_flush_asid(psc, asid)
        stats[S_SH_VMM_FLUSHES] += 1
    return True


# --- traps --------------------------------------------------------------------------------------------


@inner
def _track_write(mem, sh, stats, gpa):
    """``kvm_mmu_track_write``: a write to a write-tracked guest table at ``gpa`` was emulated.
    Upper-level shadows count towards write flooding (and are zapped at the threshold); the
    written entry is zapped in every other shadow of the frame."""
    spt = sh.spt
    gfn = gpa >> 12
    idx = (gpa & 0xFFF) >> 3
    thr = sh.smeta[SM_FLOOD]
    stats[S_SH_EMULATED] += 1
    after = np.int64(-1)
    while True:
        s = _next_sp_of(sh, gfn, after)
        if s < 0:
            break
        after = spt[s, SP_STAMP]
        flooded = False
        if (spt[s, SP_ROLE] & 7) > 1 and thr > 0:
            spt[s, SP_FLOOD] += 1
            flooded = spt[s, SP_FLOOD] >= thr
        if flooded:
            stats[S_SH_FLOODED] += 1
            sh_zap(mem, sh, stats, s)
        elif _drop_spte(mem, sh, stats, s, idx):
            _charge(sh, stats, U_SPTE_WRITE, 1)
            _request_flush(sh, stats)


@inner
def _next_sp_of(sh, gfn, after):
    """The live shadow page (not direct) of guest frame ``gfn`` created first after creation stamp
    ``after``, or -1: visits a frame's pages one by one while zaps change the hash chains."""
    spt = sh.spt
    best = np.int64(-1)
    s = sh.sph[_bucket(gfn)]
    while s >= 0:
        f = spt[s, SP_FLAGS]
        if spt[s, SP_GFN] == gfn and (f & SPF_ALIVE) != 0 and (f & SPF_DIRECT) == 0:
            st = spt[s, SP_STAMP]
            if st > after and (best < 0 or st < spt[best, SP_STAMP]):
                best = s
        s = spt[s, SP_HNEXT]
    return best


@inner
def _clear_root_flood(sh):
    """A write-protection fault clears the write-flooding counts along the faulting address's
    shadow path (``shadow_page_table_clear_flood``). The guest kernel's own mapping of its
    tables is not simulated; its root -- the current root -- is on every path."""
    root = sh.roots[0, 1]
    if root >= 0:
        sh.spt[root, SP_FLOOD] = 0


@inner
def sh_guest_store(mem, vm, sh, stats, gpa, value):
    """A guest kernel store of 64-bit ``value`` to guest-physical ``gpa`` is about to happen: trap
    it if the frame is write-protected (tracing write: emulate and update the shadows; or
    unsync the leaf table). The caller then performs the store: emulated or not, the guest's
    memory ends up holding ``value``."""
    gfn = gpa >> 12
    gfs = sh.gfs
    if gfn >= gfs.shape[0] or gfs[gfn, GF_WP] == 0:
        return
    stats[S_VM_EXITS] += 1
    _clear_root_flood(sh)
    levels = sh.smeta[SM_LEVELS]
    if _tracked(sh, gfn):
        # FNAME(page_fault) walks the guest tables (FNAME(walk_addr)) before
        # page_fault_handle_page_track sends the store to the emulator
        sh.smeta[SM_REASON] = EXIT_TRACING_WRITE
        stats[S_EXIT_BASE + EXIT_TRACING_WRITE] += 1
        stats[S_SH_SW_WALK_STEPS] += levels
        _charge(sh, stats, U_SW_WALK_STEP, levels)
        _track_write(mem, sh, stats, gpa)
    else:
        # The store faults on the read-only mapping; KVM's fault path unsyncs the leaf table.
        sh.smeta[SM_REASON] = EXIT_WP_UNSYNC
        stats[S_EXIT_BASE + EXIT_WP_UNSYNC] += 1
        stats[S_SH_SW_WALK_STEPS] += levels
        _charge(sh, stats, U_SW_WALK_STEP, levels)
        _unsync_gfn(sh, stats, gfn)


@inner
def sh_invlpg(mem, vm, sh, tlb, psc, stats, ctl, asid, va):
    """The VMM's handling of a trapped guest INVLPG (``kvm_mmu_invalidate_addr`` over every cached
    root, ``__kvm_mmu_invalidate_addr``): walk each root towards ``va``, resynchronising the
    entry in unsync shadow pages (``kvm_sync_spte``), and stop at the first page with no unsync
    page below it (``!sp->unsync_children``); then INVVPID the address."""
    smeta = sh.smeta
    rt = sh.roots
    spt = sh.spt
    smeta[SM_REASON] = EXIT_INVLPG
    stats[S_VM_EXITS] += 1
    stats[S_EXIT_BASE + EXIT_INVLPG] += 1
    levels = smeta[SM_LEVELS]
    for k in range(1 + smeta[SM_NROOTS]):
        sp = rt[k, 1]
        if sp < 0 or (spt[sp, SP_FLAGS] & SPF_INVALID) != 0:
            continue
        for level in range(levels, 0, -1):
            idx = (va >> (12 + 9 * (level - 1))) & 511
            stats[S_SH_SW_WALK_STEPS] += 1
            _charge(sh, stats, U_SW_WALK_STEP, 1)
            if (spt[sp, SP_FLAGS] & SPF_UNSYNC) != 0:
                if _sync_spte(mem, vm, sh, stats, ctl, sp, idx):
                    _request_flush(sh, stats)
            if level == 1 or not _unsync_below(sh, sp):
                break
            e = mem_read(mem, spt[sp, SP_HPA] + idx * 8)
            if (e & PTE_P) == _U0 or (e & PTE_PS) != _U0:
                break
            sp = sh.hfn2sp[np.int64(e & ADDR_MASK_52) >> 12]
    hw_invvpid(tlb, psc, INVVPID_ADDRESS, asid, va)


# --- the shadow page-fault handler -------------------------------------------------------------------


@inner
def _prefetch_one(mem, vm, sh, stats, sp, j, tgfn, attrs):
    """Install a prefetched entry ``sp[j]`` mapping guest frame ``tgfn`` with rights ``attrs``;
    False if the frame is not resident on the host (``kvm_prefetch_pages`` fails)."""
    hpa = vm_hpa(vm, tgfn << 12)
    if hpa < 0:
        return False
    w = (attrs & TA_RW) != 0 and (attrs & TA_D) != 0 and _gwp(sh, tgfn) == 0
    _install_leaf(mem, sh, stats, sp, j, _leaf_spte(hpa, attrs, w, False), tgfn)
    stats[S_SH_PREFETCHED] += 1
    return True


@inner
def _prefetch(mem, vm, sh, stats, ctl, sp, idx):
    """Fill not-present entries of the aligned group around ``sp[idx]``, never writable to a
    write-protected or clean frame, with A clear.

    A shadow page of a guest table (``FNAME(pte_prefetch)``): the group's entries in order,
    skipping present ones; the first guest entry that cannot be prefetched (not present,
    reserved bits, A clear, frame not resident) ends it (``break``). A direct page
    (``__direct_pte_prefetch``): each run of not-present entries is fetched from its first
    frame up to the first frame not resident (``direct_pte_prefetch_many``); a run whose first
    frame is not resident ends it."""
    n = sh.smeta[SM_PREFETCH]
    if n <= 1:
        return
    spt = sh.spt
    base = idx & ~(n - 1)
    if (spt[sp, SP_FLAGS] & SPF_DIRECT) != 0:
        attrs = (spt[sp, SP_ROLE] >> R_ACC_SHIFT) & _ACC
        if (attrs & TA_RW) != 0:
            attrs |= TA_D  # a direct page's role already dropped W for a clean guest page
        start = np.int64(-1)
        for j in range(base, base + n + 1):
            gap = j < base + n and j != idx and (mem_read(mem, spt[sp, SP_HPA] + j * 8) & PTE_P) == _U0
            if gap:
                if start < 0:
                    start = j
                continue
            if start < 0:
                continue
            got = 0
            for k in range(start, j):
                if not _prefetch_one(mem, vm, sh, stats, sp, k, spt[sp, SP_GFN] + k, attrs):
                    break
                got += 1
            if got == 0:
                return
            start = -1
        return
    for j in range(base, base + n):
        if j == idx:
            continue
        if (mem_read(mem, spt[sp, SP_HPA] + j * 8) & PTE_P) != _U0:
            continue
        ghpa = vm_hpa(vm, (spt[sp, SP_GFN] << 12) + j * 8)
        if ghpa < 0:
            break
        gpte = mem_read(mem, ghpa)
        ok, attrs = _gpte_attrs(sh, ctl, sp, gpte)
        if not ok:
            break
        if not _prefetch_one(mem, vm, sh, stats, sp, j, np.int64(gpte & ADDR_MASK_52) >> 12, attrs):
            break


@inner
def _child(mem, halloc, vm, sh, stats, ctl, sp, idx, gfn, role):
    """The shadow page below ``sp[idx]`` for (``gfn``, ``role``), one step of ``FNAME(fetch)``:
    the linked one if it matches, else found or created and linked (a mismatching entry is
    dropped first). Returns ``(SHF_RETRY, child)``; ``(SHF_OUT_OF_FRAMES, -1)``; or
    ``(SHF_RETRY, -1)`` when ``sp`` itself was zapped meanwhile (the fault starts over)."""
    spt = sh.spt
    e = mem_read(mem, spt[sp, SP_HPA] + idx * 8)
    if (e & PTE_P) != _U0:
        if (e & PTE_PS) == _U0:
            child = sh.hfn2sp[np.int64(e & ADDR_MASK_52) >> 12]
            if spt[child, SP_GFN] == gfn and spt[child, SP_ROLE] == role:
                return SHF_RETRY, child
        _drop_spte(mem, sh, stats, sp, idx)
        _request_flush(sh, stats)
    child = _get_sp(mem, halloc, vm, sh, stats, ctl, gfn, role)
    if child < 0:
        return SHF_OUT_OF_FRAMES, np.int64(-1)
    if (spt[sp, SP_FLAGS] & SPF_ALIVE) == 0:
        return SHF_RETRY, np.int64(-1)
    _link_child(mem, sh, stats, sp, idx, child)
    return SHF_RETRY, child


@inner
def sh_page_fault(mem, halloc, vm, sh, stats, pkru, maxphy, root_gpa, va, access, ctl, trail, hw_code, prefault):
    """A #PF on the shadow tables exits to the VMM (``FNAME(page_fault)``).

    Walks the guest tables in software (setting the guest's A bits, and D on a write, as the
    hardware would have); a guest-level fault is reflected into the guest. Otherwise the shadow
    path for ``va`` is filled (``FNAME(fetch)``): missing shadow pages are found by (frame, role)
    or created, the leaf entry is made (read-only over a clean or write-protected frame; a
    write to an unsync-able leaf table unsyncs it) and neighbours are prefetched.

    Returns ``(outcome, code_or_gpa)``: SHF_RETRY; SHF_INJECT with the guest #PF error code;
    SHF_EMULATED with the guest-physical address written; SHF_OUT_OF_FRAMES.

    The exit's reason (``hw_code``: the hardware's #PF error code on the shadow tables): a write
    left to the emulator is ``tracing_write``; a write that unsyncs the frame's leaf shadows
    ``wp_unsync``; a write through a present read-only entry over a clean guest entry
    ``ad_dirty``; anything else ``hidden_fault``.

    ``prefault`` (PVM's prefault, Huang et al., SOSP 2023): no exit of its own -- the guest is
    returning from a #PF the VMM reflected, and the VMM fills the shadow path for the faulting
    address then, so the access that follows takes no hidden fault. The work is charged to
    ``pf_inject``; nothing is filled if the guest tables still do not allow the access, and a
    write to a write-tracked frame is left for the access itself to emulate.
    """
    spt = sh.spt
    smeta = sh.smeta
    levels = smeta[SM_LEVELS]
    if prefault:
        smeta[SM_REASON] = EXIT_PF_INJECT
    else:
        stats[S_VM_EXITS] += 1
        smeta[SM_REASON] = EXIT_HIDDEN_FAULT
    st, code, gpa, shift, attrs, n = walk_core(
        mem, root_gpa, levels, TA_RW | TA_US, va, access, ctl, pkru, maxphy, trail, True, vm.gfn2hfn, True
    )
    if prefault and st != WALK_OK:
        stats[S_SH_SW_WALK_STEPS] += n
        _charge(sh, stats, U_SW_WALK_STEP, n)
        return SHF_RETRY, np.int64(0)
    if st != WALK_OK:
        smeta[SM_REASON] = EXIT_PF_INJECT
        stats[S_EXIT_BASE + EXIT_PF_INJECT] += 1
        stats[S_SH_SW_WALK_STEPS] += n
        _charge(sh, stats, U_SW_WALK_STEP, n)
        return SHF_INJECT, np.int64(code)
    stats[S_SH_SW_WALK_STEPS] += n
    leaf_dirty = (trail[n - 1, TR_ATTRS] & TA_D) != 0  # the guest's D before this walk set it
    # CR0.WP=0: a supervisor write through a read-only guest entry maps it writable but
    # supervisor-only (KVM's "u=0, w=1" form).
    if access == ACC_WRITE and (ctl & CTL_USER) == 0 and (ctl & CTL_WP) == 0 and (attrs & TA_RW) == 0:
        attrs = (attrs | TA_RW) & ~TA_US
    role_flags = smeta[SM_ROLE_FLAGS]
    _make_room(mem, sh, stats)
    sp = sh.roots[0, 1]
    guest_leaf = trail[n - 1, TR_LEVEL]
    # upper levels: one shadow page per guest table on the path
    for k in range(n - 1):
        level = levels - k
        spt[sp, SP_FLOOD] = 0
        idx = (va >> (12 + 9 * (level - 1))) & 511
        cgfn = trail[k, TR_NEXT] >> 12
        crole = np.int64(level - 1) | ((trail[k, TR_ATTRS] & _ACC) << R_ACC_SHIFT) | role_flags
        outcome, sp = _child(mem, halloc, vm, sh, stats, ctl, sp, idx, cgfn, crole)
        if sp < 0:
            return outcome, np.int64(0)
    spt[sp, SP_FLOOD] = 0
    # a guest large page: direct shadow pages split it into 4 KiB entries
    leaf_level = 1
    if guest_leaf > 1:
        # A guest large page: a large shadow entry if the host page is as large and no guest
        # table lies in the region (KVM's large-page conditions); else direct shadow pages
        # split it.
        dattrs = attrs & _ACC
        if (attrs & TA_D) == 0:
            dattrs &= ~TA_RW  # protect the clean guest page (role.access of the direct page)
        host_shift = smeta[SM_HOST_SHIFT]
        for level in range(guest_leaf, 1, -1):
            idx = (va >> (12 + 9 * (level - 1))) & 511
            span = np.int64(1) << (9 * (level - 1))  # frames this entry covers
            dgfn = (gpa >> 12) & ~(span - 1)
            if dgfn + span > sh.gfs.shape[0]:
                return SHF_NO_MEMSLOT, np.int64(0)
            if host_shift >= 12 + 9 * (level - 1):
                if sh.gfs[dgfn, GF_LP2 if level == 2 else GF_LP3] == 0:
                    leaf_level = level
                    break
                stats[S_SH_LPAGE_REFUSED] += 1
            drole = np.int64(level - 1) | R_DIRECT | (dattrs << R_ACC_SHIFT) | role_flags
            outcome, sp = _child(mem, halloc, vm, sh, stats, ctl, sp, idx, dgfn, drole)
            if sp < 0:
                return outcome, np.int64(0)
    # the leaf: a 4 KiB entry, or a large one mapping the whole guest (and host) large page
    lspan = np.int64(1) << (9 * (leaf_level - 1))
    idx = (va >> (12 + 9 * (leaf_level - 1))) & 511
    tgfn = (gpa >> 12) & ~(lspan - 1)
    if tgfn >= sh.gfs.shape[0]:
        return SHF_NO_MEMSLOT, np.int64(0)
    hpa = vm_hpa(vm, tgfn << 12)
    if hpa < 0:
        if vm_back(mem, halloc, vm, tgfn) != VM_OK:
            return SHF_NO_MEMSLOT, np.int64(0)
        hpa = vm_hpa(vm, tgfn << 12)
    old = mem_read(mem, spt[sp, SP_HPA] + idx * 8)
    w = (attrs & TA_RW) != 0 and (attrs & TA_D) != 0
    emulate = False
    unsynced = False
    if w and _gwp(sh, tgfn) > 0:
        if _tracked(sh, tgfn):
            w = False
            emulate = access == ACC_WRITE
        else:
            _unsync_gfn(sh, stats, tgfn)
            unsynced = True
    if prefault:
        reason = EXIT_PF_INJECT
        emulate = False
        stats[S_SH_PREFAULTS] += 1
    elif emulate:
        reason = EXIT_TRACING_WRITE
    elif unsynced and access == ACC_WRITE:
        reason = EXIT_WP_UNSYNC
    elif access == ACC_WRITE and (hw_code & PF_P) != 0 and not leaf_dirty:
        reason = EXIT_AD_DIRTY
    else:
        reason = EXIT_HIDDEN_FAULT
    smeta[SM_REASON] = reason
    if not prefault:
        stats[S_EXIT_BASE + reason] += 1
    _charge(sh, stats, U_SW_WALK_STEP, n)
    new = _leaf_spte(hpa & ~np.int64(0xFFF), attrs, w, True)
    if leaf_level > 1:
        new |= PTE_PS
        stats[S_SH_LARGE_SPTES] += 1
    # mmu_set_spte: an entry that is already what the fault would make it is spurious, and then
    # FNAME(fetch) returns before prefetching (unless the write is left to the emulator)
    keep = ~(PTE_A | PTE_D)
    spurious = (old & PTE_P) != _U0 and (old & keep) == (new & keep) and not emulate
    if _install_leaf(mem, sh, stats, sp, idx, new, tgfn):
        _request_flush(sh, stats)
    if leaf_level == 1 and not spurious:
        _prefetch(mem, vm, sh, stats, ctl, sp, idx)
    if emulate:
        _track_write(mem, sh, stats, gpa & ~np.int64(7))
        return SHF_EMULATED, gpa
    return SHF_RETRY, np.int64(0)


@inner
def _unprotect_gfn(mem, sh, stats, gfn):
    """Zap every shadow page of guest frame ``gfn`` (``kvm_mmu_unprotect_gfn_and_retry``)."""
    while True:
        s = _next_sp_of(sh, gfn, np.int64(-1))
        if s < 0:
            return
        sh_zap(mem, sh, stats, s)


@inner
def sh_zero_frame(mem, vm, sh, stats, gfn):
    """The guest kernel clears guest frame ``gfn`` (``clear_page``: ``rep stos``). Under shadow
    paging, if the frame still holds a write-protected guest table (a recycled one), the first
    store faults: a leaf table that may go unsync does (a ``wp_unsync`` exit; the other stores
    land); a write-tracked one is not emulated -- STOS is not a page-table-writing instruction
    (``x86_page_table_writing_insn``), so the VMM zaps every shadow page of the frame and
    re-executes the instruction (``kvm_mmu_unprotect_gfn_and_retry``): one ``unprotect_retry``
    exit, nothing emulated. Returns the frame's host address."""
    hpa = vm_hpa(vm, gfn << 12)
    gfs = sh.gfs
    if gfn < gfs.shape[0] and gfs[gfn, GF_WP] > 0:
        if _tracked(sh, gfn):
            smeta = sh.smeta
            smeta[SM_REASON] = EXIT_UNPROTECT_RETRY
            stats[S_VM_EXITS] += 1
            stats[S_EXIT_BASE + EXIT_UNPROTECT_RETRY] += 1
            _clear_root_flood(sh)
            levels = smeta[SM_LEVELS]
            stats[S_SH_SW_WALK_STEPS] += levels
            _charge(sh, stats, U_SW_WALK_STEP, levels)
            _unprotect_gfn(mem, sh, stats, gfn)
        else:
            sh_guest_store(mem, vm, sh, stats, gfn << 12, _U0)
    mem_zero_frame(mem, hpa >> 12)
    return hpa


def shadow_stats(stats: np.ndarray, policy: dict, host_page: str, backed_frames: int) -> dict:
    """The shadow MMU's counters as the ``mode_stats`` object of the stats schema."""
    s = [int(x) for x in stats]
    return {
        "policy": dict(policy),
        "shadow_pages": {
            "created": s[S_SH_CREATED],
            "zapped": s[S_SH_ZAPPED],
            "flooded": s[S_SH_FLOODED],
            "unsynced": s[S_SH_UNSYNCED],
            "resynced": s[S_SH_RESYNCED],
            "live": s[S_SH_LIVE],
            "peak": s[S_SH_PEAK],
            "reclaimed": s[S_SH_RECLAIMED],
        },
        "root_cache": {"hits": s[S_SH_ROOT_HITS], "misses": s[S_SH_ROOT_MISSES]},
        "prefetched_sptes": s[S_SH_PREFETCHED],
        "prefaulted": s[S_SH_PREFAULTS],
        "spte_writes": s[S_SH_SPTE_WRITES],
        "write_protected_sptes": s[S_SH_WP_SPTES],
        "emulated_writes": s[S_SH_EMULATED],
        "resync_entries": s[S_SH_SYNC_ENTRIES],
        "vmm_sw_walk_steps": s[S_SH_SW_WALK_STEPS],
        "vmm_tlb_flushes": s[S_SH_VMM_FLUSHES],
        "host_page": host_page,
        "large_sptes": s[S_SH_LARGE_SPTES],
        "large_sptes_refused": s[S_SH_LPAGE_REFUSED],
        "shadow_table_bytes": s[S_SH_LIVE] * 4096,
        "shadow_table_peak_bytes": s[S_SH_PEAK] * 4096,
        "guest_memory_backed_bytes": backed_frames * 4096,
    }


__all__ = [
    "make_shadow",
    "dummy_shadow",
    "grow_shadow",
    "sh_budget",
    "sh_page_fault",
    "sh_guest_store",
    "sh_load_cr3",
    "sh_read_cr3",
    "sh_invlpg",
    "sh_before_entry",
    "sh_sync_page",
    "sh_sync_root",
    "sh_zap",
    "sh_root_hpa",
    "sh_zero_frame",
    "shadow_stats",
]


# --- what the views ask of the shadow MMU (plain Python, read-only) ------------------------------


def shadow_page_at(sh: tuple, table_hpa: int) -> dict | None:
    """The shadow page whose table lives at host address ``table_hpa``, as plain values (sp,
    gfn, level, direct, access, cr0_wp, nxe, unsync, invalid), or None."""
    spt, hfn2sp = sh.spt, sh.hfn2sp
    hfn = table_hpa >> 12
    sp = int(hfn2sp[hfn]) if 0 <= hfn < hfn2sp.shape[0] else -1
    if sp < 0:
        return None
    role, flags = int(spt[sp, SP_ROLE]), int(spt[sp, SP_FLAGS])
    return {
        "sp": sp,
        "gfn": int(spt[sp, SP_GFN]),
        "level": role & 7,
        "direct": bool(flags & SPF_DIRECT),
        "access": (role >> R_ACC_SHIFT) & R_ACC_MASK,
        "cr0_wp": bool(role & R_WP),
        "nxe": bool(role & R_NXE),
        "unsync": bool(flags & SPF_UNSYNC),
        "invalid": bool(flags & SPF_INVALID),
    }


def frame_protection(sh: tuple, gfn: int) -> tuple[bool, bool]:
    """(write-protected, write-tracked) of guest frame ``gfn`` in the shadow MMU ``sh``."""
    gfs = sh.gfs
    if not 0 <= gfn < gfs.shape[0]:
        return False, False
    tracked = gfs[gfn, GF_UPPER] > 0 or (sh.smeta[SM_UNSYNC] == 0 and gfs[gfn, GF_SPS] > 0)
    return bool(gfs[gfn, GF_WP] > 0), bool(tracked)


def predict_exit(
    sh: tuple, access: str, guest_ok: bool, shadow_ok: bool, shadow: dict[int, tuple[int, int]], gpa: int
) -> str | None:
    """The VM exit an access takes on a TLB miss, as :func:`sh_page_fault` classifies it; None if
    the hardware completes it from the shadow tables.

    ``guest_ok`` / ``shadow_ok``: whether the VMM's walk of the guest tables and the hardware's
    walk of the shadow tables allow the access; ``shadow``: level -> (hpa, value) of the shadow
    entries read; ``gpa``: the guest-physical address of the guest's leaf entry.
    """
    if shadow_ok:
        return None
    if not guest_ok:
        return "pf_inject"
    level = min(shadow)
    leaf_hpa, last = shadow[level]
    if access == "w" and last & 1 and not last & 2:
        # a read-only shadow leaf under a guest translation that allows the write
        if level > 1 and last & PTE_PS:
            # a large entry: write-protected because a guest table now lies in its region (the
            # write splits it into direct pages), or over a clean guest large page
            return "hidden_fault" if region_holds_tables(sh, gpa >> 12, level) else "ad_dirty"
        page = shadow_page_at(sh, leaf_hpa & ~0xFFF)
        if page is not None and page["direct"] and not page["access"] & TA_RW:
            # a clean guest large page: the write dirties it (A/D emulation), which changes the
            # direct page's role, so the VMM fills a new direct page
            return "ad_dirty"
        wp, tracked = frame_protection(sh, gpa >> 12)
        if tracked:
            return "tracing_write"
        if wp:
            return "wp_unsync"
        # read-only over a clean guest entry (or over a frame whose shadows are all unsync, which
        # a resync left read-only: then the fill just re-makes it, a hidden fault if the guest
        # entry is already dirty)
        return "ad_dirty"
    return "hidden_fault"


def region_holds_tables(sh: tuple, gfn: int, level: int) -> bool:
    """True if the 2 MiB (``level`` 2) or 1 GiB (3) region around guest frame ``gfn`` holds a
    shadowed guest table (no large shadow entry may map it)."""
    gfs = sh.gfs
    base = gfn & ~((1 << (9 * (level - 1))) - 1)
    if not 0 <= base < gfs.shape[0]:
        return False
    return bool(gfs[base, GF_LP2 if level == 2 else GF_LP3] > 0)
