"""Import Pin ``pinatrace`` output (``source/tools/ManualExamples/pinatrace.cpp``).

pinatrace prints, per executed memory operand, ``fprintf(trace, "%p: R %p\\n", ip, addr)``
(``W`` for writes) and ``#eof`` at the end::

    0x7f1234567890: R 0x7ffd12345678     -> OP_READ  addr=0x7ffd12345678 size=1
    0x7f1234567894: W 0x7ffd12345670     -> OP_WRITE addr=0x7ffd12345670 size=1
    #eof                                  (any line starting with '#' is skipped)

``%p`` prints ``(nil)`` for 0. pinatrace records no access size, so the size is recorded
as :data:`PIN_DATA_SIZE` = 1: the access touches at least its first byte, and no page
crossing is invented. pinatrace has no instruction lines (instructions without memory
operands are invisible), so by default only data accesses are emitted; with
``fetch_ip=True`` an OP_FETCH of the ip (size :data:`PIN_FETCH_SIZE` = 4) precedes the
first operand line of each instruction (whenever the ip differs from the previous
line's ip).
"""

from __future__ import annotations

import os
import time

import numpy as np

from mmu._jit import inner, jit
from mmu.trace.format import ImportSummary, TraceWriter, base_header
from mmu.trace.lackey import (
    BLOCK_SIZE,
    HEX_TABLE,
    OUT_RECORDS,
    ST_BAD_LINE,
    ST_BIG_ADDR,
    ST_DONE,
    ST_FULL,
    _check_pid,
    import_text,
    open_input,
)

PIN_DATA_SIZE = 1
PIN_FETCH_SIZE = 4

_NL = 10
_SP = 32
_TAB = 9
_CR = 13

# state[] slots carried across kernel calls
PS_EOF = 0  # number of '#eof' lines seen
PS_PREV_IP = 1  # ip of the previous data line (for fetch_ip)
PS_DATA_AFTER_EOF = 2  # data lines after the last '#eof'


@inner
def _pin_token(buf, pos, hexv):
    """Parse ``0x<hex>`` or ``(nil)`` at ``buf[pos]``: returns (status, value, new_pos)."""
    if buf[pos] == 40:  # '(nil)'
        if buf[pos + 1] == 110 and buf[pos + 2] == 105 and buf[pos + 3] == 108 and buf[pos + 4] == 41:
            return ST_DONE, np.int64(0), pos + 5
        return ST_BAD_LINE, np.int64(0), pos
    if buf[pos] != 48 or (buf[pos + 1] != 120 and buf[pos + 1] != 88):  # '0x'
        return ST_BAD_LINE, np.int64(0), pos
    pos += 2
    v = np.int64(0)
    nd = 0
    while True:
        d = hexv[buf[pos]]
        if d < 0:
            break
        if (v >> 60) != 0:
            return ST_BIG_ADDR, np.int64(0), pos
        v = (v << 4) | d
        nd += 1
        pos += 1
    if nd == 0:
        return ST_BAD_LINE, np.int64(0), pos
    return ST_DONE, v, pos


@jit
def _parse_pin(buf, pos, end, hexv, out_addr, out_arg, out_op, fetch_ip, data_size, fetch_size, state):
    """Parse pinatrace lines in ``buf[pos:end]`` into the output columns.

    Parameters
    ----------
    buf : uint8[:]
        Input bytes; every line in ``[pos, end)`` ends with a newline.
    hexv : int8[256]
        Hex digit table.
    out_addr : uint64[:], out_arg : uint32[:], out_op : uint8[:]
        Output columns, written from index 0.
    fetch_ip : bool
        Emit a fetch of the ip when it changes.
    data_size, fetch_size : int
        Sizes recorded for data accesses and fetches.
    state : int64[3]
        Carried across calls (``S_*`` slots); mutated.

    Returns
    -------
    (status, pos, n_out, n_lines)
        As for the lackey kernel.
    """
    cap = out_op.shape[0]
    n = 0
    lines = 0
    while pos < end:
        if n + 2 > cap:
            return ST_FULL, pos, n, lines
        start = pos
        c = buf[pos]
        if c == 35:  # '#'
            if (
                buf[pos + 1] == 101
                and buf[pos + 2] == 111
                and buf[pos + 3] == 102
                and (buf[pos + 4] == _NL or buf[pos + 4] == _CR)
            ):
                state[PS_EOF] += 1
                state[PS_DATA_AFTER_EOF] = 0
            while buf[pos] != _NL:
                pos += 1
            pos += 1
            lines += 1
            continue
        if c == _NL or c == _SP or c == _TAB or c == _CR:
            while c == _SP or c == _TAB or c == _CR:
                pos += 1
                c = buf[pos]
            if c == _NL:
                pos += 1
                lines += 1
                continue
            return ST_BAD_LINE, start, n, lines
        st, ip, pos = _pin_token(buf, pos, hexv)
        if st != ST_DONE:
            return st, start, n, lines
        if buf[pos] != 58 or buf[pos + 1] != _SP:  # ': '
            return ST_BAD_LINE, start, n, lines
        pos += 2
        c = buf[pos]
        if c == 82:  # R
            kind = 0
        elif c == 87:  # W
            kind = 1
        else:
            return ST_BAD_LINE, start, n, lines
        if buf[pos + 1] != _SP:
            return ST_BAD_LINE, start, n, lines
        pos += 2
        st, addr, pos = _pin_token(buf, pos, hexv)
        if st != ST_DONE:
            return st, start, n, lines
        c = buf[pos]
        while c == _SP or c == _TAB or c == _CR:
            pos += 1
            c = buf[pos]
        if c != _NL:
            return ST_BAD_LINE, start, n, lines
        if fetch_ip and ip != state[PS_PREV_IP] and ip != 0:
            out_addr[n] = np.uint64(ip)
            out_arg[n] = fetch_size
            out_op[n] = 2
            n += 1
        state[PS_PREV_IP] = ip
        state[PS_DATA_AFTER_EOF] += 1
        out_addr[n] = np.uint64(addr)
        out_arg[n] = data_size
        out_op[n] = kind
        n += 1
        pos += 1
        lines += 1
    return ST_DONE, pos, n, lines


def _pin_describe(status: int) -> str:
    if status == ST_BIG_ADDR:
        return "address does not fit in 64 bits"
    return "not a pinatrace line"


PIN_NOTES = (
    "pinatrace: R -> read, W -> write, size recorded as 1 (pinatrace has no sizes); no instruction lines in pinatrace"
)


def import_pin(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    pid: int = 1,
    fetch_ip: bool = False,
    max_accesses: int | None = None,
    block_size: int = BLOCK_SIZE,
    out_records: int = OUT_RECORDS,
    header: dict | None = None,
) -> ImportSummary:
    """Convert a Pin ``pinatrace.out`` to an mmu trace.

    Parameters
    ----------
    input_path : path
        pinatrace output (``.xz``/``.gz``/``.bz2`` decompressed on the fly).
    output_path : path
        The trace to write (atomically).
    pid : int
        Process id stored in every record.
    fetch_ip : bool
        Also emit an OP_FETCH of the ip (size 4) whenever the ip changes.
    max_accesses : int, optional
        Stop after this many access records.

    Returns
    -------
    ImportSummary
        ``extra["eof_marker"]`` is False when the input lacks pinatrace's final ``#eof``
        (the traced program did not finish; the header notes it too).
    """
    _check_pid(pid)
    t0 = time.perf_counter()
    state = np.zeros(3, dtype=np.int64)
    state[PS_PREV_IP] = -1

    def step(buf, pos, end, out):
        return _parse_pin(
            buf,
            pos,
            end,
            HEX_TABLE,
            out["addr"],
            out["arg"],
            out["op"],
            fetch_ip,
            PIN_DATA_SIZE,
            PIN_FETCH_SIZE,
            state,
        )

    notes = PIN_NOTES + ("; fetch of ip emitted when the ip changes" if fetch_ip else "")
    h = base_header("pin", input_path, "pin pinatrace", notes, pid=pid, fetch_ip=bool(fetch_ip))
    h.update(header or {})
    with open_input(input_path) as src, TraceWriter(output_path, h) as w:
        lines, nbytes, records, truncated = import_text(
            src,
            str(input_path),
            w,
            step,
            _pin_describe,
            block_size=block_size,
            out_records=out_records,
            pid=pid,
            max_accesses=max_accesses,
        )
        eof_marker = bool(state[PS_EOF] > 0 and state[PS_DATA_AFTER_EOF] == 0)
        if not eof_marker and not truncated:
            w.update_header(eof_marker=False, notes=notes + "; no final #eof: the traced program may not have finished")
    return ImportSummary(
        "pin",
        str(input_path),
        str(output_path),
        records,
        records,
        lines,
        nbytes,
        time.perf_counter() - t0,
        truncated,
        {"eof_marker": eof_marker},
    )
