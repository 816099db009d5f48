"""The references stay independent of the implementation, in both directions.

Project rule: a reference in ``tests/reference/`` imports nothing from ``mmu/`` and shares no
code with it, and the implementation never imports a reference (nor anything else from
``tests/``). Checked twice: statically, by reading every import statement (including
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name), and at run time,
by importing every reference in a fresh interpreter and looking for ``mmu`` in ``sys.modules``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "reference"
PACKAGE = ROOT / "mmu"
REFERENCE_MODULES = sorted(p.stem for p in REFERENCE.glob("*.py") if p.stem != "__init__")


def imported_names(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """Every module name ``path`` imports, as ``(line, dotted name)``; relative imports resolved
    against ``package`` (default: the package ``path`` is in under the repository root)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if package is None:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names.append((node.lineno, mod))
            names += [(node.lineno, f"{mod}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if fname in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.append((node.lineno, arg.value))
    return names


def is_mmu(name: str) -> bool:
    return name == "mmu" or name.startswith("mmu.")


def test_imported_names_sees_every_form(tmp_path):
    # the scanner itself: each way of naming mmu is caught, look-alikes are not
    src = (
        "import mmu\nimport mmu.guest.asm as a\nfrom mmu import walk\nfrom mmu.guest import isa\n"
        "import importlib\nimportlib.import_module('mmu.engine')\n__import__('mmu')\n"
        "import mmux\nfrom .paging import ref_walk\n"
    )
    probe = tmp_path / "probe.py"
    probe.write_text(src, encoding="utf-8")
    names = imported_names(probe, package="tests.reference")
    hits = sorted({line for line, n in names if is_mmu(n)})
    assert hits == [1, 2, 3, 4, 6, 7]
    assert (9, "tests.reference.paging") in names


def test_references_import_nothing_from_mmu():
    assert REFERENCE_MODULES, "no reference modules found"
    bad = []
    for path in sorted(REFERENCE.glob("*.py")):
        for line, name in imported_names(path):
            first = name.split(".")[0]
            # a reference may use the standard library and other references, never the engine
            # nor the invariant checkers (which read the engine's state)
            if is_mmu(name) or (first in ("tests", "invariants") and not name.startswith("tests.reference")):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert bad == []


def test_references_load_without_mmu():
    code = (
        "import importlib, sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]\n"
        f"for m in {REFERENCE_MODULES!r}:\n"
        "    importlib.import_module('tests.reference.' + m)\n"
        "print(sorted(k for k in sys.modules if k == 'mmu' or k.startswith('mmu.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_package_imports_no_test_or_reference(path):
    bad = []
    for line, name in imported_names(path):
        first = name.split(".")[0]
        if first in ("tests", "reference", "invariants", "conftest") or first in REFERENCE_MODULES:
            bad.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert bad == []
