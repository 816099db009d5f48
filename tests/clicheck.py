"""What the CLI tests share: invoking ``mmu`` in-process and checking a clean failure."""

from __future__ import annotations

from typer.testing import CliRunner

from mmu.cli import app

runner = CliRunner()


def run(*args):
    """``mmu ARGS...`` in this process (arguments may be paths or numbers)."""
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_failure(result, *fragments):
    """Exit status 2, one line on stderr starting ``mmu: error: ``, no traceback, each fragment in it."""
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert err.startswith("mmu: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in err, err
