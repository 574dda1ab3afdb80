"""Partition inputs built from real per-layer profiles of zoo models; cross-checks between the
chain tables, the topological (Neurosurgeon-on-DAG) tables and the DADS graph formula."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from isthmus.models import build, example_input  # noqa: E402
from isthmus.partition.graph import graph_latency_ms, partition_graph  # noqa: E402
from isthmus.partition.profiles import chain_table, dag_graph, is_chain, topological_table  # noqa: E402
from isthmus.profiler.core import profile_module  # noqa: E402

BANDWIDTHS_MBPS = (0.1, 1.0, 10.0, 100.0)


@pytest.fixture(scope="module")
def profiles():
    out = {}
    for name in ("alexnet_exits", "resnet", "inception"):
        local = profile_module(build(name, "small"), example_input(name, "small"), model_name=name, size="small",
                               repeats=3, warmup=1)
        # a slow device (20x slower than this CPU) and a fast server (20x faster); bigger request than 8x8
        local.input_bytes = 150_000
        out[name] = (local, local.scaled(0.05, device="dev"), local.scaled(20.0, device="srv"))
    return out


def test_chain_paths_follow_exits(profiles):
    local, dev, srv = profiles["alexnet_exits"]
    assert is_chain(local)
    table = chain_table(dev, srv)
    lengths = {p.exit: len(p.names) for p in table.paths}
    assert lengths == {None: 23, 3: 4 + 5, 7: 8 + 5, 9: 10 + 5, 11: 12 + 5}
    early = next(p for p in table.paths if p.exit == 3)
    assert list(early.names[:4]) == ["0", "1", "2", "3"] and early.names[4].startswith("exit3.")


@pytest.mark.parametrize("bw", BANDWIDTHS_MBPS)
def test_neurosurgeon_on_chain_equals_min_cut(profiles, bw):
    _, dev, srv = profiles["alexnet_exits"]
    ns = chain_table(dev, srv).neurosurgeon(bw, rtt_ms=10.0)
    cut = partition_graph(dag_graph(dev, srv), bw, rtt_ms=10.0)
    assert ns.latency_ms == pytest.approx(cut.latency_ms, rel=1e-6)


@pytest.mark.parametrize("name", ["resnet", "inception"])
def test_dag_tables_match_graph_formula_and_dads_wins(profiles, name):
    local, dev, srv = profiles[name]
    assert not is_chain(local)
    graph, topo = dag_graph(dev, srv), topological_table(dev, srv)
    names = graph.names()
    for bw in BANDWIDTHS_MBPS:
        for k in range(-1, len(names)):
            assert topo.latency_ms(None, k, bw, 5.0) == pytest.approx(
                graph_latency_ms(graph, names[: k + 1], bw, 5.0), rel=1e-9)
        dads = partition_graph(graph, bw, 5.0).latency_ms
        ns = topo.neurosurgeon(bw, 5.0).latency_ms
        assert dads <= ns * (1 + 1e-9)
        assert ns <= min(topo.device_only().latency_ms, topo.cloud_only(bw, 5.0).latency_ms) * (1 + 1e-9)
