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
    from mmu.cli.common import fail

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
        ctx = "fresh demo guest (see `mmu walk --help`), walked cold: a fresh guest has nothing cached"
        return _walk_native(g.mem, g.cr3, va, access, user, ctx)
    if mode == "shadow":
        from mmu.report.walkview import capture_shadow

        ctx = (
            "shadow demo guest (see `mmu walk --help`): the guest's tables as its OS built and edited them; walked cold"
        )
        return capture_shadow(build_shadow(host_page), va, access, user, ctx)
    g = build_nested(host_page, levels, ad, npt)
    assert g.eptp is not None
    ctx = (
        f"fresh demo guest (see `mmu walk --help`), walked cold; host pages {host_page.upper()}, "
        "guest RAM at hpa 0x1_0000_0000"
    )
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
    cold: bool = False,
    name: str | None = None,
):
    """Replay records [0, index) of ``trace``, then walk record ``index``'s address (or ``va``).

    The walk is drawn cold; unless ``cold``, it carries the warm marks of :func:`mmu.report.warm.probe`
    (what the replayed machine's TLB and caches would serve). ``name`` names the input in messages
    and the context line (default: the trace's path, and its file name).
    """
    from mmu.engine import Machine, MachineConfig
    from mmu.report.walkview import ACCESS_NAMES
    from mmu.trace.format import OP_NAMES, TraceReader, is_access

    reader = TraceReader(trace)
    n = reader.n_records
    where = name or str(trace)
    if not 0 <= index < n:
        raise MMUInputError(f"--index {index} is out of range: {where} has {n:,} records (0..{n - 1:,})")
    rec = next(reader.chunks(1, start=index, stop=index + 1))[0]
    op = int(rec["op"])
    if not is_access(op):
        raise MMUInputError(
            f"{where}: record {index} is an OS event ('{OP_NAMES.get(op, op)}'), not an access; pick an access record"
        )
    config = MachineConfig(mode=mode, host_page=host_page, ept_levels=levels, ept_ad=ad, npt=npt)
    m = Machine(config)
    for chunk in reader.chunks(1 << 20, start=0, stop=index):
        m.run(chunk, where=where)
    pid = int(rec["pid"])
    enter_process(m, pid, where)
    addr = int(rec["addr"]) if va is None else va
    what = f"{ACCESS_NAMES['rwx'[op]]} of {int(rec['arg'])} bytes at {int(rec['addr']):#x}"
    after = f"records 0..{index - 1}" if index else "no records"
    how = (
        "walked cold, as on a TLB miss"
        if cold
        else "the cold walk, numbered #n, marked with what this machine's TLB and caches would serve (warm)"
    )
    ctx = f"{name or trace.name}: page tables after {after} ({mode}); record {index}: {what} by pid {pid}; {how}"
    if va is not None:
        ctx += f"; walking the given VA {va:#x} instead"
    elif (addr >> 12) != ((addr + int(rec["arg"]) - 1) >> 12):
        ctx += "; the access crosses into the next page, whose translation is not shown"
    return machine_view(m, addr, access or "rwx"[op], user, ctx, None if cold else index)


def enter_process(machine: Any, pid: int, where: str = "trace") -> None:
    """Switch ``machine`` to process ``pid`` unless it is current, as the replay does before an access
    of ``pid`` (creating the process, with an empty root table, on its first access; under shadow
    paging the VMM loads its shadow root), so that the hardware state is the one the access meets."""
    import numpy as np

    from mmu.guest.os import O_CUR, P_PID
    from mmu.trace.format import OP_SWITCH, RECORD_DTYPE

    cur = int(machine.osst.ometa[O_CUR])
    if cur < 0 or int(machine.osst.procs[cur, P_PID]) != pid:
        switch = np.zeros(1, dtype=RECORD_DTYPE)
        switch["op"] = OP_SWITCH
        switch["pid"] = pid
        machine.run(switch, where=where)


def machine_view(machine: Any, va: int, access: str, user: bool, context: str, record: int | None = None):
    """The walk view of ``va`` in the current process of ``machine`` (any mode), which is not changed.

    The walk is cold; with ``record`` (the trace position) it carries the warm marks of
    :func:`mmu.report.warm.probe`.
    """
    import dataclasses

    from mmu.guest.os import O_CUR, P_PCID, P_ROOT
    from mmu.modes.vmm import V_EPT_AD, V_LEVELS, V_NPT, V_ROOT
    from mmu.x86.ept import make_eptp

    m = machine
    config = m.config
    row = int(m.osst.ometa[O_CUR])
    root, pcid = int(m.osst.procs[row, P_ROOT]), int(m.osst.procs[row, P_PCID])
    kw = {"wp": config.wp, "nxe": config.nxe, "la57": config.la57, "maxphyaddr": config.maxphyaddr}
    if config.mode == "native":
        view = _walk_native(m.mem, root | pcid, va, access, user, context, **kw)
    elif config.mode == "shadow":
        from mmu.report.walkview import capture_shadow

        view = capture_shadow(m, va, access, user, context)
    else:
        vmeta = m.vm.vmeta
        hroot, hlevels = int(vmeta[V_ROOT]), int(vmeta[V_LEVELS])
        is_npt, is_ad = bool(vmeta[V_NPT]), bool(vmeta[V_EPT_AD])
        eptp = hroot if is_npt else make_eptp(hroot, hlevels, is_ad)
        view = _walk_nested(m.mem, eptp, root | pcid, va, access, user, hlevels, is_ad, is_npt, context, **kw)
    if record is None:
        return view
    from mmu.report.warm import probe

    return dataclasses.replace(view, warm=probe(m, va, access, user, record))


def _program_view(
    program: Path,
    args: list[int],
    index: int,
    access: str | None,
    user: bool,
    mode: str,
    host_page: str,
    levels: int,
    ad: bool,
    npt: bool,
    cold: bool,
):
    """Run ``program`` with ``args`` recording its trace, then :func:`_trace_view` of record ``index``.

    The program runs natively: its trace (every access and OS event) is the same in every mode,
    since the guest cannot tell the modes apart, and the replay in ``mode`` rebuilds the machine
    it meets.
    """
    import tempfile

    from mmu.guest.asm import assemble_file
    from mmu.guest.run import run_program

    if not program.is_file():
        raise MMUInputError(f"{program}: no such file")
    prog = assemble_file(program)
    name = " ".join([program.name, *map(str, args)])
    with tempfile.TemporaryDirectory(prefix="mmu-walk-") as tmp:
        path = Path(tmp) / "run.trace"
        run_program(prog, args, record_path=path)
        return _trace_view(
            path, index, None, access, user, mode, host_page, levels, ad, npt, cold, f"the recorded run of {name}"
        )


def walk_cmd(
    words: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[VA] [-- ARGS...]",
            help="Virtual address, hex (0x...) or decimal (with --trace, optional); with --program, the "
            "program's integer arguments instead.",
            show_default=False,
        ),
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
    program: Annotated[
        Path | None, typer.Option("--program", help="Run this guest program (PROG.s), recording its trace; walk in it.")
    ] = None,
    index: Annotated[
        int | None,
        typer.Option("--index", help="With --trace or --program: replay records 0..N-1, walk record N."),
    ] = None,
    cold: Annotated[
        bool, typer.Option("--cold", help="With --trace or --program: the cold walk only, no warm marks.")
    ] = False,
    svg: Annotated[Path | None, typer.Option("--svg", help="Also write the rendering as SVG.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the rendering as HTML.")] = None,
    width: Annotated[int | None, typer.Option("--width", help="Columns (default: terminal, else 120).")] = None,
) -> None:
    mode = mode.lower()
    host_page = host_page.lower()
    words = words or []
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
    if program is not None and trace is not None:
        _fail("--program and --trace are two sources of records: give one")
    source = "--trace" if trace is not None else "--program" if program is not None else None
    if source is not None and index is None:
        _fail(f"{source} and --index go together: {source} {'TRACE' if trace else 'PROG.s'} --index N")
    if source is None and index is not None:
        _fail("--trace and --index go together: --trace TRACE --index N (or --program PROG.s --index N)")
    if program is None and len(words) > 1:
        _fail("give one virtual address; program arguments (after --) go with --program PROG.s")
    if source is None and not words:
        _fail("give a virtual address, or --trace TRACE --index N, or --program PROG.s --index N")
    host = (mode, host_page, ept_levels, ept_ad, npt)
    try:
        if program is not None:
            from mmu.cli.guest import _parse_args

            assert index is not None
            view = _program_view(program, _parse_args(words), index, access, user, *host, cold)
        else:
            addr = parse_va(words[0]) if words else None
            if trace is not None:
                assert index is not None
                view = _trace_view(trace, index, addr, access, user, *host, cold)
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
    "of its process. The walk is drawn cold (every reference numbered #n) and marked with what the replayed "
    "machine's warm hardware would do: each reference it issues as w<n> with where its line comes from "
    "(L2, LLC or mem, the walk-line caches), each it does not issue dimmed with the structure that serves it "
    "(skip · TLB, PSC, NTLB or hPSC, the host PSCs), and a one-line summary; --cold leaves the marks out. "
    "The probe runs the machine's own hardware path on copies of its state, so it changes nothing "
    "(docs/walk.md).\n\n"
    "With --program PROG.s --index N [-- ARGS...], the guest program runs (as `mmu run` runs it) and its "
    "recorded trace is used the same way; the words after -- are its integer arguments.\n\n"
    "Examples: mmu walk 0x401000 --access w · mmu walk 0x400000 --mode nested --host-page 2m · "
    "mmu walk 0x403000 --mode shadow · "
    "mmu walk --trace traces/ls-usr.trace --index 5000 --mode nested --svg walk.svg · "
    "mmu walk --program traces/programs/forkwait.s --index 253 --mode nested -- 5 2"
)


def register(app: typer.Typer) -> None:
    """Add the ``walk`` command to ``app``."""
    app.command("walk", help=WALK_HELP, no_args_is_help=True)(walk_cmd)
