"""Report commands of the ``mmu`` CLI: ``walk``.

``register(app)`` adds them to the main typer app. Bad input is reported with
:func:`mmu.cli.fail` (one line on stderr, exit status 2).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mmu.errors import MMUInputError
from mmu.report.demo_guest import layout_lines, shadow_layout_lines

ACCESS_KINDS = ("r", "w", "x")


def _fail(message: str) -> None:
    from mmu.cli import fail

    fail(message)


def parse_va(text: str) -> int:
    """A virtual address from ``0x...`` hex or decimal text (MMUInputError if it is not one)."""
    t = text.strip().replace("_", "")
    try:
        value = int(t, 16) if t.lower().startswith("0x") else int(t, 10)
    except ValueError:
        raise MMUInputError(f"bad virtual address {text!r}: give hex (0x...) or decimal") from None
    if not 0 <= value < 1 << 64:
        raise MMUInputError(f"virtual address {text!r} does not fit in 64 bits")
    return value


def _walk_native(mem, cr3: int, va: int, access: str, user: bool, context: str, **kw: Any):
    import mmu
    from mmu.report.walkview import capture_1d

    after = copy.deepcopy(mem)  # the walk sets A/D flags: walk a copy, keep ``mem`` as it was
    result = mmu.walk(after, cr3, va, access, user=user, **kw)
    return capture_1d(result, mem, after, va, cr3, access, user, la57=kw.get("la57", False), context=context)


def _walk_nested(
    hmem, eptp: int, gcr3: int, va: int, access: str, user: bool, levels: int, ad: bool, npt: bool, context: str, **kw
):
    import mmu
    from mmu.report.walkview import capture_2d

    after = copy.deepcopy(hmem)
    result = mmu.walk_nested(after, eptp, gcr3, va, access, user=user, ept_levels=levels, ept_ad=ad, npt=npt, **kw)
    return capture_2d(
        result, hmem, after, va, gcr3, eptp, access, user, la57=kw.get("la57", False),
        ept_levels=levels, ept_ad=ad, npt=npt, context=context,
    )  # fmt: skip


def _demo_view(va: int, mode: str, access: str, user: bool, host_page: str, levels: int, ad: bool, npt: bool):
    from mmu.report.demo_guest import build_native, build_nested, build_shadow

    if mode == "native":
        g = build_native()
        return _walk_native(g.mem, g.cr3, va, access, user, "fresh demo guest (see `mmu walk --help`)")
    if mode == "shadow":
        from mmu.report.walkview import capture_shadow

        ctx = "shadow demo guest (see `mmu walk --help`): the guest's tables as its OS built and edited them"
        return capture_shadow(build_shadow(host_page), va, access, user, ctx)
    g = build_nested(host_page, levels, ad, npt)
    assert g.eptp is not None
    ctx = f"fresh demo guest (see `mmu walk --help`); host pages {host_page.upper()}, guest RAM at hpa 0x1_0000_0000"
    return _walk_nested(g.mem, g.eptp, g.cr3, va, access, user, levels, g.ept_ad, npt, ctx)


def _trace_view(
    trace: Path,
    index: int,
    va: int | None,
    access: str | None,
    user: bool,
    mode: str,
    host_page: str,
    levels: int,
    ad: bool,
    npt: bool,
):
    """Replay records [0, index) of ``trace``, then walk record ``index``'s address (or ``va``)."""
    import numpy as np

    from mmu.engine import Machine, MachineConfig
    from mmu.guest.os import O_CUR, P_PCID, P_PID, P_ROOT
    from mmu.modes.vmm import V_EPT_AD, V_LEVELS, V_NPT, V_ROOT
    from mmu.report.walkview import ACCESS_NAMES
    from mmu.trace.format import OP_NAMES, OP_SWITCH, RECORD_DTYPE, TraceReader, is_access
    from mmu.x86.ept import make_eptp

    reader = TraceReader(trace)
    n = reader.n_records
    if not 0 <= index < n:
        raise MMUInputError(f"--index {index} is out of range: {trace} has {n:,} records (0..{n - 1:,})")
    rec = next(reader.chunks(1, start=index, stop=index + 1))[0]
    op = int(rec["op"])
    if not is_access(op):
        raise MMUInputError(
            f"{trace}: record {index} is an OS event ('{OP_NAMES.get(op, op)}'), not an access; pick an access record"
        )
    config = MachineConfig(mode=mode, host_page=host_page, ept_levels=levels, ept_ad=ad, npt=npt)
    m = Machine(config)
    for chunk in reader.chunks(1 << 20, start=0, stop=index):
        m.run(chunk, where=str(trace))
    pid = int(rec["pid"])
    procs, pid2slot, ometa = m.osst[0], m.osst[1], m.osst[2]
    cur = int(ometa[O_CUR])
    if pid2slot[pid] < 0 or (mode == "shadow" and (cur < 0 or int(procs[cur, P_PID]) != pid)):
        # First access of this process: the guest creates it (an empty root table) on the switch.
        # Under shadow paging the record's process must also be the current one: the hardware
        # walks the shadow root the VMM loaded at the switch.
        # Two records, not one: numba types a 1-element field view as contiguous and recompiles.
        switch = np.zeros(2, dtype=RECORD_DTYPE)
        switch["op"] = OP_SWITCH
        switch["pid"] = pid
        m.run(switch, where=str(trace))
    row = int(pid2slot[pid])
    root, pcid = int(procs[row, P_ROOT]), int(procs[row, P_PCID])
    addr = int(rec["addr"]) if va is None else va
    acc = access or "rwx"[op]
    what = f"{ACCESS_NAMES['rwx'[op]]} of {int(rec['arg'])} bytes at {int(rec['addr']):#x}"
    ctx = (
        f"{trace.name}: page tables after records 0..{index - 1} ({mode}); record {index}: {what} by pid {pid}; "
        "walked cold, as on a TLB miss"
    )
    if index == 0:
        ctx = ctx.replace(f"records 0..{index - 1}", "no records")
    if va is not None:
        ctx += f"; walking the given VA {va:#x} instead"
    kw = {"wp": config.wp, "nxe": config.nxe, "la57": config.la57, "maxphyaddr": config.maxphyaddr}
    if mode == "native":
        return _walk_native(m.mem, root | pcid, addr, acc, user, ctx, **kw)
    if mode == "shadow":
        from mmu.report.walkview import capture_shadow

        return capture_shadow(m, addr, acc, user, ctx)
    vmeta = m.vm[1]
    hroot, hlevels = int(vmeta[V_ROOT]), int(vmeta[V_LEVELS])
    is_npt, is_ad = bool(vmeta[V_NPT]), bool(vmeta[V_EPT_AD])
    eptp = hroot if is_npt else make_eptp(hroot, hlevels, is_ad)
    return _walk_nested(m.mem, eptp, root | pcid, addr, acc, user, hlevels, is_ad, is_npt, ctx, **kw)


def walk_cmd(
    va: Annotated[
        str | None, typer.Argument(help="Virtual address, hex (0x...) or decimal; with --trace, optional.")
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="native | nested | shadow.")] = "native",
    access: Annotated[
        str | None, typer.Option("--access", help="r | w | x (default r; with --trace, the record's kind).")
    ] = None,
    user: Annotated[bool, typer.Option("--user/--supervisor", help="CPL 3 (default) or CPL 0.")] = True,
    host_page: Annotated[
        str, typer.Option("--host-page", help="Nested (and shadow): host page size, 4k | 2m | 1g.")
    ] = "4k",
    ept_levels: Annotated[int, typer.Option("--ept-levels", help="Nested: EPT/NPT levels, 4 | 5.")] = 4,
    npt: Annotated[bool, typer.Option("--npt", help="Nested: AMD NPT instead of Intel EPT.")] = False,
    ept_ad: Annotated[bool, typer.Option("--ept-ad", help="Nested: EPT accessed/dirty flags (EPTP bit 6).")] = False,
    trace: Annotated[Path | None, typer.Option("--trace", help="Walk in the machine a trace builds.")] = None,
    index: Annotated[
        int | None, typer.Option("--index", help="With --trace: replay records 0..N-1, walk record N.")
    ] = None,
    svg: Annotated[Path | None, typer.Option("--svg", help="Also write the rendering as SVG.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the rendering as HTML.")] = None,
    width: Annotated[int | None, typer.Option("--width", help="Columns (default: terminal, else 120).")] = None,
) -> None:
    mode = mode.lower()
    host_page = host_page.lower()
    if mode not in ("native", "nested", "shadow"):
        _fail(f"unknown mode {mode!r}; choose native, nested or shadow")
    if access is not None and access not in ACCESS_KINDS:
        _fail(f"--access must be r, w or x, not {access!r}")
    if host_page not in ("4k", "2m", "1g"):
        _fail(f"unknown host page size {host_page!r}; choose 4k, 2m or 1g")
    if ept_levels not in (4, 5):
        _fail(f"--ept-levels must be 4 or 5, not {ept_levels}")
    if mode == "native" and (npt or ept_ad or host_page != "4k" or ept_levels != 4):
        _fail("--host-page, --ept-levels, --npt and --ept-ad apply to --mode nested")
    if mode == "shadow" and (npt or ept_ad or ept_levels != 4):
        _fail("--ept-levels, --npt and --ept-ad apply to --mode nested (shadow paging has no EPT)")
    if npt and ept_ad:
        _fail("--ept-ad is an EPT feature; NPT always keeps accessed/dirty flags")
    if width is not None and width < 40:
        _fail(f"--width must be at least 40, not {width}")
    if (trace is None) != (index is None):
        _fail("--trace and --index go together: --trace TRACE --index N")
    if trace is None and va is None:
        _fail("give a virtual address, or --trace TRACE --index N")
    try:
        addr = None if va is None else parse_va(va)
        if trace is not None:
            assert index is not None
            view = _trace_view(trace, index, addr, access, user, mode, host_page, ept_levels, ept_ad, npt)
        else:
            assert addr is not None
            view = _demo_view(addr, mode, access or "r", user, host_page, ept_levels, ept_ad, npt)
    except MMUInputError as exc:
        _fail(str(exc))

    from rich.console import Console

    from mmu.report.walkview import walk_renderable

    record = svg is not None or html is not None
    console = Console(record=record, width=width or (None if sys.stdout.isatty() else 120))
    console.print(walk_renderable(view))
    for path, export in ((svg, "svg"), (html, "html")):
        if path is None:
            continue
        if export == "svg":
            text = console.export_svg(title="mmu walk", clear=False)
        else:
            text = console.export_html(clear=False)
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write {path}: {exc.strerror or exc}")


WALK_HELP = (
    "Render one translation step by step: the 1D walk (native), the 2D walk grid (nested), or the guest's "
    "walk beside the shadow walk the hardware does (shadow).\n\n"
    "The walk is cold (no TLB, no paging-structure caches) and runs on a copy of memory, so the A/D flags it "
    "sets are shown (+A/+D) but never kept. Without --trace, VA is walked in a fresh demo guest (4-level paging, "
    "gCR3 0x1000, guest tables at gpa 0x1000..0x7000; nested: gpa g at hpa 0x1_0000_0000 + g, host tables from "
    "hpa 0x1000; the host backs the tables, the 4K pages, the 2M page and the first 2 MiB of the 1G page, "
    "or all of it with --host-page 1g); anything else is not present:\n\n"
    + "\n".join(layout_lines())
    + "\n\nWith --mode shadow the guest runs on the simulator's shadow MMU (KVM's defaults): its OS maps the "
    "same VAs by demand paging (gpas from its allocator), then edits its tables with guest kernel stores; "
    "each level shows the guest entry beside the shadow entry, write-protected guest tables, unsync and "
    "direct shadow pages, and the VM exit a TLB miss would take:\n\n"
    + "\n".join(shadow_layout_lines())
    + "\n\nWith --trace TRACE --index N, records 0..N-1 of the trace are replayed in --mode (with the host "
    "options), then record N's address (or VA) is walked, with the record's access kind, in the page tables "
    "of its process, as the hardware would on a TLB miss.\n\n"
    "Examples: mmu walk 0x401000 --access w · mmu walk 0x400000 --mode nested --host-page 2m · "
    "mmu walk 0x403000 --mode shadow · "
    "mmu walk --trace traces/ls-usr.trace --index 5000 --mode nested --svg walk.svg"
)


def register(app: typer.Typer) -> None:
    """Add the ``walk`` command to ``app``."""
    app.command("walk", help=WALK_HELP, no_args_is_help=True)(walk_cmd)
