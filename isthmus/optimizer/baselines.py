"""Baselines a team would use instead of the geo planner; each returns a cost per hour (inf if it cannot serve).

Every baseline sends each service down one route that meets the SLO and the accuracy floor by
itself (no mixing of versions), greedily in decreasing order of rate, taking the best route by its own
rule whose pool still has quota; instances are ⌈Σ usage / c_q⌉ per pool-version, shared across services.

* latency-first:       nearest site, most accurate version and data version, fastest instance type there.
* cost-first (model):  full data only; the model version, site and type with the lowest $/request.
* data-only:           most accurate model version only; the data version, site and type with the lowest $/request.
* single-region:       everything in one region, lowest $/request per service; the best region wins.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from isthmus.optimizer.geo import amortised_cost
from isthmus.optimizer.routes import RouteTable, build_routes
from isthmus.spec import Spec

__all__ = ["BASELINES", "baseline_costs"]


def _assign(t: RouteTable, allowed: np.ndarray, key: np.ndarray) -> float:
    """Greedy single-route assignment by ascending `key` under quotas; returns $/h or inf."""
    spec = t.spec
    rate = np.array(spec.service_rates_rps())
    floor = np.array([s.min_accuracy for s in spec.services])
    slo = np.array([s.slo_ms for s in spec.services])
    ok = allowed & (t.latency_ms <= slo[t.service]) & (t.accuracy >= floor[t.service] - 1e-9)
    load = np.zeros(len(t.pv_pool))           # instance-equivalents of demand per pool-version
    head = np.zeros(len(t.pools))
    egress = 0.0
    for s in np.argsort(-rate, kind="stable"):
        options = np.flatnonzero(ok & (t.service == s))
        for r in options[np.argsort(key[options], kind="stable")]:
            trial_load, trial_head = load.copy(), head.copy()
            if t.pv[r] >= 0:
                trial_load[t.pv[r]] += rate[s] * t.usage[r] / t.pv_capacity_rps[t.pv[r]]
            if t.head_pool[r] >= 0:
                trial_head[t.head_pool[r]] += rate[s] * t.head_s[r]
            instances = np.ceil(trial_load - 1e-9)
            used = np.bincount(t.pv_pool, weights=instances, minlength=len(t.pools)) + trial_head
            if np.all(used <= t.pools.max_count + 1e-9):
                load, head = trial_load, trial_head
                egress += rate[s] * t.egress_per_rps[r]
                break
        else:
            return float("inf")
    return float(t.pools.price_per_hour[t.pv_pool] @ np.ceil(load - 1e-9) + egress)


def _best_data(t: RouteTable) -> np.ndarray:
    """Routes that use their source's most accurate (full) data version."""
    best = np.array([int(np.argmax([d.accuracy_delta for d in s.data_versions])) for s in t.spec.sources])
    source_of = np.array([[x.name for x in t.spec.sources].index(s.source) for s in t.spec.services])
    return t.data_version == best[source_of[t.service]]


def _best_version(t: RouteTable) -> np.ndarray:
    """Routes that use their model's most accurate version."""
    accuracy = {n: v.accuracy for m in t.spec.models for v in m.versions for n in [(m.name, v.name)]}
    version_acc = np.array([accuracy[n] for n in t.version_names])
    model_of = np.array([n[0] for n in t.version_names])
    best = {m: version_acc[model_of == m].max() for m in set(model_of)}
    return version_acc[t.version] >= np.array([best[m] for m in model_of])[t.version] - 1e-12


def latency_first(t: RouteTable) -> float:
    rtt = t.net.rtt_ms[_origins(t), t.site]
    return _assign(t, _best_data(t) & _best_version(t) & (t.split < 0), rtt * 1e6 + t.latency_ms)


def cost_first_model_only(t: RouteTable) -> float:
    return _assign(t, _best_data(t) & (t.split < 0), amortised_cost(t))


def data_only(t: RouteTable) -> float:
    return _assign(t, _best_version(t) & (t.split < 0), amortised_cost(t))


def single_region(t: RouteTable) -> float:
    regions = {t.net.index(r.name) for r in t.spec.regions}
    return min((_assign(t, (t.site == j) & (t.split < 0), amortised_cost(t)) for j in regions),
               default=float("inf"))


def _origins(t: RouteTable) -> np.ndarray:
    index = {s.name: t.net.index(s.location) for s in t.spec.sources}
    return np.array([index[s.source] for s in t.spec.services])[t.service]


BASELINES: dict[str, Callable[[RouteTable], float]] = {
    "latency-first": latency_first,
    "cost-first (model-only)": cost_first_model_only,
    "data-only": data_only,
    "single-region": single_region,
}


def baseline_costs(spec: Spec, table: RouteTable | None = None) -> dict[str, float]:
    """Cost per hour of every baseline on `spec` (inf where the policy cannot serve every service)."""
    table = table or build_routes(spec)
    return {name: policy(table) for name, policy in BASELINES.items()}
