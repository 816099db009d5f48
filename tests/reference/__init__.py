"""Independent plain-Python reference models, written from the Intel SDM and the project's specs.

A module here imports nothing from ``mmu`` and shares no code with it (``tests/test_reference_independence.py``).
"""
