"""Cloud-configuration search: BO stays in the space, finds the optimum, baselines, `isthmus configure`, fill_spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from isthmus.placement.configure import (Config, probes_to_within, random_spec, search, space_from_spec)
from isthmus.placement.graph import synthetic_graph
from isthmus.placement.place import fill_spec


def _space(seed: int, quantile: float = 0.3):
    graph = synthetic_graph(30, 4, seed, name="inception")
    space = space_from_spec(random_spec(seed, "inception"), "inception", graph, requests=5000, qos_ms=1e9)
    space.set_qos_quantile(quantile)
    return space


@pytest.mark.parametrize("seed", [0, 1])
def test_bo_only_proposes_configurations_of_the_space_once(seed):
    space = _space(seed)
    result = search(space, "bo", seed=seed, max_probes=8, stop_gain=0.0)
    allowed = set(space.configs)
    probed = [Config(p.region, p.instance_type, p.count) for p in result.history]
    assert set(probed) <= allowed and len(set(probed)) == len(probed) == min(8, len(space))
    feasible = [p for p in result.history if p.feasible]
    assert result.best == (min(feasible, key=lambda p: p.cost) if feasible else None)


def test_probe_follows_the_cost_and_feasibility_formula():
    space = _space(3)
    for i in range(0, len(space), 5):
        p = space.probe(i)
        count = space.configs[i].count
        job_ms = p.makespan_ms + (np.ceil(space.requests / count) - 1) * p.period_ms
        assert p.cost == pytest.approx(space.price_per_hour[i] * job_ms / 3.6e6)
        assert p.latency_ms == pytest.approx(space.overhead_ms[i] + p.makespan_ms)
        assert p.feasible == (p.latency_ms <= space.qos_ms and count * 1000 / p.period_ms >= space.rate_rps)


def test_exhaustive_finds_the_optimum_and_every_method_reaches_it():
    space = _space(4)
    opt = space.optimum()
    assert opt is not None
    assert search(space, "exhaustive").best.cost == pytest.approx(opt.cost)
    for method in ("bo", "lcf", "uniform"):
        n = probes_to_within(space, method, 0.05, seed=0)
        assert 1 <= n <= len(space), method


def test_bo_needs_fewer_probes_than_the_baselines_on_average():
    probes = {"bo": [], "lcf": [], "uniform": []}
    for seed in range(5):
        space = _space(seed, quantile=0.25)
        if space.optimum() is None:
            continue
        for method in probes:
            probes[method].append(probes_to_within(space, method, 0.05, seed=seed))
    mean = {k: float(np.mean(v)) for k, v in probes.items()}
    assert mean["bo"] < min(mean["lcf"], mean["uniform"]), mean


def test_lcf_order_is_by_price():
    space = _space(5)
    result = search(space, "lcf", max_probes=10)
    prices = [space.price_per_hour[space.configs.index(Config(p.region, p.instance_type, p.count))]
              for p in result.history]
    assert prices == sorted(prices)


def test_space_errors_name_the_field():
    spec = random_spec(0, "inception")
    graph = synthetic_graph(10, 2, 0)
    with pytest.raises(ValueError, match="To fix"):
        space_from_spec(spec, "nosuch", graph)
    with pytest.raises(ValueError, match="To fix"):
        space_from_spec(spec, "inception", graph, requests=0)
    with pytest.raises(ValueError, match="To fix"):
        search(_space(0), "annealing")


def test_fill_spec_adds_latency_and_capacity_for_missing_device_kinds():
    spec = random_spec(1, "inception")
    graph = synthetic_graph(30, 4, 1, name="inception")
    filled = fill_spec(spec, {"inception": graph})
    version = filled.model("inception").versions[0]
    kinds = {it.device for r in spec.regions for it in r.instance_types}
    assert set(version.latency_ms) == kinds and set(version.capacity_rps) == kinds
    assert all(v > 0 for v in version.latency_ms.values())
    assert not spec.model("inception").versions[0].latency_ms  # the input spec is unchanged


@pytest.fixture()
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ISTHMUS_CACHE", str(tmp_path / "cache"))


def test_configure_cli_json_and_bad_input(tmp_path, _cache):
    from isthmus.cli import app

    spec = random_spec(2, "resnet", slo_ms=50.0).model_dump(exclude_none=True)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    runner = CliRunner()
    out = runner.invoke(app, ["configure", str(path), "--model", "resnet", "--size", "small", "--max-probes", "6",
                              "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert set(data["best"]) == {"region", "instance_type", "count", "cost", "latency_ms"}
    assert data["probes"] == len(data["history"]) <= 6
    assert data["best"]["latency_ms"] <= 50.0
    for args in (["configure", str(path), "--model", "nosuch"], ["configure", str(tmp_path / "none.yaml"),
                 "--model", "resnet"], ["configure", str(path), "--model", "resnet", "--method", "x"]):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2 and "To fix" in bad.output, args


def test_fill_latencies_cli_writes_a_valid_spec(tmp_path, _cache):
    from isthmus.cli import app
    from isthmus.spec import load_spec

    spec = random_spec(3, "rnnlm").model_dump(exclude_none=True)
    path, out = tmp_path / "spec.yaml", tmp_path / "filled.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["fill-latencies", str(path), "--size", "small", "-o", str(out)])
    assert result.exit_code == 0, result.output
    version = load_spec(out).model("rnnlm").versions[0]
    assert set(version.latency_ms) == {it["device"] for r in spec["regions"] for it in r["instance_types"]}
    bad = CliRunner().invoke(app, ["fill-latencies", str(tmp_path / "missing.yaml")])
    assert bad.exit_code == 2 and "To fix" in bad.output
