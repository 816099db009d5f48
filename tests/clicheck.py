"""What the CLI tests share: invoking ``mmu`` in-process and checking a clean failure."""

from __future__ import annotations

from pathlib import Path

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


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def busy_worker(pid: int) -> int | None:
    """A spawned worker of ``pid`` that has run over a second of CPU (it is simulating)."""
    for child in _children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"spawn_main" in cmd and int(stat[11]) > 100:  # utime, in clock ticks (100/s)
            return child
    return None


def kill_busy_worker(proc, timeout: float = 120.0) -> int | None:
    """SIGKILL (as the out-of-memory killer sends) the first spawned worker of the running
    ``proc`` that is simulating; its pid, or None if ``proc`` ended or ``timeout`` passed first."""
    import os
    import signal
    import time

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        victim = busy_worker(proc.pid)
        if victim is not None:
            os.kill(victim, signal.SIGKILL)
            return victim
        time.sleep(0.2)
    return None
