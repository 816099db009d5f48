"""The replay engine: chunks of trace records -> guest OS + mode + hardware -> stats.

One numba call per chunk (:func:`replay_kernel`); the Python layer validates,
allocates, grows memory when a kernel asks for room, and reports progress between
chunks. Nothing runs in Python per access.

Kernel status codes (``ST_*``) are the only way a kernel reports trouble; the
Python layer turns them into :class:`~mmu.errors.MMUInputError` messages that name
the record.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmu._jit import jit
from mmu.errors import MMUInputError
from mmu.guest.os import O_CUR, OS_OK, OS_OUT_OF_FRAMES, OS_TOO_MANY_PROCS, THP_POLICIES, guest_store, make_os
from mmu.guest.osops import EV_PROT_GIVEN, EV_PROT_SHIFT, OS_NEED_ROOM, OS_UNSUPPORTED, os_event
from mmu.hw.cache import WalkCaches, make_line_cache
from mmu.hw.cost import K_L2_LINES, K_L2_WAYS, K_LLC_LINES, K_LLC_WAYS, cost_array, cost_dict
from mmu.hw.ntlb import cold_host_cache, make_host_cache
from mmu.hw.presets import get_preset, with_stlb_entries
from mmu.hw.pwc import make_psc
from mmu.hw.tlb import make_tlb
from mmu.memory import A_NEXT, ALIGN_ROOM, FrameAllocator, PhysicalMemory, alloc_room, mem_read, mem_room
from mmu.modes.cpuops import cpu_flush_tlb, cpu_invlpg, switch_to
from mmu.modes.dispatch import translate_access, translate_hit
from mmu.modes.native import C_ASID, C_CTL, C_EMIT, C_LEN, C_MAXPHYADDR, C_PKRU
from mmu.modes.shadow import dummy_shadow, grow_shadow, make_shadow, sh_budget, shadow_stats
from mmu.modes.vmm import (
    EV_COUNT,
    EV_GUEST_PF,
    EV_KINDS,
    EV_NAMES,
    EV_OVERFLOW,
    LARGE_BASE,
    MODE_NATIVE,
    MODE_NESTED,
    MODE_SHADOW,
    V_BACKED_FRAMES,
    V_HOST_SHIFT,
    V_MODE,
    V_TABLE_FRAMES,
    VM_OK,
    grow_vm,
    make_event_log,
    make_vm,
    vm_hpa,
    vm_prepopulate,
    vm_room,
)
from mmu.state import GuestMemory, MachineState, Scratch
from mmu.stats import (
    S_ACCESSES,
    S_EVENTS,
    S_PT_FRAMES,
    S_READS,
    S_SPLIT,
    S_WALK_REFS_GUEST,
    S_WALK_REFS_HOST,
    new_stats,
    stats_dict,
    with_tlb_hits,
)
from mmu.trace.ops import OP_MMAP, OP_NAMES, OP_SWITCH
from mmu.x86.bits import CTL_LA57, CTL_NXE, CTL_PGE, CTL_WP
from mmu.x86.ept import HT_COLS
from mmu.x86.nested import GT_COLS, MAX_REFS, RF_COLS
from mmu.x86.walk import MAX_LEVELS, TR_COLS, to_int64

ST_DONE = 0
ST_NEED_MEM = 1  # grow PhysicalMemory, then resume at the returned index
ST_OUT_OF_FRAMES = 2
ST_UNSUPPORTED_EVENT = 3
ST_TOO_MANY_PROCS = 4
ST_EVENT_ROOM = 5  # an OS event needs more room than one record reserves: grow for it, then resume

MODES = ("native", "nested", "shadow")
HOST_PAGES = {"4k": 12, "2m": 21, "1g": 30}
NO_TRANSLATION = np.uint64(0xFFFF_FFFF_FFFF_FFFF)  # emitted for an access that had no translation
ROOM_FRAMES = 256  # frames one record may need at most (guest tables, data, shadow pages, slack)


@jit
def replay_kernel(addr, arg, pid, op, flags, start, stop, m, out, pos):
    """Replay records ``[start, stop)`` of one chunk.

    Parameters
    ----------
    addr, arg, pid, op, flags : uint64[n], uint32[n], uint16[n], uint8[n], uint8[n]
        The record fields (strided views of a RECORD_DTYPE array); addresses are
        reinterpreted as int64. An mmap event's flags are its PROT_* bits.
    m : mmu.state.MachineState
        The machine (mutated).
    out : uint64[m]
        Guest-physical address of each access, written at ``pos[0]`` onward when cfg[C_EMIT].
    pos : int64[1]
        Next slot of ``out`` (mutated).

    Returns
    -------
    (status, index)
        ST_DONE with ``stop``; otherwise the status and the record to resume at (or that failed).
    """
    mem, halloc, galloc, vm, hcache, sh, osst = m.mem, m.halloc, m.galloc, m.vm, m.hcache, m.sh, m.osst
    tlb, psc, ptc, stats, cfg, scratch = m.tlb, m.psc, m.ptc, m.stats, m.cfg, m.scratch
    procs = osst.procs
    ometa = osst.ometa
    emit = cfg[C_EMIT] != 0
    virt = vm.vmeta[V_MODE] != MODE_NATIVE
    shadow = vm.vmeta[V_MODE] == MODE_SHADOW
    gm = GuestMemory(mem, halloc, vm, stats, sh)
    budget = np.int64(0)  # records the shadow state has room for (checked in batches: it is big)
    for i in range(start, stop):
        if (
            not mem_room(mem, ROOM_FRAMES)
            or not alloc_room(galloc, ALIGN_ROOM)
            or (virt and not vm_room(vm, galloc, halloc))
        ):
            return ST_NEED_MEM, i
        if shadow:
            if budget == 0:
                budget = sh_budget(sh, galloc, halloc)
                if budget == 0:
                    return ST_NEED_MEM, i
            budget -= 1
        o = np.int64(op[i])
        if o >= 16:
            stats[S_EVENTS] += 1
            if o == OP_SWITCH:
                st = switch_to(gm, galloc, osst, tlb, psc, stats, cfg, np.int64(pid[i]))
                if st == OS_OUT_OF_FRAMES:
                    return ST_OUT_OF_FRAMES, i
                if st == OS_TOO_MANY_PROCS:
                    return ST_TOO_MANY_PROCS, i
                continue
            earg = np.int64(arg[i])
            if o == OP_MMAP:
                earg |= (np.int64(flags[i]) | EV_PROT_GIVEN) << EV_PROT_SHIFT
            st = os_event(gm, galloc, osst, tlb, psc, stats, cfg, o, np.int64(pid[i]), np.int64(addr[i]), earg)
            if st == OS_NEED_ROOM:
                return ST_EVENT_ROOM, i
            if st == OS_UNSUPPORTED:
                return ST_UNSUPPORTED_EVENT, i
            if st == OS_OUT_OF_FRAMES:
                return ST_OUT_OF_FRAMES, i
            if st == OS_TOO_MANY_PROCS:
                return ST_TOO_MANY_PROCS, i
            continue
        p = np.int64(pid[i])
        cur = ometa[O_CUR]
        if cur < 0 or procs[cur, 0] != p:
            st = switch_to(gm, galloc, osst, tlb, psc, stats, cfg, p)
            if st == OS_OUT_OF_FRAMES:
                return ST_OUT_OF_FRAMES, i
            if st == OS_TOO_MANY_PROCS:
                return ST_TOO_MANY_PROCS, i
            cur = ometa[O_CUR]
        va = np.int64(addr[i])
        stats[S_ACCESSES] += 1
        stats[S_READS + o] += 1
        # An access that crosses into the next page makes the processor translate that page
        # too (one call site, so the inlined translation path is compiled once).
        last = va + arg[i] - 1
        pages = 1 if (last >> 12) == (va >> 12) else 2
        if pages == 2:
            stats[S_SPLIT] += 1
        tva = va
        for k in range(pages):
            hit, pa = translate_hit(vm, sh, osst, tlb, cfg, cur, tva, o)
            if not hit:
                st, pa = translate_access(gm, galloc, hcache, osst, tlb, psc, ptc, stats, cfg, cur, tva, o, scratch)
                if st != OS_OK:
                    return ST_OUT_OF_FRAMES, i
            if k == 0 and emit:
                out[pos[0]] = np.uint64(pa) if pa >= 0 else NO_TRANSLATION
                pos[0] += 1
            tva = last & ~np.int64(0xFFF)
    return ST_DONE, stop


GOP_STORE = 0  # guest kernel store of a 64-bit value to a guest-physical address
GOP_INVLPG = 1  # guest kernel INVLPG of a linear address (current process)
GOP_FLUSH = 2  # guest kernel CR3 reload without the no-flush bit


@jit
def guest_op_kernel(kind, a, b, m):
    """One privileged operation of the guest kernel on machine ``m`` (a MachineState; tests and
    tools drive the guest with it).

    Returns 0, or 1 if the guest ran out of frames.
    """
    osst, tlb, psc, stats, cfg = m.osst, m.tlb, m.psc, m.stats, m.cfg
    gm = GuestMemory(m.mem, m.halloc, m.vm, stats, m.sh)
    if kind == GOP_STORE:
        return 0 if guest_store(gm, a, np.uint64(b)) else 1
    if kind == GOP_INVLPG:
        cpu_invlpg(gm, osst, tlb, psc, stats, cfg, a)
        return 0
    return 0 if cpu_flush_tlb(gm, osst, tlb, psc, stats, cfg) else 1


def tlb_levels_dict(tlb: tuple, preset) -> dict[str, dict[str, int]]:
    """Hits and misses of each TLB structure, by the preset's structure names."""
    counters = tlb.stats
    return {st.name: {"hits": int(counters[i, 0]), "misses": int(counters[i, 1])} for i, st in enumerate(preset.tlbs)}


def psc_levels_dict(psc: tuple, preset) -> dict[str, dict[str, int]]:
    """Hits and misses of each paging-structure cache that exists in the preset."""
    counters = psc.stats
    return {
        c.name: {"hits": int(counters[c.entry_level - 2, 0]), "misses": int(counters[c.entry_level - 2, 1])}
        for c in preset.pscs
        if c.entries > 0
    }


@dataclass
class MachineConfig:
    """Everything that defines a run besides its input.

    Attributes
    ----------
    mode : str
        Virtualization mode: "native" or "nested".
    cpu : str
        TLB/PSC geometry preset (see ``mmu.hw.presets``); also selects the cost preset.
    cost_overrides : dict
        Cost parameters by name (see ``mmu.hw.cost``).
    pcide, la57, nxe, wp : bool
        Guest CR4.PCIDE, CR4.LA57, EFER.NXE, CR0.WP.
    maxphyaddr : int
    host_page : str
        Nested and shadow modes: host page size backing guest memory, "4k", "2m" or "1g" (shadow:
        a guest large page gets a large shadow entry when the host page is as large and no
        guest page table lies in the region).
    ept_levels : int
        Nested mode: 4 or 5 host (EPT/NPT) levels.
    ept_ad : bool
        Nested mode: EPTP bit 6 (EPT accessed/dirty flags; guest table reads count as writes).
    npt : bool
        Nested mode: AMD NPT (long-mode nested tables) instead of Intel EPT.
    ntlb_entries : int
        Nested TLB entries (0 turns it off); fully associative.
    host_psc : bool
        Host-dimension paging-structure caches on/off.
    psc : bool
        Paging-structure caches of the (guest) linear dimension on/off.
    prepopulate_mb : int
        Nested mode: back this much guest-physical memory before the guest runs (0: back every
        guest frame lazily, on the EPT violation of its first touch).
    unsync : bool
        Shadow mode: leaf guest tables may go out of sync (KVM's default) instead of having
        every store emulated.
    prefetch : int
        Shadow mode: shadow entries filled around a hidden fault (aligned group; KVM's
        PTE_PREFETCH_NUM = 8; 0 or 1 turns prefetch off). A power of two up to 512.
    roots : int
        Shadow mode: previous roots kept in the root cache besides the current one
        (KVM_MMU_NUM_PREV_ROOTS = 3; 0..11).
    flood_threshold : int
        Shadow mode: emulated writes without an intervening use that zap an upper-level shadow
        page (KVM: 3; 0 turns write-flooding detection off).
    prefault : bool
        Shadow mode: PVM's prefault (Huang et al., SOSP 2023; off in KVM): when the guest returns
        from a page fault the VMM reflected, the VMM fills the shadow entry for the faulting
        address, so the access that follows takes no hidden fault.
    shadow_pages : int
        Shadow mode: most shadow pages the VMM keeps (KVM's ``n_max_mmu_pages``, set with
        ``KVM_SET_NR_MMU_PAGES``); when fewer than 5 are left the oldest ones not in use as roots
        are zapped until 25 are free. 0 (default): no cap -- KVM's default is 2% of the guest's
        memory pages, and this model's guest memory has no fixed size. At least 64 otherwise.
    stlb_entries : int
        Entries of the second-level (unified) TLB for 4 KiB pages, replacing the preset's with the
        same number of sets (so the ways scale: skylake's 1,536 x 12-way has 128 sets, and 512,
        1,024 or 2,048 entries are 4-, 8- or 16-way). 0 (default): the preset's.
    thp : str
        Guest OS transparent huge pages, as Linux's ``enabled`` setting: "never", "madvise"
        (mappings made with PROT_THP; the default) or "always" (every anonymous mapping and
        processes without mappings). A fault whose aligned 2 MiB lies in such a mapping and
        has no page table yet maps a whole 2 MiB page.
    """

    mode: str = "native"
    cpu: str = "skylake"
    cost_overrides: dict[str, int] | None = None
    pcide: bool = True
    la57: bool = False
    nxe: bool = True
    wp: bool = True
    maxphyaddr: int = 52
    host_page: str = "4k"
    ept_levels: int = 4
    ept_ad: bool = False
    npt: bool = False
    ntlb_entries: int = 16
    host_psc: bool = True
    prepopulate_mb: int = 0
    psc: bool = True
    unsync: bool = True
    prefetch: int = 8
    roots: int = 3
    flood_threshold: int = 3
    prefault: bool = False
    shadow_pages: int = 0
    thp: str = "madvise"
    stlb_entries: int = 0

    def check(self) -> None:
        """MMUInputError naming the first setting that is not valid (nothing is allocated)."""
        if self.mode not in MODES:
            raise MMUInputError(f"unknown mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        self.preset()
        cost_array(self.cpu if self.cpu in ("skylake", "zen2") else "skylake", self.cost_overrides)
        if self.host_page not in HOST_PAGES:
            raise MMUInputError(f"unknown host page size {self.host_page!r}; choose one of: 4k, 2m, 1g")
        if self.ept_levels not in (4, 5):
            raise MMUInputError(f"EPT levels must be 4 or 5, not {self.ept_levels}")
        if self.ntlb_entries < 0:
            raise MMUInputError(f"NTLB entries must be >= 0, not {self.ntlb_entries}")
        if self.prefetch < 0 or self.prefetch > 512 or (self.prefetch & (self.prefetch - 1)):
            raise MMUInputError(f"prefetch must be 0 or a power of two up to 512, not {self.prefetch}")
        if not 0 <= self.roots <= 11:
            raise MMUInputError(f"previous roots must be 0..11 (KVM allows at most 11), not {self.roots}")
        if self.shadow_pages != 0 and self.shadow_pages < 64:
            raise MMUInputError(
                f"shadow pages must be 0 (no cap) or at least 64 (KVM's minimum), not {self.shadow_pages}"
            )
        if self.thp not in THP_POLICIES:
            raise MMUInputError(f"unknown THP policy {self.thp!r}; choose never, madvise or always")
        if self.flood_threshold < 0:
            raise MMUInputError(f"flood threshold must be >= 0, not {self.flood_threshold}")
        if self.prepopulate_mb < 0:
            raise MMUInputError(f"prepopulated MiB must be >= 0, not {self.prepopulate_mb}")

    def preset(self):
        """The CPU preset of ``cpu``, with ``stlb_entries`` applied."""
        preset = get_preset(self.cpu)
        if self.stlb_entries:
            preset = with_stlb_entries(preset, self.stlb_entries)
        return preset


class Machine:
    """A guest on a simulated machine in one virtualization mode; replays chunks of trace records."""

    def __init__(self, config: MachineConfig | None = None):
        self.config = config = config or MachineConfig()
        config.check()
        self.preset = config.preset()
        self.cost = cost_array(config.cpu if config.cpu in ("skylake", "zen2") else "skylake", config.cost_overrides)
        self.mem = PhysicalMemory(frames=256, alloc_limit=LARGE_BASE)
        self.sh = dummy_shadow()
        if config.mode == "native":
            self.vm = make_vm(MODE_NATIVE)
            self.galloc = self.mem.alloc
            # A disabled host cache (never used outside nested mode) keeps one signature per
            # kernel: every mode shares one compiled translation path.
            self.hcache = cold_host_cache()
        elif config.mode == "shadow":
            # Host memory holds the pages backing guest memory and the shadow tables; the VMM
            # keeps only the memslot view of guest memory (no EPT).
            self.vm = make_vm(MODE_SHADOW, host_shift=HOST_PAGES[config.host_page])
            self.galloc = FrameAllocator(1, 1 << 40)
            self.hcache = cold_host_cache()
            self.sh = make_shadow(
                unsync=config.unsync, prefetch=config.prefetch, roots=config.roots,
                flood_threshold=config.flood_threshold, ctl=self._ctl(), levels=5 if config.la57 else 4,
                prefault=config.prefault,
                host_shift=HOST_PAGES[config.host_page], max_pages=config.shadow_pages,
            )  # fmt: skip
        else:
            # Host memory holds the EPT/NPT and the pages backing guest memory; guest frame
            # numbers come from the guest's own allocator.
            root = self.mem.alloc_frame()
            self.vm = make_vm(
                MODE_NESTED, root, config.ept_levels, HOST_PAGES[config.host_page], config.npt, config.ept_ad
            )
            self.galloc = FrameAllocator(1, 1 << 40)
            n = config.ntlb_entries
            self.hcache = make_host_cache(
                self.preset, n, n, enabled=True, npsc=config.host_psc, host_shift=HOST_PAGES[config.host_page]
            )
            if config.prepopulate_mb < 0:
                raise MMUInputError(f"prepopulate size must be >= 0 MiB, not {config.prepopulate_mb}")
            if config.prepopulate_mb:
                self._prepopulate((config.prepopulate_mb << 20) >> 12)
        self.osst = make_os(pcide=config.pcide, la57=config.la57, thp=THP_POLICIES[config.thp])
        self.tlb = make_tlb(self.preset)
        self.psc = make_psc(self.preset if config.psc else [])
        self.ptc = WalkCaches(
            make_line_cache(int(self.cost[K_L2_LINES]), int(self.cost[K_L2_WAYS])),
            make_line_cache(int(self.cost[K_LLC_LINES]), int(self.cost[K_LLC_WAYS])),
        )
        self.stats = new_stats()
        self.cfg = np.zeros(C_LEN, dtype=np.int64)
        self.cfg[C_CTL] = self._ctl()
        self.cfg[C_PKRU] = 0
        self.cfg[C_MAXPHYADDR] = config.maxphyaddr
        self.cfg[C_ASID] = 0 if config.mode == "native" else 1  # the guest's VPID / ASID
        self.elapsed = 0.0
        self.records_done = 0
        self._scratch = Scratch(
            np.zeros((MAX_LEVELS, TR_COLS), dtype=np.int64),
            np.zeros((MAX_LEVELS, GT_COLS), dtype=np.int64),
            np.zeros((MAX_LEVELS, HT_COLS), dtype=np.int64),
            np.zeros((MAX_REFS, RF_COLS), dtype=np.int64),
        )
        self._compiled = False
        self.compile_s = 0.0

    def _ctl(self) -> int:
        c = self.config
        ctl = CTL_PGE
        if c.nxe:
            ctl |= CTL_NXE
        if c.wp:
            ctl |= CTL_WP
        if c.la57:
            ctl |= CTL_LA57
        return ctl

    def log_events(self, capacity: int = 1 << 20, kinds: Iterable[str] | None = None) -> None:
        """Record the guest events that reach the VMM from now on (all kinds, or those named in
        ``kinds``; see :data:`mmu.modes.vmm.EV_NAMES`), up to ``capacity`` of them; see :meth:`events`.

        Replaces any earlier log. A run that would record more raises :class:`MMUInputError`.
        """
        names = {v: k for k, v in EV_NAMES.items()}
        chosen = list(names) if kinds is None else list(kinds)
        unknown = [k for k in chosen if k not in names]
        if unknown:
            raise MMUInputError(f"unknown event kind(s) {unknown}; choose from {', '.join(names)}")
        mask = 0
        for k in chosen:
            mask |= 1 << names[k]
        self.vm = self.vm._replace(elog=make_event_log(capacity, mask))

    def clear_events(self) -> None:
        """Forget the events logged so far (the log stays on, with its capacity)."""
        elog = self.vm.elog
        elog[0, EV_COUNT] = 0
        elog[0, EV_OVERFLOW] = 0

    def _check_events(self) -> None:
        elog = self.vm.elog
        if elog[0, EV_OVERFLOW]:
            raise MMUInputError(
                f"the event log is full ({elog.shape[0] - 1} events): "
                "log with a larger capacity, or clear it more often"
            )

    def events(self) -> list[tuple]:
        """The events logged so far, in order, as ``(kind name, a, b, c)`` (fields in
        :mod:`mmu.modes.vmm`, "Event log")."""
        self._check_events()
        elog = self.vm.elog
        n = int(elog[0, EV_COUNT])
        return [(EV_NAMES[int(r[0])], int(r[1]), int(r[2]), int(r[3])) for r in elog[1 : n + 1]]

    def log_faults(self, capacity: int = 1 << 16) -> None:
        """Record every guest page fault (address, error code) from now on; see :meth:`faults`.
        (The event log recording guest page faults only; it replaces any earlier log.)"""
        self.log_events(capacity, kinds=(EV_NAMES[EV_GUEST_PF],))

    def faults(self) -> list[tuple[int, int]]:
        """The guest page faults logged so far, in order, as (address, #PF error code)."""
        if not self.vm.elog[0, EV_KINDS] >> EV_GUEST_PF & 1:
            return []
        return [(a, b) for kind, a, b, _c in self.events() if kind == EV_NAMES[EV_GUEST_PF]]

    def _grow(self, event: bool = False) -> None:
        """Room for one more record: host memory, the VMM's maps, the shadow MMU's arrays. An OS
        event (fork, exit, munmap of a big tree) may need more: ``event`` reserves for it."""
        backed = self.mem.frames_backed
        self.mem.reserve(max(ROOM_FRAMES, 4 * backed + 64 if event else backed))
        self.galloc.reserve_frees(ALIGN_ROOM)  # a huge-page fault may free the frames it skips
        if event:
            self.galloc.reserve_frees(self.galloc.live + 1)
        self.vm = grow_vm(self.vm, self.galloc.state.ameta[A_NEXT], self.mem.alloc.state.ameta[A_NEXT])
        if self.config.mode == "shadow":
            self.sh = grow_shadow(
                self.sh, int(self.galloc.state.ameta[A_NEXT]), int(self.mem.alloc.state.ameta[A_NEXT])
            )

    def _guest_op(self, kind: int, a: int = 0, b: int = 0) -> None:
        self._grow()
        st = guest_op_kernel(np.int64(kind), np.int64(a), np.uint64(b), self.state)
        self._check_events()
        if st != 0:
            raise MMUInputError("the guest ran out of physical frames")

    def guest_store(self, gpa: int, value: int) -> None:
        """The guest kernel stores the 64-bit ``value`` at guest-physical ``gpa`` (e.g. edits a PTE).

        Under shadow paging the store traps if the frame holds a write-protected guest table.
        """
        if gpa < 0 or gpa & 7:
            raise MMUInputError(f"guest store address {gpa:#x} is not a non-negative multiple of 8")
        self._guest_op(GOP_STORE, gpa, value & 0xFFFF_FFFF_FFFF_FFFF)

    def invlpg(self, va: int) -> None:
        """The guest kernel executes INVLPG ``va`` in the current process."""
        if int(self.osst.ometa[O_CUR]) < 0:
            raise MMUInputError("INVLPG before any process ran")
        self._guest_op(GOP_INVLPG, to_int64(va))

    def flush_tlb(self) -> None:
        """The guest kernel reloads CR3 with bit 63 clear (flushes the current PCID)."""
        if int(self.osst.ometa[O_CUR]) < 0:
            raise MMUInputError("CR3 reload before any process ran")
        self._guest_op(GOP_FLUSH)

    def read_guest(self, gpa: int) -> int:
        """The 64-bit word at guest-physical ``gpa`` as the guest sees it (0 if never written)."""
        pa = gpa if self.config.mode == "native" else int(vm_hpa(self.vm, np.int64(gpa)))
        return 0 if pa < 0 else int(mem_read(self.mem.state, np.int64(pa)))

    def _prepopulate(self, frames: int) -> None:
        host_shift = int(self.vm.vmeta[V_HOST_SHIFT])
        span = 1 << (host_shift - 12)
        frames = -(-frames // span) * span
        # room: the maps, plus host frames for the EPT tables (one leaf table per 512 entries)
        host_next = int(self.mem.alloc.state.ameta[A_NEXT])
        self.vm = grow_vm(self.vm, frames, host_next + frames + frames // 512 + 64)
        self.mem.reserve(frames // span // 512 + 64)
        if vm_prepopulate(self.mem.state, self.mem.alloc.state, self.vm, np.int64(frames)) != VM_OK:
            raise MMUInputError("the host ran out of frames while prepopulating guest memory")

    @property
    def state(self) -> MachineState:
        """The machine as the kernels take it (the arrays themselves, not copies).

        Build it again after anything grows (``_grow`` replaces arrays)."""
        return MachineState(
            self.mem.state, self.mem.alloc.state, self.galloc.state, self.vm, self.hcache, self.sh, self.osst,
            self.tlb, self.psc, self.ptc, self.cost, self.stats, self.cfg, self._scratch,
        )  # fmt: skip

    def _kernel(self, addr, arg, pid, op, flags, start, stop, out, pos):
        return replay_kernel(addr, arg, pid, op, flags, start, stop, self.state, out, pos)

    def run(self, records: np.ndarray, out: np.ndarray | None = None, where: str = "trace") -> int:
        """Replay a chunk of ``RECORD_DTYPE`` records; returns how many translations were emitted.

        ``out`` (uint64, at least as long as the chunk) receives the guest-physical address of
        every access in order when given.
        """
        n = len(records)
        records = np.asarray(records)
        if n < 2:
            # numba types a 0/1-element field view as contiguous, a longer one as strided: pad so
            # every chunk has the one type the kernel was compiled for (only [0, n) is replayed).
            padded = np.zeros(2, dtype=records.dtype)
            padded[:n] = records
            records = padded
        # Strided views of the record fields: no per-chunk copies.
        addr, arg, pid, op = records["addr"], records["arg"], records["pid"], records["op"]
        flags = records["flags"]
        emit = out is not None
        self.cfg[C_EMIT] = 1 if emit else 0
        if out is None:
            out = np.zeros(0, dtype=np.uint64)
        pos = np.zeros(1, dtype=np.int64)
        i = 0
        if not self._compiled:
            # An empty call compiles (or loads from cache) so that elapsed time is simulation only.
            t0 = time.perf_counter()
            self._kernel(addr, arg, pid, op, flags, 0, 0, out, pos)
            self.compile_s = time.perf_counter() - t0
            self._compiled = True
        t0 = time.perf_counter()
        event_retry = -1
        while i < n:
            status, i = self._kernel(addr, arg, pid, op, flags, i, n, out, pos)
            if status == ST_DONE:
                break
            if status == ST_NEED_MEM:
                self._grow()
                continue
            if status == ST_EVENT_ROOM:
                if event_retry == i:
                    raise MMUInputError(
                        f"{where}: record {self.records_done + int(i)}: the OS event needs more room than the "
                        "guest OS model can reserve"
                    )
                event_retry = i
                self._grow(event=True)
                continue
            rec = self.records_done + int(i)
            if status == ST_UNSUPPORTED_EVENT:
                name = OP_NAMES.get(int(op[i]), str(int(op[i])))
                raise MMUInputError(
                    f"{where}: record {rec}: OS event '{name}' cannot be performed by the guest OS model "
                    "(unknown or exited pid, a child pid in use, or more than 64 mappings in a process)"
                )
            if status == ST_TOO_MANY_PROCS:
                raise MMUInputError(f"{where}: record {rec}: more than 4096 processes alive at once")
            raise MMUInputError(f"{where}: record {rec}: the guest ran out of physical frames")
        self.elapsed += time.perf_counter() - t0
        self.records_done += n
        self._check_events()
        return int(pos[0])

    def result(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The stats object (common schema) of everything replayed so far."""
        counters = self.tlb.stats
        levels = np.array([st.level for st in self.preset.tlbs])
        l1 = int(counters[levels == 1, 0].sum())
        l2 = int(counters[levels == 2, 0].sum())
        mode_stats: dict[str, Any] = {}
        if self.config.mode == "nested":
            vmeta = self.vm.vmeta
            ntlb = self.hcache.ntlb.stats
            npsc = self.hcache.npsc.stats
            c = self.config
            mode_stats = {
                "host": "npt" if c.npt else "ept",
                "host_page": c.host_page,
                "ept_levels": c.ept_levels,
                "ept_ad": c.ept_ad,
                "walk_refs_guest": int(self.stats[S_WALK_REFS_GUEST]),
                "walk_refs_host": int(self.stats[S_WALK_REFS_HOST]),
                "ntlb": {"entries": c.ntlb_entries, "hits": int(ntlb[0, 0]), "misses": int(ntlb[0, 1])},
                "host_psc": {
                    name: {"hits": int(npsc[lv - 2, 0]), "misses": int(npsc[lv - 2, 1])}
                    for name, lv in (("PDE", 2), ("PDPTE", 3), ("PML4E", 4), ("PML5E", 5))
                    if c.host_psc and any(p.entry_level == lv and p.entries for p in self.preset.pscs)
                },
                "ept_table_bytes": int(vmeta[V_TABLE_FRAMES]) * 4096 + 4096,
                "guest_memory_backed_bytes": int(vmeta[V_BACKED_FRAMES]) * 4096,
            }
        if self.config.mode == "shadow":
            c = self.config
            policy = {"unsync": c.unsync, "prefetch": c.prefetch, "roots": c.roots}
            policy["flood_threshold"] = c.flood_threshold
            policy["max_pages"] = c.shadow_pages
            policy["prefault"] = c.prefault
            mode_stats = shadow_stats(self.stats, policy, c.host_page, int(self.vm.vmeta[V_BACKED_FRAMES]))
        return stats_dict(
            self.config.mode,
            with_tlb_hits(self.stats, l1, l2),
            elapsed_s=self.elapsed,
            tlb_levels=tlb_levels_dict(self.tlb, self.preset),
            psc_levels=psc_levels_dict(self.psc, self.preset),
            mode_stats=mode_stats or None,
            cost=cost_dict(self.cost),
            extra={
                "cpu": self.config.cpu,
                "compile_s": round(self.compile_s, 3),
                "thp": self.config.thp,
                "guest_memory_frames": int(self.galloc.peak),
                "pt_memory_bytes": int(self.stats[S_PT_FRAMES]) * 4096,
                "vmm_memory_bytes": mode_stats.get("ept_table_bytes", mode_stats.get("shadow_table_bytes", 0)),
                **(extra or {}),
            },
        )


def replay_records(records: Iterable[np.ndarray], config: MachineConfig | None = None) -> dict[str, Any]:
    """Replay in-memory record chunks (tests, the executor) and return the stats object."""
    machine = Machine(config)
    for chunk in records:
        machine.run(chunk)
    return machine.result()


def __getattr__(name: str):
    # ``replay`` and ``replay_interleaved`` read trace files, so they live in mmu.replayfile:
    # importing the trace reader here would put mmu/trace/format.py in the cache key of the
    # replay kernel (mmu._jit keys a kernel by every mmu file its module imports) and every
    # edit of the file format would recompile it. Old imports keep working through this.
    if name in ("replay", "replay_interleaved"):
        import importlib

        return getattr(importlib.import_module("mmu.replayfile"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
