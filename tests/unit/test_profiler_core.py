"""Profiler: per-layer measurements of real torch models, JSON round trip, cache, scaling."""

import pytest
import torch

from isthmus.profiler import ExitProfile, LayerProfile, ModelProfile, profile_model, profile_module


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ISTHMUS_CACHE", str(tmp_path))


def test_chain_profile_has_one_node_per_layer_and_exits():
    prof = profile_model("alexnet_exits", size="small", repeats=2, progress=False)
    assert [p.name for p in prof.layers] == [str(i) for i in range(23)]
    assert prof.edges == [(str(i), str(i + 1)) for i in range(22)]
    assert [p.kind for p in prof.layers[:4]] == ["conv", "relu", "pool", "lrn"]
    assert prof.layers[-1].kind == "fc" and prof.layers[-1].out_bytes == 10 * 4
    assert prof.input_bytes == 64 * 4 and prof.layers[0].in_bytes == 64 * 4
    # out_bytes of layer i is in_bytes of layer i+1; conv1 is 16 channels of 8x8 fp32
    assert all(a.out_bytes == b.in_bytes for a, b in zip(prof.layers, prof.layers[1:]))
    assert prof.layers[0].out_bytes == 16 * 64 * 4
    assert prof.layers[0].flops == 2 * 16 * 64 * 1 * 9
    assert [e.after for e in prof.exits] == ["3", "7", "9", "11", "22"]
    assert all(len(e.layers) == 5 for e in prof.exits[:4]) and prof.exits[-1].layers == []
    assert all(p.latency_ms > 0 for p in prof.layers)
    assert prof.threads >= 1 and prof.device == "local-cpu"


def test_dag_profile_counts_every_call_once_with_its_edges():
    prof = profile_model("resnet", size="small", repeats=1, progress=False)
    names = [p.name for p in prof.layers]
    assert len(names) == len(set(names))
    produced = set(names)
    assert all(a in produced and b in produced for a, b in prof.edges)
    adds = [p for p in prof.layers if p.kind == "add"]
    assert len(adds) == 3  # one residual join per block
    for add in adds:
        assert len([e for e in prof.edges if e[1] == add.name]) == 2
    order = {n: i for i, n in enumerate(names)}
    assert all(order[a] < order[b] for a, b in prof.edges)  # topological order


def test_json_round_trip_cache_and_scaling(tmp_path):
    prof = profile_model("vgg", size="small", repeats=1, progress=False)
    again = ModelProfile.from_json(prof.to_json())
    assert again == prof and isinstance(again.layers[0], LayerProfile)
    cached = list((tmp_path / "profiles").glob("vgg__fp32__small__local-cpu*.json"))
    assert len(cached) == 1
    assert profile_model("vgg", size="small", repeats=1, progress=False) == prof  # served from the cache
    slow = prof.scaled(0.25, device="rpi3")
    assert slow.device == "rpi3"
    assert slow.latency_ms == pytest.approx(4 * prof.latency_ms)
    assert [p.out_bytes for p in slow.layers] == [p.out_bytes for p in prof.layers]
    with pytest.raises(ValueError, match="To fix"):
        prof.scaled(0)


def test_profile_module_on_any_traceable_module():
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    prof = profile_module(model, torch.rand(4, 32), repeats=2)
    assert [p.kind for p in prof.layers] == ["fc", "relu", "fc"]
    assert prof.layers[0].flops == 2 * 4 * 64 * 32
    assert prof.layers[2].out_bytes == 4 * 8 * 4


def test_exit_profile_is_a_dataclass():
    e = ExitProfile("3", [], 0.5)
    assert e.after == "3" and e.accuracy == 0.5


def test_unknown_version_is_rejected():
    with pytest.raises(ValueError, match="unknown version.*To fix"):
        profile_model("vgg", version="fp64", progress=False)
