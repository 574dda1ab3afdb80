"""Compare every placement policy on one graph and device set; fill a spec's missing latencies from placements."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from isthmus.placement.devices import DeviceSet, kind_from_spec
from isthmus.placement.graph import OpGraph
from isthmus.placement.heuristics import HEURISTICS
from isthmus.placement.learned import learn_placement
from isthmus.placement.simulator import critical_path_ms, lower_bound_ms, simulate
from isthmus.spec import Spec

__all__ = ["PolicyReport", "compare_policies", "best_heuristic", "fill_spec"]


@dataclass
class PolicyReport:
    """Makespans (ms, one simulator) and search seconds of every policy; `placement` is the learned one.

    On these devices' op costs, with T1 = the single policy's makespan (one device, the least work that holds the
    model) and T∞ = the longest path with every op on its fastest device: `parallelism` = T1 / T∞, which no
    placement on any number of such devices beats even with free communication, and `speedup_bound` = T1 /
    lower_bound_ms with lower_bound_ms = max(T∞, Σ fastest op costs / n_devices), the tighter bound for n
    devices. Both bound every policy's speed-up over single. (`parallel_branches` and `branch_width`, the max
    antichain of ops with ≥ 2% of the work, are properties of the graph on the measured host latencies.)"""

    model: str
    devices: str
    policies: dict[str, float]
    search_s: dict[str, float]
    placement: dict[str, str]
    lower_bound_ms: float
    parallel_branches: bool
    episodes: int
    parallelism: float = 1.0
    branch_width: int = 1
    speedup_bound: float = 1.0
    batch: int = 1

    def to_dict(self) -> dict:
        return {"model": self.model, "devices": self.devices,
                "policies": {k: round(v, 6) for k, v in self.policies.items()},
                "placement": self.placement, "search_s": round(self.search_s["learned"], 4),
                "search_s_by_policy": {k: round(v, 6) for k, v in self.search_s.items()},
                "lower_bound_ms": round(self.lower_bound_ms, 6), "parallel_branches": self.parallel_branches,
                "parallelism": round(self.parallelism, 4), "branch_width": self.branch_width,
                "speedup_bound": round(self.speedup_bound, 4), "batch_size": self.batch, "episodes": self.episodes}


def best_heuristic(graph: OpGraph, devices: DeviceSet, costs: np.ndarray | None = None
                   ) -> tuple[str, np.ndarray, float, dict[str, float], dict[str, float]]:
    """(name, placement, makespan) of the heuristic with the least simulated makespan, plus every heuristic's
    makespan and search seconds. Heuristics that cannot fit the model in memory are skipped."""
    costs = graph.cost_ms(devices) if costs is None else costs
    spans, seconds, placements = {}, {}, {}
    for name, heuristic in HEURISTICS.items():
        t0 = time.perf_counter()
        try:
            placements[name] = heuristic(graph, devices, costs)
        except ValueError:
            spans[name], seconds[name] = float("inf"), time.perf_counter() - t0
            continue
        seconds[name] = time.perf_counter() - t0
        spans[name] = simulate(graph, devices, placements[name], costs=costs).makespan_ms
    best = min(placements, key=lambda k: spans[k], default=None)
    if best is None:
        raise ValueError(f"{graph.name!r} fits on {devices.n} device(s) under no heuristic. "
                         "To fix: add devices or use a kind with more memory")
    return best, placements[best], spans[best], spans, seconds


def compare_policies(graph: OpGraph, devices: DeviceSet, devices_label: str = "", episodes: int = 150,
                     batch: int = 8, seed: int = 0, time_budget_s: float | None = None) -> PolicyReport:
    """Every heuristic, then the learned policy started from the best of them (Placeto-style moves)."""
    costs = graph.cost_ms(devices)
    _, start, _, spans, seconds = best_heuristic(graph, devices, costs)
    learned = learn_placement(graph, devices, costs, init=start, episodes=episodes, batch=batch, seed=seed,
                              time_budget_s=time_budget_s)
    spans["learned"] = learned.makespan_ms
    seconds["learned"] = learned.search_s + sum(seconds.values())  # it needed the heuristics first
    bound_ms = lower_bound_ms(graph, costs)
    t1 = spans["single"] if np.isfinite(spans["single"]) else float(costs.sum(axis=0).min())
    return PolicyReport(graph.name, devices_label or "+".join(devices.names), spans, seconds,
                        {op: devices.names[d] for op, d in zip(graph.ops, learned.placement)},
                        bound_ms, graph.has_parallel_branches(), learned.episodes,
                        t1 / max(critical_path_ms(graph, costs), 1e-12), graph.branch_width(), t1 / bound_ms,
                        graph.batch)


def fill_spec(spec: Spec, graphs: dict[str, OpGraph]) -> Spec:
    """A copy of `spec` where each zoo model's "fp32" version gets latency_ms / capacity_rps for every instance
    device kind it lacks: the best heuristic placement over one instance's devices (latency = makespan,
    capacity = 1000 / period). `graphs` maps zoo names to op graphs (e.g. from `from_zoo`)."""
    out = spec.model_copy(deep=True)
    per_kind: dict[str, int] = {}
    for region in spec.regions:
        for it in region.instance_types:
            per_kind[it.device] = max(per_kind.get(it.device, 1), it.devices_per_instance)
    for site in spec.edge_sites:
        per_kind.setdefault(site.device, 1)
    for model in out.models:
        graph = graphs.get(model.zoo or "")
        if graph is None:
            continue
        for version in model.versions:
            if version.name != "fp32":
                continue
            for kind_name, n in per_kind.items():
                if kind_name in version.latency_ms:
                    continue
                devices = DeviceSet.homogeneous(kind_from_spec(kind_name, spec.devices[kind_name]), n)
                try:
                    _, placement, _, _, _ = best_heuristic(graph, devices)
                except ValueError:
                    continue  # does not fit this kind: no entry, so no route there
                result = simulate(graph, devices, placement)
                version.latency_ms[kind_name] = round(float(result.makespan_ms), 4)
                version.capacity_rps.setdefault(kind_name, round(float(1000.0 / result.period_ms), 3))
    return out
