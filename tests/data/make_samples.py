"""Regenerate the importer test samples derived from ``lackey_echo.txt``.

``lackey_echo.txt`` is real Valgrind output (see README.md for the command); the
other samples are that same access stream re-encoded in each foreign format, so the
importer tests can check each importer against the lackey one. Run from anywhere::

    python tests/data/make_samples.py

Plain Python on purpose (it doubles as an independent reading of each format).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LINE = re.compile(r"^ ?([ILSM]) +([0-9a-fA-F]+),(\d+)\s*$")

CHAMPSIM_DTYPE = np.dtype(
    [
        ("ip", "<u8"),
        ("is_branch", "u1"),
        ("branch_taken", "u1"),
        ("dst_regs", "u1", (2,)),
        ("src_regs", "u1", (4,)),
        ("dst_mem", "<u8", (2,)),
        ("src_mem", "<u8", (4,)),
    ]
)


def lackey_events(path: Path) -> list[tuple[str, int, int]]:
    """``(kind, addr, size)`` for each I/L/S/M line of a lackey log."""
    out = []
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        if m:
            out.append((m.group(1), int(m.group(2), 16), int(m.group(3))))
    return out


def instructions(events):
    """Group lackey events per instruction: ``[(ip, [loads], [stores])]``."""
    instrs = []
    for kind, addr, _size in events:
        if kind == "I":
            instrs.append((addr, [], []))
        elif instrs:
            ip, loads, stores = instrs[-1]
            if kind in "LM":
                loads.append(addr)
            if kind in "SM":
                stores.append(addr)
    return instrs


def write_pinatrace(instrs, path: Path) -> None:
    """pinatrace.cpp: ``fprintf(trace, "%p: R %p\\n", ip, addr)`` per operand, ``#eof`` at the end."""
    lines = []
    for ip, loads, stores in instrs:
        lines += [f"{ip:#x}: R {a:#x}" for a in loads]
        lines += [f"{ip:#x}: W {a:#x}" for a in stores]
    path.write_text("\n".join(lines) + "\n#eof\n")


def champsim_array(instrs) -> np.ndarray:
    """ChampSim input_instr records: up to 4 distinct loads, 2 distinct stores per instruction."""
    arr = np.zeros(len(instrs), dtype=CHAMPSIM_DTYPE)
    for i, (ip, loads, stores) in enumerate(instrs):
        arr[i]["ip"] = ip
        src = list(dict.fromkeys(loads))[:4]
        dst = list(dict.fromkeys(stores))[:2]
        arr[i]["src_mem"][: len(src)] = src
        arr[i]["dst_mem"][: len(dst)] = dst
    return arr


def main() -> None:
    events = lackey_events(HERE / "lackey_echo.txt")
    instrs = instructions(events)
    write_pinatrace(instrs, HERE / "pinatrace_echo.out")
    # instructions 200..299: a window that includes the M (modify) lines
    raw = champsim_array(instrs[200:300]).tobytes()
    (HERE / "champsim_echo.trace").write_bytes(raw)
    (HERE / "champsim_echo.trace.xz").write_bytes(lzma.compress(raw))
    (HERE / "champsim_echo.trace.gz").write_bytes(gzip.compress(raw, mtime=0))
    (HERE / "champsim_echo.trace.bz2").write_bytes(bz2.compress(raw))
    loads = np.array([a for k, a, _ in events if k in "LM"], dtype=np.uint64)
    np.save(HERE / "loads_echo.npy", loads)
    rec = np.zeros(len(events), dtype=[("addr", "<u8"), ("op", "u1"), ("size", "<u2"), ("pid", "<u2")])
    rec["addr"] = [a for _, a, _ in events]
    rec["op"] = [{"I": 2, "L": 0, "S": 1, "M": 1}[k] for k, _, _ in events]
    rec["size"] = [s for _, _, s in events]
    rec["pid"] = 7
    np.save(HERE / "records_echo.npy", rec)


if __name__ == "__main__":
    main()
