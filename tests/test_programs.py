"""The shipped guest programs (traces/programs/*.s) run to completion in the reference interpreter.

Each expected result line is computed here independently, in plain Python, from the
program's documented behaviour (the xorshift64 stream, Sattolo's shuffle, first-fit mmap).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mmu.guest.asm import assemble_file
from mmu.guest.isa import DEFAULT_SEED
from tests.guest_ref import run

PROGRAMS = Path(__file__).resolve().parent.parent / "traces" / "programs"
NAMES = ["forkwait", "pfstorm", "pingpong", "gups", "seqscan", "ptrchase", "mmapchurn", "twophase"]


def xorshift_stream(seed: int):
    x = seed
    while True:  # Marsaglia's xorshift64, triple (13, 7, 17)
        x ^= (x << 13) % 2**64
        x ^= x >> 7
        x ^= (x << 17) % 2**64
        yield x


def prog(name: str):
    return assemble_file(PROGRAMS / f"{name}.s")


def result(name: str, args, **kw):
    res = run(prog(name), args, **kw)
    assert res.reason == "exit" and res.exit_code == 0, (res.reason, res.exit_code, [f.message for f in res.faults])
    assert not res.faults and all(s == 0 or name in ("forkwait", "pingpong", "twophase") for s in res.statuses.values())
    return res


def test_all_programs_are_shipped_and_assemble():
    assert sorted(p.stem for p in PROGRAMS.glob("*.s")) == sorted(NAMES)
    for name in NAMES:
        p = prog(name)
        assert p.entry == p.symbols["_start"]
        text = (PROGRAMS / f"{name}.s").read_text()
        assert text.startswith(f"# {name}.s -- ") and "# Usage: " in text and "# Output: " in text


# --- expected results, from each program's description -------------------------------------------
def expect_forkwait(n: int, pages: int) -> str:
    status_sum = sum(i + sum(k + 1 for k in range(pages)) for i in range(n))
    return f"forkwait: n={n} pages={pages} status_sum={status_sum} parent_sum={pages * (pages + 1) // 2} errors=0\n"


def expect_pfstorm(pages: int, rounds: int) -> str:
    pages = max(pages, 1)
    total = sum(r * pages + i + 1 for r in range(rounds) for i in range(pages))
    return f"pfstorm: pages={pages} rounds={rounds} sum={total}\n"


def expect_pingpong(rounds: int, pages: int) -> str:
    parent = pages * sum(range(rounds))
    child = pages * sum(k + 1 for k in range(rounds))
    return f"pingpong: rounds={rounds} pages={pages} parent={parent} child={child}\n"


def expect_gups(logn: int, updates: int, seed: int = DEFAULT_SEED) -> str:
    n = 1 << logn
    updates = updates or 4 * n
    table = list(range(n))
    rnd = xorshift_stream(seed)
    for _ in range(updates):
        r = next(rnd)
        table[r % n] ^= r
    checksum = 0
    for v in table:
        checksum ^= v
    return f"gups: logn={logn} updates={updates} checksum={checksum:#x}\n"


def expect_seqscan(pages: int, passes: int, stride: int) -> str:
    pages = max(pages, 1)
    stride = max(stride // 8 * 8, 8)
    total = passes * sum(off // 8 for off in range(0, pages * 4096, stride))
    return f"seqscan: pages={pages} passes={passes} stride={stride} sum={total}\n"


def expect_ptrchase(logn: int, steps: int, nodesize: int, seed: int = DEFAULT_SEED) -> str:
    n = 1 << logn
    steps = steps or 4 * n
    size = max(nodesize // 8 * 8, 8)
    nxt = list(range(n))
    rnd = xorshift_stream(seed)
    for i in range(n - 1, 0, -1):  # Sattolo
        j = next(rnd) % i
        nxt[i], nxt[j] = nxt[j], nxt[i]
    p = total = 0
    for _ in range(steps):
        p = nxt[p]
        total += p * size
    return f"ptrchase: logn={logn} steps={steps} nodesize={size} last={p} sum={total}\n"


def expect_mmapchurn(iters: int, slots: int, maxpages: int, seed: int = DEFAULT_SEED) -> str:
    slots = min(max(slots, 1), 256)
    maxpages = max(maxpages, 1)
    rnd = xorshift_stream(seed)
    live: dict[int, tuple[int, int]] = {}  # slot -> (first page index in the mmap region, pages)
    pages = addrsum = 0
    for _ in range(iters):
        s = next(rnd) % slots
        live.pop(s, None)
        n = next(rnd) % maxpages + 1
        start = 0  # first fit: lowest start with n free pages
        for a, b in sorted((a, a + m) for a, m in live.values()):
            if a - start >= n:
                break
            start = max(start, b)
        live[s] = (start, n)
        pages += n
        addrsum += start
    return f"mmapchurn: iters={iters} slots={slots} maxpages={maxpages} pages={pages} addrsum={addrsum} bad=0\n"


CASES = [
    ("forkwait", [5, 3], expect_forkwait(5, 3)),
    ("forkwait", [3, 0], expect_forkwait(3, 0)),
    ("forkwait", [], expect_forkwait(100, 4)),  # defaults
    ("pfstorm", [5, 3], expect_pfstorm(5, 3)),
    ("pfstorm", [0, 2], expect_pfstorm(0, 2)),
    ("pfstorm", [], expect_pfstorm(256, 8)),
    ("pingpong", [7, 2], expect_pingpong(7, 2)),
    ("pingpong", [4, 0], expect_pingpong(4, 0)),
    ("pingpong", [], expect_pingpong(1000, 1)),
    ("gups", [8, 700], expect_gups(8, 700)),
    ("gups", [4], expect_gups(4, 0)),  # updates absent: 4 * 2**logn
    ("gups", [0, 5], expect_gups(0, 5)),
    ("twophase", [4, 2, 6, 300], expect_forkwait(4, 2) + expect_gups(6, 300)),
    ("twophase", [0, 0, 3], expect_forkwait(0, 0) + expect_gups(3, 0)),  # phase 1 empty
    ("seqscan", [2, 2], expect_seqscan(2, 2, 8)),
    ("seqscan", [3, 1, 4096], expect_seqscan(3, 1, 4096)),
    ("seqscan", [1, 3, 4100], expect_seqscan(1, 3, 4100)),
    ("seqscan", [0, 1, 3], expect_seqscan(0, 1, 3)),
    ("ptrchase", [6, 300, 24], expect_ptrchase(6, 300, 24)),
    ("ptrchase", [5], expect_ptrchase(5, 0, 64)),
    ("ptrchase", [0, 3, 4], expect_ptrchase(0, 3, 4)),
    ("mmapchurn", [60, 5, 6], expect_mmapchurn(60, 5, 6)),
    ("mmapchurn", [40, 300, 0], expect_mmapchurn(40, 300, 0)),
    ("mmapchurn", [], expect_mmapchurn(1000, 16, 16)),
]


@pytest.mark.parametrize(("name", "args", "want"), CASES, ids=[f"{c[0]}-{'-'.join(map(str, c[1]))}" for c in CASES])
def test_program_output(name, args, want):
    assert result(name, args).text == want


@pytest.mark.parametrize("quantum", [1, 3, 17])
@pytest.mark.parametrize(
    ("name", "args"), [("forkwait", [4, 2]), ("pingpong", [5, 1]), ("gups", [5, 50]), ("mmapchurn", [20, 3, 3])]
)
def test_output_does_not_depend_on_the_quantum(name, args, quantum):
    assert result(name, args, quantum=quantum).text == result(name, args).text


def test_gups_and_ptrchase_follow_the_seed():
    seed = 12345
    assert run(prog("gups"), [6, 100], seed=seed).text == expect_gups(6, 100, seed)
    assert run(prog("ptrchase"), [4, 20, 8], seed=seed).text == expect_ptrchase(4, 20, 8, seed)
    assert run(prog("mmapchurn"), [30, 4, 4], seed=seed).text == expect_mmapchurn(30, 4, 4, seed)


def test_ptrchase_builds_one_cycle_through_every_node():
    # n steps from node 0 visit every node once and come back to 0 (Sattolo's shuffle makes one cycle)
    n, size = 32, 16
    assert (
        run(prog("ptrchase"), [5, n, size]).text
        == f"ptrchase: logn=5 steps={n} nodesize={size} last=0 sum={size * n * (n - 1) // 2}\n"
    )


def test_process_structure():
    res = result("forkwait", [6, 1])
    assert len(res.statuses) == 7 and res.statuses[1] == 0
    assert res.statuses[2] == 0 + 1 and res.statuses[7] == 5 + 1  # child i exits with i + (its page sum)
    res = result("pingpong", [50, 1])
    assert len(res.statuses) == 2 and res.switches >= 2 * 50  # every yield switches


def test_docs_example(tmp_path):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "isa.md").read_text()
    src = doc.split("```asm\n", 1)[1].split("```", 1)[0]
    (tmp_path / "countdown.s").write_text(src)
    p = assemble_file(tmp_path / "countdown.s", include_dirs=[PROGRAMS])
    res = run(p, [3])
    assert res.text == "3\n2\n1\n" and res.exit_code == 0


def test_docs_name_every_instruction_and_syscall():
    from mmu.guest.isa import OPCODES, SYSCALL_NAMES

    doc = (Path(__file__).resolve().parent.parent / "docs" / "isa.md").read_text()
    for op, (name, _fmt) in OPCODES.items():
        assert f"`{name}" in doc and f"{op:#04x}" in doc.replace("0x0A", "0x0a").lower(), name
    for n, name in SYSCALL_NAMES.items():
        assert f"| {n} | `{name}` |" in doc
