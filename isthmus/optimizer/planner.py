"""GeoPlanner: Spec -> Plan through the problem of `geo`, re-planned in place on telemetry."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Literal

import numpy as np

from isthmus.optimizer.geo import GeoProblem, Solution, restricted_milp, round_up
from isthmus.optimizer.routes import RouteTable, build_routes
from isthmus.spec import Plan, PlanInstance, PlanRoute, PlanService, SolverInfo, Spec, SpecError

__all__ = ["GeoPlanner", "InfeasibleSpec", "plan_spec", "diagnose", "MILP_MAX_ROUTES"]

Method = Literal["auto", "milp", "lp-round"]
MILP_MAX_ROUTES = 20_000       # `auto` solves the exact MILP up to this many routes, LP + rounding above
RESTRICTED_K = 64              # lp-round: the restricted MILP keeps the LP support + ~5k routes per service,
RESTRICTED_ROUTES = 40_000     # k = RESTRICTED_ROUTES / (5·services) clipped to [2, RESTRICTED_K]


class InfeasibleSpec(SpecError):
    """No plan meets every SLO, accuracy floor and quota; `problems` names each service and the binding constraint."""


def _fastest_description(table: RouteTable, routes: np.ndarray) -> str:
    r = routes[np.argmin(table.latency_ms[routes])]
    model, version = table.version_names[table.version[r]]
    return f"{table.latency_ms[r]:.1f} ms ({model}/{version} at {table.net.places[table.site[r]]})"


def diagnose(spec: Spec, table: RouteTable | None = None) -> list[tuple[str, str]]:
    """Per-service reasons no plan exists: no route, SLO, accuracy floor, or capacity within the quotas.

    Each reason checks one service alone (vectorised over services); `GeoPlanner` adds the joint
    (shared-quota) diagnosis when every service passes alone but not together.
    """
    table = table or build_routes(spec)
    n_s, n_p = len(spec.services), len(table.pools)
    slo = np.array([s.slo_ms for s in spec.services])
    rate = np.array(spec.service_rates_rps())
    floor = np.array([s.min_accuracy for s in spec.services])
    ok = table.latency_ms <= slo[table.service]
    count = np.bincount(table.service[ok], minlength=n_s)
    best_accuracy = np.full(n_s, -np.inf)
    np.maximum.at(best_accuracy, table.service[ok], table.accuracy[ok])
    capacity = _max_rates(table, ok, n_s)
    bad = np.flatnonzero((count == 0) | (best_accuracy < floor - 1e-9) | (capacity < rate - 1e-9))
    loose = build_routes(spec, latency_headroom=np.inf) if np.any(count == 0) else None
    problems = []
    for s in bad:
        service, path = spec.services[s], f"services[{s}]"
        if count[s] == 0:
            any_route = np.flatnonzero(loose.service == s)
            if len(any_route) == 0:
                problems.append((f"{path}.model", f"{service.name}: no route at all: no site linked to source "
                                 f"{service.source!r} has a device kind that a version of {service.model!r} runs "
                                 "on. To fix: add a link from the source's location, or latency_ms for a device "
                                 "kind offered there"))
            else:
                problems.append((f"{path}.slo_ms", f"{service.name}: SLO {service.slo_ms:g} ms is below the fastest "
                                 f"route, {_fastest_description(loose, any_route)}. To fix: raise slo_ms, add a "
                                 "closer site or a faster model version"))
        elif best_accuracy[s] < floor[s] - 1e-9:
            problems.append((f"{path}.min_accuracy", f"{service.name}: best accuracy within the {service.slo_ms:g} ms "
                             f"SLO is {best_accuracy[s]:.3f} < min_accuracy {service.min_accuracy:g}. To fix: lower "
                             "min_accuracy or raise slo_ms"))
        else:
            src = [i for i, x in enumerate(spec.sources) if x.name == service.source][0]
            problems.append((f"sources[{src}].rate_rps", f"{service.name}: at most {capacity[s]:.1f} req/s fit in "
                             f"the quotas of the sites within the SLO, but the rate is {rate[s]:g} req/s. To fix: "
                             "raise max_count, add instance types or sites, or lower rate_rps"))
    return problems


def _max_rates(table: RouteTable, ok: np.ndarray, n_s: int) -> np.ndarray:
    """Upper bound on each service's servable rate alone: Σ over pools of quota × best capacity per unit usage."""
    n_p = len(table.pools)
    on_q = ok & (table.pv >= 0)
    best = np.zeros(n_s * n_p)
    per_route = table.pv_capacity_rps[table.pv[on_q]] / np.maximum(table.usage[on_q], 1e-12)
    np.maximum.at(best, table.service[on_q] * n_p + table.pool[on_q], per_route)
    total = (best.reshape(n_s, n_p) * table.pools.max_count).sum(axis=1)
    local = ok & (table.pv < 0)
    if local.any():
        head = np.full(n_s, np.inf)
        np.minimum.at(head, table.service[local], table.head_s[local])
        quota = np.zeros(n_s)
        quota[table.service[local]] = table.pools.max_count[table.head_pool[local]]
        total += np.where(np.isfinite(head), quota / np.maximum(head, 1e-12), 0.0)
    return total


class GeoPlanner:
    """Builds the problem once; `solve()` plans, `replan(...)` applies telemetry and re-solves (DPP when it can).

    A re-plan keeps the compiled problem when every route the new numbers admit was already in the
    table (routes that left the SLO get ub_r = 0) and no rate rose above its value at build time (the
    open-pool rows hold Λ = λ as constants); otherwise it rebuilds. `latency_headroom` keeps
    routes up to slo·(1 + headroom) in the table so that moderate improvements stay parametric too.
    """

    def __init__(self, spec: Spec, method: Method = "auto", time_limit_s: float = 60.0,
                 latency_headroom: float = 0.25):
        if method not in ("auto", "milp", "lp-round"):
            raise ValueError(f"method {method!r} is not one of auto, milp, lp-round. To fix: pick one of those")
        self.spec, self.method, self.time_limit_s, self.headroom = spec, method, time_limit_s, latency_headroom
        self.last_resolve_kind = "built"
        self._build()

    def _build(self) -> None:
        t0 = time.perf_counter()
        self.table = build_routes(self.spec, self.headroom)
        self.enumerate_s = time.perf_counter() - t0
        self.chosen = self.method if self.method != "auto" else (
            "milp" if len(self.table) <= MILP_MAX_ROUTES else "lp-round")
        self.problem = GeoProblem(self.table, integer=self.chosen == "milp") if len(self.table) else None

    def _upper(self) -> np.ndarray:
        t = self.table
        rate = np.array(t.spec.service_rates_rps())
        slo = np.array([s.slo_ms for s in t.spec.services])
        return np.where(t.latency_ms <= slo[t.service], rate[t.service], 0.0)

    def solve(self) -> Plan:
        problems = diagnose(self.spec, self.table)
        if problems:
            raise InfeasibleSpec(problems, self.spec.name)
        if self.problem is None:
            return self._plan(None, Solution(np.zeros(0), np.zeros(0), "optimal", 0.0, 0.0), 0.0)
        t0 = time.perf_counter()
        self.problem.set_parameters(self._upper())
        # auto: a MILP that may not finish gets half the time, so LP + rounding can still run after it
        share = 0.5 if self.method == "auto" and self.chosen == "milp" else 1.0
        first = self.problem.solve(self.time_limit_s * share)
        solution = first
        if first.status in ("infeasible", "infeasible_inaccurate"):
            raise InfeasibleSpec(self._joint_diagnosis(), self.spec.name)
        if self.chosen == "lp-round":
            if first.status not in ("optimal", "optimal_inaccurate"):
                raise SpecError([("solver.time_limit_s", f"the LP relaxation of {len(self.table):,} routes did not "
                                  f"finish in {self.time_limit_s:g} s (status {first.status}). To fix: raise the "
                                  "time limit (--time-limit-s)")], self.spec.name)
            solution = self._round(first, t0)
        elif self.method == "auto" and first.status != "optimal":
            lp_problem = GeoProblem(self.table, integer=False)
            lp_problem.set_parameters(self._upper())
            lp = lp_problem.solve(max(self.time_limit_s - (time.perf_counter() - t0), 1.0))
            if lp.status == "optimal":
                rounded = self._round(lp, t0)
                has_incumbent = first.status == "user_limit"
                solution = rounded if not has_incumbent or self._cost(rounded) < self._cost(first) else first
                first = Solution(first.f, first.y, first.status, first.seconds + lp.seconds,
                                 max(first.bound or 0.0, lp.bound or 0.0))
        if solution.status not in ("optimal", "optimal_inaccurate", "user_limit", "rounded", "restricted_milp"):
            raise InfeasibleSpec(self._joint_diagnosis(), self.spec.name)
        return self._plan(first, solution, time.perf_counter() - t0)

    def _round(self, lp: Solution, t0: float) -> Solution:
        """Restricted MILP guided by the LP, then once more guided by its own incumbent; round-up as repair."""
        candidates = [c for c in [round_up(self.table, lp)] if c is not None]
        guide, upper = None, self._upper()
        for share in (0.6, 1.0):          # the first round may take 60% of the time left, the second the rest
            remaining = (self.time_limit_s - (time.perf_counter() - t0)) * share
            if remaining < 1.0:
                break
            k = int(np.clip(RESTRICTED_ROUTES // (5 * max(len(self.spec.services), 1)), 2, RESTRICTED_K))
            start = min(candidates, key=self._cost) if candidates else None   # HiGHS improves on the best so far
            sub = restricted_milp(self.table, lp, upper, remaining, k=k, guide=guide, start=start)
            if sub.status not in ("optimal", "user_limit"):
                break
            guide = Solution(sub.f, sub.y, "restricted_milp", sub.seconds, sub.bound)
            candidates.append(guide)
        if not candidates:
            return Solution(lp.f, lp.y, "rounding_failed", 0.0, lp.bound)
        best = min(candidates, key=self._cost)   # with the best bound any candidate proved
        return replace(best, bound=max((c.bound for c in candidates if c.bound is not None), default=None))

    def _cost(self, sol: Solution) -> float:
        t = self.table
        return float(t.pools.price_per_hour[t.pv_pool] @ sol.y + t.egress_per_rps @ sol.f)

    def _joint_diagnosis(self) -> list[tuple[str, str]]:
        """Which services cannot all be served together: an elastic LP with unserved demand penalised."""
        import cvxpy as cp

        p = GeoProblem(self.table, integer=False)
        p.set_parameters(self._upper())
        unserved = cp.Variable(len(self.spec.services), nonneg=True)
        demand = p.constraints["demand"]
        constraints = [c for name, c in p.constraints.items() if name not in ("demand", "accuracy")]
        rows = demand.args[0] + unserved == p.rate
        acc = p.constraints["accuracy"].args[1] + cp.multiply(p.min_accuracy, unserved) >= p.floor
        cp.Problem(cp.Minimize(cp.sum(unserved)), constraints + [rows, acc]).solve(solver=cp.HIGHS)
        problems = []
        for s, gap in enumerate(np.asarray(unserved.value if unserved.value is not None else [])):
            if gap > 1e-6:
                service = self.spec.services[s]
                problems.append((f"services[{s}]", f"{service.name}: {gap:.1f} of "
                                 f"{self.spec.source(service.source).rate_rps:g} req/s cannot be served together with "
                                 "the other services within the shared quotas. To fix: raise max_count of the "
                                 "instance types near its source, or relax its SLO or accuracy floor"))
        return problems or [("services", "no plan meets every constraint together (solver status "
                             f"{self.problem.problem.status}). To fix: relax SLOs, floors or quotas")]

    def replan(self, rates_rps: dict[str, float] | None = None,
               bandwidth_mbps: dict[tuple[str, str], float] | None = None,
               latency_ms: dict[tuple[str, str, str], float] | None = None,
               price_per_hour: dict[tuple[str, str], float] | None = None) -> Plan:
        """Apply telemetry to the spec and re-solve; `last_resolve_kind` says "parametric" or "rebuilt"."""
        self.spec = apply_telemetry(self.spec, rates_rps, bandwidth_mbps, latency_ms, price_per_hour)
        fresh = build_routes(self.spec, self.headroom)
        old_keys = self.table.keys()
        rates_fit = self.problem is not None and np.all(
            np.array(self.spec.service_rates_rps()) <= self.problem.built_rates_rps + 1e-9)
        if rates_fit and len(fresh) and np.isin(fresh.keys(), old_keys).all():
            self._refresh(fresh)
            self.last_resolve_kind = "parametric"
        else:
            self._build()
            self.last_resolve_kind = "rebuilt"
        return self.solve()

    def _refresh(self, fresh: RouteTable) -> None:
        """Copy the new numbers of routes that survive into the old table's order; missing routes get ub = 0."""
        t = self.table
        order = np.argsort(t.keys())
        pos = order[np.searchsorted(t.keys()[order], fresh.keys())]
        present = np.zeros(len(t), dtype=bool)
        present[pos] = True
        for name in ("latency_ms", "accuracy", "usage", "egress_per_rps", "head_s"):
            column = getattr(t, name).copy()
            column[pos] = getattr(fresh, name)
            setattr(t, name, column)
        t.latency_ms[~present] = np.inf
        version_pool = dict(zip(zip(fresh.pv_version, fresh.pv_pool), fresh.pv_capacity_rps))
        t.pv_capacity_rps = np.array([version_pool.get((v, p), c) for v, p, c in
                                      zip(t.pv_version, t.pv_pool, t.pv_capacity_rps)])
        t.spec = fresh.spec
        t.pools = fresh.pools
        self.problem.table = t

    def _plan(self, first: Solution | None, sol: Solution, seconds: float) -> Plan:
        t, spec = self.table, self.spec
        rate = np.array(spec.service_rates_rps())
        compute = float(t.pools.price_per_hour[t.pv_pool] @ sol.y) if len(sol.y) else 0.0
        egress = float(t.egress_per_rps @ sol.f) if len(sol.f) else 0.0
        used = np.flatnonzero(sol.f > 1e-6 * rate[t.service]) if len(sol.f) else np.zeros(0, dtype=int)
        sources = {x.name: x for x in spec.sources}
        routes = []
        for r in used:
            service = spec.services[t.service[r]]
            routes.append(PlanRoute(
                service=service.name, fraction=float(sol.f[r] / rate[t.service[r]]),
                data_version=sources[service.source].data_versions[t.data_version[r]].name,
                model_version=t.version_names[t.version[r]][1], site=t.net.places[t.site[r]],
                instance_type=t.pools.type_name[t.pool[r]] if t.pool[r] >= 0 else t.pools.type_name[t.head_pool[r]],
                split=None if t.split[r] < 0 else int(t.split[r]), exit=None if t.exit[r] < 0 else int(t.exit[r]),
                latency_ms=round(float(t.latency_ms[r]), 3), accuracy=round(float(t.accuracy[r]), 5)))
        instances = [PlanInstance(site=t.net.places[t.pools.site[t.pv_pool[q]]],
                                  instance_type=t.pools.type_name[t.pv_pool[q]],
                                  model_version="/".join(t.version_names[t.pv_version[q]]), count=int(round(sol.y[q])))
                     for q in np.flatnonzero(sol.y > 0.5)]
        n_s = len(spec.services)
        latency_max = np.zeros(n_s)
        np.maximum.at(latency_max, t.service[used], t.latency_ms[used])
        accuracy = np.bincount(t.service[used], weights=sol.f[used] * t.accuracy[used], minlength=n_s) / rate
        services = [PlanService(name=service.name, latency_ms_max=round(float(latency_max[s]), 3),
                                accuracy=round(float(accuracy[s]), 5)) for s, service in enumerate(spec.services)]
        bounds = [s.bound for s in (first, sol) if s is not None and s.bound is not None]
        bound = max(bounds) if bounds else compute + egress
        info = SolverInfo(method=self.chosen, status=sol.status, seconds=round(seconds, 3),
                          build_s=round(self.enumerate_s + (self.problem.build_s if self.problem else 0.0), 3),
                          compile_s=round(self.problem.compile_s, 3) if self.problem and self.problem.compile_s else None,
                          solve_s=round(first.seconds + (sol.seconds if sol is not first else 0.0), 3) if first else 0.0, routes=len(t))
        return Plan(spec=spec.name, feasible=True, cost_per_hour=round(compute + egress, 6),
                    compute_cost_per_hour=round(compute, 6), egress_cost_per_hour=round(egress, 6),
                    lower_bound_per_hour=round(min(bound, compute + egress), 6), solver=info, routes=routes,
                    instances=instances, services=services)


def apply_telemetry(spec: Spec, rates_rps=None, bandwidth_mbps=None, latency_ms=None, price_per_hour=None) -> Spec:
    """A copy of `spec` with measured rates, link bandwidths, version latencies and prices applied."""
    data = spec.model_dump()
    by_name = {s["name"]: s for s in data["sources"]}
    for name, rate in (rates_rps or {}).items():
        _lookup(by_name, name, "source")["rate_rps"] = float(rate)
    for (a, b), mbps in (bandwidth_mbps or {}).items():
        links = [l for l in data["links"] if {l["src"], l["dst"]} == {a, b}]
        if not links:
            raise SpecError([("links", f"no link between {a!r} and {b!r}. To fix: report bandwidth of a link in "
                              "the spec")], spec.name)
        links[0]["bandwidth_mbps"] = float(mbps)
    models = {m["name"]: m for m in data["models"]}
    for (model, version, device), ms in (latency_ms or {}).items():
        versions = {v["name"]: v for v in _lookup(models, model, "model")["versions"]}
        entry = _lookup(versions, version, f"version of {model}")
        if device in entry["capacity_rps"] and device in entry["latency_ms"]:
            entry["capacity_rps"][device] *= entry["latency_ms"][device] / float(ms)
        entry["latency_ms"][device] = float(ms)
    for (site, type_name), price in (price_per_hour or {}).items():
        region = _lookup({r["name"]: r for r in data["regions"]}, site, "region")
        _lookup({i["name"]: i for i in region["instance_types"]}, type_name, f"instance type of {site}")[
            "price_per_hour"] = float(price)
    return Spec.model_validate(data)


def _lookup(table: dict, name: str, kind: str) -> dict:
    if name not in table:
        raise SpecError([(kind, f"unknown {kind} {name!r} in telemetry. To fix: use one of {sorted(table)}")])
    return table[name]


def plan_spec(spec: Spec, method: Method = "auto", time_limit_s: float = 60.0) -> Plan:
    """Plan a spec once (no headroom routes kept for re-planning)."""
    return GeoPlanner(spec, method, time_limit_s, latency_headroom=0.0).solve()
