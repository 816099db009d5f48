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

Cache location: numba keys a cached kernel by its own source file only, so a
kernel whose helper in another file changed would load stale machine code (and
crash, when an array layout changed). Kernels are therefore cached under
``<root>/<digest>``, where the digest covers every source file of the package and
the numba version, so any edit starts a fresh cache. ``<root>`` is
``$NUMBA_CACHE_DIR/mmu`` when the user set ``NUMBA_CACHE_DIR``, else
``$XDG_CACHE_HOME/mmu/numba``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba


def _source_digest() -> str:
    h = hashlib.blake2b(digest_size=10)
    h.update(numba.__version__.encode())
    pkg = Path(__file__).resolve().parent
    for path in sorted(pkg.rglob("*.py")):
        h.update(path.relative_to(pkg).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_dir() -> Path:
    """Where numba caches this package's compiled kernels."""
    return Path(numba.config.CACHE_DIR)


def cache_root() -> Path:
    """The folder holding every digest's cache of this package (and nothing else)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / "mmu"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmu" / "numba"


numba.config.CACHE_DIR = str(cache_root() / _source_digest())

BOUNDSCHECK: bool = os.environ.get("MMU_BOUNDSCHECK", "0") == "1"

_OPTIONS = {"cache": True, "nogil": True, "boundscheck": BOUNDSCHECK, "error_model": "numpy", "_nrt": False}


def jit(fn=None, **overrides):
    """Compile ``fn`` with the project's numba options (usable bare or with overrides).

    The kernel may not allocate arrays (no NRT); see the module docstring.
    """
    options = dict(_OPTIONS)
    options.update(overrides)
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)


def jit_alloc(fn=None, **overrides):
    """Like :func:`jit`, for the rare kernel that allocates arrays (NRT on; slower calls)."""
    return jit(fn, _nrt=True, **overrides)
