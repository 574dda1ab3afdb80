"""Config-search bench (AutoDeep): probes needed to get within 5% of the exhaustive optimum, BO vs LCF vs uniform.

Spaces: `random_spec(seed, zoo)` for seeds 0..N-1 (3-4 regions, 4-7 GPU instance types of 1-8 GPUs,
1-4 instances, 100-1500 rps), the zoo model cycling over the five, its op graph measured on this CPU
and roofline-scaled; the QoS is a seeded 10-40% quantile of the space's latencies, so most
configurations miss it. Each method probes until its best feasible cost is within 5% of the
exhaustive optimum; BO also runs with its own stopping rule (expected improvement < 0.5%).
Ratio reported: mean BO probes / mean probes of the better baseline (target <= 1/3).

    python bench/configure.py [--spaces N]
Writes bench/results/configure.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("inception", "resnet", "vgg", "alexnet_exits", "rnnlm")
METHODS = ("bo", "lcf", "uniform")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", type=int, default=20, help="number of seeded spaces (>= 20 for the claim)")
    parser.add_argument("--requests", type=int, default=10000, help="requests in the job")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from isthmus.placement.configure import probes_to_within, random_spec, search, space_from_spec
    from isthmus.placement.graph import from_zoo

    console = Console(width=170)
    t_start = time.perf_counter()
    graphs = {m: from_zoo(m) for m in MODELS}
    rows = []
    for seed in range(args.spaces):
        model = MODELS[seed % len(MODELS)]
        space = space_from_spec(random_spec(seed, model), model, graphs[model], requests=args.requests, qos_ms=1e9)
        space.set_qos_quantile(float(np.random.default_rng(seed).uniform(0.1, 0.4)))
        opt = space.optimum()
        if opt is None:
            console.print(f"space {seed}: nothing meets the QoS and capacity, skipped")
            continue
        probes, seconds = {}, {}
        for method in METHODS:
            t0 = time.perf_counter()
            probes[method] = probes_to_within(space, method, 0.05, seed=seed)
            seconds[method] = time.perf_counter() - t0
        auto = search(space, "bo", seed=seed)
        feasible = sum(space.probe(i).feasible for i in range(len(space)))
        rows.append({"seed": seed, "model": model, "configurations": len(space), "feasible": int(feasible),
                     "qos_ms": space.qos_ms, "rate_rps": space.rate_rps,
                     "optimum": {"region": opt.region, "instance_type": opt.instance_type, "count": opt.count,
                                 "cost": opt.cost, "latency_ms": opt.latency_ms},
                     "probes_to_5pct": probes, "search_s": seconds,
                     "bo_auto": {"probes": auto.probes, "cost_over_optimum": (auto.best.cost / opt.cost
                                                                              if auto.best else None)}})
        console.print(f"space {seed} ({model}, {len(space)} configs, {feasible} feasible): {probes}", highlight=False)

    table = Table(title=f"Probes to within 5% of the optimum ({len(rows)} seeded spaces, {args.requests} requests)")
    for col in ("seed", "model", "configs", "feasible", "optimum", "BO", "LCF", "uniform", "BO auto-stop",
                "auto cost/opt"):
        table.add_column(col, justify="left" if col in ("model", "optimum") else "right")
    for r in rows:
        o, p, a = r["optimum"], r["probes_to_5pct"], r["bo_auto"]
        table.add_row(str(r["seed"]), r["model"], str(r["configurations"]), str(r["feasible"]),
                      f"{o['region']} {o['instance_type']}x{o['count']}", str(p["bo"]), str(p["lcf"]),
                      str(p["uniform"]), str(a["probes"]),
                      "-" if a["cost_over_optimum"] is None else f"{a['cost_over_optimum']:.3f}")
    console.print(table)
    mean = {m: float(np.mean([r["probes_to_5pct"][m] for r in rows])) for m in METHODS}
    better = min(mean["lcf"], mean["uniform"])
    per_space = [r["probes_to_5pct"]["bo"] / min(r["probes_to_5pct"]["lcf"], r["probes_to_5pct"]["uniform"])
                 for r in rows]
    auto_ratio = [r["bo_auto"]["cost_over_optimum"] for r in rows if r["bo_auto"]["cost_over_optimum"]]
    summary = {
        "spaces": len(rows), "mean_probes": mean,
        "bo_over_better_baseline": mean["bo"] / better,
        "bo_over_lcf": mean["bo"] / mean["lcf"], "bo_over_uniform": mean["bo"] / mean["uniform"],
        "median_per_space_bo_over_better_baseline": float(np.median(per_space)),
        "bo_auto_mean_probes": float(np.mean([r["bo_auto"]["probes"] for r in rows])),
        "bo_auto_within_5pct": sum(1 for v in auto_ratio if v <= 1.05), "bo_auto_found_feasible": len(auto_ratio),
        "target_bo_le_third_of_better_baseline": bool(mean["bo"] / better <= 1 / 3),
    }
    console.print(json.dumps(summary, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"bench": "configure", "seconds": time.perf_counter() - t_start, "rows": rows, "summary": summary}
    (RESULTS / "configure.json").write_text(json.dumps(out, indent=2))
    console.print(f"wrote {RESULTS / 'configure.json'}")


if __name__ == "__main__":
    main()
