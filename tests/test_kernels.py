"""The kernel structure: one signature per entry point, helpers never called from Python, and a
cache keyed by what each kernel depends on."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmu import kernels
from mmu._jit import kernel_digest, source_closure
from mmu.engine import Machine, MachineConfig
from mmu.guest.asm import assemble_file
from mmu.guest.run import run_program
from mmu.report.warm import probe
from mmu.trace.format import TraceReader

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "mmu"
TRACES = ROOT / "traces"


def _decorator_names(fn: ast.FunctionDef) -> set[str]:
    out = set()
    for d in fn.decorator_list:
        node = d.func if isinstance(d, ast.Call) else d
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
    return out


def _python_calls(tree: ast.AST, names: dict, inner: set) -> list[tuple[int, tuple[str, str]]]:
    """(line, kernel) of each call to an ``inner`` kernel made outside any compiled function."""
    out = []

    def visit(node: ast.AST, compiled: bool) -> None:
        if isinstance(node, ast.FunctionDef):
            compiled = compiled or bool(_decorator_names(node) & {"jit", "inner", "njit", "jit_alloc"})
        if isinstance(node, ast.Call) and not compiled and isinstance(node.func, ast.Name):
            target = names.get(node.func.id)
            if target in inner:
                out.append((node.lineno, target))
        for child in ast.iter_child_nodes(node):
            visit(child, compiled)

    visit(tree, False)
    return out


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_no_python_code_calls_an_inner_kernel():
    """An ``inner`` kernel has no CPython wrapper: a Python call would crash the interpreter."""
    inner: set[tuple[str, str]] = set()
    files = sorted(p for d in ("mmu", "tests", "bench") for p in (ROOT / d).rglob("*.py"))
    trees = {p: ast.parse(p.read_text()) for p in files}
    for p, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and "inner" in _decorator_names(node):
                inner.add((_module_name(p), node.name))
    assert len(inner) > 50  # the scan sees the package's helpers
    bad = []
    for p, tree in trees.items():
        here = _module_name(p)
        names = {n.name: (here, n.name) for n in tree.body if isinstance(n, ast.FunctionDef)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    names[a.asname or a.name] = (node.module, a.name)

        for lineno, target in _python_calls(tree, names, inner):
            bad.append(f"{p.relative_to(ROOT)}:{lineno} calls {target[0]}.{target[1]}")
    assert bad == []


def test_a_constant_argument_does_not_add_a_signature(tmp_path):
    """Numba would compile a helper once per constant value its callers pass; ours do not."""
    src = tmp_path / "consts.py"
    src.write_text(
        textwrap.dedent(
            """
            import numpy as np
            from mmu._jit import inner, jit

            @inner
            def add(a, k, flag):
                return a + k if flag else a - k

            @jit
            def caller(a):
                return add(a, 1, True) + add(a, 2, False) + add(a, np.int64(3), a > 0)

            print(caller(np.int64(5)), len(add.signatures), len(caller.signatures))
            """
        )
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(src)], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["17", "1", "1"]  # (5+1) + (5-2) + (5+3)


def test_every_entry_point_has_one_signature_after_a_standard_run():
    """Replay, the executor, guest operations and the probe in every mode use one signature per
    entry point, and it is the one ``mmu cache warm`` compiles."""
    program = assemble_file(TRACES / "programs" / "forkwait.s")
    for mode in ("native", "shadow", "nested"):
        run_program(program, [4, 2], MachineConfig(mode=mode))
        m = Machine(MachineConfig(mode=mode))
        with TraceReader(TRACES / "ls-usr.trace") as r:
            m.run(next(iter(r.chunks(4096))))
        m.flush_tlb()
        m.invlpg(0x400000)
        probe(m, 0x400000, "r", True, 0)
    specs = kernels._specs()
    for name in kernels.ENTRY_POINTS:
        disp, args = specs[name]
        assert disp.signatures == [kernels.signature_of(args)], name


def test_report_and_cli_sources_reach_no_simulation_kernel():
    closure = {p.relative_to(PKG).as_posix() for p in source_closure(PKG / "engine.py")}
    assert "modes/shadow.py" in closure and "guest/osops.py" in closure and "x86/walk.py" in closure
    assert not any(p.startswith(("report/", "cli/")) for p in closure)
    probe_closure = {p.relative_to(PKG).as_posix() for p in source_closure(PKG / "modes" / "probe.py")}
    assert not any(p.startswith(("report/", "cli/")) for p in probe_closure)
    assert [p.relative_to(PKG).as_posix() for p in source_closure(PKG / "x86" / "bits.py")] == ["x86/bits.py"]


@pytest.mark.parametrize(
    ("edited", "engine_changes"),
    [("report/summary.py", False), ("cli/__init__.py", False), ("modes/shadow.py", True), ("x86/bits.py", True)],
)
def test_an_edit_changes_only_the_digests_of_kernels_that_depend_on_it(tmp_path, edited, engine_changes):
    tree = tmp_path / "src"
    shutil.copytree(PKG, tree / "mmu", ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "from pathlib import Path; from mmu._jit import kernel_digest, _PKG; "
        "print(kernel_digest(_PKG / 'engine.py'), kernel_digest(_PKG / 'x86' / 'bits.py'))"
    )

    def digests() -> list[str]:
        env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(tmp_path / "cache"))
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=tree
        ).stdout.split()

    before = digests()
    assert before == [kernel_digest(PKG / "engine.py"), kernel_digest(PKG / "x86" / "bits.py")]
    with open(tree / "mmu" / edited, "a") as f:
        f.write("\n# an edit\n")
    after = digests()
    assert (after[0] != before[0]) == engine_changes
    assert (after[1] != before[1]) == (edited == "x86/bits.py")
