"""Native-mode replay: the engine against the plain-Python replay reference, determinism,
chunking, translations, and clean failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmu.engine import Machine, MachineConfig
from mmu.errors import MMUInputError
from mmu.hw.cost import K_L2_LINES, K_L2_WAYS, K_LLC_LINES, K_LLC_WAYS
from mmu.hw.presets import get_preset
from mmu.memory import mem_read
from mmu.replayfile import replay
from mmu.trace.format import RECORD_DTYPE, TraceReader, write_trace
from tests.reference.replay import RefNativeReplay

TRACES = Path(__file__).resolve().parent.parent / "traces"
SHIPPED = sorted(TRACES.glob("*.trace"))


def _engine(records: np.ndarray, cpu: str = "skylake", chunk: int | None = None) -> tuple[Machine, np.ndarray]:
    m = Machine(MachineConfig(cpu=cpu))
    out = np.zeros(len(records), dtype=np.uint64)
    n = 0
    chunk = chunk or max(1, len(records))
    for i in range(0, len(records), chunk):
        n += m.run(records[i : i + chunk], out[n:])
    return m, out[:n]


def _reference(records: np.ndarray, cpu: str = "skylake") -> RefNativeReplay:
    c = Machine(MachineConfig(cpu=cpu)).cost
    l2, llc = (int(c[K_L2_LINES]), int(c[K_L2_WAYS])), (int(c[K_LLC_LINES]), int(c[K_LLC_WAYS]))
    ref = RefNativeReplay(get_preset(cpu), l2=l2, llc=llc)
    ref.run(records)
    return ref


def _compare(records: np.ndarray, cpu: str = "skylake") -> None:
    m, out = _engine(records, cpu)
    ref = _reference(records, cpu)
    s = m.result()
    c = ref.c
    got = {
        "accesses": s["accesses"],
        "tlb_misses": s["tlb_misses"],
        "walks": s["walks"],
        "walk_refs": s["walk_refs"],
        "ref_l2": s["walk_ref_sources"]["l2"],
        "ref_llc": s["walk_ref_sources"]["llc"],
        "ref_dram": s["walk_ref_sources"]["dram"],
        "guest_pf": s["guest_page_faults"],
        "pf_np": s["guest_page_faults_not_present"],
        "pf_prot": s["guest_page_faults_protection"],
        "spurious": s["spurious_page_faults"],
        "bad": s["bad_accesses"],
        "pt_frames": s["pt_frames"],
        "data_frames": s["data_frames"],
        "dirty_rewalks": s["dirty_rewalks"],
        "split": s["split_accesses"],
        "cr3_loads": s["cr3_loads"],
        "processes": s["processes"],
    }
    assert got == c
    ref_tlb = [[h, mi] for h, mi in zip(ref.tlb.hits, ref.tlb.misses, strict=True)]
    assert [list(map(int, row)) for row in m.tlb.stats] == ref_tlb
    assert [list(map(int, row)) for row in m.psc.stats] == ref.psc.stats()
    assert out.tolist() == ref.emitted
    # the guest page tables, including A/D bits, word for word
    for pa, value in ref.mem.items():
        assert int(mem_read(m.mem.state, np.int64(pa))) == value, hex(pa)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_trace_matches_reference(path):
    records = TraceReader(path).memmap()[:20_000]
    _compare(np.array(records))


def _records(draw_list) -> np.ndarray:
    r = np.zeros(len(draw_list), dtype=RECORD_DTYPE)
    for i, (op, pid, addr, size) in enumerate(draw_list):
        r[i] = (addr, size, pid, op, 0)
    return r


_page = st.sampled_from(
    [0x1000, 0x2000, 0x7F00_0000_0000, 0x7F00_0020_0000, 0x7F00_4000_0000, 0x5555_5555_4000, 0x40_0000_0000]
)
_access = st.tuples(
    st.sampled_from([0, 0, 1, 2]),
    st.integers(1, 3),
    st.builds(lambda p, k, o: p + k * 4096 + o, _page, st.integers(0, 80), st.integers(0, 4095)),
    st.sampled_from([1, 4, 8, 8, 64]),
)
_odd = st.tuples(
    st.just(0), st.integers(1, 3), st.sampled_from([0xFFFF_8000_0000_1000, 0x0000_8000_0000_0000, 0]), st.just(8)
)
_switch = st.tuples(st.just(16), st.integers(1, 3), st.just(0), st.just(0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_access, _access, _access, _odd, _switch), min_size=1, max_size=400))
def test_random_multiprocess_traces_match_reference(items):
    _compare(_records(items), cpu="toy")


def test_chunking_and_determinism():
    records = np.array(TraceReader(TRACES / "gzip.trace").memmap()[:50_000])
    m1, out1 = _engine(records)
    for chunk in (1, 777, 4096):
        m2, out2 = _engine(records[: 10_000 if chunk == 1 else None], chunk=chunk)
        m1b, out1b = _engine(records[: 10_000 if chunk == 1 else None])
        a, b = m1b.result(), m2.result()
        for k in ("elapsed_s", "accesses_per_s", "compile_s"):
            a.pop(k), b.pop(k)
        assert a == b
        assert np.array_equal(out1b, out2)
    again = _engine(records)[0].result()
    first = m1.result()
    for k in ("elapsed_s", "accesses_per_s", "compile_s"):
        first.pop(k), again.pop(k)
    assert first == again


def test_replay_file_and_emit(tmp_path):
    src = TRACES / "ls-usr.trace"
    emit = tmp_path / "gpa.npy"
    s = replay(src, MachineConfig(), chunk_size=65_536, emit_path=emit)
    gpa = np.load(emit, allow_pickle=False)
    assert gpa.dtype == np.uint64 and len(gpa) == s["accesses"] == TraceReader(src).count_accesses()
    assert s["cycles"] == sum(s["cycles_breakdown"].values())
    assert not list(tmp_path.glob("*.partial"))


def test_impossible_event_names_record(tmp_path):
    """An exit of a pid that never ran cannot be performed: the error names the record."""
    r = np.zeros(3, dtype=RECORD_DTYPE)
    r["addr"] = [0x1000, 0x2000, 0x3000]
    r["arg"] = [8, 0, 8]
    r["pid"] = [1, 7, 1]
    r["op"] = [0, 20, 0]
    path = tmp_path / "exit.trace"
    write_trace(path, r, {"source": "test"})
    emit = tmp_path / "out.npy"
    with pytest.raises(MMUInputError, match=r"record 1: OS event 'exit'"):
        replay(path, emit_path=emit)
    assert list(tmp_path.iterdir()) == [path]


def test_unknown_mode_and_preset():
    with pytest.raises(MMUInputError, match="unknown mode"):
        Machine(MachineConfig(mode="warp"))
    with pytest.raises(MMUInputError, match="unknown CPU preset"):
        Machine(MachineConfig(cpu="pentium"))
