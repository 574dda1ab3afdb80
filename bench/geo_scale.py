"""Scale of the geo planner: services × regions grown until ≥ 10⁶ route variables.

For each size: route enumeration, cvxpy build, compile (first solve minus solver time), LP solve,
rounding (restricted MILP), the plan's gap to the LP bound and to rounding every pool up, and a
re-solve after a parameter change (every rate +10%, DPP: no rebuild) against the first solve.
Each size gets its own time limit (the issue's targets: 10⁵ routes planned in ≤ 30 s, 10⁶ in ≤ 5 min).

`--shape small-services` (results in geo_scale_small_services.json): thousands of small services
(`generate_small_services_spec`: 10–500 req/s each, 8 regions × 4 types, 3 models × 4 versions, 384
shared pools), the regime where rounding LP pools up is weak. Per size: routes, pools, seconds (build,
LP, end to end), the cost of `GeoPlanner(spec).solve()` (default method; no headroom routes, as
`isthmus plan`) and its gap to the LP bound, the same for rounding every LP pool up (`geo.round_up`,
lp-round's repair) and for lp-round's restricted MILP alone (`geo.restricted_milp`, k = 4, no MIP
start, no second round).
Usage: python bench/geo_scale.py [--shape large-services|small-services] [--sizes 10000,100000,1000000]
       [--time-limits-s 25,25,60]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from isthmus.optimizer.geo import GeoProblem, restricted_milp, round_up
from isthmus.optimizer.generate import generate_small_services_spec, generate_spec
from isthmus.optimizer.planner import GeoPlanner
from isthmus.spec import SpecError
from isthmus.tables import print_table

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results" / "geo_scale.json"
ROUTES_PER_SERVICE_20_REGIONS = 185       # measured mean of generate_spec at 20 regions, to size the runs
RATE_SCALE = 20.0                         # sources of 400–8,000 req/s: pools of many instances, as at scale
RESULTS_SMALL = Path(__file__).parent / "results" / "geo_scale_small_services.json"
ROUTES_PER_SMALL_SERVICE = 185            # measured mean of generate_small_services_spec (8 regions)
RESTRICTED_K = 4                          # the bare restricted MILP: LP support + the k best routes per service


def run(target_routes: int, time_limit_s: float) -> dict:
    n_regions = 20
    n_services = max(5, int(target_routes / ROUTES_PER_SERVICE_20_REGIONS))
    spec = generate_spec(7, n_regions, n_services, quota=100_000, rate_scale=RATE_SCALE)
    t0 = time.perf_counter()
    planner = GeoPlanner(spec, method="lp-round", time_limit_s=time_limit_s, latency_headroom=0.0)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = planner.solve()
    plan_s = time.perf_counter() - t0
    problem = planner.problem
    lp_first_s = problem.compile_s + problem.first_solve_s
    # rounding every pool up, for comparison (the repair fallback)
    problem.set_parameters(planner._upper())
    lp = problem.solve(time_limit_s)
    resolve_s = lp.seconds
    rounded_up = round_up(planner.table, lp)
    # a parameter change: all rates +10% (no rebuild, DPP)
    rates = {s.name: s.rate_rps * 1.1 for s in spec.sources}
    t0 = time.perf_counter()
    planner.spec = spec.model_copy(update={"sources": [s.model_copy(update={"rate_rps": rates[s.name]})
                                                        for s in spec.sources]})
    planner.table.spec = planner.spec
    problem.set_parameters(planner._upper())
    changed = problem.solve(time_limit_s)
    changed_s = time.perf_counter() - t0
    return {
        "regions": n_regions, "services": n_services, "routes": len(planner.table),
        "pool_versions": len(planner.table.pv_pool),
        "enumerate_s": round(planner.enumerate_s, 2), "build_s": round(problem.build_s, 2),
        "compile_s": round(problem.compile_s, 2), "lp_solve_s": round(problem.first_solve_s, 2),
        "plan_total_s": round(setup_s + plan_s, 2),
        "status": plan.solver.status, "cost_per_hour": plan.cost_per_hour,
        "lp_bound_per_hour": plan.lower_bound_per_hour,
        "gap_to_lp_bound": plan.cost_per_hour / plan.lower_bound_per_hour - 1,
        "round_up_gap_to_lp_bound": (planner._cost(rounded_up) / plan.lower_bound_per_hour - 1) if rounded_up else None,
        "first_lp_s": round(lp_first_s, 2), "resolve_same_params_s": round(resolve_s, 2),
        "resolve_after_rate_change_s": round(changed_s, 2),
        "resolve_speedup": round(lp_first_s / changed_s, 2), "changed_status": changed.status,
    }


def run_small(target_routes: int, time_limit_s: float) -> dict:
    """The small-services shape: the planner end to end, then rounding up and the restricted MILP on the LP."""
    n_services = max(5, round(target_routes / ROUTES_PER_SMALL_SERVICE))
    spec = generate_small_services_spec(7, n_services)
    t0 = time.perf_counter()
    planner = GeoPlanner(spec, time_limit_s=time_limit_s, latency_headroom=0.0)   # default method (auto)
    plan = planner.solve()
    end_to_end_s = time.perf_counter() - t0
    table, upper = planner.table, planner._upper()
    # the LP relaxation: the planner's own problem under lp-round (a hot-started re-solve), else built here
    lp_problem = planner.problem if not planner.problem.integer else GeoProblem(table, integer=False)
    lp_problem.set_parameters(upper)
    lp = lp_problem.solve(time_limit_s)
    bound = lp.bound
    rounded = round_up(table, lp)               # lp-round's repair: every pool-version up to ⌈y_q⌉
    t1 = time.perf_counter()
    sub = restricted_milp(table, lp, upper, time_limit_s, k=RESTRICTED_K)
    sub_s = time.perf_counter() - t1
    sub_ok = sub.status in ("optimal", "user_limit")
    price = table.pools.price_per_hour[table.pv_pool]

    def gap(cost: float | None) -> float | None:
        return None if cost is None else cost / bound - 1

    rounded_cost = planner._cost(rounded) if rounded else None
    sub_cost = planner._cost(sub) if sub_ok else None
    return {
        "services": n_services, "routes": len(table), "pools": len(table.pools), "pool_versions": len(table.pv_pool),
        "rate_rps_total": round(float(sum(spec.service_rates_rps())), 1),
        "build_s": round(planner.enumerate_s + lp_problem.build_s, 2),
        "lp_s": round(lp_problem.compile_s + lp_problem.first_solve_s, 2),
        "end_to_end_s": round(end_to_end_s, 2), "time_limit_s": time_limit_s,
        "method": plan.solver.method, "status": plan.solver.status,
        "lp_bound_per_hour": round(bound, 4), "lp_instances": round(float(lp.y.sum()), 2),
        "lp_compute_per_hour": round(float(price @ lp.y), 4),
        "planner_cost_per_hour": plan.cost_per_hour, "planner_gap": gap(plan.cost_per_hour),
        "planner_instances": sum(i.count for i in plan.instances),
        "planner_lower_bound_per_hour": plan.lower_bound_per_hour,
        "round_up_cost_per_hour": rounded_cost, "round_up_gap": gap(rounded_cost),
        "round_up_instances": int(rounded.y.sum()) if rounded else None,
        "round_up_compute_over_lp": float(price @ rounded.y / (price @ lp.y) - 1) if rounded else None,
        "restricted_k": RESTRICTED_K, "restricted_status": sub.status, "restricted_s": round(sub_s, 2),
        "restricted_cost_per_hour": sub_cost, "restricted_gap": gap(sub_cost),
        "restricted_instances": int(sub.y.sum()) if sub_ok else None,
    }


def print_rows(rows: list[dict], title: str, cols: list[str]) -> None:
    table = Table(title=title)
    for col in cols:
        table.add_column(col)
    for r in (r for r in rows if "error" not in r):
        table.add_row(*[_cell(c, r[c]) for c in cols])
    print_table(table)


def _cell(col: str, value) -> str:
    if isinstance(value, float) and "gap" in col:
        return f"{value:.2%}"
    if isinstance(value, float) and "per_hour" in col:
        return f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["large-services", "small-services"], default="large-services",
                        help="large-services: generate_spec (few services, many instances each); small-services: "
                        "generate_small_services_spec (thousands of 10–500 req/s services)")
    parser.add_argument("--sizes", default=None, help="target routes per run (default 10000,100000,1000000; "
                        "small-services 100000,1000000)")
    parser.add_argument("--time-limits-s", default=None, help="one per size (the last repeats; default 25,25,60; "
                        "small-services 60, the planner's default)")
    args = parser.parse_args()
    small = args.shape == "small-services"
    args.sizes = args.sizes or ("100000,1000000" if small else "10000,100000,1000000")
    args.time_limits_s = args.time_limits_s or ("60" if small else "25,25,60")
    sizes = [int(s) for s in args.sizes.split(",")]
    limits = [float(t) for t in args.time_limits_s.split(",")]
    limits += limits[-1:] * (len(sizes) - len(limits))
    console = Console()
    rows = []
    for size, limit_s in zip(sizes, limits):
        console.print(f"[bold]planning ~{size:,} routes (time limit {limit_s:g} s)[/bold]")
        try:
            rows.append(run_small(size, limit_s) if small else dict(run(size, limit_s), time_limit_s=limit_s))
        except SpecError as err:         # e.g. the LP relaxation alone needs more than the time limit
            rows.append({"target_routes": size, "error": str(err)})
        console.print(rows[-1])
        (RESULTS_SMALL if small else RESULTS).write_text(json.dumps(rows, indent=2))
    if small:
        print_rows(rows, "geo_scale, small services (seconds on this 2-core machine; $/h; gaps to the LP bound)",
                   ["routes", "services", "pool_versions", "build_s", "lp_s", "end_to_end_s", "lp_bound_per_hour",
                    "planner_cost_per_hour", "planner_gap", "round_up_gap", "restricted_gap", "restricted_s"])
    else:
        print_rows(rows, "geo_scale (seconds on this 2-core machine; gaps relative to the LP bound)",
                   ["routes", "services", "enumerate_s", "build_s", "compile_s", "lp_solve_s", "plan_total_s",
                    "gap_to_lp_bound", "round_up_gap_to_lp_bound", "resolve_speedup"])


if __name__ == "__main__":
    main()
