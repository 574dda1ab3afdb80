"""Head/tail modules reproduce the whole model; SplitPoints for the planner are Pareto-useful."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from isthmus.models import build, example_input  # noqa: E402
from isthmus.partition.splits import split_modules  # noqa: E402


def _run(head, tail, x):
    act = head(x)
    return tail(*act) if isinstance(act, tuple) else tail(act)


@pytest.mark.parametrize("name", ["resnet", "inception"])
def test_dag_head_tail_equals_model(name):
    torch.manual_seed(0)
    model = build(name, "small")
    x = example_input(name, "small", batch=2)
    traced = torch.fx.symbolic_trace(model)
    n = sum(1 for v in traced.graph.nodes if v.op in ("call_module", "call_function", "call_method"))
    with torch.inference_mode():
        want = model(x)
        for split in (-1, n // 2, n - 1):
            head, tail = split_modules(traced, split)
            assert torch.allclose(_run(head, tail, x), want, atol=1e-5), split


def test_chain_head_tail_per_exit():
    from isthmus.models.zoo import exit_logits

    model = build("alexnet_exits", "small")
    x = example_input("alexnet_exits", "small", batch=2)
    with torch.inference_mode():
        logits = exit_logits(model, x)
        for key, want in logits.items():
            exit = None if int(key) == len(model.layers) - 1 else int(key)
            length = int(key) + 1 + (len(model.exits[key]) if exit is not None else 0)
            for split in (-1, int(key), length - 1):
                head, tail = split_modules(model, split, exit)
                assert torch.allclose(_run(head, tail, x), want, atol=1e-5), (key, split)
    with pytest.raises(ValueError, match="exit 5 does not exist"):
        split_modules(model, 0, 5)
    with pytest.raises(ValueError, match="split 99 outside"):
        split_modules(model, 99, None)


def _spec():
    from isthmus.spec import parse_spec

    return parse_spec({
        "name": "split-test",
        "regions": [{"name": "us-east", "instance_types": [
            {"name": "g4dn.xlarge", "device": "t4", "price_per_hour": 0.526, "max_count": 4},
            {"name": "c6i.2xlarge", "device": "xeon8", "price_per_hour": 0.34, "max_count": 4}]}],
        "edge_sites": [{"name": "cam-1", "device": "rpi3", "count": 2}],
        "devices": {"t4": {"kind": "gpu", "tflops": 8.1, "mem_gb": 16},
                    "xeon8": {"kind": "cpu", "tflops": 0.6, "mem_gb": 16},
                    "rpi3": {"kind": "cpu", "tflops": 0.004, "mem_gb": 1}},
        "links": [{"src": "cam-1", "dst": "us-east", "rtt_ms": 30, "bandwidth_mbps": 10}],
        "sources": [{"name": "cams", "location": "cam-1", "rate_rps": 5,
                     "data_versions": [{"name": "full", "bytes": 150000}]},
                    {"name": "web", "location": "us-east", "rate_rps": 5,
                     "data_versions": [{"name": "full", "bytes": 150000}]}],
        "models": [{"name": "alex", "zoo": "alexnet_exits", "versions": [
                        {"name": "fp32", "accuracy": 0.8, "latency_ms": {"t4": 3.0}},
                        {"name": "custom", "accuracy": 0.7, "latency_ms": {"t4": 2.0}}]},
                   {"name": "res", "zoo": "resnet", "versions": [{"name": "fp32", "accuracy": 0.76,
                                                                  "latency_ms": {"t4": 5.0}}]},
                   {"name": "vgg-web", "zoo": "vgg", "versions": [{"name": "fp32", "accuracy": 0.7,
                                                                   "latency_ms": {"t4": 5.0}}]}],
        "services": [{"name": "a", "source": "cams", "model": "alex", "slo_ms": 500},
                     {"name": "r", "source": "cams", "model": "res", "slo_ms": 500},
                     {"name": "v", "source": "web", "model": "vgg-web", "slo_ms": 500}]})


def _dominates(a, b, edge, clouds, default_acc):
    va = [a.head_ms[edge], a.activation_bytes] + [a.tail_ms.get(c, 0.0) for c in clouds] + [
        -(a.accuracy if a.accuracy is not None else default_acc)]
    vb = [b.head_ms[edge], b.activation_bytes] + [b.tail_ms.get(c, 0.0) for c in clouds] + [
        -(b.accuracy if b.accuracy is not None else default_acc)]
    return all(x <= y for x, y in zip(va, vb)) and va != vb


def test_fill_splits_pareto_points_for_edge_sources():
    from isthmus.partition import fill_splits
    from isthmus.partition.profiles import chain_table
    from isthmus.profiler import profile_module

    profiles = {}
    for name in ("alexnet_exits", "resnet"):
        profiles[(name, "fp32")] = profile_module(build(name, "small"), example_input(name, "small"),
                                                  model_name=name, size="small", repeats=2, warmup=1)
    exit_acc = {"3": 0.70, "7": 0.80, "9": 0.85, "11": 0.90, "22": 0.95}
    for e in profiles[("alexnet_exits", "fp32")].exits:
        e.accuracy = exit_acc[e.after]
    spec = _spec()
    filled = fill_splits(spec, profiles=profiles)
    assert all(not v.splits for m in spec.models for v in m.versions)  # input untouched
    alex, res, vgg = (filled.model(n) for n in ("alex", "res", "vgg-web"))
    assert not vgg.versions[0].splits  # only used by a source in a region
    assert not alex.versions[1].splits  # "custom" is not a zoo version
    for model, default_acc in ((alex, 0.8), (res, 0.76)):
        splits = model.versions[0].splits
        assert splits
        for p in splits:
            assert set(p.head_ms) == {"rpi3"}
            assert set(p.tail_ms) in ({"t4", "xeon8"}, set())
            assert (p.activation_bytes == 0) == (not p.tail_ms)
            assert not any(_dominates(q, p, "rpi3", ["t4", "xeon8"], default_acc) for q in splits)
    n_res = len(profiles[("resnet", "fp32")].layers)
    assert len(res.versions[0].splits) < n_res  # Pareto pruning keeps the route count small
    # numbers: head on rpi3 and tail on t4 are the local prefix sums scaled by the speed factors
    local = profiles[("alexnet_exits", "fp32")]
    table = chain_table(local, local)
    # speed factors are 1000·tflops / local GFLOPS; the local GFLOPS cache is shared with other runs, so
    # take the rpi3 factor from the output and check the t4 one by the declared ratio 8.1 / 0.004
    last = max((p for p in alex.versions[0].splits if p.exit is None), key=lambda p: p.split)
    sf_rpi = table.final.head[last.split + 1] / last.head_ms["rpi3"]
    sf_t4 = sf_rpi * 8.1 / 0.004
    for p in alex.versions[0].splits:
        t = next(t for t in table.tables if t.path.exit == p.exit)
        assert p.head_ms["rpi3"] == pytest.approx(t.head[p.split + 1] / sf_rpi)
        if p.tail_ms:
            assert p.tail_ms["t4"] == pytest.approx(t.tail[p.split + 1] / sf_t4)
        expected_acc = None if p.exit is None else 0.8 - (0.95 - exit_acc[str(p.exit)])
        assert p.accuracy == (None if expected_acc is None else pytest.approx(expected_acc))
    # pruning loses no latency optimum: per exit and bandwidth, some kept split at least as accurate
    # as that exit is at least as fast as the exit's best split
    acc = {None: 0.8} | {int(k): 0.8 - (0.95 - a) for k, a in exit_acc.items()}
    for bw in (0.1, 1.0, 10.0, 100.0, 1000.0):
        for t in table.tables:
            kept = [p for p in alex.versions[0].splits if acc[p.exit] >= acc[t.path.exit] - 1e-12]
            best_kept = min(p.head_ms["rpi3"] + (8 * p.activation_bytes / (1000 * bw) + p.tail_ms["t4"]
                                                 if p.tail_ms else 0.0) for p in kept)
            best_all = min(t.head[k + 1] / sf_rpi + (8 * t.sent[k + 1] / (1000 * bw) + t.tail[k + 1] / sf_t4
                                                     if k < t.n - 1 else 0.0) for k in range(0, t.n))
            assert best_kept <= best_all * (1 + 1e-9)


def test_export_partitions_dag_multi_tensor_cut(tmp_path):
    from isthmus.partition import export_partitions

    model = build("inception", "small")
    x = example_input("inception", "small")
    traced = torch.fx.symbolic_trace(model)
    # a split inside an Inception module: several branch tensors cross the cut
    split = next(i for i in range(5, 40) if isinstance(
        next(v for v in split_modules(traced, i)[0].graph.nodes if v.op == "output").args[0], tuple))
    head_path, tail_path = export_partitions("inception", "small", split, None, tmp_path, model=model)
    head, tail = torch.jit.load(str(head_path)), torch.jit.load(str(tail_path))
    with torch.no_grad():
        assert torch.allclose(_run(head, tail, x), model(x), atol=1e-5)
