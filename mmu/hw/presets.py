"""CPU geometry presets for the TLB hierarchy and the paging-structure caches, with sources.

A preset is data only (no numba): :func:`mmu.hw.tlb.make_tlb` and :func:`mmu.hw.pwc.make_psc`
turn it into the arrays the kernels take. Every figure carries a ``source`` string; a figure
that no source confirmed says ``(unconfirmed)``, and a figure the vendor does not publish at
all (every paging-structure-cache size) says ``assumption``. Figures are from
``reference/x86-paging-and-ept.md`` section 6.6 unless the string says otherwise.

Vocabulary
----------
side
    :data:`SIDE_DATA` (0), :data:`SIDE_INSTR` (1) or :data:`SIDE_UNIFIED` (2). A lookup or fill
    for side ``s`` (0 or 1) uses the structures whose side is ``s`` or unified.
sizes
    Bitmask of page sizes a structure holds: :data:`SZ_4K` | :data:`SZ_2M` | :data:`SZ_1G`.
    Size index ``k`` (0, 1, 2) has page shift ``12 + 9 * k`` and mask bit ``1 << k``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmu.errors import MMUInputError

SIDE_DATA = 0
SIDE_INSTR = 1
SIDE_UNIFIED = 2
SIDE_NAMES = {SIDE_DATA: "data", SIDE_INSTR: "instruction", SIDE_UNIFIED: "unified"}

SZ_4K = 1 << 0
SZ_2M = 1 << 1
SZ_1G = 1 << 2
SZ_ALL = SZ_4K | SZ_2M | SZ_1G

# entry levels of the paging-structure caches (the level of the cached *entry*, SDM 4.10.3.1)
PSC_PDE = 2
PSC_PDPTE = 3
PSC_PML4E = 4
PSC_PML5E = 5
PSC_NAMES = {PSC_PDE: "PDE cache", PSC_PDPTE: "PDPTE cache", PSC_PML4E: "PML4E cache", PSC_PML5E: "PML5E cache"}


def sizes_str(mask: int) -> str:
    """``"4K+2M"`` style name of a page-size mask."""
    names = [n for bit, n in ((SZ_4K, "4K"), (SZ_2M, "2M"), (SZ_1G, "1G")) if mask & bit]
    return "+".join(names) if names else "none"


@dataclass(frozen=True)
class TLBStructure:
    """One TLB array.

    Parameters
    ----------
    name : str
        Display name, e.g. ``"L1 DTLB 4K"``.
    level : int
        1 (looked up first) or 2 (looked up on an L1 miss; fills L1 on a hit).
    side : int
        :data:`SIDE_DATA`, :data:`SIDE_INSTR` or :data:`SIDE_UNIFIED`.
    sizes : int
        Page sizes held, a mask of :data:`SZ_4K`, :data:`SZ_2M`, :data:`SZ_1G`.
    entries, ways : int
        Capacity and associativity; ``entries`` must be a multiple of ``ways``
        (sets = entries // ways, any count, not only powers of two; ways == entries is
        fully associative).
    source : str
        Where the figures come from; ``(unconfirmed)`` marks unconfirmed ones.
    """

    name: str
    level: int
    side: int
    sizes: int
    entries: int
    ways: int
    source: str = ""

    def __post_init__(self) -> None:
        if self.level not in (1, 2):
            raise MMUInputError(f"TLB structure '{self.name}': level must be 1 or 2, got {self.level}")
        if self.side not in SIDE_NAMES:
            raise MMUInputError(f"TLB structure '{self.name}': side must be 0, 1 or 2, got {self.side}")
        if not 0 < self.sizes <= SZ_ALL:
            raise MMUInputError(f"TLB structure '{self.name}': page-size mask {self.sizes} is not in 1..7")
        if self.entries < 1 or self.ways < 1 or self.entries % self.ways:
            raise MMUInputError(
                f"TLB structure '{self.name}': {self.entries} entries is not a positive multiple of {self.ways} ways"
            )

    @property
    def sets(self) -> int:
        return self.entries // self.ways


@dataclass(frozen=True)
class PSCCache:
    """One paging-structure cache (SDM 4.10.3.1).

    Parameters
    ----------
    name : str
        Display name.
    entry_level : int
        Level of the cached entry: :data:`PSC_PDE` (2), :data:`PSC_PDPTE` (3),
        :data:`PSC_PML4E` (4) or :data:`PSC_PML5E` (5, used only with 5-level paging).
    entries, ways : int
        Capacity and associativity; ``entries == 0`` means the processor does not implement
        this cache (the SDM allows that).
    source : str
        Where the figures come from.
    """

    name: str
    entry_level: int
    entries: int
    ways: int
    source: str = ""

    def __post_init__(self) -> None:
        if self.entry_level not in PSC_NAMES:
            raise MMUInputError(f"PSC '{self.name}': entry level must be 2..5, got {self.entry_level}")
        if self.entries < 0 or (self.entries and (self.ways < 1 or self.entries % self.ways)):
            raise MMUInputError(f"PSC '{self.name}': {self.entries} entries is not a multiple of {self.ways} ways")


@dataclass(frozen=True)
class CPUPreset:
    """TLB hierarchy plus paging-structure caches of one CPU."""

    name: str
    tlbs: tuple[TLBStructure, ...]
    pscs: tuple[PSCCache, ...]
    source: str = ""


# --- Intel Skylake (client / SP core) ------------------------------------------------------------
_SKL_OPT = "Intel Optimization Manual 248966-045 Table 2-15 via community.intel.com thread 1371605"
_SKL_PSC = (
    "assumption: Intel does not publish paging-structure-cache sizes; 32 PDE / 4 PDPTE / 2 PML4E "
    "entries, fully associative, are the figures commonly used for Core i7-class parts in the "
    "MMU-cache literature (unconfirmed)"
)
SKYLAKE = CPUPreset(
    name="skylake",
    tlbs=(
        TLBStructure("L1 DTLB 4K", 1, SIDE_DATA, SZ_4K, 64, 4, f"{_SKL_OPT}; cpuid leaf 2"),
        TLBStructure("L1 DTLB 2M", 1, SIDE_DATA, SZ_2M, 32, 4, "32 x 2M 4-way as on Haswell (unconfirmed for Skylake)"),
        TLBStructure("L1 DTLB 1G", 1, SIDE_DATA, SZ_1G, 4, 4, f"{_SKL_OPT}; cpuid leaf 2"),
        TLBStructure(
            "L1 ITLB 4K",
            1,
            SIDE_INSTR,
            SZ_4K,
            128,
            8,
            f"{_SKL_OPT} (dynamically shared between hyperthreads; modeled as one thread)",
        ),
        TLBStructure(
            "L1 ITLB 2M",
            1,
            SIDE_INSTR,
            SZ_2M,
            8,
            8,
            f"{_SKL_OPT}: 8 per thread, fully associative; 1G code pages are smashed into 2M entries "
            "(model choice: the ITLB has no 1G array)",
        ),
        TLBStructure(
            "STLB 4K+2M",
            2,
            SIDE_UNIFIED,
            SZ_4K | SZ_2M,
            1536,
            12,
            "WikiChip Skylake: 1536 entries shared 4K/2M, 12-way (cpuid reports 6-way); set index = "
            "VPN mod 128 (the real index hash is not documented)",
        ),
        TLBStructure("STLB 1G", 2, SIDE_UNIFIED, SZ_1G, 16, 4, "16 x 1G 4-way (unconfirmed)"),
    ),
    pscs=(
        PSCCache("PDE cache", PSC_PDE, 32, 32, _SKL_PSC),
        PSCCache("PDPTE cache", PSC_PDPTE, 4, 4, _SKL_PSC),
        PSCCache("PML4E cache", PSC_PML4E, 2, 2, _SKL_PSC),
        PSCCache("PML5E cache", PSC_PML5E, 0, 0, "Skylake has no 5-level paging"),
    ),
    source=(
        "reference/x86-paging-and-ept.md 6.6: Intel Optimization Manual 248966-045 Table 2-15 "
        "(community.intel.com 1371605), WikiChip Skylake, blog.51cto.com/u_14850/6626242; "
        "2 page walks in parallel (not modeled here)"
    ),
)

# --- AMD Zen 2 --------------------------------------------------------------------------------------
_ZEN2 = "WikiChip Zen 2; 7-cpu.com Zen2"
_ZEN2_PSC = (
    "assumption: AMD does not publish its page-walk-cache geometry (Zen 2's L2 DTLB also holds PDEs "
    "per WikiChip; modeled as a separate PDE cache) (unconfirmed)"
)
ZEN2 = CPUPreset(
    name="zen2",
    tlbs=(
        TLBStructure("L1 DTLB", 1, SIDE_DATA, SZ_ALL, 64, 64, f"{_ZEN2}: 64 entries, fully associative, 4K/2M/1G"),
        TLBStructure("L1 ITLB", 1, SIDE_INSTR, SZ_ALL, 64, 64, f"{_ZEN2}: 64 entries, fully associative, all sizes"),
        TLBStructure(
            "L2 DTLB",
            2,
            SIDE_DATA,
            SZ_4K | SZ_2M,
            2040,
            12,
            f"{_ZEN2}: 2048 entries, 12-way, 4K/2M, 1G smashed into 2M and re-installed as 1G in L1. "
            "2048 is not a multiple of 12 (the real array is skewed-associative with ways split by "
            "page size), so it is modeled as 170 sets x 12 ways = 2040 entries",
        ),
        TLBStructure(
            "L2 ITLB", 2, SIDE_INSTR, SZ_4K | SZ_2M, 512, 8, f"{_ZEN2}: 512 entries, 8-way, 4K/2M, 1G uses 2M"
        ),
    ),
    pscs=(
        PSCCache("PDE cache", PSC_PDE, 64, 4, _ZEN2_PSC),
        PSCCache("PDPTE cache", PSC_PDPTE, 16, 16, _ZEN2_PSC),
        PSCCache("PML4E cache", PSC_PML4E, 8, 8, _ZEN2_PSC),
        PSCCache("PML5E cache", PSC_PML5E, 0, 0, "Zen 2 has no 5-level paging"),
    ),
    source=(
        "reference/x86-paging-and-ept.md 6.6: WikiChip Zen 2, 7-cpu.com Zen2; 2 page-table walkers (not modeled here)"
    ),
)

# --- toy: tiny geometry that makes conflicts, evictions and smashing easy to provoke in tests ---------
_TOY = "toy geometry for tests and teaching (not a real CPU)"
TOY = CPUPreset(
    name="toy",
    tlbs=(
        TLBStructure("L1 DTLB", 1, SIDE_DATA, SZ_4K | SZ_2M, 4, 2, f"{_TOY}; 1G pages smashed into 2M"),
        TLBStructure("L1 ITLB", 1, SIDE_INSTR, SZ_4K, 4, 2, f"{_TOY}; 2M/1G pages smashed into 4K"),
        TLBStructure("L2 TLB", 2, SIDE_UNIFIED, SZ_ALL, 8, 2, _TOY),
    ),
    pscs=(
        PSCCache("PDE cache", PSC_PDE, 4, 2, _TOY),
        PSCCache("PDPTE cache", PSC_PDPTE, 2, 2, _TOY),
        PSCCache("PML4E cache", PSC_PML4E, 2, 2, _TOY),
        PSCCache("PML5E cache", PSC_PML5E, 1, 1, _TOY),
    ),
    source=_TOY,
)

_PRESETS = {p.name: p for p in (SKYLAKE, ZEN2, TOY)}


def with_stlb_entries(preset: CPUPreset, entries: int) -> CPUPreset:
    """``preset`` with ``entries`` in its second-level TLB for 4 KiB pages, keeping its number of
    sets (the ways scale with the capacity, as when a vendor grows an STLB)."""
    import dataclasses

    stlbs = [t for t in preset.tlbs if t.level == 2 and t.sizes & SZ_4K]
    if not stlbs:
        raise MMUInputError(f"CPU preset '{preset.name}' has no second-level TLB for 4K pages to resize")
    stlb = stlbs[0]
    if entries < 1 or entries % stlb.sets:
        raise MMUInputError(
            f"STLB entries must be a positive multiple of {preset.name}'s {stlb.sets} sets "
            f"({stlb.entries} entries, {stlb.ways}-way), not {entries}"
        )
    ways = entries // stlb.sets
    resized = dataclasses.replace(
        stlb, entries=entries, ways=ways, source=f"resized from {stlb.entries} x {stlb.ways}-way (stlb_entries)"
    )
    return dataclasses.replace(preset, tlbs=tuple(resized if t is stlb else t for t in preset.tlbs))


def list_presets() -> list[str]:
    """Names of the available CPU presets, sorted."""
    return sorted(_PRESETS)


def get_preset(name: str) -> CPUPreset:
    """The preset called ``name`` (case-insensitive).

    Raises
    ------
    MMUInputError
        If there is no such preset.
    """
    key = str(name).strip().lower()
    if key not in _PRESETS:
        raise MMUInputError(f"unknown CPU preset '{name}'; choose one of: {', '.join(list_presets())}")
    return _PRESETS[key]
