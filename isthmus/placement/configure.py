"""Cloud-configuration search (AutoDeep): which (region, instance type, count) serves a job of N requests
cheapest under a latency QoS.

A configuration c = (region j, instance type t, count k) runs k replicas of the model, each placed over
the devices_per_instance(t) devices of one instance. With the best of the placement heuristics (the one
with the least job time whose latency meets the QoS) the simulator gives a request's makespan M and
the pipeline period P of one replica. For a job of N requests (source o, request rate λ):

    latency_c  = rtt(o, j) + 8·bytes / bw(o, j) + M
    cost_c     = k · price_per_hour(t) · (M + (⌈N / k⌉ - 1)·P) / 3.6e6          ($ for the job)
    feasible   ⇔ latency_c ≤ qos_ms  and  k · 1000 / P ≥ λ                     (latency QoS, capacity)

Prices, counts and links are known; (M, P) of a (device kind, devices per instance) is the black box
a probe measures. Searches:
- bo: the cheapest configuration, then a space-filling probe, then Bayesian optimisation: a BoTorch
  SingleTaskGP on (log M, log P) over (log TFLOPS, log memory bandwidth, log devices per instance);
  acquisition = Monte-Carlo constrained expected improvement E[max(best - cost, 0) · 1{feasible}] over
  posterior samples, maximised over the unprobed configurations (so it never leaves the space).
- lcf: lowest cost first, configurations by ascending k·price_per_hour.
- uniform: configurations in a seeded uniformly random order.
- exhaustive: every configuration (the optimum the others are measured against).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from isthmus.placement.devices import DeviceKind, DeviceSet, kind_from_spec
from isthmus.placement.graph import OpGraph
from isthmus.placement.heuristics import HEURISTICS
from isthmus.placement.simulator import simulate
from isthmus.spec import Spec

__all__ = ["Config", "Probe", "ConfigSpace", "SearchResult", "space_from_spec", "search", "probes_to_within",
           "random_spec", "METHODS"]

METHODS = ("bo", "lcf", "uniform", "exhaustive")


@dataclass(frozen=True)
class Config:
    region: str
    instance_type: str
    count: int


@dataclass
class Probe:
    region: str
    instance_type: str
    count: int
    cost: float
    latency_ms: float
    feasible: bool
    makespan_ms: float
    period_ms: float
    capacity_rps: float
    policy: str


@dataclass
class ConfigSpace:
    """The configurations, their known parts (price, network overhead, device kind) and the QoS."""

    configs: list[Config]
    kinds: list[DeviceKind]
    per_instance: list[int]
    price_per_hour: np.ndarray  # of the whole configuration (k instances)
    overhead_ms: np.ndarray  # rtt + input transfer from the service's source
    qos_ms: float
    requests: int
    graph: OpGraph
    rate_rps: float = 0.0
    _exec: dict[tuple[str, int], list[tuple[float, float, str]]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.configs)

    def features(self) -> np.ndarray:
        """GP inputs per configuration, scaled to [0, 1] over the space."""
        x = np.array([[np.log(k.tflops), np.log(k.mem_bw_gbps), np.log(n)] for k, n in zip(self.kinds, self.per_instance)])
        span = x.max(axis=0) - x.min(axis=0)
        return (x - x.min(axis=0)) / np.where(span > 0, span, 1.0)

    def _runs(self, i: int) -> list[tuple[float, float, str]]:
        """(makespan_ms, period_ms, heuristic) of every heuristic placement that fits on one instance of
        configuration i, cached per (kind, devices per instance): regions and counts share them."""
        kind, n = self.kinds[i], self.per_instance[i]
        key = (kind.name, n)
        if key not in self._exec:
            devices = DeviceSet.homogeneous(kind, n)
            costs = self.graph.cost_ms(devices)
            runs = []
            for name, heuristic in HEURISTICS.items():
                try:
                    r = simulate(self.graph, devices, heuristic(self.graph, devices, costs), costs=costs)
                except ValueError:  # does not fit in memory this way
                    continue
                if r.feasible:
                    runs.append((r.makespan_ms, r.period_ms, name))
            self._exec[key] = runs or [(float("inf"), float("inf"), "none")]
        return self._exec[key]

    def execution(self, i: int) -> tuple[float, float, str]:
        """(makespan_ms, period_ms, policy) of configuration i: the heuristic placement with the least job time
        among those meeting the QoS, else the one with the least makespan."""
        runs = self._runs(i)
        meets = [r for r in runs if self.overhead_ms[i] + r[0] <= self.qos_ms]
        if meets:
            return min(meets, key=lambda r: r[0] + (self.requests - 1) * r[1])
        return min(runs, key=lambda r: r[0])

    def cost_of(self, i: int | np.ndarray, makespan_ms: np.ndarray, period_ms: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cost, latency_ms, feasible) of configuration(s) i given a replica's makespan and period (module doc)."""
        count = np.array([c.count for c in self.configs])[i]
        job_ms = makespan_ms + (np.ceil(self.requests / count) - 1) * period_ms
        latency = self.overhead_ms[i] + makespan_ms
        feasible = (latency <= self.qos_ms) & (count * 1000.0 / period_ms >= self.rate_rps)
        return self.price_per_hour[i] * job_ms / 3.6e6, latency, feasible

    def probe(self, i: int) -> Probe:
        makespan, period, policy = self.execution(i)
        cost, latency, feasible = self.cost_of(i, np.float64(makespan), np.float64(period))
        c = self.configs[i]
        return Probe(c.region, c.instance_type, c.count, float(cost), float(latency), bool(feasible), makespan,
                     period, c.count * 1000.0 / period, policy)

    def set_qos_quantile(self, q: float) -> float:
        """Set qos_ms to the q-quantile of every configuration's latency (for generated spaces); returns it."""
        saved, self.qos_ms = self.qos_ms, float("inf")
        latencies = [self.probe(i).latency_ms for i in range(len(self))]
        finite = [v for v in latencies if np.isfinite(v)]
        self.qos_ms = float(np.quantile(finite, q)) if finite else saved
        return self.qos_ms

    def optimum(self) -> Probe | None:
        feasible = [p for p in (self.probe(i) for i in range(len(self))) if p.feasible]
        return min(feasible, key=lambda p: p.cost) if feasible else None


@dataclass
class SearchResult:
    method: str
    best: Probe | None
    history: list[Probe]
    seconds: float

    @property
    def probes(self) -> int:
        return len(self.history)

    def to_dict(self) -> dict:
        best = None if self.best is None else {k: getattr(self.best, k)
                                               for k in ("region", "instance_type", "count", "cost", "latency_ms")}
        return {"method": self.method, "best": best, "probes": self.probes, "search_s": round(self.seconds, 3),
                "history": [asdict(p) for p in self.history]}


def _link(spec: Spec, a: str, b: str) -> tuple[float, float] | None:
    """(rtt_ms, bandwidth_mbps) between two places; a place reaches itself in 0 ms at unlimited bandwidth."""
    if a == b:
        return 0.0, float("inf")
    for link in spec.links:
        if {link.src, link.dst} == {a, b}:
            return link.rtt_ms, link.bandwidth_mbps
    return None


def space_from_spec(spec: Spec, model: str, graph: OpGraph, requests: int = 10000,
                    qos_ms: float | None = None) -> ConfigSpace:
    """Every (region, instance type, count ≤ max_count) reachable from the model's service source.

    QoS: `qos_ms`, else the tightest `slo_ms` of the services using `model`; the source (its first data
    version's bytes) comes from that service; λ = Σ rate_rps of those services' sources. Without a service
    the QoS must be given, and overhead and λ are 0."""
    names = [m.name for m in spec.models]
    if model not in names:
        raise ValueError(f"model: {model!r} is not in spec {spec.name!r}. To fix: use one of {names}")
    if requests < 1:
        raise ValueError(f"requests: {requests} must be >= 1. To fix: give the job's number of requests")
    services = sorted((s for s in spec.services if s.model == model), key=lambda s: s.slo_ms)
    if qos_ms is None and not services:
        raise ValueError(f"no service uses model {model!r}, so there is no latency QoS. "
                         "To fix: pass --qos-ms or add a service for it")
    qos = qos_ms if qos_ms is not None else services[0].slo_ms
    source = spec.source(services[0].source) if services else None
    configs, kinds, per, prices, overhead = [], [], [], [], []
    for region in spec.regions:
        net = _link(spec, source.location, region.name) if source else (0.0, float("inf"))
        if net is None:
            continue
        extra = net[0] + (8 * source.data_versions[0].bytes / (net[1] * 1e3) if source else 0.0)
        for it in region.instance_types:
            kind = kind_from_spec(it.device, spec.devices[it.device])
            for count in range(1, it.max_count + 1):
                configs.append(Config(region.name, it.name, count))
                kinds.append(kind)
                per.append(it.devices_per_instance)
                prices.append(count * it.price_per_hour)
                overhead.append(extra)
    if not configs:
        raise ValueError(f"spec {spec.name!r}: no region with instance types is reachable from "
                         f"{source.location if source else 'anywhere'}. To fix: add regions, instance types or links")
    rate = sum(spec.source(s.source).rate_rps for s in services)
    return ConfigSpace(configs, kinds, per, np.array(prices), np.array(overhead), float(qos), requests, graph,
                       rate_rps=rate)


def _order_lcf(space: ConfigSpace, rng: np.random.Generator) -> list[int]:
    return sorted(range(len(space)), key=lambda i: (space.price_per_hour[i], i))


def _order_uniform(space: ConfigSpace, rng: np.random.Generator) -> list[int]:
    return rng.permutation(len(space)).tolist()


def _best(history: list[Probe]) -> Probe | None:
    feasible = [p for p in history if p.feasible]
    return min(feasible, key=lambda p: p.cost) if feasible else None


def _bo_next(space: ConfigSpace, x: np.ndarray, probed: list[int], samples: int, seed: int) -> tuple[int, float]:
    """Fit the GP on the probed (log makespan, log period) and return (argmax acquisition, its value / best)."""
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    import warnings

    rest = [i for i in range(len(space)) if i not in set(probed)]
    seen: dict[bytes, int] = {}  # configurations with the same devices (other regions) share one GP point
    for i in probed:
        if np.isfinite(space.execution(i)[0]):
            seen.setdefault(x[i].tobytes(), i)
    points = list(seen.values())
    if len(points) < 2:  # too little for a GP: space-filling step, farthest from what was probed
        dist = np.array([min(np.linalg.norm(x[i] - x[j]) for j in probed) for i in rest])
        return rest[int(np.argmax(dist))], float("inf")
    runs = [space.execution(i) for i in points]
    train_x = torch.tensor(x[points], dtype=torch.double)
    train_y = torch.tensor([[np.log(r[0]), np.log(r[1])] for r in runs], dtype=torch.double)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gp = SingleTaskGP(train_x, train_y, train_Yvar=torch.full_like(train_y, 1e-4),
                          outcome_transform=Standardize(m=2))
        try:
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp), optimizer_kwargs={"options": {"maxiter": 60}})
        except Exception:  # a failed hyper-parameter fit keeps the priors; the posterior is still usable
            pass
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        post = gp.posterior(torch.tensor(x[rest], dtype=torch.double))
        mean, std = post.mean, post.variance.clamp_min(1e-12).sqrt()
        draws = mean + std * torch.randn((samples, *mean.shape), generator=gen, dtype=torch.double)
    cost, _, feasible = space.cost_of(np.array(rest), draws[..., 0].exp().numpy(), draws[..., 1].exp().numpy())
    best = _best([space.probe(i) for i in probed])
    if best is None:  # nothing feasible yet: most likely feasible, cheapest expected on ties
        score = feasible.mean(axis=0) - 1e-9 * np.log(cost.mean(axis=0))
        k = int(np.argmax(score))
        return rest[k], float("inf")
    gain = (np.maximum(best.cost - cost, 0.0) * feasible).mean(axis=0)
    k = int(np.argmax(gain))
    return rest[k], float(gain[k] / best.cost)


def search(space: ConfigSpace, method: str = "bo", max_probes: int | None = None, seed: int = 0,
           init_probes: int = 1, stop_gain: float = 0.005, samples: int = 256,
           stop: Callable[[list[Probe]], bool] | None = None) -> SearchResult:
    """Probe configurations one at a time with `method` (see module doc) until `max_probes`, the space is
    exhausted, `stop(history)` holds, or (bo) the best expected improvement is below `stop_gain`·best cost."""
    if method not in METHODS:
        raise ValueError(f"method: {method!r}. To fix: use one of {list(METHODS)}")
    import torch

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = _search(space, method, max_probes, seed, init_probes, stop_gain, samples, stop)
    finally:
        torch.set_num_threads(threads)
    return SearchResult(method, _best(history), history, time.perf_counter() - t0)


def _search(space: ConfigSpace, method: str, max_probes: int | None, seed: int, init_probes: int,
            stop_gain: float, samples: int, stop: Callable[[list[Probe]], bool] | None) -> list[Probe]:
    rng = np.random.default_rng(seed)
    limit = len(space) if max_probes is None else min(max_probes, len(space))
    history: list[Probe] = []
    probed: list[int] = []
    order = {"lcf": _order_lcf, "uniform": _order_uniform}.get(method, lambda s, r: list(range(len(s))))(space, rng)
    x = space.features() if method == "bo" else None
    cheapest = _order_lcf(space, rng)[0]
    init = [cheapest] + [i for i in rng.permutation(len(space)).tolist() if i != cheapest][:max(init_probes - 1, 0)]
    while len(probed) < limit:
        if method != "bo":
            i = order[len(probed)]
        elif len(probed) < len(init):
            i = init[len(probed)]
        else:
            i, gain = _bo_next(space, x, probed, samples, seed + len(probed))
            if stop is None and gain < stop_gain:
                break
        probed.append(i)
        history.append(space.probe(i))
        if stop is not None and stop(history):
            break
    return history


def probes_to_within(space: ConfigSpace, method: str, tolerance: float = 0.05, seed: int = 0) -> int:
    """Probes `method` needs until its best feasible cost is within `tolerance` of the exhaustive optimum."""
    opt = space.optimum()
    if opt is None:
        raise ValueError("no configuration meets the QoS, so there is no optimum to approach. "
                         "To fix: relax qos_ms or add faster instance types")

    def close(history: list[Probe]) -> bool:
        best = _best(history)
        return best is not None and best.cost <= (1 + tolerance) * opt.cost

    return search(space, method, seed=seed, stop=close).probes


_CATALOGUE = [("k80", 1), ("k80", 4), ("k80", 8), ("p100", 1), ("p100", 4), ("v100", 1), ("v100", 4), ("v100", 8),
              ("1080", 1), ("1080", 4), ("980ti", 1), ("980ti", 2), ("t4", 1), ("t4", 4)]


def random_spec(seed: int, zoo: str = "inception", slo_ms: float = 1000.0) -> Spec:
    """A seeded random search space as a Spec: 3-4 regions (price ×0.8-1.5, rtt 0.5-3 ms from the users),
    4-7 instance types each from AutoDeep-like GPU servers (1-8 GPUs, `KINDS` prices), 1-4 instances each,
    100-1500 requests/s from the users."""
    from isthmus.placement.devices import KINDS
    from isthmus.profiler.devices import DEVICE_KINDS
    from isthmus.spec import parse_spec

    rng = np.random.default_rng(seed)
    regions, links = [], []
    for name in rng.choice(["us-east", "us-west", "eu-west", "eu-north", "ap-south"], int(rng.integers(3, 5)),
                           replace=False):
        mult = float(rng.uniform(0.8, 1.5))
        types = [_CATALOGUE[k] for k in sorted(rng.choice(len(_CATALOGUE), int(rng.integers(4, 8)), replace=False))]
        regions.append({"name": str(name), "instance_types": [
            {"name": f"{kind}x{n}", "device": kind, "devices_per_instance": n, "max_count": int(rng.integers(1, 5)),
             "price_per_hour": round(KINDS[kind].price_per_hour * n * mult, 3)} for kind, n in types]})
        links.append({"src": "users", "dst": str(name), "rtt_ms": float(rng.uniform(0.5, 3)),
                      "bandwidth_mbps": float(rng.uniform(100, 1000))})
    catalogue = {kind for kind, _ in _CATALOGUE}
    devices = {k: d for k, d in DEVICE_KINDS.items() if k in catalogue}
    return parse_spec({
        "name": f"random-{seed}", "regions": regions, "devices": devices, "links": links,
        "sources": [{"name": "users", "location": "users", "rate_rps": float(rng.uniform(100, 1500)),
                     "data_versions": [{"name": "full", "bytes": 150000}]}],
        "models": [{"name": zoo, "zoo": zoo, "versions": [{"name": "fp32", "accuracy": 0.7}]}],
        "services": [{"name": "svc", "source": "users", "model": zoo, "slo_ms": slo_ms}]}, f"random-{seed}")
