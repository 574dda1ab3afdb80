"""Cost of the geo planner against the baselines over seeded generated multi-region specs.

For each spec (4–8 regions, 5–50 services): the exact MILP, LP + rounding, and every baseline of
isthmus/optimizer/baselines.py, all in the same run. Isthmus's plan is the cheaper of its MILP (which
may stop at its time limit) and LP + rounding — what `--method auto` does. Reports cost ratios
baseline / Isthmus, their median against the best baseline per instance, and the LP-rounding gap to
the MILP optimum where the MILP finished.
Usage: python bench/geo_cost.py [--specs 30] [--milp-time-limit-s 120] [--round-time-limit-s 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from isthmus.optimizer import InfeasibleSpec, plan_spec
from isthmus.optimizer.baselines import BASELINES, baseline_costs
from isthmus.optimizer.generate import generate_spec

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results" / "geo_cost.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=30)
    parser.add_argument("--milp-time-limit-s", type=float, default=120.0)
    parser.add_argument("--round-time-limit-s", type=float, default=60.0)
    args = parser.parse_args()
    rows = []
    for seed in track(range(args.specs), description="planning specs"):
        n_regions, n_services = 4 + seed % 5, 5 + (seed * 7) % 46
        spec = generate_spec(seed, n_regions, n_services)
        try:
            t0 = time.perf_counter()
            milp = plan_spec(spec, method="milp", time_limit_s=args.milp_time_limit_s)
            milp_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            rounded = plan_spec(spec, method="lp-round", time_limit_s=args.round_time_limit_s)
            round_s = time.perf_counter() - t0
        except InfeasibleSpec:
            rows.append({"seed": seed, "regions": n_regions, "services": n_services, "feasible": False})
            continue
        base = baseline_costs(spec)
        feasible = [v for v in base.values() if v != float("inf")]
        isthmus = min(milp.cost_per_hour, rounded.cost_per_hour)
        rows.append({
            "seed": seed, "regions": n_regions, "services": n_services, "feasible": True,
            "routes": milp.solver.routes, "milp_cost": milp.cost_per_hour, "milp_status": milp.solver.status,
            "milp_s": round(milp_s, 2), "lp_round_cost": rounded.cost_per_hour, "lp_round_s": round(round_s, 2),
            "lp_bound": rounded.lower_bound_per_hour,
            "lp_round_gap_to_milp": rounded.cost_per_hour / milp.cost_per_hour - 1,
            "baselines": base,
            "isthmus_cost": isthmus,
            "ratios": {k: (v / isthmus if v != float("inf") else None) for k, v in base.items()},
            "best_baseline_ratio": (min(feasible) / isthmus) if feasible else None,
        })
    done = [r for r in rows if r["feasible"]]
    best = [r["best_baseline_ratio"] for r in done if r["best_baseline_ratio"] is not None]
    finished = [r for r in done if r["milp_status"] == "optimal"]
    summary = {
        "specs": len(rows), "planned": len(done),
        "median_best_baseline_ratio": statistics.median(best) if best else None,
        "median_ratio": {k: statistics.median([r["ratios"][k] for r in done if r["ratios"][k] is not None] or [0])
                         for k in BASELINES},
        "baseline_infeasible": {k: sum(r["ratios"][k] is None for r in done) for k in BASELINES},
        "lp_round_gap_max_where_milp_optimal": max((r["lp_round_gap_to_milp"] for r in finished), default=None),
        "lp_round_gap_median_where_milp_optimal": statistics.median([r["lp_round_gap_to_milp"] for r in finished])
        if finished else None,
        "lp_round_within_2pct": sum(r["lp_round_gap_to_milp"] <= 0.02 for r in finished),
        "milp_optimal": len(finished),
    }
    table = Table(title="geo_cost: baseline $/h ÷ Isthmus $/h (the cheaper of MILP and LP + rounding)")
    for col in ["seed", "regions", "services", "routes", "isthmus $/h", *BASELINES, "best baseline", "lp-round gap"]:
        table.add_column(col)
    for r in done:
        table.add_row(str(r["seed"]), str(r["regions"]), str(r["services"]), str(r["routes"]), f"{r['isthmus_cost']:.2f}",
                      *[f"{r['ratios'][k]:.2f}" if r["ratios"][k] else "infeasible" for k in BASELINES],
                      f"{r['best_baseline_ratio']:.2f}" if r["best_baseline_ratio"] else "-",
                      f"{r['lp_round_gap_to_milp'] * 100:+.2f}%" + ("" if r["milp_status"] == "optimal" else " (MILP stopped)"))
    console = Console()
    console.print(table)
    console.print(summary)
    RESULTS.write_text(json.dumps({"config": vars(args), "summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
