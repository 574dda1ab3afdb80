"""Per-layer-type latency regression (Edgent, offline stage): predict a layer's latency on a
device from a few measurements, without running the model there.

For each layer kind k a linear model over that kind's features (Edgent's independent variables):

    latency_ms ≈ c₀ + Σ_j c_j · x_j,   c ≥ 0 (non-negative least squares, rows weighted by
                                        1 / latency so the fit minimises relative error)

or, with `form="loglog"`, a power law fitted by ridge least squares in log space (captures
kernels whose throughput changes with size, e.g. small convs or cache effects):

    log latency_ms ≈ c₀ + Σ_j c_j · log(1 + x_j)

conv: x = (input bytes, output bytes, FLOPs) · fc: (input bytes, output bytes, FLOPs) ·
pool: (input bytes, output bytes) · relu, lrn, dropout, bn, ...: (input bytes,).
Kinds never seen fall back to a regression over all layers on (input bytes, FLOPs).
Accuracy is reported as MAPE = mean |pred - meas| / meas on layers the fit did not see.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from isthmus.profiler.core import LayerProfile, ModelProfile

__all__ = ["FEATURES", "LayerRegression", "mape", "synthetic_layers"]

FEATURES: dict[str, tuple[str, ...]] = {
    "conv": ("in_bytes", "out_bytes", "flops"),
    "fc": ("in_bytes", "out_bytes", "flops"),
    "pool": ("in_bytes", "out_bytes"),
    "relu": ("in_bytes",), "lrn": ("in_bytes",), "dropout": ("in_bytes",), "bn": ("in_bytes",),
    "add": ("in_bytes",), "concat": ("in_bytes",), "flatten": ("in_bytes",),
}
_FALLBACK = ("in_bytes", "flops")
_ANY = "*"


def _features(kind: str) -> tuple[str, ...]:
    return FEATURES.get(kind, _FALLBACK)


@dataclass
class _Fit:
    features: tuple[str, ...]
    coef: list[float]  # intercept first, then one per feature
    samples: int
    form: str = "linear"

    def predict(self, layer: LayerProfile) -> float:
        values = [float(getattr(layer, f)) for f in self.features]
        if self.form == "loglog":
            return math.exp(self.coef[0] + sum(c * math.log1p(v) for c, v in zip(self.coef[1:], values)))
        return self.coef[0] + sum(c * v for c, v in zip(self.coef[1:], values))


def _fit_rows(layers: list[LayerProfile], features: tuple[str, ...], form: str) -> _Fit:
    import numpy as np
    from scipy.optimize import nnls

    raw = np.array([[float(getattr(l, f)) for f in features] for l in layers])
    y = np.array([l.latency_ms for l in layers])
    if form == "loglog":
        # ridge in log space (λ = 0.1 on centred features): collinear sizes (pool in/out bytes) must
        # not get huge opposite-sign exponents that explode outside the training range
        logs, target = np.log1p(raw), np.log(np.maximum(y, 1e-6))
        mean = logs.mean(axis=0)
        centred = logs - mean
        slopes = np.linalg.solve(centred.T @ centred + 0.1 * np.eye(len(features)), centred.T @ (target - target.mean()))
        return _Fit(features, [float(target.mean() - mean @ slopes)] + list(map(float, slopes)), len(layers), form)
    x = np.hstack([np.ones((len(y), 1)), raw])
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)  # column scaling for conditioning
    w = 1.0 / np.maximum(y, 1e-6)  # relative error matters (MAPE)
    coef, _ = nnls((x / scale) * w[:, None], y * w)
    return _Fit(features, list(coef / scale), len(layers), form)


@dataclass
class LayerRegression:
    """One non-negative linear latency model per layer kind (plus a fallback over all layers)."""

    device: str = "local-cpu"
    fits: dict[str, _Fit] = field(default_factory=dict)

    @classmethod
    def fit(cls, layers: Iterable[LayerProfile], device: str = "local-cpu", min_samples: int = 3,
            form: str = "linear") -> LayerRegression:
        """Fit each kind with at least `min_samples` layers; every layer also feeds the fallback.
        `form`: "linear" (Edgent) or "loglog" (power law)."""
        if form not in ("linear", "loglog"):
            raise ValueError(f"form {form!r} is not 'linear' or 'loglog'. To fix: pass form='linear' (Edgent)")
        layers = [l for l in layers if l.latency_ms > 0]
        if len(layers) < min_samples:
            raise ValueError(f"{len(layers)} measured layers is too few to fit. To fix: profile more layers "
                             f"(at least {min_samples}), e.g. with synthetic_layers()")
        by_kind: dict[str, list[LayerProfile]] = {}
        for layer in layers:
            by_kind.setdefault(layer.kind, []).append(layer)
        fits = {k: _fit_rows(v, _features(k), form) for k, v in by_kind.items() if len(v) >= min_samples}
        fits[_ANY] = _fit_rows(layers, _FALLBACK, form)
        return cls(device, fits)

    def predict(self, layer: LayerProfile) -> float:
        """Predicted latency (ms) of a layer from its kind, sizes and FLOPs."""
        return max(0.0, self.fits.get(layer.kind, self.fits[_ANY]).predict(layer))

    def predict_profile(self, profile: ModelProfile) -> ModelProfile:
        """The profile with every latency replaced by the regression's prediction."""
        import dataclasses

        def pred(layers: list[LayerProfile]) -> list[LayerProfile]:
            return [dataclasses.replace(l, latency_ms=self.predict(l)) for l in layers]

        exits = [dataclasses.replace(e, layers=pred(e.layers)) for e in profile.exits]
        return dataclasses.replace(profile, device=f"{self.device}/predicted", layers=pred(profile.layers),
                                   exits=exits)

    def to_json(self) -> str:
        return json.dumps({"device": self.device, "fits": {
            k: {"features": list(f.features), "coef": f.coef, "samples": f.samples, "form": f.form}
            for k, f in self.fits.items()}})

    @classmethod
    def from_json(cls, text: str) -> LayerRegression:
        data = json.loads(text)
        return cls(data["device"], {k: _Fit(tuple(v["features"]), list(v["coef"]), v["samples"],
                                            v.get("form", "linear")) for k, v in data["fits"].items()})


def mape(regression: LayerRegression, layers: Iterable[LayerProfile]) -> dict[str, float]:
    """MAPE (%) of the regression per kind and over all layers ("all"), on `layers`."""
    errors: dict[str, list[float]] = {}
    for layer in layers:
        if layer.latency_ms <= 0:
            continue
        err = abs(regression.predict(layer) - layer.latency_ms) / layer.latency_ms * 100.0
        errors.setdefault(layer.kind, []).append(err)
        errors.setdefault("all", []).append(err)
    return {k: sum(v) / len(v) for k, v in errors.items()}


def _random_layer(rng: random.Random, kind: str, scale: float) -> tuple[Any, Any]:
    import torch
    from torch import nn

    hw = max(4, int(rng.choice([7, 14, 28, 56, 112]) * scale))
    c = max(4, int(rng.choice([16, 32, 64, 128, 256]) * scale))
    if kind == "conv":
        k = rng.choice([1, 3, 3, 5, 7])
        cin = 3 if rng.random() < 0.15 else c
        cout = max(4, int(rng.choice([16, 32, 64, 128, 256]) * scale))
        hw = min(hw, 28) if cin * cout * k * k > 128 * 128 * 9 else hw  # keep one layer under ~1 GFLOP
        return nn.Conv2d(cin, cout, k, rng.choice([1, 2]), k // 2), torch.rand(1, cin, hw, hw)
    if kind == "fc":
        cin, cout = (max(16, int(rng.choice([256, 512, 1024, 2048, 4096, 9216]) * scale)) for _ in range(2))
        return nn.Linear(cin, cout), torch.rand(1, cin)
    x = torch.rand(1, c, hw, hw)
    if kind == "pool":
        return nn.MaxPool2d(rng.choice([2, 3]), 2), x
    return {"relu": nn.ReLU(), "lrn": nn.LocalResponseNorm(5), "dropout": nn.Dropout(0.5),
            "bn": nn.BatchNorm2d(c)}[kind].eval(), x


def synthetic_layers(per_kind: int = 12, seed: int = 0, repeats: int = 10, scale: float = 1.0,
                     kinds: tuple[str, ...] = ("conv", "fc", "pool", "relu", "lrn", "dropout", "bn"),
                     threads: int | None = None) -> list[LayerProfile]:
    """Measure `per_kind` random layers of each kind on this CPU (Edgent's offline profiling).

    Configurations are drawn with `random.Random(seed)`; `scale` shrinks channels, spatial and
    feature sizes (for fast tests).
    """
    import torch

    from isthmus.models.runtime import torch_threads
    from isthmus.profiler.core import measure_layer

    rng = random.Random(seed)
    out = []
    with torch_threads(threads), torch.inference_mode():
        for kind in kinds:
            for i in range(per_kind):
                module, x = _random_layer(rng, kind, scale)
                out.append(measure_layer(module, x, f"{kind}{i}", repeats=repeats))
    return out
