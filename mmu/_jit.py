"""The one place numba options live.

Every kernel in ``mmu`` is decorated with :func:`jit` from this module, so the
cache, GIL and bounds-check policy are set once:

* ``cache=True`` -- compiled machine code goes to numba's on-disk cache
  (``NUMBA_CACHE_DIR`` if set), so a warm CLI start does not recompile.
* ``nogil=True`` -- a UI thread can poll a progress counter while a kernel runs.
* ``boundscheck`` -- off by default for speed; ``MMU_BOUNDSCHECK=1`` turns it on
  for debugging.
* no NRT (``_nrt=False``) -- numba's reference counting costs an atomic incref and
  decref of every array at every call boundary. Measured here (numba 0.68, a 4-way
  TLB probe called from a loop over 4M keys): 24M probes/s with NRT, 1.5G/s without.
  So kernels made with :func:`jit` never allocate arrays: callers pass scratch
  arrays in. The rare kernel that must allocate uses :func:`jit_alloc`.

Configuration is never read from module globals inside kernels (numba freezes
globals into the cache); it is passed as arguments.

Cache location and freshness: numba keys a cached kernel by its own source file only, so a
kernel whose helper in another file changed would load stale machine code (and crash, when an
array layout changed). Here every kernel of the project is keyed instead by the sources it can
depend on: its own file and every ``mmu`` module that file imports, transitively (read from the
import statements, so ``mmu/report/`` or docs edits reach no simulation kernel and editing
``mmu/modes/shadow.py`` reaches only the kernels of the files that import it, directly or not),
plus the numba version and the bounds-check switch. Kernels live under
``<root>/<file>-<digest>/``; a changed dependency gives a new digest, so a stale kernel is never
loaded. ``<root>`` is ``$NUMBA_CACHE_DIR/mmu`` when the user set ``NUMBA_CACHE_DIR``, else
``$XDG_CACHE_HOME/mmu/numba``.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import cache
from pathlib import Path

import numba
from numba.core import caching, types
from numba.core.registry import CPUDispatcher

BOUNDSCHECK: bool = os.environ.get("MMU_BOUNDSCHECK", "0") == "1"

_PKG = Path(__file__).resolve().parent
# ``from mmu.a.b import x, y`` (names possibly in parentheses over several lines) or ``import mmu.a.b``.
_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(mmu(?:\.\w+)*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)|import[ \t]+(mmu(?:\.\w+)*))", re.M
)


def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` (``mmu.x.y``) in this package, if it is one."""
    rel = Path(*name.split(".")[1:])
    for cand in (_PKG / rel.with_suffix(".py"), _PKG / rel / "__init__.py"):
        if name != "mmu" and cand.is_file():
            return cand
    return None


@cache
def _imports(path: Path) -> tuple[Path, ...]:
    """The package's source files that ``path`` imports directly."""
    out: set[Path] = set()
    for m in _IMPORT.finditer(path.read_text(encoding="utf-8")):
        mod = m.group(1) or m.group(3)
        f = _module_file(mod)
        if f is not None:
            out.add(f)
        if m.group(1):  # ``from pkg import sub``: a submodule named in the list is imported too
            for name in re.findall(r"\w+", re.sub(r"#[^\n]*", "", m.group(2))):
                sub = _module_file(f"{mod}.{name}")
                if sub is not None:
                    out.add(sub)
    return tuple(sorted(out))


@cache
def source_closure(path: Path) -> tuple[Path, ...]:
    """``path`` and every package source file it imports, transitively (sorted)."""
    seen = {path}
    todo = [path]
    while todo:
        for dep in _imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return tuple(sorted(seen))


@cache
def kernel_digest(path: Path) -> str:
    """The cache key of the kernels defined in ``path``: every source they can depend on."""
    h = hashlib.blake2b(digest_size=10)
    h.update(f"numba {numba.__version__} boundscheck {BOUNDSCHECK}".encode())
    for dep in source_closure(path):
        h.update(str(dep.relative_to(_PKG) if dep.is_relative_to(_PKG) else dep.name).encode())
        h.update(dep.read_bytes())
    return h.hexdigest()


def cache_root() -> Path:
    """The folder holding every cached kernel of this package, one subfolder per source file and
    digest (and nothing else)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / "mmu"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmu" / "numba"


class _DependencyLocator(caching._CacheLocator):
    """Numba cache locator for kernels in the package (and in files that import it, like tests)."""

    def __init__(self, py_func, path: Path):
        self._lineno = py_func.__code__.co_firstlineno
        self._stamp = kernel_digest(path)
        name = str(path.relative_to(_PKG.parent)) if path.is_relative_to(_PKG.parent) else path.name
        self._path = str(cache_root() / f"{name.replace(os.sep, '.')}-{self._stamp}")

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return self._stamp

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        path = Path(py_file).resolve()
        if not path.is_file():
            return None
        if not path.is_relative_to(_PKG) and not _imports(path):
            return None  # not ours: numba's own locators decide
        self = cls(py_func, path)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self


if _DependencyLocator not in caching.CacheImpl._locator_classes:
    caching.CacheImpl._locator_classes.insert(0, _DependencyLocator)

_OPTIONS = {"cache": True, "nogil": True, "boundscheck": BOUNDSCHECK, "error_model": "numpy", "_nrt": False}


class _Kernel(CPUDispatcher):
    """numba's CPU dispatcher, except that a call from another kernel never specializes on the
    *value* of a constant argument.

    Numba types a constant argument (``f(x, 0)``, ``g(True)``) as a literal and compiles the callee
    once per distinct value: measured on the native replay before this class, 190 compiles of
    146 functions (``_charge`` alone 7 times). Here arguments are typed by their plain types, so
    each function compiles once per signature, whatever constants its callers pass. (Python
    calls already work this way.)
    """

    def get_call_template(self, args, kws):
        args = tuple(types.unliteral(a) for a in args)
        kws = {k: types.unliteral(v) for k, v in kws.items()}
        return super().get_call_template(args, kws)


def jit(fn=None, **overrides):
    """Compile ``fn`` with the project's numba options (usable bare or with overrides).

    The kernel may not allocate arrays (no NRT); see the module docstring.
    """
    options = dict(_OPTIONS)
    options.update(overrides)
    cache = options.pop("cache")
    options["nopython"] = True

    def make(f):
        if numba.config.DISABLE_JIT:
            return f
        disp = _Kernel(py_func=f, locals={}, targetoptions=dict(options))
        if cache:
            disp.enable_caching()
        return disp

    return make if fn is None else make(fn)


def inner(fn=None, **overrides):
    """Compile ``fn`` as a helper that only other kernels call (never Python).

    It gets no CPython or C-callable wrapper: those wrappers unbox every argument, and for
    functions that take the machine's state (tuples of dozens of arrays) they are a large share
    of the compile time (measured: the native replay's cold compile 102 s -> 76 s). Calling an
    ``inner`` function from Python would crash the interpreter, so ``tests/test_kernels.py``
    checks that no Python code in the project calls one.
    """
    options = {"no_cpython_wrapper": True, "no_cfunc_wrapper": True}
    options.update(overrides)
    return jit(fn, **options)


def jit_alloc(fn=None, **overrides):
    """Like :func:`jit`, for the rare kernel that allocates arrays (NRT on; slower calls)."""
    return jit(fn, _nrt=True, **overrides)
