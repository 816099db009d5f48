"""Invariant checkers: plain-Python checks that read the engine's own state (they import ``mmu``).

Unlike ``tests/reference/`` (models that import nothing from ``mmu``), these inspect a live
:class:`mmu.engine.Machine` -- its memory, shadow MMU and guest OS bookkeeping -- and assert rules
that state must keep. They are written from the rules, not from the kernels, but they are not
references: they have no behaviour of their own to compare against.
"""
