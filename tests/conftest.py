"""Session set-up: compile every kernel first, on all cores (nothing to do when the cache is warm).

The tests would compile the same kernels anyway, one after another in this process; compiling
them up front with :func:`mmu.kernels.warm` spreads the work over the machine's cores. It runs
first (``tryfirst``), so with pytest-xdist the controller fills the cache before the workers start
and they only load it.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session) -> None:
    from mmu.kernels import is_warm, warm

    if not is_warm():
        warm()
