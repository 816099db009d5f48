"""Plain-Python reference of the 2D (nested) walk: guest tables through EPT (Intel) or NPT (AMD).

Written from the Intel SDM vol. 3C ch. 28 and the AMD APM vol. 2 section 15.25, independently of
``mmu/x86/ept.py`` and ``mmu/x86/nested.py``:

* :func:`ref_ept_translate` -- one gpa -> hpa translation through EPT: entry formats of Tables
  28-1..28-6 (reserved bits, memory type), EPT misconfigurations (28.2.3.1), EPT violations
  (28.2.3.2), accessed and dirty flags (28.2.4);
* :func:`ref_npt_translate` -- the same through AMD nested page tables, which have the ordinary
  long-mode format and are walked as user-mode accesses: it *is* the 1D reference walk
  :func:`reference.paging.ref_walk` with CPL = 3 on the host memory;
* :func:`ref_walk_nested` -- the guest dimension is :func:`reference.paging.ref_walk` itself,
  run over a view of guest-physical memory in which every read of a guest paging-structure
  entry first translates the entry's gpa through the host tables (recording the host references
  before the guest one, as the hardware issues them). Writes of guest A/D flags are held back
  and applied only after their EPT write permission is checked and the data gpa translates.

Memories are plain ``dict`` ``{pa: u64}`` (absent keys read as 0); one dict holds both the guest's
memory (at the hpas the host tables map it to) and the host tables.

Conventions shared with the kernel (simulator choices, documented in ``mmu/x86/nested.py``):
guest A/D flags only when the whole access succeeds; host A/D flags of each gpa translation as
soon as that translation succeeds; a gpa wider than the host walk faults with no reference; the
EPT write check of guest A/D updates comes after the guest rights check and before the data gpa.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .paging import TA_RW, TA_US, TA_XD, ref_walk

# EPT entry bits (SDM Tables 28-1..28-6).
EPT_R = 1 << 0
EPT_W = 1 << 1
EPT_X = 1 << 2
EPT_LARGE = 1 << 7
EPT_A = 1 << 8
EPT_D = 1 << 9
EPT_XU = 1 << 10

# Exit qualification for EPT violations (SDM Table 27-7).
Q_READ = 1 << 0
Q_WRITE = 1 << 1
Q_FETCH = 1 << 2
Q_READABLE = 1 << 3
Q_WRITABLE = 1 << 4
Q_EXECUTABLE = 1 << 5
Q_USER_EXECUTABLE = 1 << 6
Q_GLA_VALID = 1 << 7
Q_FINAL = 1 << 8

# #NPF EXITINFO1 (APM 15.25.6): #PF error-code bits plus these two.
NPF_FINAL = 1 << 32
NPF_TABLE = 1 << 33
PF_W, PF_U, PF_I = 1 << 1, 1 << 2, 1 << 4

GUEST_A = 1 << 5
GUEST_D = 1 << 6
U64 = (1 << 64) - 1


@dataclass
class HostOutcome:
    """Result of one gpa translation through the host tables.

    ``kind`` is "ok", "violation", "misconfig" or "npf"; ``code`` holds exit-qualification bits
    0-6 of a violation, or the #PF-style error code of an NPF (bits 32/33 not included);
    ``perms`` the EPT-style rights (R/W/X/XU bits) of a successful translation.
    """

    kind: str
    code: int = 0
    hpa: int | None = None
    page_size: int = 0
    perms: int = 0
    refs: list[tuple[int, int]] = field(default_factory=list)  # (level, hpa)


@dataclass
class NestedRefResult:
    fault: str | None
    error_code: int
    exit_qualification: int
    gpa: int | None
    hpa: int | None
    page_size: int
    refs: list[tuple[str, int, int]] = field(default_factory=list)
    attrs: int = 0
    ept_perms: int = 0


def _phys_mask(maxphyaddr: int) -> int:
    return ((1 << maxphyaddr) - 1) & ~0xFFF


def _access_bits(access: str) -> int:
    return {"r": Q_READ, "w": Q_WRITE, "x": Q_FETCH}[access]


def ept_entry_misconfigured(
    entry: int, level: int, leaf: bool, maxphyaddr: int, mbec: bool, execute_only: bool
) -> bool:
    """True if a *present* EPT entry causes an EPT misconfiguration (SDM 28.2.3.1)."""
    rwx = entry & 7
    if rwx in (0b010, 0b110):  # write-only, write/execute
        return True
    execute_rights = entry & EPT_X or (mbec and entry & EPT_XU)
    if not execute_only and not entry & (EPT_R | EPT_W) and execute_rights:
        return True  # execute-only, not supported by this processor
    # "A reserved bit is set. This includes ... a bit in the range 51:12 beyond the physical-address width."
    if entry & ((1 << 52) - 1) & ~((1 << maxphyaddr) - 1):
        return True
    if level in (5, 4):
        reserved = 0xF8  # Table 28-1 (PML4E), 5-level EPT PML5E: bits 7:3 reserved
    elif not leaf:
        reserved = 0x78  # Tables 28-3 / 28-5: a PDPTE or PDE referencing a table, bits 6:3
    elif level == 3:
        reserved = ((1 << 30) - 1) & ~0xFFF  # Table 28-2: 1-GByte page, bits 29:12
    elif level == 2:
        reserved = ((1 << 21) - 1) & ~0xFFF  # Table 28-4: 2-MByte page, bits 20:12
    else:
        reserved = 0  # Table 28-6: 4-KByte page
    if entry & reserved:
        return True
    # The last entry used (a leaf) with EPT memory type 2, 3 or 7 (reserved values).
    return leaf and (entry >> 3) & 7 in (2, 3, 7)


def ref_ept_translate(
    mem: dict[int, int],
    root: int,
    levels: int,
    gpa: int,
    access: str,
    ad: bool = False,
    mbec: bool = False,
    user_addr: bool = False,
    maxphyaddr: int = 52,
    execute_only: bool = True,
    set_ad: bool = True,
) -> HostOutcome:
    """Translate ``gpa`` through the EPT rooted at ``root`` (SDM 28.2.2-28.2.4).

    ``access``: "r", "w" or "x"; ``user_addr``: the linear address is a user-mode one (selects
    bit 10 for fetches under mode-based execute control). Sets A (bit 8) on every entry used and
    D (bit 9) on the leaf of a write when ``ad`` and the translation succeeds.
    """
    acc = _access_bits(access)
    if gpa >> (12 + 9 * levels):
        return HostOutcome("violation", acc)
    refs: list[tuple[int, int]] = []
    used: list[tuple[int, int]] = []
    table = root
    level = levels
    while True:
        epa = table | ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) << 3
        refs.append((level, epa))
        entry = mem.get(epa, 0)
        present = bool(entry & 7) or (mbec and bool(entry & EPT_XU))
        if not present:
            # Rights ANDed over the entries used include this one's zeros.
            return HostOutcome("violation", acc, refs=refs)
        leaf = level == 1 or (level in (2, 3) and bool(entry & EPT_LARGE))
        if ept_entry_misconfigured(entry, level, leaf, maxphyaddr, mbec, execute_only):
            return HostOutcome("misconfig", 0, refs=refs)
        used.append((epa, entry))
        if leaf:
            break
        table = entry & _phys_mask(maxphyaddr)
        level -= 1

    readable = all(e & EPT_R for _, e in used)
    writable = all(e & EPT_W for _, e in used)
    executable = all(e & EPT_X for _, e in used)
    user_executable = mbec and all(e & EPT_XU for _, e in used)
    perms = (EPT_R if readable else 0) | (EPT_W if writable else 0) | (EPT_X if executable else 0)
    perms |= EPT_XU if user_executable else 0
    if access == "r":
        allowed = readable
    elif access == "w":
        allowed = writable
    else:
        allowed = user_executable if (mbec and user_addr) else executable
    if not allowed:
        qual = acc | readable << 3 | writable << 4 | executable << 5 | user_executable << 6
        return HostOutcome("violation", qual, perms=perms, refs=refs)
    if ad and set_ad:
        for epa, _ in used:
            mem[epa] = mem.get(epa, 0) | EPT_A
        if access == "w":
            mem[used[-1][0]] |= EPT_D
    size = 1 << (12 + 9 * (level - 1))
    leaf_entry = used[-1][1]
    hpa = (leaf_entry & _phys_mask(maxphyaddr) & ~(size - 1)) | (gpa & (size - 1))
    return HostOutcome("ok", 0, hpa, size, perms, refs)


def ref_npt_translate(mem: dict[int, int], ncr3: int, levels: int, gpa: int, access: str, maxphyaddr: int = 52):
    """Translate ``gpa`` through AMD nested page tables: a user-mode 1D walk (APM 15.25.5)."""
    if gpa >> (12 + 9 * levels):
        code = PF_U | (PF_W if access == "w" else 0) | (PF_I if access == "x" else 0)
        return HostOutcome("npf", code)
    va = gpa
    if levels == 4 and gpa >> 47 & 1:
        va |= U64 & ~((1 << 48) - 1)  # a canonical spelling; only bits 47:0 index the tables
    r = ref_walk(mem, ncr3, va, access, user=True, wp=True, nxe=True, la57=levels == 5, maxphyaddr=maxphyaddr)
    refs = [(levels - i, pa) for i, pa in enumerate(r.refs)]
    if r.fault is not None:
        return HostOutcome("npf", r.error_code, refs=refs)
    perms = EPT_R | (EPT_W if r.attrs & TA_RW else 0) | (0 if r.attrs & TA_XD else EPT_X)
    return HostOutcome("ok", 0, r.pa & ((1 << 52) - 1), r.page_size, perms, refs)


class _HostFault(Exception):
    def __init__(self, outcome: HostOutcome, gpa: int):
        super().__init__(outcome.kind)
        self.outcome = outcome
        self.gpa = gpa


class _GuestPhysicalView:
    """Guest-physical memory as :func:`ref_walk` sees it during a nested walk.

    ``get`` translates the gpa of a guest paging-structure entry through the host tables (a
    failure raises :class:`_HostFault` out of ``ref_walk``), records the host references, then the
    guest one, and reads the entry. Item assignment (guest A/D updates) is held in ``pending``.
    """

    def __init__(self, translate, mem: dict[int, int]):
        self.translate = translate
        self.mem = mem
        self.groups: list[list[tuple[str, int, int]]] = []
        self.fault_refs: list[tuple[str, int, int]] = []
        self.hpa: dict[int, tuple[int, int]] = {}  # gpa -> (hpa, perms)
        self.pending: dict[int, int] = {}

    def get(self, gpa: int, default: int = 0) -> int:
        if gpa in self.pending:
            return self.pending[gpa]
        out = self.translate(gpa)
        host = [("h", lv, pa) for lv, pa in out.refs]
        if out.kind != "ok":
            self.fault_refs = host
            raise _HostFault(out, gpa)
        self.hpa[gpa] = (out.hpa, out.perms)
        self.groups.append(host + [("g", 0, out.hpa)])
        return self.mem.get(out.hpa, default)

    def __getitem__(self, gpa: int) -> int:
        return self.pending[gpa]

    def __setitem__(self, gpa: int, value: int) -> None:
        self.pending[gpa] = value


def ref_walk_nested(
    mem: dict[int, int],
    host_root: int,
    host_levels: int,
    gcr3: int,
    gva: int,
    access: str = "r",
    *,
    ept_ad: bool = False,
    npt: bool = False,
    mbec: bool = False,
    execute_only: bool = True,
    maxphyaddr: int = 52,
    **guest,
) -> NestedRefResult:
    """The 2D walk of ``gva``: fields and reference order as ``mmu.walk_nested`` returns them.

    ``guest`` holds the guest's control state, passed to :func:`ref_walk` (user, wp, nxe, smep,
    smap, ac, la57, pke, pkru). ``mem`` is mutated: host A/D flags of successful translations,
    guest A/D flags when the whole access succeeds.
    """
    table_access = "w" if (ept_ad or npt) else "r"  # SDM 28.2.3.2; APM 15.25.5 (user writes)

    def translate(gpa: int, acc: str = table_access, user_addr: bool = False) -> HostOutcome:
        if npt:
            return ref_npt_translate(mem, host_root, host_levels, gpa, acc, maxphyaddr)
        return ref_ept_translate(
            mem, host_root, host_levels, gpa, acc, ept_ad, mbec, user_addr, maxphyaddr, execute_only
        )

    def fault_code(out: HostOutcome, final: bool) -> tuple[str, int]:
        if out.kind == "npf":
            return "npf", out.code | (NPF_FINAL if final else NPF_TABLE)
        if out.kind == "misconfig":
            return "ept_misconfig", 0
        qual = out.code | Q_GLA_VALID
        if final:
            qual |= Q_FINAL
        elif ept_ad:
            qual |= Q_READ  # "treated as writes": both bits 0 and 1 (Table 27-7 note)
        return "ept_violation", qual

    view = _GuestPhysicalView(translate, mem)
    try:
        g = ref_walk(view, gcr3, gva, access, maxphyaddr=maxphyaddr, **guest)
    except _HostFault as exc:
        refs = [ref for group in view.groups for ref in group] + view.fault_refs
        refs = _with_levels(refs, guest.get("la57", False))
        kind, qual = fault_code(exc.outcome, final=False)
        return NestedRefResult(kind, 0, qual, exc.gpa, None, 0, refs)

    # ref_walk read len(g.refs) guest entries; later groups come from its A/D read-back.
    refs = [ref for group in view.groups[: len(g.refs)] for ref in group]
    refs = _with_levels(refs, guest.get("la57", False))
    if g.fault == "gp":
        return NestedRefResult("gp", 0, 0, None, None, 0, [])
    if g.fault == "pf":
        return NestedRefResult("pf", g.error_code, 0, None, None, 0, refs)

    # Guest A/D updates are guest-physical writes (SDM 28.2.3.2): each one that changes memory
    # needs write permission in the EPT entries that map the page holding the entry.
    for gpa, value in view.pending.items():
        hpa, perms = view.hpa[gpa]
        if value & (GUEST_A | GUEST_D) & ~mem.get(hpa, 0) and not perms & EPT_W:
            qual = Q_WRITE | Q_GLA_VALID
            qual |= bool(perms & EPT_R) << 3 | bool(perms & EPT_W) << 4 | bool(perms & EPT_X) << 5
            qual |= bool(perms & EPT_XU) << 6
            return NestedRefResult("ept_violation", 0, qual, gpa, None, 0, refs)

    # The data access: the final gpa through the host tables.
    out = translate(g.pa, access, bool(g.attrs & TA_US))
    refs += [("h", lv, pa) for lv, pa in out.refs]
    if out.kind != "ok":
        kind, qual = fault_code(out, final=True)
        return NestedRefResult(kind, 0, qual, g.pa, None, 0, refs)
    for gpa, value in view.pending.items():
        hpa = view.hpa[gpa][0]
        mem[hpa] = mem.get(hpa, 0) | (value & (GUEST_A | GUEST_D))
    return NestedRefResult(None, 0, 0, g.pa, out.hpa, min(g.page_size, out.page_size), refs, g.attrs, out.perms)


def _with_levels(refs: list[tuple[str, int, int]], la57: bool) -> list[tuple[str, int, int]]:
    """Fill in the level of each guest reference (the view does not know it): top level first."""
    level = 5 if la57 else 4
    out = []
    for dim, lv, pa in refs:
        if dim == "g":
            out.append(("g", level, pa))
            level -= 1
        else:
            out.append((dim, lv, pa))
    return out
