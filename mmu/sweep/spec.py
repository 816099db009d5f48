"""What a sweep runs: inputs x modes x machine parameters x cost parameters, checked up front.

A :class:`SweepSpec` comes from the command line (:func:`spec_from_cli`) or a TOML file
(:func:`spec_from_toml`); :func:`plan` checks every grid point before anything runs (a bad mode,
parameter, value or input is one :class:`~mmu.errors.MMUInputError`) and groups the grid into
:class:`Task` s: one simulation each, priced under one or more cost settings. Grid points that
differ only in cost parameters, or in machine parameters their mode ignores, share a simulation:
cycles are a deterministic function of the event counts (:func:`mmu.stats.reprice`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmu.engine import HOST_PAGES, MODES, MachineConfig
from mmu.errors import MMUInputError
from mmu.hw.cost import COST_NAMES, GEOMETRY, check_override

# Machine parameters a sweep may set (MachineConfig fields); aliases are the CLI's option names.
PARAMS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(MachineConfig) if f.name not in ("mode", "cost_overrides")
)
ALIASES = {"ntlb": "ntlb_entries", "stlb": "stlb_entries", "prepopulate": "prepopulate_mb", "host-page": "host_page"}
# The parameters each mode reads; a parameter outside its mode's set does not change the run, so
# grid points that differ only there share one simulation. A mode not listed reads everything.
_NESTED = {"host_page", "ept_levels", "ept_ad", "npt", "ntlb_entries", "host_psc", "prepopulate_mb"}
_SHADOW = {"host_page", "unsync", "prefetch", "roots", "flood_threshold", "shadow_pages", "prefault"}
_COMMON = set(PARAMS) - _NESTED - _SHADOW
MODE_PARAMS: dict[str, set[str]] = {"native": _COMMON, "nested": _COMMON | _NESTED, "shadow": _COMMON | _SHADOW}
DEFAULT_MAX_INSTRUCTIONS = 100_000_000  # as `mmu run` (mmu.guest.run.DEFAULT_MAX_INSTRUCTIONS)


@dataclass(frozen=True)
class Input:
    """A trace, or a guest program with its arguments."""

    path: str
    args: tuple[int, ...] = ()
    program: bool = False

    @property
    def label(self) -> str:
        """``traces/gups-64m.trace`` or ``forkwait.s 40 4``."""
        if self.program:
            return " ".join([Path(self.path).name, *map(str, self.args)])
        return self.path


@dataclass(frozen=True)
class ModeItem:
    """One item of ``--modes``: ``MODE[:HOSTPAGE][+thp]``."""

    mode: str
    host_page: str | None = None  # None: the host_page parameter (default 4k)
    thp: bool = False  # +thp: the guest's THP policy "always"

    @property
    def label(self) -> str:
        return self.mode + (f":{self.host_page}" if self.host_page else "") + ("+thp" if self.thp else "")


@dataclass
class SweepSpec:
    """A grid: every input in every mode at every combination of the swept values."""

    inputs: list[Input]
    modes: list[ModeItem]
    params: dict[str, list[Any]] = field(default_factory=dict)  # swept machine parameters, in order
    costs: dict[str, list[int]] = field(default_factory=dict)  # swept cost parameters, in order
    max_instructions: int = DEFAULT_MAX_INSTRUCTIONS

    @property
    def swept(self) -> list[str]:
        """Swept column names in grid order: ``param.<name>`` then ``cost.<name>``."""
        return [f"param.{p}" for p in self.params] + [f"cost.{c}" for c in self.costs]


@dataclass(frozen=True)
class Task:
    """One simulation and the cost settings its counts are priced under (one row each)."""

    input: Input
    input_sha256: str
    mode: ModeItem
    config: dict[str, Any]  # MachineConfig keyword arguments, without cost_overrides
    geometry: dict[str, int]  # cache-geometry cost overrides: they change the simulation
    prices: tuple[tuple[tuple[str, int], ...], ...]  # per row: price-only cost overrides
    grid: tuple[dict[str, Any], ...]  # per row: the machine parameters of its grid point
    indices: tuple[int, ...]  # per row: its position in the whole grid (the table's order)
    max_instructions: int

    def key(self, k: int) -> str:
        """Row ``k``'s identity (a rerun skips rows whose key is in the table)."""
        what = {
            "input": self.input.label,
            "sha256": self.input_sha256,
            "mode": self.mode.label,
            "params": self.grid[k],
            "cost": {**self.geometry, **dict(self.prices[k])},
            "max_instructions": self.max_instructions if self.input.program else None,
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def parse_mode(item: str) -> ModeItem:
    """``MODE[:HOSTPAGE][+thp]`` (e.g. ``nested:2m``, ``shadow+thp``); MMUInputError if bad."""
    text = item.strip()
    thp = text.lower().endswith("+thp")
    if thp:
        text = text[:-4]
    mode, _, hp = text.partition(":")
    mode, hp = mode.strip().lower(), hp.strip().lower()
    if mode not in MODES:
        raise MMUInputError(f"unknown mode {mode!r} in --modes; choose from: {', '.join(MODES)}")
    if hp and hp not in HOST_PAGES:
        raise MMUInputError(f"unknown host page size {hp!r} in --modes item {item!r}; choose one of: 4k, 2m, 1g")
    if hp and mode == "native":
        raise MMUInputError(f"--modes item {item!r}: native mode has no host pages")
    return ModeItem(mode, hp or None, thp)


def parse_input(text: str) -> Input:
    """A trace path, or ``PROG.s`` / ``PROG.s:1,2`` (a guest program and its integer arguments)."""
    path, args = text, ()
    head, sep, tail = text.rpartition(":")
    if sep and head.endswith(".s"):
        path = head
        try:
            args = tuple(int(a, 0) for a in tail.replace(" ", "").split(",") if a)
        except ValueError:
            raise MMUInputError(f"input {text!r}: program arguments must be integers (PROG.s:40,4)") from None
    return Input(path, args, program=path.endswith(".s"))


def _field_types() -> dict[str, type]:
    return {f.name: type(f.default) for f in dataclasses.fields(MachineConfig) if f.name in PARAMS}


def param_name(name: str) -> str:
    """The MachineConfig field a ``--param`` name means (aliases, dashes), or MMUInputError."""
    key = ALIASES.get(name.strip(), name.strip().replace("-", "_"))
    if key not in PARAMS:
        raise MMUInputError(f"unknown parameter {name!r} in --param; known: {', '.join(sorted(PARAMS))}")
    return key


def convert_value(name: str, value: Any) -> Any:
    """``value`` (text or a TOML value) as the type of machine parameter ``name``."""
    kind = _field_types()[name]
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise MMUInputError(f"--param {name}: {value!r} is not a boolean (true/false)")
    if kind is int:
        if isinstance(value, bool) or (not isinstance(value, int) and not str(value).strip().lstrip("-").isdigit()):
            raise MMUInputError(f"--param {name}: {value!r} is not an integer")
        return int(value)
    return str(value).strip().lower()


def parse_assignments(items: list[str], what: str) -> dict[str, list[str]]:
    """``NAME=V1,V2,...`` items as an ordered name -> values mapping (MMUInputError if malformed)."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not vals:
            raise MMUInputError(f"{what} expects NAME=V1,V2,..., got {item!r}")
        if name.strip() in out:
            raise MMUInputError(f"{what} {name.strip()} is given twice")
        out[name.strip()] = vals
    return out


def _costs(raw: dict[str, list[Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, values in raw.items():
        if name not in COST_NAMES:
            raise MMUInputError(f"unknown cost parameter {name!r} in --cost; known: {', '.join(sorted(COST_NAMES))}")
        ints = []
        for v in values:
            if isinstance(v, bool) or (not isinstance(v, int) and not str(v).strip().lstrip("-").isdigit()):
                raise MMUInputError(f"--cost {name}: {v!r} is not an integer number of cycles")
            check_override(name, int(v))
            ints.append(int(v))
        out[name] = ints
    return out


def _params(raw: dict[str, list[Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for name, values in raw.items():
        key = param_name(name)
        if key in out:
            raise MMUInputError(f"--param {key} is given twice")
        out[key] = [convert_value(key, v) for v in values]
    return out


def spec_from_cli(
    inputs: list[str], modes: str, params: list[str], costs: list[str], max_instructions: int
) -> SweepSpec:
    """The spec of ``mmu sweep INPUT... --modes ... --param ... --cost ...``."""
    if not inputs:
        raise MMUInputError("give at least one input (a trace, or PROG.s[:ARGS])")
    items = [parse_mode(m) for m in modes.split(",") if m.strip()]
    if not items:
        raise MMUInputError("--modes is empty")
    return SweepSpec(
        inputs=[parse_input(i) for i in inputs],
        modes=items,
        params=_params(parse_assignments(params, "--param")),
        costs=_costs(parse_assignments(costs, "--cost")),
        max_instructions=max_instructions,
    )


def spec_from_toml(path: Path) -> SweepSpec:
    """The spec in a TOML file (docs/sweeps.md shows the layout); relative input paths are taken
    from the file's folder."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MMUInputError(f"{path}: cannot read the sweep spec: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MMUInputError(f"{path}: not a valid TOML sweep spec: {exc}") from None
    known = {"inputs", "modes", "params", "costs", "max_instructions"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MMUInputError(f"{path}: unknown key {unknown[0]!r}; a sweep spec has {', '.join(sorted(known))}")
    base = path.parent

    def where(p: str) -> str:
        q = Path(p)
        return str(q if q.is_absolute() else base / q)

    inputs = []
    for k, item in enumerate(data.get("inputs", [])):
        if isinstance(item, str):
            parsed = parse_input(item)
            inputs.append(dataclasses.replace(parsed, path=where(parsed.path)))
        elif isinstance(item, dict) and isinstance(item.get("program"), str):
            args = item.get("args", [])
            if not isinstance(args, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
                raise MMUInputError(f"{path}: inputs[{k}]: args must be a list of integers")
            inputs.append(Input(where(item["program"]), tuple(args), program=True))
        else:
            raise MMUInputError(f"{path}: inputs[{k}] must be a path or {{program = PATH, args = [...]}}")
    if not inputs:
        raise MMUInputError(f"{path}: 'inputs' is empty or missing")
    modes = data.get("modes", ["native", "shadow", "nested"])
    if not isinstance(modes, list) or not modes or not all(isinstance(m, str) for m in modes):
        raise MMUInputError(f"{path}: 'modes' must be a non-empty list of MODE[:HOSTPAGE][+thp] strings")
    for key in ("params", "costs"):
        table = data.get(key, {})
        if not isinstance(table, dict) or not all(isinstance(v, list) and v for v in table.values()):
            raise MMUInputError(f"{path}: '{key}' must be a table of NAME = [V1, V2, ...] (non-empty lists)")
    limit = data.get("max_instructions", DEFAULT_MAX_INSTRUCTIONS)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        raise MMUInputError(f"{path}: max_instructions must be a positive integer")
    try:
        return SweepSpec(
            inputs=inputs,
            modes=[parse_mode(m) for m in modes],
            params=_params(data.get("params", {})),
            costs=_costs(data.get("costs", {})),
            max_instructions=limit,
        )
    except MMUInputError as exc:
        raise MMUInputError(f"{path}: {exc}") from None


def input_sha256(inp: Input) -> str:
    """The content hash of an input (for a program: its source and arguments)."""
    h = hashlib.sha256()
    try:
        with open(inp.path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    except OSError as exc:
        raise MMUInputError(f"{inp.path}: {exc.strerror or exc}") from None
    if inp.program:
        h.update(json.dumps(list(inp.args)).encode())
    return h.hexdigest()


def _check_input(inp: Input) -> None:
    p = Path(inp.path)
    if not p.is_file():
        raise MMUInputError(f"input {inp.path}: no such file")
    if inp.program:
        from mmu.guest.asm import assemble_file

        assemble_file(p)  # a syntax error is reported now, not in the middle of the sweep
    else:
        from mmu.trace.format import TraceReader

        TraceReader(p)  # a bad header is reported now


def plan(spec: SweepSpec) -> list[Task]:
    """Every grid point checked and grouped into simulations (MMUInputError before any run)."""
    if spec.max_instructions <= 0:
        raise MMUInputError(f"--max-instructions must be positive, not {spec.max_instructions}")
    if "host_page" in spec.params and any(m.host_page for m in spec.modes):
        raise MMUInputError("the host page is given twice: by --param host_page and by a --modes item (MODE:HOSTPAGE)")
    if "thp" in spec.params and any(m.thp for m in spec.modes):
        raise MMUInputError("the THP policy is given twice: by --param thp and by a --modes item (MODE+thp)")
    for inp in spec.inputs:
        _check_input(inp)
    hashes = {inp: input_sha256(inp) for inp in spec.inputs}
    param_names = list(spec.params)
    geometry_names = [c for c in spec.costs if c in GEOMETRY]
    price_names = [c for c in spec.costs if c not in GEOMETRY]
    tasks: list[Task] = []
    index = itertools.count()
    for inp in spec.inputs:
        for item in spec.modes:
            relevant = MODE_PARAMS.get(item.mode, set(PARAMS))
            groups: dict[str, dict[str, Any]] = {}
            for values in itertools.product(*(spec.params[p] for p in param_names)):
                grid = dict(zip(param_names, values, strict=True))
                config = {k: v for k, v in grid.items() if k in relevant}
                if item.host_page:
                    config["host_page"] = item.host_page
                if item.thp:
                    config["thp"] = "always"
                try:  # every swept value is checked, also those this mode ignores
                    MachineConfig(mode=item.mode, **{**grid, **config}).check()
                except MMUInputError as exc:
                    raise MMUInputError(f"{item.label} with {_show(grid)}: {exc}") from None
                for geo in itertools.product(*(spec.costs[c] for c in geometry_names)):
                    geometry = dict(zip(geometry_names, geo, strict=True))
                    key = json.dumps([config, geometry], sort_keys=True)
                    group = groups.setdefault(key, {"config": config, "geometry": geometry, "rows": []})
                    for price in itertools.product(*(spec.costs[c] for c in price_names)):
                        group["rows"].append((grid, tuple(zip(price_names, price, strict=True)), next(index)))
            for g in groups.values():
                tasks.append(
                    Task(
                        input=inp,
                        input_sha256=hashes[inp],
                        mode=item,
                        config=g["config"],
                        geometry=g["geometry"],
                        prices=tuple(price for _grid, price, _k in g["rows"]),
                        grid=tuple(grid for grid, _price, _k in g["rows"]),
                        indices=tuple(k for _grid, _price, k in g["rows"]),
                        max_instructions=spec.max_instructions,
                    )
                )
    return tasks


def _show(grid: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in grid.items()) or "the defaults"
