"""Edgent-style per-layer-type regression: exact on linear data, better than a constant on measured
layers it did not see, JSON round trip, predicted profiles."""

import random

import pytest

from isthmus.profiler.core import LayerProfile, profile_module
from isthmus.profiler.regression import LayerRegression, mape, synthetic_layers


def _linear_layers(kind, n, seed):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        in_b, out_b, flops = rng.randint(1e3, 1e6), rng.randint(1e3, 1e6), rng.randint(1e5, 1e9)
        latency = 0.05 + 2e-6 * in_b + 1e-6 * out_b + 3e-8 * flops if kind == "conv" else 0.01 + 5e-7 * in_b
        out.append(LayerProfile(f"{kind}{i}", kind, latency, out_b, in_b, flops))
    return out


def test_recovers_an_exact_linear_law_per_kind():
    train = _linear_layers("conv", 20, 0) + _linear_layers("relu", 10, 1)
    reg = LayerRegression.fit(train)
    unseen = _linear_layers("conv", 10, 2) + _linear_layers("relu", 5, 3)
    errors = mape(reg, unseen)
    assert errors["conv"] < 0.5 and errors["relu"] < 0.5 and errors["all"] < 0.5
    assert reg.fits["relu"].features == ("in_bytes",)
    again = LayerRegression.from_json(reg.to_json())
    assert [again.predict(x) for x in unseen] == pytest.approx([reg.predict(x) for x in unseen])


def test_loglog_recovers_a_power_law():
    layers = [LayerProfile(f"c{i}", "conv", 1e-4 * (1 + f) ** 0.8, 1, 1, f) for i, f in
              enumerate([10**3, 10**4, 10**5, 10**6, 10**7, 10**8])]
    reg = LayerRegression.fit(layers[::2], form="loglog")
    assert mape(reg, layers[1::2])["all"] < 5.0
    with pytest.raises(ValueError, match="To fix"):
        LayerRegression.fit(layers, form="cubic")


def test_unknown_kind_uses_the_fallback_and_too_few_layers_is_an_error():
    reg = LayerRegression.fit(_linear_layers("conv", 6, 0))
    odd = LayerProfile("x", "lstm", 1.0, 10, 10, 10)
    assert reg.predict(odd) >= 0
    with pytest.raises(ValueError, match="To fix"):
        LayerRegression.fit(_linear_layers("conv", 2, 0))


def test_measured_layers_beat_a_constant_predictor_on_unseen_layers():
    measured = synthetic_layers(per_kind=10, seed=0, repeats=5, scale=0.5, kinds=("conv", "fc"))
    train, test = measured[::2], measured[1::2]
    constant = sum(x.latency_ms for x in train) / len(train)
    const_mape = 100 * sum(abs(constant - x.latency_ms) / x.latency_ms for x in test) / len(test)
    for form in ("linear", "loglog"):
        assert mape(LayerRegression.fit(train, form=form), test)["all"] < const_mape, form


def test_predicted_profile_keeps_structure():
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 4))
    prof = profile_module(model, torch.rand(1, 3, 8, 8), repeats=2)
    reg = LayerRegression.fit(_linear_layers("conv", 6, 0) + _linear_layers("relu", 6, 1))
    pred = reg.predict_profile(prof)
    assert [x.name for x in pred.layers] == [x.name for x in prof.layers]
    assert pred.edges == prof.edges and pred.device.endswith("/predicted")
    assert all(x.latency_ms >= 0 for x in pred.layers)
