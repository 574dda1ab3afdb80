"""Op placement: simulator invariants, valid placements from every policy, learning, fx graphs, `isthmus place`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from isthmus.placement.devices import KINDS, LINKS, DeviceKind, DeviceSet, parse_devices
from isthmus.placement.graph import OpGraph, coarsen, from_module, from_zoo, synthetic_graph
from isthmus.placement.heuristics import HEURISTICS
from isthmus.placement.learned import learn_placement
from isthmus.placement.simulator import critical_path_ms, lower_bound_ms, memory_bytes, simulate

_DEVICE_SETS = ["1xv100", "2xv100", "4xk80", "2xv100+2xk80", "8xp100"]


def _random_placement(rng, graph, devices):
    return rng.integers(0, devices.n, graph.n)


@settings(max_examples=40, deadline=None)
@given(n_ops=st.integers(1, 40), width=st.integers(1, 6), seed=st.integers(0, 10_000),
       devices=st.sampled_from(_DEVICE_SETS))
def test_makespan_respects_lower_bounds_and_timeline_rules(n_ops, width, seed, devices):
    graph = synthetic_graph(n_ops, width, seed)
    ds = parse_devices(devices)
    costs = graph.cost_ms(ds)
    placement = _random_placement(np.random.default_rng(seed), graph, ds)
    r = simulate(graph, ds, placement, costs=costs, timeline=True)
    assert r.feasible
    eps = 1e-9
    assert r.makespan_ms >= critical_path_ms(graph, costs) - eps
    assert r.makespan_ms >= costs.min(axis=1).sum() / ds.n - eps
    assert r.makespan_ms >= lower_bound_ms(graph, costs) - eps
    ops = {e.name: e for e in r.timeline if e.kind == "op"}
    assert len(ops) == graph.n
    # one op at a time per device; transfers on one link one at a time
    for where in {e.where for e in r.timeline}:
        bars = sorted((e.start_ms, e.end_ms) for e in r.timeline if e.where == where)
        assert all(a[1] <= b[0] + eps for a, b in zip(bars, bars[1:]))
    # an op starts only after each input is on its device
    for i, name in enumerate(graph.ops):
        for p in graph.preds[i]:
            need = ops[graph.ops[p]].end_ms + ds.transfer_ms(placement[p], placement[i], graph.out_bytes[p])
            assert ops[name].start_ms >= need - eps
        assert abs(ops[name].end_ms - ops[name].start_ms - costs[i, placement[i]]) < 1e-9
    assert r.makespan_ms == pytest.approx(max(e.end_ms for e in ops.values()))


def test_single_device_makespan_is_total_work():
    graph = synthetic_graph(30, 4, 1)
    ds = parse_devices("4xv100")
    costs = graph.cost_ms(ds)
    r = simulate(graph, ds, np.zeros(graph.n, dtype=int), costs=costs)
    assert r.makespan_ms == pytest.approx(costs[:, 0].sum())
    assert r.period_ms == pytest.approx(costs[:, 0].sum())


def test_memory_limit_makes_placement_infeasible_and_heuristics_respect_it():
    graph = synthetic_graph(30, 3, 2)
    need = graph.param_bytes + graph.out_bytes
    small = DeviceKind("tiny", 10.0, 500.0, mem_gb=need.sum() / 1e9 / 2.5)  # the model needs about 3 of them
    lat, bw = LINKS["pcie"]
    ds = DeviceSet([small] * 4, np.full((4, 4), lat) * (1 - np.eye(4)), np.full((4, 4), bw))
    r = simulate(graph, ds, np.zeros(graph.n, dtype=int))
    assert not r.feasible and r.makespan_ms == float("inf") and "GB" in r.violation
    with pytest.raises(ValueError, match="To fix"):
        HEURISTICS["single"](graph, ds, graph.cost_ms(ds))
    for name in ("expert", "heft", "metf", "msct"):
        p = HEURISTICS[name](graph, ds, graph.cost_ms(ds))
        assert (memory_bytes(graph, ds, p) <= ds.mem_bytes).all(), name
        assert simulate(graph, ds, p).feasible, name


@pytest.mark.parametrize("devices", _DEVICE_SETS)
def test_every_policy_returns_a_valid_placement(devices):
    ds = parse_devices(devices)
    for seed in range(3):
        graph = synthetic_graph(35, 5, seed)
        costs = graph.cost_ms(ds)
        placements = {name: h(graph, ds, costs) for name, h in HEURISTICS.items()}
        placements["learned"] = learn_placement(graph, ds, costs, init=placements["heft"], episodes=5).placement
        for name, p in placements.items():
            assert p.shape == (graph.n,) and p.dtype.kind == "i", name
            assert p.min() >= 0 and p.max() < ds.n, name
            assert simulate(graph, ds, p, costs=costs).feasible, name


def test_heft_beats_single_device_on_a_wide_graph():
    graph = synthetic_graph(60, 6, 3)
    ds = parse_devices("4xv100")
    costs = graph.cost_ms(ds)
    single = simulate(graph, ds, HEURISTICS["single"](graph, ds, costs), costs=costs).makespan_ms
    heft = simulate(graph, ds, HEURISTICS["heft"](graph, ds, costs), costs=costs).makespan_ms
    assert heft < 0.9 * single


def test_learned_policy_improves_on_its_start_and_never_loses_to_it():
    graph = synthetic_graph(40, 5, 4)
    ds = parse_devices("4xv100")
    costs = graph.cost_ms(ds)
    start = np.zeros(graph.n, dtype=int)
    r = learn_placement(graph, ds, costs, init=start, episodes=60, batch=8, seed=0)
    assert r.seed_makespan_ms == pytest.approx(simulate(graph, ds, start, costs=costs).makespan_ms)
    assert r.makespan_ms == pytest.approx(simulate(graph, ds, r.placement, costs=costs).makespan_ms)
    assert r.makespan_ms < 0.85 * r.seed_makespan_ms  # found parallelism from the all-on-one-device start
    assert all(a >= b for a, b in zip(r.history, r.history[1:]))


def test_reinforce_full_placements_beat_random_placements():
    graph = synthetic_graph(25, 4, 5)
    ds = parse_devices("4xv100")
    costs = graph.cost_ms(ds)
    rng = np.random.default_rng(0)
    random_mean = np.mean([simulate(graph, ds, _random_placement(rng, graph, ds), costs=costs).makespan_ms
                           for _ in range(30)])
    r = learn_placement(graph, ds, costs, mode="full", episodes=60, batch=8, seed=0)
    assert r.makespan_ms < random_mean


def test_bad_placement_and_arguments_name_the_problem():
    graph = synthetic_graph(5, 2, 0)
    ds = parse_devices("2xv100")
    with pytest.raises(ValueError, match="To fix"):
        simulate(graph, ds, [0, 1, 2, 0, 0])
    with pytest.raises(ValueError, match="shape"):
        simulate(graph, ds, [0, 1])
    for bad in ("4xq100", "0xv100", "x"):
        with pytest.raises(ValueError, match="To fix"):
            parse_devices(bad)
    with pytest.raises(ValueError, match="To fix"):
        learn_placement(graph, ds, mode="nope")


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)
        return self.fc(torch.flatten(y, 1))


def test_fx_graph_counts_flops_bytes_and_edges():
    graph = from_module(_Branchy(), torch.randn(1, 3, 8, 8), name="branchy", repeats=3)
    names = graph.ops
    conv_a = names.index("a")
    assert graph.flops[conv_a] == 2 * (8 * 8 * 8) * 3 * 3 * 3
    assert graph.param_bytes[conv_a] == (8 * 3 * 3 * 3 + 8) * 4
    assert graph.out_bytes[conv_a] == 8 * 8 * 8 * 4
    assert graph.flops[names.index("fc")] == 2 * 10 * 16 * 8 * 8
    cat = names.index("cat")
    assert sorted(graph.ops[p] for p in graph.preds[cat]) == ["b", "relu"]
    assert graph.branch_width(min_share=0.0) >= 2  # conv a and conv b do not depend on each other
    assert graph.parallelism() >= 1.0
    assert (graph.host_ms > 0).all() and graph.measured_ms > 0
    fused = coarsen(graph)
    assert fused.n < graph.n and fused.flops.sum() == pytest.approx(graph.flops.sum())
    assert fused.host_ms.sum() == pytest.approx(graph.host_ms.sum())


def test_roofline_scaling_orders_device_kinds():
    graph = synthetic_graph(20, 3, 6)
    v100, k80 = graph.kind_cost_ms(KINDS["v100"]), graph.kind_cost_ms(KINDS["k80"])
    assert (v100 < k80).all() and (v100 < graph.host_ms).all()
    assert (v100 >= KINDS["v100"].launch_ms).all()


def _weighted_graph(weights, edges, name="g"):
    n = len(weights)
    host = DeviceKind("h", 1.0, 10.0, 64.0, launch_ms=0.0, util=1.0)
    return OpGraph(name, [f"op{i}" for i in range(n)], ["x"] * n, np.ones(n), np.zeros(n), np.ones(n), np.ones(n),
                   np.asarray(weights, float), edges, 4, host)


def test_parallel_branches_are_defined_by_work_not_by_shape():
    chain = _weighted_graph([1, 2, 3], [(0, 1), (1, 2)])
    assert chain.parallelism() == pytest.approx(1.0) and chain.branch_width() == 1
    assert not chain.has_parallel_branches()
    # two equal heavy branches between a fork and a join: T1 = 22, T∞ = 12
    diamond = _weighted_graph([1, 10, 10, 1], [(0, 1), (0, 2), (1, 3), (2, 3)])
    assert diamond.parallelism() == pytest.approx(22 / 12) and diamond.branch_width() == 2
    assert diamond.has_parallel_branches()
    # a residual block: heavy convs on one path, a cheap shortcut on the other (ResNet's identity / 1x1)
    residual = _weighted_graph([1, 10, 10, 0.3, 1], [(0, 1), (1, 2), (0, 3), (2, 4), (3, 4)])
    assert residual.parallelism() < 1.05 and residual.branch_width() == 1
    assert not residual.has_parallel_branches()
    assert residual.branch_width(min_share=0.0) == 2  # structurally it does branch


def test_transfers_overlap_compute_and_a_tensor_crosses_once_per_device():
    """a feeds b (same device) and c, d (other device): a's tensor crosses the link once, while b computes.
    makespan = max(a + b, a + transfer + c + d)."""
    graph = _weighted_graph([1.0, 2.0, 0.5, 0.5], [(0, 1), (0, 2), (0, 3)])
    graph.out_bytes[:] = 12e6  # 1 ms on a 12 GB/s link
    lat, bw = 0.01, 12.0
    ds = DeviceSet([graph.host] * 2, np.full((2, 2), lat) * (1 - np.eye(2)), np.full((2, 2), bw))
    r = simulate(graph, ds, [0, 0, 1, 1], timeline=True)
    transfers = [e for e in r.timeline if e.kind == "transfer" and e.name == "op0"]
    assert len(transfers) == 1 and transfers[0].start_ms == pytest.approx(1.0)  # sent once for two consumers
    b = next(e for e in r.timeline if e.kind == "op" and e.name == "op1")
    assert b.start_ms == pytest.approx(1.0)  # device 0 computes while the tensor is on the link
    assert r.makespan_ms == pytest.approx(max(1.0 + 2.0, 1.0 + lat + 1.0 + 0.5 + 0.5))


def test_learned_policy_from_one_device_moves_a_whole_branch_to_the_other():
    """Fork, two heavy 3-op branches, join: the policy must co-locate one branch's ops on the second device."""
    graph = _weighted_graph([0.1, 1, 1, 1, 1, 1, 1, 0.1], [(0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6), (3, 7),
                                                          (6, 7)])
    lat, bw = LINKS["nvlink"]
    ds = DeviceSet([graph.host] * 2, np.full((2, 2), lat) * (1 - np.eye(2)), np.full((2, 2), bw))
    r = learn_placement(graph, ds, init=np.zeros(graph.n, dtype=int), episodes=30, batch=8, seed=0)
    assert r.seed_makespan_ms == pytest.approx(6.2)
    assert r.makespan_ms < 3.3  # 0.1 + 3 + 0.1 plus two tiny transfers
    a, b = r.placement[[1, 2, 3]], r.placement[[4, 5, 6]]
    assert len(set(a)) == 1 and len(set(b)) == 1 and a[0] != b[0]


@settings(max_examples=25, deadline=None)
@given(n_ops=st.integers(2, 30), width=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_no_placement_beats_the_work_span_speedup_bound(n_ops, width, seed):
    from isthmus.placement.place import compare_policies

    graph = synthetic_graph(n_ops, width, seed)
    ds = parse_devices("4xv100")
    report = compare_policies(graph, ds, episodes=3)
    costs = graph.cost_ms(ds)
    assert report.speedup_bound == pytest.approx(costs[:, 0].sum() / max(graph.span_ms(costs[:, 0]),
                                                                        costs[:, 0].sum() / 4))
    assert report.speedup_bound <= graph.parallelism(costs[:, 0]) + 1e-9
    for name, span in report.policies.items():
        assert report.policies["single"] / span <= report.speedup_bound + 1e-9, name


def test_gpu_cost_of_a_memory_bound_op_streams_at_device_bandwidth():
    """The host's compute efficiency scales compute, not memory traffic: a max-pool the host runs at 1% of its
    bandwidth still streams at util · W on a V100."""
    host = DeviceKind("h", 0.05, 10.0, 64.0, launch_ms=0.0, util=1.0)
    moved = 4e6  # bytes in + out
    pool = OpGraph("pool", ["pool"], ["MaxPool2d"], [1e6], [0.0], [3.2e6], [0.8e6], [100 * moved / 10e6], [], 4, host)
    conv = OpGraph("conv", ["conv"], ["Conv2d"], [1e9], [1e5], [1e5], [1e5], [2 * 1e9 / 0.05e9], [], 4, host)
    v100 = KINDS["v100"]
    assert pool.kind_cost_ms(v100)[0] == pytest.approx(moved / (v100.mem_bw_gbps * 1e6) / v100.util + v100.launch_ms)
    # a compute-bound op at 50% of the host's peak keeps that efficiency on the GPU
    assert conv.kind_cost_ms(v100)[0] == pytest.approx(1e9 / (v100.tflops * 1e9 * 0.5) / v100.util + v100.launch_ms)


@pytest.fixture(scope="module")
def _cache(tmp_path_factory):
    import os

    old = os.environ.get("ISTHMUS_CACHE")
    os.environ["ISTHMUS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("ISTHMUS_CACHE")
    else:
        os.environ["ISTHMUS_CACHE"] = old


@pytest.mark.parametrize("model", ["alexnet_exits", "vgg", "resnet", "inception", "rnnlm"])
def test_simulated_single_device_cpu_latency_within_15_percent(model, _cache):
    """The simulator with per-op CPU costs against the whole model timed with torch (same thread count).
    A shared machine's load can spoil one measurement, so up to three independent ones are taken."""
    ds = parse_devices("cpu")
    ratios = []
    for _ in range(3):
        graph = from_zoo(model, size="small", repeats=25, cache=False)
        sim = simulate(graph, ds, np.zeros(graph.n, dtype=int)).makespan_ms
        ratios.append(sim / graph.measured_ms)
        if abs(ratios[-1] - 1) <= 0.15:
            break
    assert abs(ratios[-1] - 1) <= 0.15, ratios


def test_place_cli_json_and_bad_input(_cache):
    from isthmus.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["place", "inception", "--devices", "2xv100", "--size", "small", "--episodes", "5",
                              "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["model"] == "inception" and data["devices"] == "2xv100"
    assert set(data["policies"]) >= {"single", "expert", "heft", "msct", "learned"}
    assert data["policies"]["learned"] <= min(v for k, v in data["policies"].items() if k != "learned") + 1e-9
    assert set(data["placement"].values()) <= {"v100:0", "v100:1"} and data["search_s"] >= 0
    batched = runner.invoke(app, ["place", "inception", "--devices", "2xv100", "--size", "small", "--episodes", "3",
                                  "--batch-size", "4", "--json"])
    assert batched.exit_code == 0, batched.output
    data4 = json.loads(batched.output)
    assert data4["batch_size"] == 4 and data["batch_size"] == 1
    assert data4["policies"]["single"] > data["policies"]["single"]  # four requests take longer than one
    assert data4["speedup_bound"] >= data4["policies"]["single"] / data4["policies"]["learned"] - 1e-9
    for args in (["place", "nosuch", "--devices", "2xv100"], ["place", "vgg", "--devices", "2xq9"],
                 ["place", "vgg", "--episodes", "-1"], ["place", "vgg", "--batch-size", "0"]):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2 and "To fix" in bad.output, args


@pytest.mark.parametrize("devices", ["4xv100", "2xv100+2xk80"])
def test_place_prints_bounds_no_policy_beats(devices, _cache):
    """Inception on 4 V100s: T1/T∞ was taken on the host CPU's op latencies (1.32 < HEFT's 1.50x); both printed
    bounds are on the placed devices' op costs, so no policy's speed-up over single exceeds either."""
    from isthmus.cli import app

    out = CliRunner().invoke(app, ["place", "inception", "--devices", devices, "--episodes", "5", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["speedup_bound"] <= data["parallelism"] + 1e-9
    for name, span in data["policies"].items():
        assert data["policies"]["single"] / span <= data["speedup_bound"] + 1e-4, (name, data)


def _two_devices(host, lat=0.001, bw=1000.0, n=2):
    return DeviceSet([host] * n, np.full((n, n), lat) * (1 - np.eye(n)), np.full((n, n), bw))


def _brute_force_ms(graph, ds):
    import itertools

    costs = graph.cost_ms(ds)
    return min(simulate(graph, ds, np.array(p), costs=costs).makespan_ms
               for p in itertools.product(range(ds.n), repeat=graph.n))


_TINY = {
    "diamond": ([0.5, 3.0, 2.0, 0.5], [(0, 1), (0, 2), (1, 3), (2, 3)]),
    "chain": ([1.0, 2.0, 0.5, 1.5], [(0, 1), (1, 2), (2, 3)]),
    "three_branches": ([0.2, 2.0, 1.5, 1.0, 0.2], [(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4)]),
    "two_diamonds": ([0.2, 2.0, 1.0, 0.3, 1.5, 1.4, 0.2], [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (3, 5), (4, 6),
                                                          (5, 6)]),
}


@pytest.mark.parametrize("name", sorted(_TINY))
def test_exact_milp_matches_brute_force_on_tiny_graphs(name):
    """Tiny tensors (no link ever contends) on two alike devices: the MILP optimum is the best simulated makespan
    over all 2^n placements; the whole MILP and the articulation-segment split agree."""
    from isthmus.placement.exact import _solve_milp, optimal_placement

    weights, edges = _TINY[name]
    graph = _weighted_graph(weights, edges, name)
    graph.out_bytes[:] = 1e3  # 1 µs on the link
    ds = _two_devices(graph.host)
    best = _brute_force_ms(graph, ds)
    r = optimal_placement(graph, ds, time_limit_s=10)
    assert r.optimal and r.value_ms == pytest.approx(best, abs=1e-6) and r.bound_ms == pytest.approx(best, abs=1e-6)
    assert simulate(graph, ds, r.placement).makespan_ms == pytest.approx(best, abs=1e-6)
    finish = r.start_ms + graph.cost_ms(ds)[np.arange(graph.n), r.placement]
    assert finish.max() == pytest.approx(r.value_ms, abs=1e-6)  # the schedule behind the value
    for i, j in graph.edges:
        assert r.start_ms[j] >= finish[i] - 1e-6
    whole = _solve_milp(graph, ds, graph.cost_ms(ds), 10, np.zeros(graph.n, dtype=int), 1e-6)
    assert whole.optimal and whole.value_ms == pytest.approx(best, abs=1e-6)


def test_exact_milp_is_a_lower_bound_with_contention_and_mixed_devices():
    """Large tensors (links contend) and a V100 + K80 pair: MILP optimum ≤ the best simulated placement."""
    from isthmus.placement.exact import optimal_placement

    graph = synthetic_graph(7, 3, 11)
    ds = parse_devices("1xv100+1xk80")
    r = optimal_placement(graph, ds, time_limit_s=10)
    best = _brute_force_ms(graph, ds)
    assert r.optimal and r.bound_ms <= best + 1e-6
    assert r.value_ms <= simulate(graph, ds, r.placement).makespan_ms + 1e-6
    heavy = _weighted_graph(*_TINY["three_branches"])
    heavy.out_bytes[:] = 2e9  # 2 ms per transfer at 1 GB/s
    ds2 = _two_devices(heavy.host, bw=1.0)
    r2 = optimal_placement(heavy, ds2, time_limit_s=10)
    assert r2.optimal and r2.bound_ms <= _brute_force_ms(heavy, ds2) + 1e-6


@pytest.mark.parametrize("devices", ["2xv100", "8xv100", "2xv100+2xk80"])
def test_exact_bound_never_exceeds_a_heuristic_on_synthetic_graphs(devices):
    from isthmus.placement.exact import optimal_placement

    ds = parse_devices(devices)
    for seed in range(2):
        graph = synthetic_graph(18, 4, 20 + seed)
        costs = graph.cost_ms(ds)
        r = optimal_placement(graph, ds, costs, time_limit_s=1)
        assert r.bound_ms <= r.value_ms + 1e-9 and r.bound_ms >= lower_bound_ms(graph, costs) - 1e-6
        assert simulate(graph, ds, r.placement, costs=costs).feasible
        for name, h in HEURISTICS.items():
            span = simulate(graph, ds, h(graph, ds, costs), costs=costs).makespan_ms
            assert r.bound_ms <= span + 1e-6, name


@pytest.mark.parametrize("model", ["alexnet_exits", "vgg", "resnet", "inception", "rnnlm"])
def test_exact_bound_is_below_every_heuristic_on_zoo_graphs(model, _cache):
    from isthmus.placement.exact import optimal_placement

    graph = from_zoo(model, size="small", repeats=3)
    for devices in ("2xv100", "4xv100"):
        ds = parse_devices(devices)
        costs = graph.cost_ms(ds)
        r = optimal_placement(graph, ds, costs, time_limit_s=3)
        spans = {name: simulate(graph, ds, h(graph, ds, costs), costs=costs).makespan_ms
                 for name, h in HEURISTICS.items()}
        assert all(r.bound_ms <= s + 1e-6 for s in spans.values()), (devices, r.bound_ms, spans)
        assert r.bound_ms >= lower_bound_ms(graph, costs) - 1e-6
        assert simulate(graph, ds, r.placement, costs=costs).makespan_ms >= r.bound_ms - 1e-6
    with pytest.raises(ValueError, match="To fix"):
        optimal_placement(graph, parse_devices("2xv100"), time_limit_s=0)
