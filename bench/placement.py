"""Placement bench: makespan of every policy for the zoo models on 2, 4 and 8 V100s (NVLink), one simulator.

Per (batch size, model, devices): single device, expert (layer-wise pipeline), HEFT, m-ETF, m-SCT
(Baechi), learned (REINFORCE, Placeto-style moves, started from the best heuristic) and rl-scratch
(the same policy started from the single-device placement). Ops are measured on this CPU at each
batch size: 1 (one request's latency, what a Spec's `latency_ms` means) and 8 (a dynamically batched
server). Ratios, all from the same run:
- learned / best heuristic makespan (target <= 1 on average);
- single / learned (target >= 1.3 where the model has parallel compute branches, i.e. T1/T∞ >= 1.25
  on the measured op latencies; the table also prints the heavy-op width of the DAG and the speed-up
  bound T1 / max(T∞, T1/n) no placement can beat);
- the exact reference (`isthmus.placement.exact`, a MILP over placement and op order, HiGHS, `--exact-s` per
  row): `exact_bound_ms` (its optimum, or dual bound when time runs out) is below every placement's simulated
  makespan, so `speedup_bound` = single / exact_bound is the most any placement can gain here (next to the crude
  `speedup_bound_crude` = T1 / max(T∞, T1/n)); `exact_ms` = its placement simulated (HEFT-rank op order),
  `exact_own_order_ms` = the same in the MILP's op order; learned / exact_bound bounds how far learned is from
  the optimum. A point where single / exact_bound < 1.3 cannot reach 1.3x at all;
- search time of the RL policy / the slowest heuristic (Baechi reports heuristics ~10^3x faster);
- simulated / measured single-device CPU latency of each zoo model at full size (target within 15%).

    python bench/placement.py [--quick] [--batch-sizes 1,8] [--episodes 150] [--exact-s 25] [--models inception]
Writes bench/results/placement.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("alexnet_exits", "vgg", "resnet", "inception", "rnnlm")
DEVICES = ("2xv100", "4xv100", "8xv100")
HEURISTIC_NAMES = ("single", "expert", "heft", "metf", "msct")


def _rows_for(graph, batch: int, episodes: int, exact_s: float, console) -> list[dict]:
    from isthmus.placement.devices import parse_devices
    from isthmus.placement.exact import optimal_placement
    from isthmus.placement.learned import learn_placement
    from isthmus.placement.place import compare_policies
    from isthmus.placement.simulator import simulate

    rows = []
    for devices in DEVICES:
        ds = parse_devices(devices)
        costs = graph.cost_ms(ds)
        report = compare_policies(graph, ds, devices, episodes=episodes, seed=0)
        scratch = learn_placement(graph, ds, costs, init=np.zeros(graph.n, dtype=int), episodes=episodes, seed=0)
        p = dict(report.policies, rl_scratch=scratch.makespan_ms)
        best_h = min(p[k] for k in HEURISTIC_NAMES)
        learned = np.array([ds.names.index(report.placement[op]) for op in graph.ops])
        exact = optimal_placement(graph, ds, costs, time_limit_s=exact_s, start=learned)
        exact_ms = simulate(graph, ds, exact.placement, costs=costs).makespan_ms
        exact_own_ms = simulate(graph, ds, exact.placement, costs=costs, priority=-exact.start_ms).makespan_ms
        heuristic_s = max(report.search_s[k] for k in HEURISTIC_NAMES)
        rows.append({"model": graph.name, "batch_size": batch, "devices": devices, "ops": graph.n,
                     "parallel_branches": report.parallel_branches, "parallelism": report.parallelism,
                     "branch_width": report.branch_width, "speedup_bound": p["single"] / exact.bound_ms,
                     "speedup_bound_crude": report.speedup_bound,
                     "makespan_ms": p, "learned_over_best_heuristic": p["learned"] / best_h,
                     "speedup_vs_single": p["single"] / p["learned"],
                     "rl_scratch_over_best_heuristic": p["rl_scratch"] / best_h,
                     "exact_bound_ms": exact.bound_ms, "exact_value_ms": exact.value_ms, "exact_ms": exact_ms,
                     "exact_own_order_ms": exact_own_ms,
                     "exact_optimal": exact.optimal, "exact_status": exact.status, "exact_s": exact.seconds,
                     "learned_over_exact_bound": p["learned"] / exact.bound_ms,
                     "reaches_1_3_possible": bool(p["single"] / exact.bound_ms >= 1.3),
                     "search_s": dict(report.search_s, rl_scratch=scratch.search_s),
                     "rl_over_heuristic_search_time": report.search_s["learned"] / heuristic_s,
                     "lower_bound_ms": report.lower_bound_ms})
        console.print(f"{graph.name} b{batch} {devices}: learned {p['learned']:.3f} ms, best heuristic "
                      f"{best_h:.3f} ms, exact bound {exact.bound_ms:.3f} ms ({exact.status}, {exact.seconds:.1f} s), "
                      f"single/learned {p['single'] / p['learned']:.3f}, single/exact bound "
                      f"{p['single'] / exact.bound_ms:.3f}", highlight=False)
    return rows


def _summary(rows: list[dict], checks: list[dict]) -> dict:
    branchy = [r for r in rows if r["parallel_branches"]]
    key = "{model}/b{batch_size}/{devices}"
    by_point = {key.format(**r): r for r in branchy}
    speedups = {k: r["speedup_vs_single"] for k, r in by_point.items()}
    reachable = {k: r for k, r in by_point.items() if r["reaches_1_3_possible"]}
    summary = {
        "mean_learned_over_best_heuristic": float(np.mean([r["learned_over_best_heuristic"] for r in rows])),
        "max_learned_over_best_heuristic": float(np.max([r["learned_over_best_heuristic"] for r in rows])),
        "mean_rl_scratch_over_best_heuristic": float(np.mean([r["rl_scratch_over_best_heuristic"] for r in rows])),
        "models_with_parallel_compute_branches": sorted({r["model"] for r in branchy}),
        "parallelism_by_model": {f"{r['model']}/b{r['batch_size']}": round(r["parallelism"], 4) for r in rows},
        "speedup_vs_single_parallel_models": speedups,
        "speedup_bound_parallel_models": {k: r["speedup_bound"] for k, r in by_point.items()},
        "speedup_bound_crude_parallel_models": {k: r["speedup_bound_crude"] for k, r in by_point.items()},
        "learned_over_exact_bound_parallel_models": {k: r["learned_over_exact_bound"] for k, r in by_point.items()},
        "exact_optimal_everywhere": all(r["exact_optimal"] for r in rows),
        "max_learned_over_exact_bound": float(np.max([r["learned_over_exact_bound"] for r in rows])),
        "speedup_1_3_unreachable_at": {k: round(r["speedup_bound"], 4) for k, r in by_point.items()
                                       if not r["reaches_1_3_possible"]},
        # per parallel-branch point: the target, whether any placement can reach it, how far learned is from optimal
        "speedup_1_3_claim_by_point": {k: {
            "single_over_learned": round(r["speedup_vs_single"], 4),
            "single_over_exact_bound": round(r["speedup_bound"], 4), "exact_optimal": r["exact_optimal"],
            "reachable_by_any_placement": r["reaches_1_3_possible"], "holds": bool(r["speedup_vs_single"] >= 1.3),
            "learned_over_exact_bound": round(r["learned_over_exact_bound"], 4),
            # the MILP's schedule replayed in the simulator (links contend there): reachable, unlike the bound
            "exact_own_order_over_learned": round(r["exact_own_order_ms"] / r["makespan_ms"]["learned"], 4)}
            for k, r in by_point.items()},
        "min_speedup_vs_single_parallel_models": min(speedups.values(), default=None),
        "speedup_ge_1_3_holds_at": sorted(k for k, v in speedups.items() if v >= 1.3),
        "speedup_ge_1_3_fails_at": sorted(k for k, v in speedups.items() if v < 1.3),
        "median_rl_over_heuristic_search_time": float(np.median([r["rl_over_heuristic_search_time"] for r in rows])),
        "max_cpu_latency_error": max(abs(c["ratio"] - 1) for c in checks),
    }
    summary["targets"] = {
        "learned_le_best_heuristic_on_average": bool(summary["mean_learned_over_best_heuristic"] <= 1.0 + 1e-9),
        "speedup_ge_1_3_parallel": bool(branchy) and not summary["speedup_ge_1_3_fails_at"],
        # the target where any placement can reach it (single / exact bound >= 1.3)
        "speedup_ge_1_3_parallel_where_reachable": bool(reachable) and all(
            r["speedup_vs_single"] >= 1.3 for r in reachable.values()),
        "speedup_ge_1_3_parallel_by_batch": {
            str(b): all(r["speedup_vs_single"] >= 1.3 for r in branchy if r["batch_size"] == b)
            for b in sorted({r["batch_size"] for r in branchy})},
        "cpu_within_15pct": bool(summary["max_cpu_latency_error"] <= 0.15),
    }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer RL episodes and CPU timing rounds")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--episodes", type=int, default=None, help="RL episodes (default 150, quick 40)")
    parser.add_argument("--exact-s", type=float, default=25.0, help="time limit of each exact MILP (s)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo models (default: all 5)")
    parser.add_argument("--out", default=str(RESULTS / "placement.json"), help="where to write the JSON")
    args = parser.parse_args()
    episodes = args.episodes or (40 if args.quick else 150)
    batches = [int(b) for b in args.batch_sizes.split(",")]

    from rich.console import Console
    from rich.table import Table

    from isthmus.placement.devices import parse_devices
    from isthmus.placement.graph import coarsen, from_zoo
    from isthmus.placement.simulator import simulate

    console = Console(width=200)
    t_start = time.perf_counter()
    rows, checks = [], []
    for batch in batches:
        for model in args.models.split(","):
            raw = from_zoo(model, repeats=5 if args.quick else 9, cache=False, fuse=False, batch=batch)
            cpu_ms = simulate(raw, parse_devices("cpu"), np.zeros(raw.n, dtype=int)).makespan_ms
            checks.append({"model": model, "batch_size": batch, "ops": raw.n, "simulated_ms": cpu_ms,
                           "measured_ms": raw.measured_ms, "ratio": cpu_ms / raw.measured_ms, "threads": raw.threads})
            rows += _rows_for(coarsen(raw), batch, episodes, args.exact_s, console)

    table = Table(title=f"Makespan (ms) per policy, zoo models on V100s (NVLink), {episodes} RL episodes")
    cols = ("model", "batch", "devices", "T1/T∞", "width", "crude", "bound", "single", "expert", "heft", "metf",
            "msct", "learned", "rl-scr", "exact", "ex.sim", "l/best-h", "l/exact", "speedup", "RL/h t")
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "devices") else "right")
    for r in rows:
        m = r["makespan_ms"]
        table.add_row(r["model"] + (" *" if r["parallel_branches"] else ""), str(r["batch_size"]), r["devices"],
                      f"{r['parallelism']:.2f}", str(r["branch_width"]), f"{r['speedup_bound_crude']:.2f}x",
                      f"{r['speedup_bound']:.3f}x" + ("" if r["exact_optimal"] else "?"),
                      *(f"{m[k]:.3f}" for k in ("single", "expert", "heft", "metf", "msct", "learned", "rl_scratch")),
                      f"{r['exact_bound_ms']:.3f}", f"{r['exact_ms']:.3f}",
                      f"{r['learned_over_best_heuristic']:.3f}", f"{r['learned_over_exact_bound']:.3f}",
                      f"{r['speedup_vs_single']:.2f}x",
                      f"{r['rl_over_heuristic_search_time']:.0f}x")
    console.print(table)
    console.print("* = parallel compute branches: T1/T∞ >= 1.25 on the measured op latencies (T1/T∞ column); "
                  "width = max antichain of ops with >= 2% of the work; crude = T1 / max(T∞, T1/n) on the devices; "
                  "bound = single / exact (exact = the MILP's optimum, or its dual bound where marked '?'); ex.sim = "
                  "the MILP's placement in the simulator (HEFT-rank op order); l/ = learned over; speedup = "
                  "single / learned; RL/h t = RL search time / slowest heuristic's")
    cpu = Table(title="Simulated vs measured single-device CPU latency (full size, same threads)")
    for col in ("model", "batch", "ops", "simulated ms", "measured ms", "ratio"):
        cpu.add_column(col, justify="left" if col == "model" else "right")
    for c in checks:
        cpu.add_row(c["model"], str(c["batch_size"]), str(c["ops"]), f"{c['simulated_ms']:.1f}",
                    f"{c['measured_ms']:.1f}", f"{c['ratio']:.3f}")
    console.print(cpu)

    summary = _summary(rows, checks)
    console.print(json.dumps(summary, indent=2))
    out = {"bench": "placement", "episodes": episodes, "batch_sizes": batches, "exact_time_limit_s": args.exact_s,
           "seconds": time.perf_counter() - t_start, "rows": rows, "cpu_check": checks, "summary": summary}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
