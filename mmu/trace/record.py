"""Record a real program's memory trace with Valgrind Lackey, converting as it runs.

``record(["ls", "-l", "/usr"], "ls.mmut")`` runs::

    valgrind --tool=lackey --trace-mem=yes --log-file=<FIFO> ls -l /usr

and parses the FIFO concurrently with the lackey kernel, so the text log never touches
the disk (only the 16-byte records do). ``max_accesses`` stops early: once that many
access records are written, Valgrind is killed and the trace is kept (the header says
``"truncated": true``). Only the process Valgrind runs is traced (``--trace-children=no``,
Valgrind's default); a ``fork`` without ``exec`` stays under Valgrind and its accesses
land in the same log, attributed to the same pid.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

from mmu.errors import MMUInputError
from mmu.trace.format import ImportSummary, TraceWriter, base_header
from mmu.trace.lackey import LACKEY_NOTES, _check_pid, lackey_from_stream


def valgrind_version(valgrind: str = "valgrind") -> tuple[str, str]:
    """``(path, version)`` of the Valgrind executable, e.g. ``("/usr/bin/valgrind", "valgrind-3.19.0")``.

    Raises
    ------
    MMUInputError
        Valgrind is not installed or does not run.
    """
    path = shutil.which(valgrind)
    if path is None:
        raise MMUInputError(f"valgrind not found ({valgrind!r} is not on PATH); install valgrind to record traces")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MMUInputError(f"cannot run {path} --version: {exc}") from None
    version = out.stdout.strip()
    if out.returncode != 0 or not version:
        raise MMUInputError(f"{path} --version failed (exit status {out.returncode})")
    return path, version


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _describe_status(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def _wait_for_writer(fd: int, proc: subprocess.Popen) -> None:
    """Block until the FIFO has data or a writer came and went, or ``proc`` exited."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    while not poller.poll(100):
        if proc.poll() is not None:
            return


def record(
    cmd: list[str],
    output_path: str | os.PathLike,
    *,
    max_accesses: int | None = None,
    pid: int = 1,
    valgrind: str = "valgrind",
    show_output: bool = False,
    allow_failure: bool = False,
) -> ImportSummary:
    """Run ``cmd`` under Valgrind Lackey and write its memory accesses to ``output_path``.

    Parameters
    ----------
    cmd : list of str
        The program and its arguments (looked up on PATH).
    output_path : path
        The trace to write (atomically; nothing is left there on error).
    max_accesses : int, optional
        Stop (kill Valgrind) after this many access records.
    pid : int
        Process id stored in every record.
    valgrind : str
        The Valgrind executable.
    show_output : bool
        Let the program's stdout/stderr through (default: stdout discarded, stderr kept
        for the error message).
    allow_failure : bool
        Keep the trace even if the program exits with a nonzero status.

    Returns
    -------
    ImportSummary
        ``input`` is the command line; ``lines`` counts lackey log lines.

    Raises
    ------
    MMUInputError
        Valgrind missing, command not found, or the command failed (exit status and the
        last line of its stderr in the message).
    """
    if not cmd:
        raise MMUInputError("no command to record (usage: mmu record -o OUT -- CMD [ARGS...])")
    _check_pid(pid)
    if max_accesses is not None and max_accesses < 1:
        raise MMUInputError(f"--max-accesses must be >= 1, got {max_accesses}")
    vg_path, vg_version = valgrind_version(valgrind)
    if shutil.which(cmd[0]) is None:
        raise MMUInputError(f"command not found: {cmd[0]}")
    command = shlex.join(cmd)
    header = base_header(
        "lackey",
        None,
        f"{vg_version} --tool=lackey --trace-mem=yes",
        LACKEY_NOTES,
        command=command,
        valgrind=vg_version,
        recorder="mmu record",
        pid=pid,
        max_accesses=max_accesses,
    )
    t0 = time.perf_counter()
    tmpdir = tempfile.mkdtemp(prefix="mmu-record-")
    proc = None
    fd = -1
    try:
        fifo = os.path.join(tmpdir, "lackey.fifo")
        errpath = os.path.join(tmpdir, "stderr.txt")
        os.mkfifo(fifo, 0o600)
        with TraceWriter(output_path, header) as writer, open(errpath, "wb") as err:
            # open before valgrind starts: O_NONBLOCK lets a read-only open of a FIFO return at once
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                proc = subprocess.Popen(
                    [vg_path, "--tool=lackey", "--trace-mem=yes", f"--log-file={fifo}", *cmd],
                    stdout=None if show_output else subprocess.DEVNULL,
                    stderr=None if show_output else err,
                )
            except OSError as exc:
                raise MMUInputError(f"cannot run {vg_path}: {exc.strerror or exc}") from None
            _wait_for_writer(fd, proc)
            os.set_blocking(fd, True)
            src = os.fdopen(fd, "rb", buffering=0)
            fd = -1
            with src:
                lines, nbytes, records, truncated = lackey_from_stream(
                    src, f"lackey output of {cmd[0]}", writer, pid, max_accesses
                )
                if truncated:
                    proc.kill()
            rc = proc.wait()
            if not truncated and rc != 0 and not allow_failure:
                why = _last_line(errpath) if not show_output else ""
                raise MMUInputError(
                    f"recorded command {_describe_status(rc)}: {command}" + (f" ({why})" if why else "")
                )
            if not truncated and records == 0:
                why = _last_line(errpath) if not show_output else ""
                raise MMUInputError(f"valgrind produced no trace for: {command}" + (f" ({why})" if why else ""))
            writer.update_header(
                truncated=truncated,
                exit_status=None if truncated else rc,
                lackey_lines=lines,
            )
    finally:
        if fd >= 0:
            os.close(fd)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return ImportSummary(
        "lackey",
        command,
        str(output_path),
        records,
        records,
        lines,
        nbytes,
        time.perf_counter() - t0,
        truncated,
        {"valgrind": vg_version, "exit_status": None if truncated else rc},
    )
