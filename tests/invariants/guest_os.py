"""Independent checks of the guest OS model's bookkeeping (plain Python, from the guest's tables).

Written from what a kernel's memory management must keep true, not from the kernels: it walks
every live process's page tables through ``Machine.read_guest`` (the guest's own view) and
compares what it finds with the OS's counters and the guest frame allocator:

* every page-table frame belongs to one table of one process; no frame is both a table and data;
* a 2 MiB leaf appears only at level 2, maps an aligned block, lies in one anonymous mapping that
  covers all of it (when the process has mappings), and exists only with THP on;
* every frame's reference count equals the number of leaf entries that map it (a 2 MiB leaf maps
  each of its 512 frames once), and the count table holds exactly the frames with two or more;
* the zero page and the huge zero page (Linux's shared zero pages) are mapped only read-only, by
  leaves of anonymous mappings, carry no reference count, are never freed, and the huge zero
  page is mapped only by 2 MiB leaves;
* no frame on the allocator's free lists is in use, none is listed twice, and the allocator's
  live count equals the frames in use (nothing leaks);
* in a process with mappings, every present leaf lies in a mapping that allows its rights, and
  every page table below the root spans at least part of some mapping (munmap frees the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmu.engine import Machine
from mmu.guest import os as G
from mmu.guest.osops import rc_count
from mmu.memory import A_BLOCKS, A_FREE_TOP, A_LIVE

P, RW, US, PS = 1, 2, 4, 0x80
XD = 1 << 63
ADDR = 0x000F_FFFF_FFFF_F000
ADDR_2M = 0x000F_FFFF_FFE0_0000
PROT_WRITE, PROT_EXEC = 2, 4


@dataclass
class OsView:
    """What the checker found: tables per process, data frames with their mapping counts."""

    tables: dict[int, int] = field(default_factory=dict)  # table frame -> owning pid
    data: dict[int, int] = field(default_factory=dict)  # data frame -> leaf entries mapping it
    huge_leaves: int = 0
    leaves: int = 0
    zero_leaves: int = 0  # leaves mapping the zero page or the huge zero page


def _vmas(m: Machine, row: int) -> list[tuple[int, int, int, int]] | None:
    procs, vmas = m.osst.procs, m.osst.vmas
    if not procs[row, G.P_VMAS]:
        return None
    return [tuple(int(x) for x in vmas[row, i]) for i in range(int(procs[row, G.P_NVMAS]))]  # type: ignore[misc]


def _walk(m: Machine, pid: int, row: int, view: OsView, nxe: bool) -> None:
    zero, hzero = int(m.osst.ometa[G.O_ZERO_PFN]), int(m.osst.ometa[G.O_HZERO_PFN])
    levels = int(m.osst.ometa[G.O_LEVELS])
    thp = bool(m.osst.ometa[G.O_THP])
    vmas = _vmas(m, row)
    root = int(m.osst.procs[row, G.P_ROOT])

    def covering(first_page: int, end_page: int) -> tuple[int, int, int, int] | None:
        assert vmas is not None
        for v in vmas:
            if v[0] <= first_page and end_page <= v[1]:
                return v
        return None

    def add_table(gfn: int) -> None:
        assert gfn not in view.tables, f"pid {pid}: table frame {gfn:#x} is also a table of pid {view.tables[gfn]}"
        view.tables[gfn] = pid

    add_table(root >> 12)
    stack = [(root, levels, 0)]
    while stack:
        table, level, base = stack.pop()
        span = 1 << (12 + 9 * (level - 1))
        for i in range(512):
            e = m.read_guest(table + 8 * i)
            if not e & P:
                continue
            va = base + i * span
            leaf = level == 1 or (level <= 3 and e & PS)
            if not leaf:
                child = e & ADDR
                add_table(child >> 12)
                if vmas is not None:
                    child_span = (va >> 12, (va + span) >> 12)
                    assert any(v[0] < child_span[1] and child_span[0] < v[1] for v in vmas), (
                        f"pid {pid}: the level-{level - 1} table at {child:#x} spans [{va:#x}, {va + span:#x}), "
                        "which no mapping touches (munmap should have freed it)"
                    )
                stack.append((child, level - 1, va))
                continue
            assert level <= 2, f"pid {pid}: a level-{level} leaf at va {va:#x} (this kernel maps 4K and 2M)"
            view.leaves += 1
            if level == 2:
                assert thp, f"pid {pid}: a 2 MiB leaf at va {va:#x} with THP off"
                assert not e & (1 << 12), "PAT bit set in a 2 MiB leaf"
                head = (e & ADDR_2M) >> 12
                frames = range(head, head + 512)
                view.huge_leaves += 1
            else:
                frames = range((e & ADDR) >> 12, ((e & ADDR) >> 12) + 1)
            assert not (hzero >= 0 and hzero <= frames[0] < hzero + 512 and (level == 1 or frames[0] != hzero)), (
                f"pid {pid}: va {va:#x} maps part of the huge zero page"
            )
            if frames[0] in (zero, hzero):
                assert not e & RW, f"pid {pid}: the zero page is writable at va {va:#x}"
                if vmas is not None:
                    v = covering(va >> 12, (va + span) >> 12)
                    assert v is not None and v[3] == G.VMA_ANON, f"pid {pid}: zero page outside anonymous memory"
                view.zero_leaves += 1
                frames = range(0)
            for f in frames:
                view.data[f] = view.data.get(f, 0) + 1
            if vmas is not None:
                v = covering(va >> 12, (va + span) >> 12)
                assert v is not None, f"pid {pid}: a leaf maps va {va:#x} (size {span:#x}) outside its mappings"
                prot = v[2]
                assert not (e & RW) or prot & PROT_WRITE, f"pid {pid}: va {va:#x} writable in a read-only mapping"
                assert e & US, f"pid {pid}: user page {va:#x} without U/S"
                if nxe:
                    assert bool(e & XD) == (not prot & PROT_EXEC), f"pid {pid}: XD of va {va:#x} disagrees with prot"
                if level == 2:
                    assert v[3] == G.VMA_ANON, f"pid {pid}: a 2 MiB page over a file mapping at {va:#x}"


def check_guest_os(m: Machine) -> OsView:
    """Assert the invariants above on ``m``'s guest OS; returns what was found."""
    procs, pid2slot, ometa = m.osst.procs, m.osst.pid2slot, m.osst.ometa
    nxe = bool(m.config.nxe)
    view = OsView()
    live_rows = [r for r in range(int(ometa[G.O_NPROCS])) if procs[r, G.P_ALIVE]]
    for row in live_rows:
        pid = int(procs[row, G.P_PID])
        assert int(pid2slot[pid]) == row, f"pid {pid}: pid2slot says {int(pid2slot[pid])}, row is {row}"
        _walk(m, pid, row, view, nxe)
    assert sum(1 for p in range(pid2slot.shape[0]) if pid2slot[p] >= 0) == len(live_rows)
    both = set(view.tables) & set(view.data)
    assert not both, f"frames used as a table and as data: {sorted(both)[:4]}"
    shared = 0
    for f, n in view.data.items():
        got = int(rc_count(m.osst, f))
        assert got == n, f"frame {f:#x} is mapped {n} time(s) but its reference count is {got}"
        shared += n >= 2
    assert int(ometa[G.O_RC_USED]) == shared, f"{int(ometa[G.O_RC_USED])} frames counted shared, {shared} are"
    ameta, free = m.galloc.state
    top, blocks = int(ameta[A_FREE_TOP]), int(ameta[A_BLOCKS])
    free4k = [int(x) for x in free[:top]]
    heads = [int(x) for x in free[free.shape[0] - blocks :]] if blocks else []
    assert all(h % 512 == 0 for h in heads), "a free 2 MiB block that is not aligned"
    free_frames = free4k + [h + k for h in heads for k in range(512)]
    assert len(set(free_frames)) == len(free_frames), "a frame is on the free lists twice"
    used = set(view.tables) | set(view.data)
    zero, hzero = int(ometa[G.O_ZERO_PFN]), int(ometa[G.O_HZERO_PFN])
    kept = ({zero} if zero >= 0 else set()) | (set(range(hzero, hzero + 512)) if hzero >= 0 else set())
    assert not kept & used, f"a zero page is also a table or a counted data frame: {sorted(kept & used)[:4]}"
    assert hzero < 0 or hzero % 512 == 0, "the huge zero page is not 2 MiB aligned"
    used |= kept  # allocated once, never freed
    reused = used & set(free_frames)
    assert not reused, f"frames in use and free: {sorted(reused)[:4]}"
    assert int(ameta[A_LIVE]) == len(used), f"allocator: {int(ameta[A_LIVE])} frames live, {len(used)} in use"
    return view
