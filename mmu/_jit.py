"""The one place numba options live.

Every kernel in ``mmu`` is decorated with :func:`jit` from this module, so the
cache, GIL and bounds-check policy are set once:

* ``cache=True`` -- compiled machine code goes to numba's on-disk cache
  (``NUMBA_CACHE_DIR`` if set), so a warm CLI start does not recompile.
* ``nogil=True`` -- a UI thread can poll a progress counter while a kernel runs.
* ``boundscheck`` -- off by default for speed; ``MMU_BOUNDSCHECK=1`` turns it on
  for debugging (tests of index arithmetic run with it in CI).

Configuration is never read from module globals inside kernels (numba freezes
globals into the cache); it is passed as arguments.
"""

from __future__ import annotations

import os

import numba

BOUNDSCHECK: bool = os.environ.get("MMU_BOUNDSCHECK", "0") == "1"

_OPTIONS = {"cache": True, "nogil": True, "boundscheck": BOUNDSCHECK, "error_model": "numpy"}


def jit(fn=None, **overrides):
    """Compile ``fn`` with the project's numba options (usable bare or with overrides)."""
    options = dict(_OPTIONS)
    options.update(overrides)
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)
