"""An independent exit model of KVM's shadow MMU (plain Python; imports nothing from ``mmu``).

Written from KVM's rules (``arch/x86/kvm/mmu/mmu.c``, ``paging_tmpl.h``, ``page_track.c``,
``x86.c``, ``emulate.c``), the notes in ``shared/reference/shadow-mmu-kvm.md`` (with their
"Corrections and additions") and issue 13, never from the simulator's kernels. It is fed the
guest events a VMM sees, in order (the simulator's event log, :meth:`mmu.engine.Machine.events`),
keeps its own copy of guest memory and its own shadow pages, and predicts the VM exits by
reason and the shadow MMU's counters (named as ``mode_stats`` of the simulator's result).

Events (tuples ``(kind, a, b, c)``):

=============  =============================================================================
access         va, access (0 read, 1 write, 2 fetch), user -- a translation that missed the TLB
guest_pf       va, error code -- a #PF the guest saw (checked against the model's own)
pt_store       gpa, value -- a guest kernel store of a 64-bit word
zero_frame     gfn -- the guest kernel clears a frame (``rep stos``)
cr3_load       root gpa, pcid, no_flush (CR3 bit 63)
cr3_read       --
invlpg         va
backed         gfn, during a shadow fault (1) or on a guest kernel touch (0), first gfn of the
               host page
=============  =============================================================================

Rules, each with the KVM function it follows:

* **Exits.** Every CR3 load, CR3 read and INVLPG exits (VMX without EPT sets CR3-load,
  CR3-store and INVLPG exiting). A user access exits when the hardware walk of the current
  shadow root fails (no entry, or the leaf forbids it); an access that hit the TLB is not an
  event and never exits, as the VMM flushes whenever a present spte loses rights.
* **Shadow page fault** (``FNAME(page_fault)``): the software guest walk
  (``FNAME(walk_addr_generic)``) fails -> ``pf_inject``; else it sets A on each gpte and D on
  the leaf of a write (``FNAME(update_accessed_dirty_bits)``, no trap: it writes through the
  host mapping). A write through a present spte to a write-tracked frame is emulated
  (``page_fault_handle_page_track``, after ``shadow_page_table_clear_flood``) ->
  ``tracing_write``. Otherwise ``make_mmu_pages_available`` then ``FNAME(fetch)``: walk the
  shadow tables clearing each page's flood count (``clear_sp_write_flooding_count``), get or
  create each missing child (``kvm_mmu_get_child_sp``: role = level, direct, access = the AND
  of the gptes above), sync a linked page's unsync children (``mmu_sync_children``), link it
  (``__link_shadow_page``, marking parents unsync), then direct pages below a guest large page
  that cannot get a large spte (``kvm_mmu_hugepage_adjust``: host page size,
  ``disallow_lpage`` counts of shadowed frames; ``validate_direct_spte``), then
  ``mmu_set_spte`` and ``FNAME(pte_prefetch)``. The exit is ``tracing_write`` when the spte
  had to stay read-only for a write (``RET_PF_WRITE_PROTECTED`` -> emulation), ``wp_unsync``
  when a write unsynced shadow pages (``mmu_try_to_unsync_pages``), ``ad_dirty`` when a write
  hit a present read-only spte over a clean gpte (``FNAME(protect_clean_gpte)``), else
  ``hidden_fault``. A guest kernel touch of a frame the host has not backed is a
  ``hidden_fault`` too.
* **Sptes** (``make_spte``): rights = the role's access AND the gpte's; no W over a clean
  gpte on a read or fetch; W is kept if the old spte was writable, else needs
  ``mmu_try_to_unsync_pages``: refused for a write-tracked frame or when unsync is off,
  refused on prefetch if a shadow page of the frame is in sync, else the frame's in-sync leaf
  pages go unsync. The shadowed access stored with the spte is the one asked for.
* **Write protection** (``account_shadowed``): a new indirect shadow page write-protects
  every spte mapping its frame, at 4K..1G (``kvm_mmu_slot_gfn_write_protect``: large sptes
  are made read-only, not zapped), counts against large pages (``kvm_mmu_gfn_disallow_lpage``)
  and, above level 1, write-tracks the frame (``__kvm_write_track_add_gfn``).
* **Guest kernel stores** (``pt_store``, ``zero_frame``) trap while the frame is write
  protected: write-tracked, or with a shadow page not unsync. (The guest kernel's own mapping
  is not simulated: KVM's read-only kernel spte outliving the frame's last shadow page would
  cost one more fault, not modelled.) A store to a write-tracked frame, or a leaf frame with
  unsync off, is emulated -> ``tracing_write`` (``kvm_mmu_track_write``: each shadow page
  of the frame above level 1 counts a write and is zapped at the flood threshold
  (``detect_write_flooding``), else the written spte is zapped (``mmu_page_zap_pte``)); the
  current root's flood count is cleared first (the store's own fault path). Otherwise the
  leaf pages go unsync -> ``wp_unsync``. Clearing a frame is ``rep stos``, not a page-table
  writing instruction (``x86_page_table_writing_insn``): instead of emulation, every shadow
  page of the frame is zapped and the store retried (``kvm_mmu_unprotect_gfn_and_retry``) ->
  ``unprotect_retry``.
* **Found pages** (``kvm_mmu_find_shadow_page``): a hash hit clears the flood count; a found
  unsync page is synced (``kvm_sync_page``) but stays unsync and writable; looking up an
  upper-level role zaps unsync pages of the frame with another role.
* **Sync** (``kvm_sync_page`` / ``FNAME(sync_spte)``): compares present sptes only; drops one
  whose gpte is not present, not accessed or maps another frame; updates changed rights,
  keeping it read-only if the frame has any shadow page (``make_spte`` with can_unsync false).
  ``mmu_sync_children`` write-protects each unsync page's frame, marks it synchronized and
  syncs it, following ``unsync_child_bitmap`` (``__mmu_unsync_walk``, clearing stale bits,
  ``mmu_pages_clear_parents``).
* **Zap** (``__kvm_mmu_prepare_zap_page``): unsync children first (``mmu_zap_unsync_children``),
  then unlink children and parents; a root still in the root cache stays allocated until it
  leaves it (``kvm_mmu_free_obsolete_roots`` at the next entry).
* **CR3 load** (``kvm_set_cr3``): the same CR3 only flushes; else ``kvm_mmu_new_pgd`` ->
  ``fast_pgd_switch`` (current + N previous roots keyed by CR3 with PCID, LRU by swapping,
  ``cached_root_find_and_keep_current`` / ``_without_current``); a hit clears the root's
  flood count; a miss frees the LRU root and ``kvm_mmu_load`` builds the root at entry
  (``mmu_alloc_shadow_roots``: ``make_mmu_pages_available``, hash lookup) and always syncs it
  (``kvm_mmu_sync_roots``). A flushing load (``kvm_invalidate_pcid``) syncs the current root
  and, with PCIDE, frees cached previous roots of the same PCID.
* **INVLPG** (``__kvm_mmu_invalidate_addr``): in the current and each cached root, walk
  towards ``va`` (one step per shadow page), syncing the spte in unsync pages
  (``kvm_sync_spte``), stopping at a page without unsync children.
* **Prefetch** (``FNAME(pte_prefetch)``): after a leaf fill at level 1, the aligned group of
  ``prefetch`` entries around it, skipping present ones, each gpte accessed, present, valid
  and to a host-resident frame (``FNAME(prefetch_gpte)``), stopping at the first that is not;
  in a direct page, runs of non-present entries mapped while host-resident
  (``__direct_pte_prefetch``, ``direct_pte_prefetch_many``).
* **Memory pressure** (``make_mmu_pages_available``): with fewer than 5 of ``max_pages``
  free, zap the oldest pages not used as roots until 25 are free
  (``kvm_mmu_zap_oldest_mmu_pages``).

Counters: exits by reason; shadow pages created / zapped (a valid page made invalid) /
flooded / unsynced / resynced (``kvm_sync_page`` calls) / live / peak / reclaimed; root-cache
hits / misses (a load of the current CR3 keeps its root: a hit, though KVM looks nothing up);
prefetched sptes; entries compared in resyncs;
VMM software-walk steps (gptes read by the fault walk -- ``levels`` for a trapped kernel
store, whose mapping is not simulated -- and shadow pages visited by INVLPG); large sptes
installed and refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACC_EXEC = 1  # KVM's ACC_EXEC_MASK, ACC_WRITE_MASK, ACC_USER_MASK
ACC_WRITE = 2
ACC_USER = 4
ACC_ALL = 7

_P = 1
_RW = 2
_US = 4
_A = 1 << 5
_D = 1 << 6
_PS = 1 << 7
_XD = 1 << 63
_ADDR = 0x000F_FFFF_FFFF_F000

PF_P, PF_W, PF_U, PF_RSVD, PF_I = 1, 2, 4, 8, 16

EXIT_REASONS = (
    "hidden_fault", "pf_inject", "tracing_write", "wp_unsync", "ad_dirty",
    "cr3_load", "cr3_read", "invlpg", "unprotect_retry",
)  # fmt: skip


@dataclass
class KvmConfig:
    """The guest's paging setup and the VMM's policy knobs (KVM's defaults)."""

    levels: int = 4
    wp: bool = True
    nxe: bool = True
    pcide: bool = True
    maxphyaddr: int = 52
    unsync: bool = True
    prefetch: int = 8  # PTE_PREFETCH_NUM; <= 1: off
    roots: int = 3  # KVM_MMU_NUM_PREV_ROOTS
    flood_threshold: int = 3  # detect_write_flooding; 0: off
    max_pages: int = 0  # n_max_mmu_pages; 0: no cap
    host_shift: int = 12  # 12, 21 or 30
    prefault: bool = False  # PVM's prefault (not in KVM)


class Spte:
    """A present shadow entry: a link to a child page, or a leaf mapping ``gfn``."""

    __slots__ = ("child", "gfn", "level", "access", "w", "u", "x")

    def __init__(self, child=None, gfn=0, level=1, access=0, w=False, u=False, x=False):
        self.child = child
        self.gfn = gfn
        self.level = level
        self.access = access  # the shadowed access (kvm_mmu_page_get_access)
        self.w, self.u, self.x = w, u, x


@dataclass(eq=False)
class SP:
    """``struct kvm_mmu_page``: role (level, direct, access), sptes, parents, unsync state."""

    gfn: int
    level: int
    direct: bool
    access: int
    stamp: int
    spt: dict = field(default_factory=dict)  # index -> Spte
    parents: list = field(default_factory=list)  # [(parent SP, index)]
    unsync: bool = False
    bitmap: set = field(default_factory=set)  # unsync_child_bitmap
    flood: int = 0
    root_count: int = 0
    invalid: bool = False

    @property
    def role(self):
        return (self.level, self.direct, self.access)


def _span(level: int) -> int:
    return 1 << (9 * (level - 1))


def _index(va: int, level: int) -> int:
    return (va >> (12 + 9 * (level - 1))) & 511


def _gpte_access(gpte: int, nxe: bool) -> int:
    """``FNAME(gpte_access)``: W, U, and X unless XD (with EFER.NXE)."""
    acc = 0
    if gpte & _RW:
        acc |= ACC_WRITE
    if gpte & _US:
        acc |= ACC_USER
    if not (nxe and gpte & _XD):
        acc |= ACC_EXEC
    return acc


class Walk:
    """What ``FNAME(walk_addr_generic)`` leaves in ``struct guest_walker``."""

    def __init__(self):
        self.ok = False
        self.code = 0
        self.steps = 0
        self.level = 0
        self.gfn = 0
        self.table_gfn: dict[int, int] = {}
        self.pt_access: dict[int, int] = {}
        self.pte_access = 0
        self.leaf_dirty = False


class KvmShadowModel:
    """Feed it events with :meth:`feed`; read :attr:`exits` and :meth:`stats`."""

    def __init__(self, cfg: KvmConfig | None = None):
        self.cfg = cfg = cfg or KvmConfig()
        self.mem: dict[int, dict[int, int]] = {}  # gfn -> {index: 64-bit word}
        self.backed: set[int] = set()
        self.hash: dict[int, list[SP]] = {}  # gfn -> valid pages, newest first
        self.rmap: dict[tuple[int, int], set] = {}  # (level, first gfn) -> {(SP, index)} leaf sptes
        self.track: dict[int, int] = {}  # gfn -> write-track count
        self.disallow: dict[tuple[int, int], int] = {}  # (level, first gfn) -> disallow_lpage
        self.active: list[SP] = []  # allocated pages (valid, or invalid roots still cached)
        self.cr3 = None
        self.root = None  # (pgd, SP) or None: the current root
        self.prev: list = [None] * cfg.roots
        self.req_sync = False
        self.stamp = 0
        self.exits = dict.fromkeys(EXIT_REASONS, 0)
        self.c = dict.fromkeys(
            ("created", "zapped", "flooded", "unsynced", "resynced", "reclaimed", "hits", "misses",
             "prefetched", "resync_entries", "walk_steps", "large_sptes", "large_refused", "emulated",
             "peak", "prefaulted"), 0,
        )  # fmt: skip
        self.pf: list[tuple[int, int]] = []  # guest page faults the model predicts
        self.seen_pf: list[tuple[int, int]] = []
        self.notes: list[str] = []  # events that contradict the model's state

    # --- guest memory ----------------------------------------------------------------------------
    def read(self, gpa: int) -> int:
        return self.mem.get(gpa >> 12, {}).get((gpa & 0xFFF) >> 3, 0)

    def write(self, gpa: int, value: int) -> None:
        self.mem.setdefault(gpa >> 12, {})[(gpa & 0xFFF) >> 3] = value & 0xFFFF_FFFF_FFFF_FFFF

    # --- events ----------------------------------------------------------------------------------
    def feed(self, ev) -> None:
        kind, a, b, c = ev
        getattr(self, "_ev_" + kind)(a, b, c)
        self._before_entry()

    def _ev_access(self, va, access, _user):
        va &= 0xFFFF_FFFF_FFFF_FFFF
        if not self._canonical(va):
            return
        present, ok = self._hw_walk(va, access)
        if not ok:
            self._page_fault(va, access, present)

    def _ev_prefault(self, va, access, _c):
        """PVM's prefault (Huang et al., SOSP 2023; not in KVM): as the guest returns from a #PF
        the VMM reflected, the VMM fills the shadow path of the faulting address the way a fault
        would (``FNAME(page_fault)``'s walk, then ``FNAME(fetch)``), with no exit of its own and
        no emulation."""
        va &= 0xFFFF_FFFF_FFFF_FFFF
        walk = self._guest_walk(va, access)
        self.c["walk_steps"] += walk.steps
        if not walk.ok:
            return
        span = 1 << (self.cfg.host_shift - 12)
        first = walk.gfn & ~(span - 1)
        self.backed.update(range(first, first + span))
        self._make_pages_available()
        self._fetch(va, walk, access == 1)
        self.c["prefaulted"] += 1

    def _ev_guest_pf(self, va, code, _c):
        self.seen_pf.append((va & 0xFFFF_FFFF_FFFF_FFFF, code))

    def _ev_backed(self, gfn, in_fault, first):
        span = 1 << (self.cfg.host_shift - 12)
        if in_fault:
            if gfn not in self.backed:
                self.notes.append(f"backed in a fault the model did not expect: gfn {gfn:#x}")
        else:
            self.exits["hidden_fault"] += 1  # the guest kernel's first touch of the frame
        self.backed.update(range(first, first + span))

    def _ev_zero_frame(self, gfn, _b, _c):
        if self._write_protected(gfn):
            self.c["walk_steps"] += self.cfg.levels
            self._clear_root_flood()
            if self._tracked(gfn) or not self.cfg.unsync:
                # STOS is no page-table writing instruction: unprotect and retry.
                self.exits["unprotect_retry"] += 1
                for sp in self._sps_with_gptes(gfn):
                    self._zap(sp)
            else:
                self.exits["wp_unsync"] += 1
                self._try_unsync(gfn, True, False)
        self.mem.pop(gfn, None)

    def _ev_pt_store(self, gpa, value, _c):
        gfn = gpa >> 12
        if self._write_protected(gfn):
            self.c["walk_steps"] += self.cfg.levels
            self._clear_root_flood()
            if self._tracked(gfn) or not self.cfg.unsync:
                self.exits["tracing_write"] += 1
                self.write(gpa, value)
                self._emulated_write(gpa)
                return
            self.exits["wp_unsync"] += 1
            self._try_unsync(gfn, True, False)
        self.write(gpa, value)

    def _ev_cr3_read(self, _a, _b, _c):
        self.exits["cr3_read"] += 1

    def _ev_cr3_load(self, root, pcid, no_flush):
        """``kvm_set_cr3``."""
        self.exits["cr3_load"] += 1
        cfg = self.cfg
        skip_flush = cfg.pcide and bool(no_flush)
        cr3 = root | (pcid if cfg.pcide else 0)
        if cr3 != self.cr3:
            self._new_pgd(cr3)
            self.cr3 = cr3
        # the same CR3 again: no lookup at all (neither a root-cache hit nor a miss)
        if not skip_flush:
            self._invalidate_pcid(pcid if cfg.pcide else 0)

    def _ev_invlpg(self, va, _b, _c):
        """``kvm_mmu_invlpg`` -> ``kvm_mmu_invalidate_addr`` for every cached root."""
        self.exits["invlpg"] += 1
        va &= 0xFFFF_FFFF_FFFF_FFFF
        if not self._canonical(va):
            return
        for entry in [self.root, *self.prev]:
            if entry is None:
                continue
            sp = entry[1]
            level = self.cfg.levels
            while True:
                self.c["walk_steps"] += 1
                idx = _index(va, level)
                if sp.unsync:
                    self._sync_spte(sp, idx)
                if not self._unsync_below(sp):
                    break
                spte = sp.spt.get(idx)
                if spte is None or spte.child is None:
                    break
                sp = spte.child
                level -= 1

    # --- the hardware ----------------------------------------------------------------------------
    def _canonical(self, va: int) -> bool:
        bits = 12 + 9 * self.cfg.levels
        top = va >> (bits - 1)
        return top == 0 or top == (1 << (65 - bits)) - 1

    def _hw_walk(self, va, access):
        """The processor's walk of the current shadow root (CR0.WP forced on, user mode):
        returns (leaf present, access allowed)."""
        if self.root is None:
            return False, False
        sp = self.root[1]
        level = self.cfg.levels
        while True:
            spte = sp.spt.get(_index(va, level))
            if spte is None:
                return False, False
            if spte.child is None:
                ok = spte.u and (access != 1 or spte.w) and (access != 2 or spte.x)
                return True, ok
            sp = spte.child
            level -= 1

    # --- FNAME(walk_addr_generic) ----------------------------------------------------------------
    def _guest_walk(self, va, access) -> Walk:
        cfg = self.cfg
        w = Walk()
        write, fetch = access == 1, access == 2
        rsvd_hi = ((1 << 52) - 1) & ~((1 << cfg.maxphyaddr) - 1)
        table = self.cr3 & _ADDR
        pt_access = pte_access = ACC_ALL
        accessed = True
        level = cfg.levels
        used = []  # (gpa, level) of each gpte used
        code = 0
        while True:
            pt_access = pte_access
            w.table_gfn[level] = table >> 12
            gpa = table + 8 * _index(va, level)
            pte = self.read(gpa)
            w.steps += 1
            if not pte & _P:
                code = 0
                break
            rsvd = bool(pte & rsvd_hi) or (not cfg.nxe and pte & _XD)
            if pte & _PS:
                if level > 3:
                    rsvd = True
                elif level > 1 and pte & (((1 << (9 * (level - 1))) - 1) << 12) & ~(1 << 12):
                    rsvd = True  # a large page's address bits below its size (PAT bit aside)
            if rsvd:
                code = PF_RSVD | PF_P
                break
            pte_access = pt_access & _gpte_access(pte, cfg.nxe)
            accessed = accessed and bool(pte & _A)
            w.pt_access[level] = pt_access
            used.append((gpa, level))
            if level == 1 or pte & _PS:
                w.level = level
                ok = pte_access & ACC_USER and (not write or pte_access & ACC_WRITE)
                ok = ok and (not fetch or pte_access & ACC_EXEC)
                if not ok:
                    code = PF_P
                    break
                w.ok = True
                w.gfn = ((pte & _ADDR) >> 12) & ~(_span(level) - 1)
                w.gfn += (va >> 12) & (_span(level) - 1)
                w.pte_access = pte_access
                w.leaf_dirty = bool(pte & _D)
                if not write and not pte & _D:
                    w.pte_access &= ~ACC_WRITE  # FNAME(protect_clean_gpte)
                if not accessed or (write and not pte & _D):
                    for g, lv in used:  # FNAME(update_accessed_dirty_bits)
                        v = self.read(g) | _A
                        if lv == level and write:
                            v |= _D
                        self.write(g, v)
                return w
            table = pte & _ADDR
            level -= 1
        w.code = code | (PF_W if write else 0) | PF_U | (PF_I if fetch and cfg.nxe else 0)
        return w

    # --- FNAME(page_fault) -----------------------------------------------------------------------
    def _page_fault(self, va, access, present):
        cfg = self.cfg
        walk = self._guest_walk(va, access)
        self.c["walk_steps"] += walk.steps
        if not walk.ok:
            self.exits["pf_inject"] += 1
            self.pf.append((va, walk.code))
            return
        write = access == 1
        gfn = walk.gfn
        if write and present and self._tracked(gfn):  # page_fault_handle_page_track
            self._clear_flood_path(va)
            self.exits["tracing_write"] += 1
            self._emulated_write((gfn << 12) | (va & 0xFF8))
            return
        span = 1 << (cfg.host_shift - 12)
        first = gfn & ~(span - 1)
        self.backed.update(range(first, first + span))  # kvm_faultin_pfn
        self._make_pages_available()
        unsynced_before = self.c["unsynced"]
        ret = self._fetch(va, walk, write)
        if ret == "wrprot":
            self.exits["tracing_write"] += 1
            self._emulated_write((gfn << 12) | (va & 0xFF8))
        elif self.c["unsynced"] > unsynced_before and write:
            self.exits["wp_unsync"] += 1
        elif write and present and not walk.leaf_dirty:
            self.exits["ad_dirty"] += 1
        else:
            self.exits["hidden_fault"] += 1

    def _fetch(self, va, walk: Walk, write: bool):
        """``FNAME(fetch)``: returns "wrprot", "spurious" or "fixed"."""
        cfg = self.cfg
        sp = self.root[1]
        level = cfg.levels
        while True:
            sp.flood = 0  # clear_sp_write_flooding_count
            if level == walk.level:
                break
            idx = _index(va, level)
            spte = sp.spt.get(idx)
            if spte is not None and spte.child is not None:
                child = spte.child  # -EEXIST
            else:
                child = self._get_sp(walk.table_gfn[level - 1], (level - 1, False, walk.pt_access[level]))
                if child.bitmap:
                    self._sync_children(child)
                self._link(sp, idx, child)
            sp = child
            level -= 1
        goal = self._mapping_level(walk)
        direct_access = walk.pte_access
        while True:
            if level == goal:
                break
            idx = _index(va, level)
            spte = sp.spt.get(idx)
            if spte is not None and spte.child is not None:
                if spte.child.access != direct_access:  # validate_direct_spte
                    self._drop_parent(spte.child, sp, idx)
                    spte = None
                else:
                    sp = spte.child
                    level -= 1
                    continue
            base = walk.gfn & ~(_span(level) - 1)
            child = self._get_sp(base, (level - 1, True, direct_access))
            self._link(sp, idx, child)
            sp = child
            level -= 1
        base = walk.gfn & ~(_span(level) - 1)
        idx = _index(va, level)
        if level > 1:
            self.c["large_sptes"] += 1
        ret = self._set_spte(sp, idx, walk.pte_access, base, level, write, prefetch=False)
        if ret == "spurious":
            return ret
        if level == 1:
            self._prefetch(sp, idx)
        return ret

    def _mapping_level(self, walk: Walk) -> int:
        """``kvm_mmu_hugepage_adjust`` / ``kvm_mmu_max_mapping_level``."""
        if walk.level == 1:
            return 1
        level = walk.level
        while level > 1 and self.disallow.get((level, walk.gfn & ~(_span(level) - 1)), 0):
            level -= 1
        host = (self.cfg.host_shift - 12) // 9 + 1
        if level < min(walk.level, host):
            self.c["large_refused"] += 1
        if level == 1:
            return 1
        return min(level, host)

    # --- sptes -----------------------------------------------------------------------------------
    def _set_spte(self, sp, idx, pte_access, gfn, level, write, prefetch):
        """``mmu_set_spte`` + ``make_spte``: "wrprot", "spurious" or "fixed"."""
        old = sp.spt.get(idx)
        if old is not None:
            if old.child is not None:
                self._drop_parent(old.child, sp, idx)
                old = None
            elif old.gfn != gfn or old.level != level:
                self._drop_spte(sp, idx)
                old = None
        w = False
        wrprot = False
        if pte_access & ACC_WRITE:
            if old is not None and old.w:
                w = True
            elif self._try_unsync(gfn, True, prefetch):
                wrprot = True
            else:
                w = True
        u = bool(pte_access & ACC_USER)
        x = bool(pte_access & ACC_EXEC)
        if old is not None and (old.w, old.u, old.x) == (w, u, x):
            ret = "spurious"
            old.access = pte_access
        else:
            ret = "fixed"
            if old is None:
                sp.spt[idx] = Spte(None, gfn, level, pte_access, w, u, x)
                self.rmap.setdefault((level, gfn), set()).add((sp, idx))
            else:
                old.w, old.u, old.x, old.access = w, u, x, pte_access
        if wrprot and write:
            return "wrprot"
        return ret

    def _try_unsync(self, gfn, can_unsync, prefetch) -> bool:
        """``mmu_try_to_unsync_pages``: True if the spte must stay read-only."""
        if self._tracked(gfn):
            return True
        for sp in self._sps_with_gptes(gfn):
            if not can_unsync or not self.cfg.unsync:
                return True
            if sp.unsync:
                continue
            if prefetch:
                return True
            self._unsync_page(sp)
        return False

    def _unsync_page(self, sp):
        """``kvm_unsync_page``."""
        self.c["unsynced"] += 1
        sp.unsync = True
        self._mark_parents_unsync(sp)

    def _mark_parents_unsync(self, sp):
        for psp, idx in list(sp.parents):
            self._mark_unsync(psp, idx)

    def _mark_unsync(self, psp, idx):
        if idx in psp.bitmap:
            return
        psp.bitmap.add(idx)
        if len(psp.bitmap) > 1:
            return
        self._mark_parents_unsync(psp)

    def _drop_spte(self, sp, idx):
        spte = sp.spt.pop(idx)
        self.rmap[(spte.level, spte.gfn)].discard((sp, idx))

    def _drop_parent(self, child, sp, idx):
        """``drop_parent_pte``: unlink ``child`` from ``sp[idx]`` (no bitmap update)."""
        child.parents.remove((sp, idx))
        del sp.spt[idx]

    def _zap_pte(self, sp, idx):
        """``mmu_page_zap_pte``."""
        spte = sp.spt.get(idx)
        if spte is None:
            return
        if spte.child is None:
            self._drop_spte(sp, idx)
        else:
            self._drop_parent(spte.child, sp, idx)

    def _link(self, sp, idx, child):
        """``__link_shadow_page``."""
        if idx in sp.spt:
            self._zap_pte(sp, idx)  # drop_large_spte
        sp.spt[idx] = Spte(child=child)
        child.parents.append((sp, idx))
        if child.bitmap or child.unsync:
            self._mark_unsync(sp, idx)

    def _write_protect_gfn(self, gfn):
        """``kvm_mmu_slot_gfn_write_protect`` at 4K..1G."""
        for level in (1, 2, 3):
            for sp, idx in self.rmap.get((level, gfn & ~(_span(level) - 1)), ()):
                sp.spt[idx].w = False

    # --- shadow pages ----------------------------------------------------------------------------
    def _sps_with_gptes(self, gfn):
        return [sp for sp in self.hash.get(gfn, ()) if not sp.direct and not sp.invalid]

    def _tracked(self, gfn) -> bool:
        return self.track.get(gfn, 0) > 0

    def _write_protected(self, gfn) -> bool:
        return self._tracked(gfn) or any(not sp.unsync for sp in self._sps_with_gptes(gfn))

    def _get_sp(self, gfn, role) -> SP:
        """``kvm_mmu_find_shadow_page``, else ``kvm_mmu_alloc_shadow_page``."""
        level, direct, access = role
        for sp in list(self.hash.get(gfn, ())):
            if sp.invalid:
                continue
            if sp.role != role:
                if level > 1 and sp.unsync:
                    self._zap(sp)
                continue
            if sp.direct:
                return sp
            if sp.unsync:
                self._sync_page(sp)  # stays unsync, not write-protected
            sp.flood = 0
            return sp
        self.stamp += 1
        sp = SP(gfn, level, direct, access, self.stamp)
        self.c["created"] += 1
        self.hash.setdefault(gfn, []).insert(0, sp)
        self.active.append(sp)
        self.c["peak"] = max(self.c["peak"], self.c["created"] - self.c["zapped"])
        if not direct:  # account_shadowed
            if level > 1:
                self.track[gfn] = self.track.get(gfn, 0) + 1
            for lv in (2, 3):
                key = (lv, gfn & ~(_span(lv) - 1))
                self.disallow[key] = self.disallow.get(key, 0) + 1
            self._write_protect_gfn(gfn)
        return sp

    def _zap(self, sp) -> int:
        """``__kvm_mmu_prepare_zap_page``; returns pages it took off the active list."""
        n = 0
        if sp.level > 1:  # mmu_zap_unsync_children
            while True:
                pages = self._unsync_walk(sp)
                if not pages:
                    break
                for leaf, path in pages:
                    n += self._zap(leaf)
                    self._clear_parents(path)
        for idx in list(sp.spt):  # kvm_mmu_page_unlink_children
            self._zap_pte(sp, idx)
        for psp, idx in list(sp.parents):  # kvm_mmu_unlink_parents
            self._drop_parent(sp, psp, idx)
        if not sp.invalid:
            self.c["zapped"] += 1
            if not sp.direct:  # unaccount_shadowed
                if sp.level > 1:
                    self.track[sp.gfn] -= 1
                for lv in (2, 3):
                    self.disallow[(lv, sp.gfn & ~(_span(lv) - 1))] -= 1
            self.hash[sp.gfn].remove(sp)
        sp.unsync = False
        sp.invalid = True
        if sp.root_count == 0 and sp in self.active:
            self.active.remove(sp)
            n += 1
        return n

    def _unsync_below(self, sp) -> bool:
        """``sp->unsync_children``, exactly: an unsync page is linked somewhere below ``sp``.

        KVM keeps it as marks (``unsync_child_bitmap``) that a zap of an unsync child clears
        only inside the subtree walked (``mmu_pages_clear_parents``), so a mark can stay set
        above until the next unsync walk; an INVLPG walk then goes one page further than here.
        The simulator answers exactly; this model follows it on purpose (docs/shadow.md,
        "Differences from KVM, on purpose"), so only this count of walk steps departs from KVM."""
        for spte in sp.spt.values():
            child = spte.child
            if child is not None and (child.unsync or self._unsync_below(child)):
                return True
        return False

    def _unsync_walk(self, top):
        """``mmu_unsync_walk``: the unsync leaves below ``top`` with their parent paths."""
        found: list = []
        seen: set = set()

        def walk(sp, path):
            count = 0
            for i in sorted(sp.bitmap):
                spte = sp.spt.get(i)
                if spte is None or spte.child is None:
                    sp.bitmap.discard(i)
                    continue
                child = spte.child
                if child.bitmap:
                    r = walk(child, [(sp, i), *path])
                    if r == 0:
                        sp.bitmap.discard(i)
                    count += r
                elif child.unsync:
                    count += 1
                    if child not in seen:
                        seen.add(child)
                        found.append((child, [(sp, i), *path]))
                else:
                    sp.bitmap.discard(i)
            return count

        if top.bitmap:
            walk(top, [])
        return found

    def _clear_parents(self, path):
        """``mmu_pages_clear_parents``."""
        for sp, idx in path:
            sp.bitmap.discard(idx)
            if sp.bitmap:
                break

    def _sync_children(self, parent):
        """``mmu_sync_children``."""
        while True:
            pages = self._unsync_walk(parent)
            if not pages:
                return
            for leaf, _path in pages:
                self._write_protect_gfn(leaf.gfn)
            for leaf, path in pages:
                leaf.unsync = False
                self._sync_page(leaf)
                self._clear_parents(path)

    def _sync_page(self, sp):
        """``kvm_sync_page``: every present spte compared."""
        self.c["resynced"] += 1
        for idx in sorted(sp.spt):
            self._sync_spte(sp, idx)

    def _sync_spte(self, sp, idx):
        """``kvm_sync_spte`` / ``FNAME(sync_spte)``."""
        spte = sp.spt.get(idx)
        if spte is None:
            return
        self.c["resync_entries"] += 1
        gpte = self.read((sp.gfn << 12) + 8 * idx)
        if self._invalid_gpte(gpte, 1):
            self._drop_spte(sp, idx)
            return
        gfn = (gpte & _ADDR) >> 12
        access = sp.access & _gpte_access(gpte, self.cfg.nxe)
        if not gpte & _D:
            access &= ~ACC_WRITE
        if gfn != spte.gfn:
            self._drop_spte(sp, idx)
            return
        if spte.access == access:
            return
        spte.access = access
        w = False
        if access & ACC_WRITE:
            w = spte.w or not self._try_unsync(gfn, False, True)
        spte.w, spte.u, spte.x = w, bool(access & ACC_USER), bool(access & ACC_EXEC)

    def _invalid_gpte(self, gpte, level) -> bool:
        """``FNAME(prefetch_invalid_gpte)``: not present, reserved bits, or not accessed."""
        if not gpte & _P or not gpte & _A:
            return True
        rsvd_hi = ((1 << 52) - 1) & ~((1 << self.cfg.maxphyaddr) - 1)
        return bool(gpte & rsvd_hi) or (not self.cfg.nxe and bool(gpte & _XD))

    # --- prefetch --------------------------------------------------------------------------------
    def _prefetch(self, sp, fault_idx):
        """``FNAME(pte_prefetch)`` / ``__direct_pte_prefetch``."""
        n = self.cfg.prefetch
        if n <= 1:
            return
        first = fault_idx & ~(n - 1)
        if sp.direct:
            start = None
            for i in range(first, first + n):
                if i in sp.spt or i == fault_idx:
                    if start is None:
                        continue
                    if not self._direct_many(sp, start, i):
                        return
                    start = None
                elif start is None:
                    start = i
            if start is not None:
                self._direct_many(sp, start, first + n)
            return
        for i in range(first, first + n):
            if i == fault_idx or i in sp.spt:
                continue
            gpte = self.read((sp.gfn << 12) + 8 * i)
            if self._invalid_gpte(gpte, 1):
                return
            gfn = (gpte & _ADDR) >> 12
            if gfn not in self.backed:
                return
            access = sp.access & _gpte_access(gpte, self.cfg.nxe)
            if not gpte & _D:
                access &= ~ACC_WRITE
            self._set_spte(sp, i, access, gfn, 1, False, prefetch=True)
            self.c["prefetched"] += 1

    def _direct_many(self, sp, start, end) -> bool:
        """``direct_pte_prefetch_many``: False stops the prefetch."""
        gfn = sp.gfn + start
        count = 0
        while start + count < end and gfn + count in self.backed:
            count += 1
        if count == 0:
            return False
        for k in range(count):
            self._set_spte(sp, start + k, sp.access, gfn + k, 1, False, prefetch=True)
            self.c["prefetched"] += 1
        return True

    # --- flooding, emulation ---------------------------------------------------------------------
    def _clear_root_flood(self):
        if self.root is not None:
            self.root[1].flood = 0

    def _clear_flood_path(self, va):
        """``shadow_page_table_clear_flood``."""
        if self.root is None:
            return
        sp = self.root[1]
        level = self.cfg.levels
        while True:
            sp.flood = 0
            spte = sp.spt.get(_index(va, level))
            if spte is None or spte.child is None:
                return
            sp = spte.child
            level -= 1

    def _emulated_write(self, gpa):
        """``kvm_mmu_track_write`` after an emulated store at ``gpa``."""
        self.c["emulated"] += 1
        idx = (gpa & 0xFFF) >> 3
        for sp in self._sps_with_gptes(gpa >> 12):
            if sp.invalid:
                continue
            if sp.level > 1:  # detect_write_flooding
                sp.flood += 1
                if self.cfg.flood_threshold and sp.flood >= self.cfg.flood_threshold:
                    self._zap(sp)
                    self.c["flooded"] += 1
                    continue
            self._zap_pte(sp, idx)

    # --- memory pressure -------------------------------------------------------------------------
    def _make_pages_available(self):
        """``make_mmu_pages_available`` / ``kvm_mmu_zap_oldest_mmu_pages``."""
        cap = self.cfg.max_pages
        if not cap:
            return
        avail = max(cap - len(self.active), 0)
        if avail >= 5:
            return
        goal = 25 - avail
        total = 0
        for sp in sorted(self.active, key=lambda s: s.stamp):
            if sp.root_count or sp.invalid:
                continue
            total += self._zap(sp)
            if total >= goal:
                break
        self.c["reclaimed"] += total

    # --- roots -----------------------------------------------------------------------------------
    def _usable(self, entry, pgd) -> bool:
        return entry is not None and entry[0] == pgd and not entry[1].invalid

    def _free_root(self, entry):
        """``mmu_free_root_page``."""
        if entry is None:
            return
        sp = entry[1]
        sp.root_count -= 1
        if sp.root_count == 0 and sp.invalid and sp in self.active:
            self.active.remove(sp)

    def _new_pgd(self, pgd):
        """``kvm_mmu_new_pgd`` -> ``fast_pgd_switch``."""
        prev = self.prev
        if self.root is not None:
            hit = self._usable(self.root, pgd)
            i = 0
            while not hit and i < len(prev):
                self.root, prev[i] = prev[i], self.root
                hit = self._usable(self.root, pgd)
                i += 1
            if not hit:
                self._free_root(self.root)
                self.root = None
        else:
            hit = False
            for i in range(len(prev)):
                if self._usable(prev[i], pgd):
                    self.root = prev[i]
                    prev[i:] = [*prev[i + 1 :], None]
                    hit = True
                    break
        if hit:
            self.c["hits"] += 1
            self.root[1].flood = 0
        else:
            self.c["misses"] += 1

    def _invalidate_pcid(self, pcid):
        """``kvm_invalidate_pcid``."""
        self.req_sync = True
        if not self.cfg.pcide:
            return
        for i, entry in enumerate(self.prev):
            if entry is not None and (entry[0] & 0xFFF) == pcid:
                self._free_root(entry)
                self.prev[i] = None

    def _before_entry(self):
        """``vcpu_enter_guest``'s requests: free obsolete roots, sync, load a missing root."""
        for i, entry in enumerate(self.prev):
            if entry is not None and entry[1].invalid:
                self._free_root(entry)
                self.prev[i] = None
        if self.root is not None and self.root[1].invalid:
            self._free_root(self.root)
            self.root = None
        if self.req_sync and self.root is not None:
            self._sync_roots()
        self.req_sync = False
        if self.root is None and self.cr3 is not None:
            self._load()

    def _sync_roots(self):
        """``kvm_mmu_sync_roots``."""
        sp = self.root[1]
        if sp.unsync or sp.bitmap:
            self._sync_children(sp)

    def _load(self):
        """``kvm_mmu_load`` -> ``mmu_alloc_shadow_roots`` + ``kvm_mmu_sync_roots``."""
        self._make_pages_available()
        sp = self._get_sp(self.cr3 >> 12, (self.cfg.levels, False, ACC_ALL))
        sp.root_count += 1
        self.root = (self.cr3, sp)
        self._sync_roots()

    # --- results ---------------------------------------------------------------------------------
    def stats(self) -> dict:
        """The model's counters, named as the simulator's result names them."""
        c = self.c
        return {
            "exits": {k: v for k, v in self.exits.items() if v},
            "shadow_pages": {
                "created": c["created"], "zapped": c["zapped"], "flooded": c["flooded"],
                "unsynced": c["unsynced"], "resynced": c["resynced"], "live": c["created"] - c["zapped"],
                "peak": c["peak"], "reclaimed": c["reclaimed"],
            },
            "root_cache": {"hits": c["hits"], "misses": c["misses"]},
            "prefetched_sptes": c["prefetched"],
            "prefaulted": c["prefaulted"],
            "resync_entries": c["resync_entries"],
            "vmm_sw_walk_steps": c["walk_steps"],
            "emulated_writes": c["emulated"],
            "large_sptes": c["large_sptes"],
            "large_sptes_refused": c["large_refused"],
        }  # fmt: skip

    def maps(self, va: int, access: int) -> bool:
        """Whether the current shadow root lets a user ``access`` of ``va`` through (no exit)."""
        return self._hw_walk(va & 0xFFFF_FFFF_FFFF_FFFF, access)[1]
