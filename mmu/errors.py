"""Errors the Python layer raises for bad input. The CLI prints them as one line and exits 2."""

from __future__ import annotations


class MMUInputError(Exception):
    """Bad input from a user: a file, a record, an argument.

    The message is one line and names what was wrong and where (file, record or line number).
    """


class TraceFormatError(MMUInputError):
    """A trace file that is not what it claims to be (magic, version, size, record contents)."""
