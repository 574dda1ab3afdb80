"""Scale of the geo planner: services × regions grown until ≥ 10⁶ route variables.

For each size: route enumeration, cvxpy build, compile (first solve minus solver time), LP solve,
rounding (restricted MILP), the plan's gap to the LP bound and to rounding every pool up, and a
re-solve after a parameter change (every rate +10%, DPP: no rebuild) against the first solve.
Each size gets its own time limit (the issue's targets: 10⁵ routes planned in ≤ 30 s, 10⁶ in ≤ 5 min).
Usage: python bench/geo_scale.py [--sizes 10000,100000,1000000] [--time-limits-s 25,25,60]
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

from isthmus.optimizer.geo import round_up
from isthmus.optimizer.generate import generate_spec
from isthmus.optimizer.planner import GeoPlanner
from isthmus.spec import SpecError

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results" / "geo_scale.json"
ROUTES_PER_SERVICE_20_REGIONS = 185       # measured mean of generate_spec at 20 regions, to size the runs
RATE_SCALE = 20.0                         # sources of 400–8,000 req/s: pools of many instances, as at scale


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--time-limits-s", default="25,25,60", help="one per size (the last repeats)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    limits = [float(t) for t in args.time_limits_s.split(",")]
    limits += limits[-1:] * (len(sizes) - len(limits))
    console = Console()
    rows = []
    for size, limit_s in zip(sizes, limits):
        console.print(f"[bold]planning ~{size:,} routes (time limit {limit_s:g} s)[/bold]")
        try:
            rows.append(dict(run(size, limit_s), time_limit_s=limit_s))
        except SpecError as err:         # e.g. the LP relaxation alone needs more than the time limit
            rows.append({"target_routes": size, "error": str(err)})
        console.print(rows[-1])
        RESULTS.write_text(json.dumps(rows, indent=2))
    table = Table(title="geo_scale (seconds on this 2-core machine; gaps relative to the LP bound)")
    cols = ["routes", "services", "enumerate_s", "build_s", "compile_s", "lp_solve_s", "plan_total_s",
            "gap_to_lp_bound", "round_up_gap_to_lp_bound", "resolve_speedup"]
    for col in cols:
        table.add_column(col)
    for r in (r for r in rows if "error" not in r):
        table.add_row(*[f"{r[c]:.4f}" if isinstance(r[c], float) and "gap" in c else str(r[c]) for c in cols])
    console.print(table)


if __name__ == "__main__":
    main()
