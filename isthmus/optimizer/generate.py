"""Seeded generators of realistic multi-region specs for the geo benchmarks and tests.

Regions sit at random points on a plane (RTT grows with distance), carry AWS-like instance types
with a regional price multiplier, and every pair is linked with inter-region egress pricing. Each
service has its own source in a region with two or three data versions (full / jpeg / thumb)
and uses one of a few models with fp32 / int8 / low-rank / distilled versions; its accuracy floor sits
between the versions' accuracies, so that mixing versions pays.

`generate_spec`: few large services (each fills many instances when `rate_scale` is large).
`generate_small_services_spec`: thousands of small services sharing few pools (see its docstring).
"""

from __future__ import annotations

import numpy as np

from isthmus.spec import Spec, parse_spec

__all__ = ["generate_spec", "generate_small_services_spec"]

_DEVICES = {
    "t4": {"kind": "gpu", "tflops": 8.1, "mem_gb": 16},
    "a10g": {"kind": "gpu", "tflops": 31.2, "mem_gb": 24},
    "xeon8": {"kind": "cpu", "tflops": 0.6, "mem_gb": 16},
}
_TYPES = [("g4dn.xlarge", "t4", 0.526), ("g5.xlarge", "a10g", 1.006), ("c6i.2xlarge", "xeon8", 0.340)]
_L4 = ("g6.xlarge", "l4", 0.805)           # the fourth instance type of the small-services shape
# version: (accuracy offset, latency multiplier, capacity multiplier)
_VERSIONS = [("fp32", 0.0, 1.0, 1.0), ("int8", -0.01, 0.5, 2.1), ("lowrank", -0.02, 0.7, 1.5),
             ("distilled", -0.05, 0.4, 3.2)]
_DATA = [("full", 1.0, 0.0), ("jpeg", 0.2, -0.02), ("thumb", 0.07, -0.06)]


def _regions(rng: np.random.Generator, n_regions: int, types: list[tuple[str, str, float]], quota: int | None,
             optional: tuple[str, ...]) -> tuple[np.ndarray, list[dict]]:
    """Region points on the unit square and their instance types (a device in `optional` in 60 % of regions)."""
    xy = rng.uniform(0, 1, size=(n_regions, 2))
    price_mult = rng.uniform(1.0, 1.4, n_regions)
    regions = []
    for j in range(n_regions):
        kept = [{"name": name, "device": dev, "price_per_hour": round(price * price_mult[j], 4),
                 "max_count": int(quota if quota is not None else rng.integers(8, 33))}
                for name, dev, price in types if dev not in optional or rng.random() < 0.6]
        regions.append({"name": f"region-{j}", "instance_types": kept})
    return xy, regions


def _links(rng: np.random.Generator, xy: np.ndarray) -> list[dict]:
    links = []
    for a in range(len(xy)):
        for b in range(a + 1, len(xy)):
            dist = float(np.linalg.norm(xy[a] - xy[b]))
            links.append({"src": f"region-{a}", "dst": f"region-{b}", "rtt_ms": round(10 + 240 * dist, 1),
                          "bandwidth_mbps": float(rng.choice([200, 500, 1000])),
                          "egress_per_gb": float(rng.choice([0.02, 0.02, 0.05, 0.09]))})
    return links


def _models(rng: np.random.Generator, n_models: int, l4: bool = False) -> list[dict]:
    models = []
    for m in range(n_models):
        base_acc = rng.uniform(0.7, 0.9)
        base_lat = {"t4": rng.uniform(3, 25)}
        base_lat["a10g"] = base_lat["t4"] * rng.uniform(0.35, 0.55)
        base_lat["xeon8"] = base_lat["t4"] * rng.uniform(6, 12)
        batch_gain = {"t4": rng.uniform(1.5, 3), "a10g": rng.uniform(2, 4), "xeon8": rng.uniform(1.0, 1.5)}
        if l4:
            base_lat["l4"] = base_lat["t4"] * rng.uniform(0.5, 0.7)
            batch_gain["l4"] = rng.uniform(2, 3.5)
        models.append({"name": f"model-{m}", "versions": [
            {"name": v, "accuracy": round(base_acc + acc_off, 4),
             "latency_ms": {d: round(l * lat_mult, 3) for d, l in base_lat.items()},
             "capacity_rps": {d: round(1000.0 / l * batch_gain[d] * cap_mult, 2)
                              for d, l in base_lat.items()}}
            for v, acc_off, lat_mult, cap_mult in _VERSIONS]})
    return models


def _source(s: int, location: str, rate_rps: float, full_bytes: int, n_data: int) -> dict:
    return {"name": f"src-{s}", "location": location, "rate_rps": rate_rps,
            "data_versions": [{"name": n, "bytes": int(full_bytes * f), "accuracy_delta": d}
                              for n, f, d in _DATA[:n_data]]}


def _service(rng: np.random.Generator, s: int, model: dict) -> dict:
    """Service s on its own source, a random SLO and an accuracy floor 0.5–4 points under the top version."""
    top = model["versions"][0]["accuracy"]
    return {"name": f"svc-{s}", "source": f"src-{s}", "model": model["name"],
            "slo_ms": float(rng.choice([60, 100, 150, 250])),
            "min_accuracy": round(top - float(rng.uniform(0.005, 0.04)), 4)}


def generate_spec(seed: int, n_regions: int, n_services: int, n_models: int = 3, quota: int | None = None,
                  rate_scale: float = 1.0) -> Spec:
    """A feasible-looking random spec; `quota` overrides per-type max_count (default 8–32); rates are
    20–400 req/s per source times `rate_scale`."""
    rng = np.random.default_rng(seed)
    xy, regions = _regions(rng, n_regions, _TYPES, quota, optional=("a10g",))
    links = _links(rng, xy)
    models = _models(rng, n_models)
    sources, services = [], []
    for s in range(n_services):
        model = models[int(rng.integers(n_models))]
        full_bytes = int(rng.choice([50_000, 150_000, 600_000]))
        n_data = int(rng.integers(2, 4))
        sources.append(_source(s, f"region-{int(rng.integers(n_regions))}",
                               float(round(rng.uniform(20, 400) * rate_scale, 1)), full_bytes, n_data))
        services.append(_service(rng, s, model))
    return parse_spec({"name": f"gen-{seed}-{n_regions}x{n_services}", "regions": regions, "devices": _DEVICES,
                       "links": links, "sources": sources, "models": models, "services": services})


def generate_small_services_spec(seed: int, n_services: int, n_regions: int = 8, n_models: int = 3,
                                 quota: int = 100_000, rate_rps: tuple[float, float] = (10.0, 500.0)) -> Spec:
    """Thousands of small services sharing few pools: the regime where one service is a fraction of one
    instance to a few, so the integer instance counts, not the flows, decide the cost.

    Shape: `n_regions` (8) regions, each with the same 4 instance types (g4dn/t4, g5/a10g, g6/l4,
    c6i/xeon8); `n_models` (3) models × 4 versions (fp32 / int8 / lowrank / distilled); every source has
    3 data versions (full / jpeg / thumb). Pools (site, type, version) — 8 × 4 × 12 = 384 — are shared
    by all services of a model. Service s has its own source in region s mod `n_regions` (sources spread
    evenly over the regions), a rate log-uniform in `rate_rps` (10–500 req/s: most services are small), and
    the SLOs and accuracy floors of `generate_spec`; inter-region egress (up to $0.09/GB of up to 600 kB
    requests) keeps a service near its source. A service has 39–384 routes within its SLO (185 on
    average), so ~540 services give ~10⁵ routes and ~5,400 give ~10⁶. `quota` is every type's max_count
    (default: not binding).
    """
    rng = np.random.default_rng(seed)
    types = [*_TYPES[:2], _L4, _TYPES[2]]
    xy, regions = _regions(rng, n_regions, types, quota, optional=())
    links = _links(rng, xy)
    models = _models(rng, n_models, l4=True)
    low, high = np.log(rate_rps[0]), np.log(rate_rps[1])
    sources, services = [], []
    for s in range(n_services):
        model = models[int(rng.integers(n_models))]
        full_bytes = int(rng.choice([50_000, 150_000, 600_000]))
        sources.append(_source(s, f"region-{s % n_regions}", float(round(np.exp(rng.uniform(low, high)), 1)),
                               full_bytes, len(_DATA)))
        services.append(_service(rng, s, model))
    devices = {**_DEVICES, "l4": {"kind": "gpu", "tflops": 30.3, "mem_gb": 24}}
    return parse_spec({"name": f"small-{seed}-{n_regions}x{n_services}", "regions": regions, "devices": devices,
                       "links": links, "sources": sources, "models": models, "services": services})
