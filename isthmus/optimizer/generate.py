"""Seeded generator of realistic multi-region specs for the geo benchmarks and tests.

Regions sit at random points on a plane (RTT grows with distance), carry AWS-like instance types
with a regional price multiplier, and every pair is linked with inter-region egress pricing. Each
service has its own source in a random region with two or three data versions (full / jpeg / thumb)
and uses one of a few models with fp32 / int8 / low-rank / distilled versions; its accuracy floor sits
between the versions' accuracies, so that mixing versions pays.
"""

from __future__ import annotations

import numpy as np

from isthmus.spec import Spec, parse_spec

__all__ = ["generate_spec"]

_DEVICES = {
    "t4": {"kind": "gpu", "tflops": 8.1, "mem_gb": 16},
    "a10g": {"kind": "gpu", "tflops": 31.2, "mem_gb": 24},
    "xeon8": {"kind": "cpu", "tflops": 0.6, "mem_gb": 16},
}
_TYPES = [("g4dn.xlarge", "t4", 0.526), ("g5.xlarge", "a10g", 1.006), ("c6i.2xlarge", "xeon8", 0.340)]
# version: (accuracy offset, latency multiplier, capacity multiplier)
_VERSIONS = [("fp32", 0.0, 1.0, 1.0), ("int8", -0.01, 0.5, 2.1), ("lowrank", -0.02, 0.7, 1.5),
             ("distilled", -0.05, 0.4, 3.2)]
_DATA = [("full", 1.0, 0.0), ("jpeg", 0.2, -0.02), ("thumb", 0.07, -0.06)]


def generate_spec(seed: int, n_regions: int, n_services: int, n_models: int = 3, quota: int | None = None,
                  rate_scale: float = 1.0) -> Spec:
    """A feasible-looking random spec; `quota` overrides per-type max_count (default 8–32); rates are
    20–400 req/s per source times `rate_scale`."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, size=(n_regions, 2))
    price_mult = rng.uniform(1.0, 1.4, n_regions)
    regions = []
    for j in range(n_regions):
        types = [{"name": name, "device": dev, "price_per_hour": round(price * price_mult[j], 4),
                  "max_count": int(quota if quota is not None else rng.integers(8, 33))}
                 for name, dev, price in _TYPES if dev != "a10g" or rng.random() < 0.6]
        regions.append({"name": f"region-{j}", "instance_types": types})
    links = []
    for a in range(n_regions):
        for b in range(a + 1, n_regions):
            dist = float(np.linalg.norm(xy[a] - xy[b]))
            links.append({"src": f"region-{a}", "dst": f"region-{b}", "rtt_ms": round(10 + 240 * dist, 1),
                          "bandwidth_mbps": float(rng.choice([200, 500, 1000])),
                          "egress_per_gb": float(rng.choice([0.02, 0.02, 0.05, 0.09]))})
    models = []
    for m in range(n_models):
        base_acc = rng.uniform(0.7, 0.9)
        base_lat = {"t4": rng.uniform(3, 25)}
        base_lat["a10g"] = base_lat["t4"] * rng.uniform(0.35, 0.55)
        base_lat["xeon8"] = base_lat["t4"] * rng.uniform(6, 12)
        batch_gain = {"t4": rng.uniform(1.5, 3), "a10g": rng.uniform(2, 4), "xeon8": rng.uniform(1.0, 1.5)}
        models.append({"name": f"model-{m}", "versions": [
            {"name": v, "accuracy": round(base_acc + acc_off, 4),
             "latency_ms": {d: round(l * lat_mult, 3) for d, l in base_lat.items()},
             "capacity_rps": {d: round(1000.0 / l * batch_gain[d] * cap_mult, 2)
                              for d, l in base_lat.items()}}
            for v, acc_off, lat_mult, cap_mult in _VERSIONS]})
    sources, services = [], []
    for s in range(n_services):
        model = models[int(rng.integers(n_models))]
        full_bytes = int(rng.choice([50_000, 150_000, 600_000]))
        n_data = int(rng.integers(2, 4))
        sources.append({"name": f"src-{s}", "location": f"region-{int(rng.integers(n_regions))}",
                        "rate_rps": float(round(rng.uniform(20, 400) * rate_scale, 1)),
                        "data_versions": [{"name": n, "bytes": int(full_bytes * f), "accuracy_delta": d}
                                          for n, f, d in _DATA[:n_data]]})
        top = model["versions"][0]["accuracy"]
        services.append({"name": f"svc-{s}", "source": f"src-{s}", "model": model["name"],
                         "slo_ms": float(rng.choice([60, 100, 150, 250])),
                         "min_accuracy": round(top - float(rng.uniform(0.005, 0.04)), 4)})
    return parse_spec({"name": f"gen-{seed}-{n_regions}x{n_services}", "regions": regions, "devices": _DEVICES,
                       "links": links, "sources": sources, "models": models, "services": services})
