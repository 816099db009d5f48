"""Plain-Python reference of native-mode replay (docs/design.md, "Guest OS model").

Composes the independent references -- :func:`tests.reference.paging.ref_walk` for walks,
:class:`tests.reference.tlb_ref.RefTLB` / ``RefPSC`` for the caches -- with a plain guest OS
(dict page tables, a bump frame allocator) and OrderedDict walk-line caches. It follows the
rules written in docs/design.md, not the engine's code:

* a TLB hit whose cached rights forbid the access faults and drops that page's entries;
* a write through a clean cached entry re-walks so D is set;
* a walk starts below the deepest PSC hit (the references it makes are the full walk's
  references from that level down; upper entries were cached unchanged);
* after a successful walk the TLB and every PSC for the walked non-leaf entries are filled;
* a not-present #PF on a canonical user-half address builds the missing tables top-down, then
  (Linux's ``do_anonymous_page``) maps a fresh frame on a write, young, dirty and writable, or
  on a read the one shared zero page, young and read-only (the zero page is taken from the
  allocator the first time it is needed, where the fresh frame would have been); a fetch is
  code, file-backed in Linux (``filemap_fault``): a fresh frame, young, clean and writable (the
  trace says nothing of protections); each new table's entry is Linux's ``_PAGE_TABLE``
  (present, writable, user, accessed, dirty);
* a protection #PF is spurious when the tables allow the access now (retry); a write to the
  zero page is copy-on-write (``do_wp_page``): a fresh frame, young, dirty and writable, then
  INVLPG of the address; anything else is bad.
"""

from __future__ import annotations

from collections import OrderedDict

from tests.reference.paging import PS, RW, TA_D, TA_RW, TA_US, TA_XD, US, XD, A, D, P, ref_walk
from tests.reference.tlb_ref import RefHW, RefPSC, RefTLB

ADDR = 0x000F_FFFF_FFFF_F000


class RefLineCache:
    def __init__(self, lines: int, ways: int):
        self.sets = [OrderedDict() for _ in range(lines // ways)] if lines else []
        self.ways = ways

    def access(self, pa: int) -> bool:
        if not self.sets:
            return False
        line = pa >> 6
        s = self.sets[line % len(self.sets)]
        if line in s:
            s.move_to_end(line)
            return True
        if len(s) >= self.ways:
            s.popitem(last=False)
        s[line] = True
        return False


def rights_fault(attrs: int, access: str, wp: bool, nxe: bool) -> bool:
    """User-mode access (the replayed programs run at CPL 3) through cached ``attrs``."""
    if not attrs & TA_US:
        return True
    if access == "w" and not attrs & TA_RW:
        return True
    return access == "x" and nxe and bool(attrs & TA_XD)


class RefNativeReplay:
    def __init__(self, preset, l2=(1024, 4), llc=(16384, 16), pcide=True, wp=True, nxe=True):
        self.mem: dict[int, int] = {}
        self.next_pfn = 1
        self.tlb = RefTLB(preset.tlbs)
        self.psc = RefPSC(preset.pscs)
        self.hw = RefHW(self.tlb, self.psc)
        self.lines = (RefLineCache(*l2), RefLineCache(*llc))
        self.pcide, self.wp, self.nxe = pcide, wp, nxe
        self.procs: dict[int, dict] = {}
        self.cur: int | None = None
        self.c = dict.fromkeys(
            "accesses tlb_misses walks walk_refs ref_l2 ref_llc ref_dram guest_pf pf_np pf_prot spurious bad "
            "pt_frames data_frames dirty_rewalks split cr3_loads processes".split(),
            0,
        )
        self.emitted: list[int] = []
        self.zero_page: int | None = None  # physical address of the shared zero page

    def _frame(self) -> int:
        pfn = self.next_pfn
        self.next_pfn += 1
        return pfn << 12

    def switch(self, pid: int) -> None:
        if pid not in self.procs:
            root = self._frame()
            row = len(self.procs)
            self.procs[pid] = {"root": root, "pcid": (row % 4095) + 1 if self.pcide else 0, "loads": 0}
            self.c["processes"] += 1
            self.c["pt_frames"] += 1
        p = self.procs[pid]
        self.cur = pid
        self.c["cr3_loads"] += 1
        self.hw.mov_cr3(0, self.pcide, p["pcid"], self.pcide and p["loads"] > 0)
        p["loads"] += 1

    def _map(self, root: int, va: int, access: str) -> bool:
        table = root
        for level in (4, 3, 2):
            epa = table + ((va >> (12 + 9 * (level - 1))) & 511) * 8
            e = self.mem.get(epa, 0)
            if not e & P:
                nt = self._frame()
                self.c["pt_frames"] += 1
                self.mem[epa] = nt | P | RW | US | A | D
                table = nt
            else:
                if level <= 3 and e & PS:
                    return False
                table = e & ADDR
        epa = table + ((va >> 12) & 511) * 8
        if not self.mem.get(epa, 0) & P:
            if access in ("w", "x"):
                self.mem[epa] = self._frame() | P | RW | US | A | (D if access == "w" else 0)
                self.c["data_frames"] += 1
            else:
                if self.zero_page is None:
                    self.zero_page = self._frame()
                    self.c["data_frames"] += 1
                self.mem[epa] = self.zero_page | P | US | A
        return True

    def _leaf(self, root: int, va: int) -> int | None:
        """Address of the 4 KiB leaf entry of ``va``, if every table above it is present."""
        table = root
        for level in (4, 3, 2):
            e = self.mem.get(table + ((va >> (12 + 9 * (level - 1))) & 511) * 8, 0)
            if not e & P or e & PS:
                return None
            table = e & ADDR
        return table + ((va >> 12) & 511) * 8

    def _walk_attrs(self, refs: list[int]) -> list[int]:
        """Combined attrs after each entry of a full walk (R/W AND, U/S AND, XD OR)."""
        out, rw, us, xd = [], True, True, False
        for epa in refs:
            e = self.mem[epa]
            rw, us, xd = rw and bool(e & RW), us and bool(e & US), xd or (self.nxe and bool(e & XD))
            out.append((TA_RW if rw else 0) | (TA_US if us else 0) | (TA_XD if xd else 0) | (e & 0x18) << 2)
        return out

    def translate(self, va: int, access: str) -> int | None:
        p = self.procs[self.cur]
        side = 1 if access == "x" else 0
        for _ in range(4):
            if not RefHW.canonical(va, False):
                self.c["bad"] += 1
                return None
            level, frame, shift, attrs = self.tlb.lookup(va, 0, p["pcid"], side)
            fault = None
            if level:
                if rights_fault(attrs, access, self.wp, self.nxe):
                    self.tlb.invlpg(va, 0, p["pcid"])
                    fault = "prot"
                elif access != "w" or attrs & TA_D:
                    return frame | (va & ((1 << shift) - 1))
                else:
                    self.c["dirty_rewalks"] += 1
            else:
                self.c["tlb_misses"] += 1
            if fault is None:
                nl, _table, _attrs = self.psc.lookup(va, 0, p["pcid"], False)
                skip = 0 if nl < 0 else 4 - nl
                r = ref_walk(self.mem, p["root"], va, access, user=True, wp=self.wp, nxe=self.nxe)
                refs = r.refs[skip:]
                self.c["walks"] += 1
                self.c["walk_refs"] += len(refs)
                for epa in refs:
                    if self.lines[0].access(epa):
                        self.c["ref_l2"] += 1
                    elif self.lines[1].access(epa):
                        self.c["ref_llc"] += 1
                    else:
                        self.c["ref_dram"] += 1
                if r.fault is None:
                    size = r.page_size
                    self.tlb.fill(va, 0, p["pcid"], side, r.pa & ~(size - 1), size.bit_length() - 1, r.attrs)
                    cum = self._walk_attrs(r.refs)
                    for i in range(skip, len(r.refs) - 1):
                        level_i = 4 - i
                        nxt = self.mem[r.refs[i]] & ADDR
                        self.psc.fill(va, 0, p["pcid"], False, level_i, nxt, cum[i])
                    return r.pa
                self.tlb.invlpg(va, 0, p["pcid"])
                fault = "np" if not r.error_code & 1 else "prot"
            self.c["guest_pf"] += 1
            if fault == "np":
                self.c["pf_np"] += 1
                if not 0 <= va < 1 << 47 or not self._map(p["root"], va, access):
                    self.c["bad"] += 1
                    return None
            else:
                self.c["pf_prot"] += 1
                probe = ref_walk(dict(self.mem), p["root"], va, access, user=True, wp=self.wp, nxe=self.nxe)
                if probe.fault is None:
                    self.c["spurious"] += 1
                    continue
                epa = self._leaf(p["root"], va) if access == "w" and 0 <= va < 1 << 47 else None
                e = self.mem.get(epa, 0) if epa is not None else 0
                if not (e & P and not e & RW and self.zero_page is not None and e & ADDR == self.zero_page):
                    self.c["bad"] += 1
                    return None
                self.mem[epa] = (e & ~ADDR) | self._frame() | RW | A | D
                self.c["data_frames"] += 1
                self.hw.invlpg(va, 0, p["pcid"], False)
        self.c["bad"] += 1
        return None

    def run(self, records) -> None:
        ops = {0: "r", 1: "w", 2: "x"}
        for rec in records:
            addr, size, pid, op = int(rec["addr"]), int(rec["arg"]), int(rec["pid"]), int(rec["op"])
            if op == 16:
                self.switch(pid)
                continue
            if self.cur != pid:
                self.switch(pid)
            self.c["accesses"] += 1
            pa = self.translate(addr, ops[op])
            self.emitted.append(0xFFFF_FFFF_FFFF_FFFF if pa is None else pa)
            last = addr + size - 1
            if last >> 12 != addr >> 12:
                self.c["split"] += 1
                self.translate((last & ~0xFFF) % (1 << 64), ops[op])

    def accessed_count(self) -> int:
        return sum(1 for v in self.mem.values() if v & A)
