"""Edgent / Neurosurgeon chain search vs brute force over (exit, split)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isthmus.partition.chain import ChainPath, ChainTable
from isthmus.partition.graph import transfer_ms


def _brute(paths, input_bytes, bw, rtt):
    """Every (exit, split) latency, straight from the formula."""
    out = {}
    for p in paths:
        n = len(p.names)
        for k in range(-1, n):
            lat = sum(p.device_ms[: k + 1]) + sum(p.server_ms[k + 1:])
            if k < n - 1:
                sent = input_bytes if k < 0 else p.out_bytes[k]
                lat += rtt + transfer_ms(sent, bw)
            out[(p.exit, k)] = lat
    return out


@st.composite
def _chains(draw):
    n = draw(st.integers(1, 14))
    ms = st.floats(0, 200)
    main_dev = [draw(ms) for _ in range(n)]
    main_srv = [draw(st.floats(0, 10)) for _ in range(n)]
    main_bytes = [draw(st.integers(0, 3_000_000)) for _ in range(n)]
    acc = st.one_of(st.none(), st.sampled_from([0.5, 0.6, 0.7, 0.8]))
    paths = [ChainPath(None, [f"l{i}" for i in range(n)], main_dev, main_srv, main_bytes, draw(acc))]
    for after in sorted(draw(st.sets(st.integers(0, n - 1), max_size=4))):
        m = draw(st.integers(1, 3))
        paths.append(ChainPath(after, [f"l{i}" for i in range(after + 1)] + [f"e{after}.{j}" for j in range(m)],
                               main_dev[: after + 1] + [draw(ms) for _ in range(m)],
                               main_srv[: after + 1] + [draw(st.floats(0, 10)) for _ in range(m)],
                               main_bytes[: after + 1] + [draw(st.integers(0, 10_000)) for _ in range(m)],
                               draw(acc)))
    return paths, draw(st.integers(0, 2_000_000))


@settings(max_examples=120, deadline=None)
@given(chain=_chains(), bw=st.floats(0.05, 500), rtt=st.sampled_from([0.0, 5.0, 80.0]),
       slo=st.floats(1, 3000))
def test_search_equals_brute_force(chain, bw, rtt, slo):
    paths, input_bytes = chain
    table = ChainTable(paths, input_bytes)
    brute = _brute(paths, input_bytes, bw, rtt)
    # every table entry is the formula
    for (exit, k), lat in brute.items():
        assert table.latency_ms(exit, k, bw, rtt) == pytest.approx(lat, rel=1e-9, abs=1e-9)
    # Neurosurgeon: the fastest split of the final exit
    ns = table.neurosurgeon(bw, rtt)
    assert ns.exit is None
    assert ns.latency_ms == pytest.approx(min(v for (e, _), v in brute.items() if e is None), rel=1e-9, abs=1e-9)
    # Edgent: the most accurate exit meeting the SLO, fastest among equally accurate ones
    # (unknown accuracy ranks below every known one, deeper exits first)
    rank = {p.exit: (p.accuracy, 0) if p.accuracy is not None else (-1.0, len(p.names)) for p in paths}
    feasible = [(e, k) for (e, k), v in brute.items() if v <= slo]
    got = table.edgent(bw, slo, rtt)
    if feasible:
        best_rank = max(rank[e] for e, _ in feasible)
        assert got.met_slo and rank[got.exit] == best_rank
        best = min(brute[(e, k)] for e, k in feasible if rank[e] == best_rank)
        assert got.latency_ms == pytest.approx(best, rel=1e-9, abs=1e-9)
    else:
        assert got.met_slo is False
        assert got.latency_ms == pytest.approx(min(brute.values()), rel=1e-9, abs=1e-9)


def _table() -> ChainTable:
    main = ChainPath(None, ["conv", "pool", "fc"], [100.0, 10.0, 50.0], [2.0, 0.5, 1.0],
                     [500_000, 100_000, 40], 0.8)
    early = ChainPath(0, ["conv", "exit"], [100.0, 5.0], [2.0, 0.1], [500_000, 40], 0.6)
    return ChainTable([main, early], input_bytes=600_000)


def test_low_bandwidth_prefers_device_high_bandwidth_prefers_cloud():
    table = _table()
    assert table.neurosurgeon(0.1).placement == "device-only"
    assert table.neurosurgeon(1000.0).placement == "cloud-only"
    mid = table.neurosurgeon(20.0)  # after pool: 110 + 8·100 kB/20 Mbps (40) + 1 = 151 < device-only 160
    assert (mid.placement, mid.split, mid.activation_bytes) == ("split", 1, 100_000)
    assert mid.latency_ms == pytest.approx(151.0)


def test_edgent_trades_accuracy_for_deadline():
    table = _table()
    assert table.edgent(0.1, slo_ms=200).exit is None  # device-only full model: 160 ms
    tight = table.edgent(0.1, slo_ms=120)  # only the early exit on the device (105 ms) meets it
    assert (tight.exit, tight.placement, tight.met_slo) == (0, "device-only", True)
    impossible = table.edgent(0.1, slo_ms=50)
    assert impossible.met_slo is False and impossible.latency_ms == pytest.approx(105.0)


def test_decision_is_well_under_a_millisecond():
    table = _table()
    n = 2000
    start = time.perf_counter()
    for i in range(n):
        table.edgent(0.1 + i % 100, slo_ms=150.0, rtt_ms=10.0)
    per_ms = (time.perf_counter() - start) / n * 1e3
    assert per_ms < 0.5, f"{per_ms:.3f} ms per decision"


def test_bad_paths_are_rejected():
    with pytest.raises(ValueError, match="out_bytes has 1 entries for 2 layers"):
        ChainPath(None, ["a", "b"], [1, 1], [1, 1], [1])
    with pytest.raises(ValueError, match="negative value -1"):
        ChainPath(None, ["a"], [-1], [1], [1])
    with pytest.raises(ValueError, match="exit=None"):
        ChainTable([ChainPath(3, ["a"], [1], [1], [1])], 10)
    with pytest.raises(ValueError, match="split 5 outside -1..2"):
        _table().latency_ms(None, 5, 1.0)
