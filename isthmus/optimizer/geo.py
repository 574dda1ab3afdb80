"""The geo planner: A2's joint model/data-version placement as a MILP (cvxpy + HiGHS).

Symbols (docs/spec.md "Semantics"). Service s has rate λ_s, SLO slo_s and floor min_accuracy_s;
route r = (d, m, j, t[, k, e]) has latency L_r, accuracy a_r = accuracy_m + accuracy_delta_d (or the
exit's), egress price g_r = bytes·3600/1e9·egress_per_gb ($/h per request/s). Pool-version
q = (j, t, m) has capacity c_q = capacity_rps(m, dev(t)) per instance and price π_q = price_per_hour_t.
Only routes with L_r ≤ slo_s exist (`routes.build_routes`). With flows f_r = λ_s·x_{s,r} (req/s):

    minimise    Σ_q π_q·y_q + Σ_r g_r·f_r                                  ($ per hour)
    subject to  Σ_{r∈s} f_r = λ_s                                          (Σ_r x_{s,r} = 1)
                Σ_{r∈s} a_r·f_r ≥ min_accuracy_s·λ_s                       (request-weighted accuracy)
                Σ_{r∈q} u_r·f_r ≤ c_q·y_q                                  (capacity; u_r = 1, or tail/latency)
                Σ_{q∈(j,t)} y_q + Σ_{r: head at j} h_r·f_r ≤ max_count_{j,t}  (quota; h_r = head_ms/1000 s)
                0 ≤ f_r ≤ ub_r,   f_r ≤ Λ_r·y_q(r)  (Λ_r = λ_s when built)
                y_q ∈ ℤ≥0  (MILP)  or  y_q ≥ 0  (LP relaxation)

The open-pool rows f_r ≤ Λ_r·y_q are implied by the MILP but cut the LP relaxation down towards the
integer optimum (as x ≤ y does in facility location); Λ is a constant, so a rate above Λ rebuilds.
They are added up to OPEN_CUTS_MAX_ROUTES routes: at scale they cost the LP more time than they save.

λ, c, π, g, max_count and ub are cvxpy Parameters, so a re-plan after telemetry re-solves the
compiled problem (DPP) instead of rebuilding it; ub_r = 0 switches off a route whose measured
latency left the SLO. `lp-round` solves the relaxation (its value is `lower_bound_per_hour`), then
a MILP restricted to the LP's support plus the k best routes per service by reduced cost; rounding
every y_q up is the fallback (repair) when that restricted MILP finds nothing in time. When the
restriction keeps every route (a small problem), that MILP is the problem itself and its dual bound,
tighter than the LP's (which pays for fractions of instances), is `lower_bound_per_hour`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from isthmus.optimizer.routes import RouteTable

__all__ = ["GeoProblem", "Solution", "amortised_cost", "restricted_milp", "round_up"]

_HIGHS_OPTS = {"presolve": "on"}
OPEN_CUTS_MAX_ROUTES = 50_000   # above this the open-pool rows slow the LP ~7× for a ~6% tighter bound
_banner_shown = False


def _silence_highs_banner() -> None:
    """HiGHS prints a copyright banner to stdout once per process, at its first construction, whatever its
    options say (cvxpy's `log_to_console=False` comes later): construct that first one with stdout on
    /dev/null, so `isthmus plan` prints the plan only."""
    global _banner_shown
    if _banner_shown:
        return
    import os
    import sys

    import highspy

    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
        _banner_shown = True


def _hot_start_highs():
    """A cvxpy HiGHS solver that keeps its `highspy.Highs` alive across DPP re-solves of one problem.

    When a re-solve changes only right-hand sides and costs (rates, floors, route bounds, quotas — the
    telemetry that comes often) and the constraint matrix is unchanged, the new numbers go into the same
    HiGHS model and dual simplex restarts from the previous optimal basis instead of from scratch.
    """
    import cvxpy.settings as s
    from cvxpy.reductions.solvers.qp_solvers.highs_qpif import HIGHS

    class HotStartHighs(HIGHS):
        def __init__(self) -> None:
            super().__init__()
            self.cache: dict = {}
            self.hot_starts = 0

        def name(self) -> str:
            return "ISTHMUS_HIGHS_HOT_START"

        def solve_via_data(self, data, warm_start, verbose, solver_opts, solver_cache=None):
            matrix = sp.vstack([data[s.A], data[s.F]]).tocsc()
            previous = self.cache.get(self.name())
            if previous is not None and _same_matrix(previous[1]["Ax"], matrix):
                highs = previous[0]
                m, n = matrix.shape
                upper = np.concatenate((data[s.B], data[s.G]))
                lower = np.concatenate((data[s.B], np.full(data[s.G].shape, -highs.inf)))
                highs.changeRowsBounds(m, np.arange(m, dtype=np.int32), lower, upper)
                highs.changeColsCost(n, np.arange(n, dtype=np.int32), np.asarray(data[s.Q], dtype=float))
                highs.setOptionValue("time_limit", float(solver_opts.get("time_limit", np.inf)))
                highs.run()
                self.hot_starts += 1
                results = {"solution": highs.getSolution(), "basis": highs.getBasis(), "info": highs.getInfo(),
                           "model_status": highs.getModelStatus().name, "run_time": highs.getRunTime()}
                self.cache[self.name()] = (highs, dict(previous[1], Ax=matrix), results)
                return results
            return super().solve_via_data(data, False, verbose, solver_opts, self.cache)

    return HotStartHighs()


def _same_matrix(a: sp.csc_matrix, b: sp.csc_matrix) -> bool:
    return a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices) \
        and np.array_equal(a.data, b.data)


@dataclass
class Solution:
    f: np.ndarray            # req/s per route
    y: np.ndarray            # instances per pool-version
    status: str
    seconds: float
    bound: float | None      # a lower bound on the optimum, when the solver gives one
    duals: dict[str, np.ndarray] | None = None


class GeoProblem:
    """The problem over one RouteTable, built once; `solve()` after `set_parameters()` reuses the compiled form."""

    def __init__(self, table: RouteTable, integer: bool, open_cuts: bool | None = None):
        import cvxpy as cp

        t0 = time.perf_counter()
        self.table, self.integer = table, integer
        open_cuts = len(table) <= OPEN_CUTS_MAX_ROUTES if open_cuts is None else open_cuts
        n_r, n_q = len(table), len(table.pv_pool)
        n_s, n_p = len(table.spec.services), len(table.pools)
        r_idx = np.arange(n_r)
        on_q = table.pv >= 0
        on_edge = table.head_pool >= 0
        route_matrix = _sparse(table.service, r_idx, np.ones(n_r), (n_s, n_r))
        accuracy_matrix = _sparse(table.service, r_idx, table.accuracy, (n_s, n_r))
        usage_matrix = _sparse(table.pv[on_q], r_idx[on_q], table.usage[on_q], (n_q, n_r))
        quota_y = _sparse(table.pv_pool, np.arange(n_q), np.ones(n_q), (n_p, n_q))
        quota_f = _sparse(table.head_pool[on_edge], r_idx[on_edge], table.head_s[on_edge], (n_p, n_r))
        self.min_accuracy = np.array([s.min_accuracy for s in table.spec.services])
        self.built_rates_rps = np.array(table.spec.service_rates_rps())

        self.f = cp.Variable(n_r, nonneg=True, name="f")
        self.y = cp.Variable(max(n_q, 1), nonneg=True, integer=integer, name="y")
        self.rate = cp.Parameter(n_s, nonneg=True, name="rate_rps")
        self.floor = cp.Parameter(n_s, nonneg=True, name="accuracy_floor_rps")
        self.capacity = cp.Parameter(max(n_q, 1), nonneg=True, name="capacity_rps")
        self.price = cp.Parameter(max(n_q, 1), nonneg=True, name="price_per_hour")
        self.egress = cp.Parameter(n_r, nonneg=True, name="egress_per_rps")
        self.quota = cp.Parameter(n_p, nonneg=True, name="max_count")
        self.upper = cp.Parameter(n_r, nonneg=True, name="route_upper_rps")
        y = self.y[:n_q] if n_q else None
        self.constraints = {
            "demand": route_matrix @ self.f == self.rate,
            "accuracy": accuracy_matrix @ self.f >= self.floor,
        }
        self.constraints["upper"] = self.f <= self.upper
        if n_q and open_cuts:
            # f_r ≤ Λ_r·y_q(r) with the constant Λ_r = λ_s at build time: a route's pool-version is open
            # (y ≥ 1) if it carries flow. Valid while λ_s ≤ Λ_s (a re-plan with a higher rate rebuilds), and it
            # tightens the LP relaxation as facility location's x ≤ y does. Constant, so DPP compiles it once.
            self.open_rate = np.array(table.spec.service_rates_rps())[table.service]
            open_matrix = _sparse(np.arange(on_q.sum()), table.pv[on_q], self.open_rate[on_q], (on_q.sum(), n_q))
            self.constraints["open"] = self.f[on_q] <= open_matrix @ y
        if n_q:
            self.constraints["capacity"] = usage_matrix @ self.f <= cp.multiply(self.capacity[:n_q], y)
            self.constraints["quota"] = quota_y @ y + quota_f @ self.f <= self.quota
        elif on_edge.any():
            self.constraints["quota"] = quota_f @ self.f <= self.quota
        # Epigraph form: cvxpy's QP path densifies parameters of the objective ((R+Q) × #params), so the
        # parametric cost sits in a constraint, where parameter maps stay sparse.
        self.cost = cp.Variable(name="cost_per_hour")
        spend = self.egress @ self.f + (self.price[:n_q] @ y if n_q else 0)
        self.constraints["cost"] = spend <= self.cost
        self.problem = cp.Problem(cp.Minimize(self.cost), list(self.constraints.values()))
        self.set_parameters()
        self.build_s = time.perf_counter() - t0
        self.compile_s: float | None = None
        self.first_solve_s: float | None = None
        self.solver = cp.HIGHS if integer else _hot_start_highs()   # cvxpy's MILP path is HiGHS's conic one

    def set_parameters(self, upper: np.ndarray | None = None) -> None:
        """Load the table's current numbers into the Parameters (after telemetry changed the table's spec)."""
        t = self.table
        rate = np.array(t.spec.service_rates_rps())
        self.rate.value = rate
        self.floor.value = self.min_accuracy * rate
        n_q = len(t.pv_pool)
        self.capacity.value = t.pv_capacity_rps if n_q else np.ones(1)
        self.price.value = t.pools.price_per_hour[t.pv_pool] if n_q else np.zeros(1)
        self.egress.value = t.egress_per_rps
        self.quota.value = t.pools.max_count.astype(float)
        self.upper.value = rate[t.service] if upper is None else upper

    def solve(self, time_limit_s: float, mip_rel_gap: float = 1e-4, start: Solution | None = None) -> Solution:
        """Solve at the current Parameters. `start` (MILP only): a feasible (f, y) HiGHS begins from as its
        incumbent, so a time limit can only improve on it."""
        import cvxpy as cp

        _silence_highs_banner()
        opts = dict(_HIGHS_OPTS, time_limit=float(max(time_limit_s, 1.0)))
        if self.integer:
            opts["mip_rel_gap"] = mip_rel_gap
        t0 = time.perf_counter()
        try:
            # SciPy's canonicalisation backend builds the parameter→data maps vectorised (the C++ one
            # loops per parameter entry: 10× slower with a route-sized Parameter).
            warm = start is not None and self.integer
            if warm:
                self._load_start(start)
            self.problem.solve(solver=self.solver, verbose=False, warm_start=warm,
                               canon_backend=cp.SCIPY_CANON_BACKEND, **opts)
        except cp.error.SolverError as err:
            return Solution(np.zeros(len(self.table)), np.zeros(len(self.table.pv_pool)), f"solver_error: {err}",
                            time.perf_counter() - t0, None)
        seconds = time.perf_counter() - t0
        stats = self.problem.solver_stats
        if self.compile_s is None:
            self.compile_s = max(seconds - (stats.solve_time or 0.0), 0.0)
            self.first_solve_s = seconds - self.compile_s
        status = self.problem.status
        if self.f.value is None or status not in ("optimal", "optimal_inaccurate", "user_limit"):
            return Solution(np.zeros(len(self.table)), np.zeros(len(self.table.pv_pool)), status, seconds, None)
        info = stats.extra_stats
        if self.integer:
            bound = getattr(info, "mip_dual_bound", None)
            if status == "user_limit" and getattr(info, "primal_solution_status", 2) == 0:
                return Solution(np.zeros(len(self.table)), np.zeros(len(self.table.pv_pool)), "no_incumbent",
                                seconds, None)
        else:
            bound = float(self.problem.value)
        duals = None if self.integer else {name: np.atleast_1d(c.dual_value) for name, c in self.constraints.items()}
        y = np.asarray(self.y.value)[:len(self.table.pv_pool)]
        f = np.maximum(np.asarray(self.f.value), 0.0)
        return Solution(f, np.round(y) if self.integer else np.maximum(y, 0.0), status, seconds, bound, duals)


    def _load_start(self, start: Solution) -> None:
        """Put `start` where cvxpy's HiGHS interface takes a warm start from (its solver cache), in the
        column order of the compiled problem: x = (cost, f, y) at their variable offsets."""
        import cvxpy as cp
        import highspy

        data, _, inverse = self.problem.get_problem_data(cp.HIGHS, canon_backend=cp.SCIPY_CANON_BACKEND)
        offsets = next(i.var_offsets for i in inverse if hasattr(i, "var_offsets"))
        x = np.zeros(data["A"].shape[1])
        y = np.zeros(self.y.size)
        y[:len(start.y)] = start.y
        t = self.table
        cost = float(t.pools.price_per_hour[t.pv_pool] @ start.y + t.egress_per_rps @ start.f)
        for variable, value in ((self.f, start.f), (self.y, y), (self.cost, [cost])):
            x[offsets[variable.id]:offsets[variable.id] + variable.size] = value
        solution = highspy.HighsSolution()
        solution.col_value = x.tolist()
        solution.value_valid = True
        self.problem._solver_cache[cp.HIGHS] = (None, None, {"model_status": "kOptimal", "solution": solution})


def _sparse(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix((values, (rows, cols)), shape=shape)


def reduced_cost_order(table: RouteTable, lp: Solution) -> np.ndarray:
    """Per-route reduced cost up to the per-service demand dual:
    g_r + u_r·w_q(r) + h_r·e_j(r) − a_r·α_s(r), with w, e, α the capacity, quota and accuracy duals."""
    d = lp.duals or {}
    score = table.egress_per_rps.copy()
    if "capacity" in d:
        on_q = table.pv >= 0
        score[on_q] += table.usage[on_q] * np.abs(d["capacity"][table.pv[on_q]])
    if "quota" in d:
        on_edge = table.head_pool >= 0
        score[on_edge] += table.head_s[on_edge] * np.abs(d["quota"][table.head_pool[on_edge]])
    if "accuracy" in d:
        score -= table.accuracy * np.abs(d["accuracy"][table.service])
    return score


def amortised_cost(table: RouteTable) -> np.ndarray:
    """$/h per req/s of a route on its own: π_q·u_r/c_q + g_r (instance price spread over its capacity)."""
    cost = table.egress_per_rps.copy()
    on_q = table.pv >= 0
    cost[on_q] += table.pools.price_per_hour[table.pool[on_q]] * table.usage[on_q] / table.pv_capacity_rps[
        table.pv[on_q]]
    return cost


def _best_per_pair(table: RouteTable, routes: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Of `routes`, the lowest-score one per (service, pool-version) pair."""
    stride = len(table.pv_pool) + 1
    order = routes[np.lexsort((score[routes], table.service[routes] * stride + table.pv[routes]))]
    pair = table.service[order] * stride + table.pv[order]
    return order[np.r_[True, pair[1:] != pair[:-1]]] if len(order) else order


def _best_per_service(service: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k lowest-score routes of every service (vectorised group top-k)."""
    order = np.lexsort((score, service))
    grouped = service[order]
    rank = np.arange(len(order)) - np.searchsorted(grouped, grouped, side="left")
    return order[rank < k]


def restricted_milp(table: RouteTable, lp: Solution, upper: np.ndarray, time_limit_s: float, k: int = 8,
                    mip_rel_gap: float = 5e-3, guide: Solution | None = None,
                    start: Solution | None = None) -> Solution:
    """MILP over a route subset the LP points at: the support of `guide` (default the LP), the k best
    routes per service by reduced cost and by amortised cost, and per service one route into each of
    its 2k best pool-versions `guide` opened (y_q > 0) and its 3k cheapest pool-versions by amortised
    cost — the consolidation moves an integer plan needs (many services sharing one pool) — together
    with the most accurate route of each such (service, pool-version) pair.

    `upper` is the full table's route bounds ub_r (0 for a route outside its SLO); `start`, a feasible plan
    over the whole table whose routes all lie in the subset (the LP rounded up, or the guide), is HiGHS's
    first incumbent. Returns a Solution over the whole table (routes outside the subset carry no flow).
    """
    guide = guide or lp
    score, amortised = reduced_cost_order(table, lp), amortised_cost(table)
    support = np.flatnonzero(guide.f > 1e-9)
    best = np.union1d(_best_per_service(table.service, score, k), _best_per_service(table.service, amortised, k))
    pairs = _best_per_pair(table, np.flatnonzero(table.pv >= 0), amortised)
    opened = pairs[guide.y[table.pv[pairs]] > 1e-9]
    opened = np.union1d(opened[_best_per_service(table.service[opened], score[opened], 2 * k)],
                        pairs[_best_per_service(table.service[pairs], amortised[pairs], 3 * k)])
    # and, in each of those (service, pool-version) pairs, its most accurate route: the cheapest route of a
    # pair may miss the floor, and mixing in a little of a more accurate one (another data version on the
    # same instances) meets the request-weighted mean without opening anything new
    accurate = _best_per_pair(table, np.flatnonzero(table.pv >= 0), amortised - table.accuracy * 1e6)
    stride = len(table.pv_pool) + 1
    accurate = accurate[np.isin(table.service[accurate] * stride + table.pv[accurate],
                                table.service[opened] * stride + table.pv[opened])]
    keep = np.union1d(np.union1d(support, best), np.union1d(opened, accurate))
    keep = keep[upper[keep] > 0]
    problem = GeoProblem(table.subset(keep), integer=True)
    problem.set_parameters(upper[keep])
    kept_pv = np.unique(table.pv[keep][table.pv[keep] >= 0])
    if start is not None and np.isin(np.flatnonzero(start.f > 0), keep).all():   # its routes all kept
        start = Solution(start.f[keep], start.y[kept_pv], start.status, 0.0, None)
    else:
        start = None
    solution = problem.solve(time_limit_s, mip_rel_gap, start=start)
    f = np.zeros(len(table))
    f[keep] = solution.f
    y = np.zeros(len(table.pv_pool))
    y[kept_pv] = solution.y
    # kept every route that may carry flow: the restricted MILP is the problem itself, so its dual bound is one
    whole = len(keep) == int((upper > 0).sum()) and solution.bound is not None
    bound = max(lp.bound or 0.0, solution.bound) if whole else lp.bound
    return Solution(f, y, solution.status, solution.seconds, bound)


def round_up(table: RouteTable, lp: Solution) -> Solution | None:
    """Repair by rounding every pool-version up: y_q = ⌈y_q⌉ keeps the LP's flows feasible unless a quota breaks."""
    y = np.ceil(lp.y - 1e-7)
    used = np.bincount(table.pv_pool, weights=y, minlength=len(table.pools))
    on_edge = table.head_pool >= 0
    used += np.bincount(table.head_pool[on_edge], weights=table.head_s[on_edge] * lp.f[on_edge],
                        minlength=len(table.pools))
    if np.any(used > table.pools.max_count + 1e-6):
        return None
    return Solution(lp.f, y, "rounded", 0.0, lp.bound)
