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
- search time of the RL policy / the slowest heuristic (Baechi reports heuristics ~10^3x faster);
- simulated / measured single-device CPU latency of each zoo model at full size (target within 15%).

    python bench/placement.py [--quick] [--batch-sizes 1,8] [--episodes 150]
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


def _rows_for(graph, batch: int, episodes: int, console) -> list[dict]:
    from isthmus.placement.devices import parse_devices
    from isthmus.placement.learned import learn_placement
    from isthmus.placement.place import compare_policies

    rows = []
    for devices in DEVICES:
        ds = parse_devices(devices)
        report = compare_policies(graph, ds, devices, episodes=episodes, seed=0)
        scratch = learn_placement(graph, ds, init=np.zeros(graph.n, dtype=int), episodes=episodes, seed=0)
        p = dict(report.policies, rl_scratch=scratch.makespan_ms)
        best_h = min(p[k] for k in HEURISTIC_NAMES)
        heuristic_s = max(report.search_s[k] for k in HEURISTIC_NAMES)
        rows.append({"model": graph.name, "batch_size": batch, "devices": devices, "ops": graph.n,
                     "parallel_branches": report.parallel_branches, "parallelism": report.parallelism,
                     "branch_width": report.branch_width, "speedup_bound": report.speedup_bound,
                     "makespan_ms": p, "learned_over_best_heuristic": p["learned"] / best_h,
                     "speedup_vs_single": p["single"] / p["learned"],
                     "rl_scratch_over_best_heuristic": p["rl_scratch"] / best_h,
                     "search_s": dict(report.search_s, rl_scratch=scratch.search_s),
                     "rl_over_heuristic_search_time": report.search_s["learned"] / heuristic_s,
                     "lower_bound_ms": report.lower_bound_ms})
        console.print(f"{graph.name} b{batch} {devices}: learned {p['learned']:.3f} ms, best heuristic "
                      f"{best_h:.3f} ms, single/learned {p['single'] / p['learned']:.3f}", highlight=False)
    return rows


def _summary(rows: list[dict], checks: list[dict]) -> dict:
    branchy = [r for r in rows if r["parallel_branches"]]
    key = "{model}/b{batch_size}/{devices}"
    speedups = {key.format(**r): r["speedup_vs_single"] for r in branchy}
    summary = {
        "mean_learned_over_best_heuristic": float(np.mean([r["learned_over_best_heuristic"] for r in rows])),
        "max_learned_over_best_heuristic": float(np.max([r["learned_over_best_heuristic"] for r in rows])),
        "mean_rl_scratch_over_best_heuristic": float(np.mean([r["rl_scratch_over_best_heuristic"] for r in rows])),
        "models_with_parallel_compute_branches": sorted({r["model"] for r in branchy}),
        "parallelism_by_model": {f"{r['model']}/b{r['batch_size']}": round(r["parallelism"], 4) for r in rows},
        "speedup_vs_single_parallel_models": speedups,
        "speedup_bound_parallel_models": {key.format(**r): r["speedup_bound"] for r in branchy},
        "min_speedup_vs_single_parallel_models": min(speedups.values(), default=None),
        "speedup_ge_1_3_holds_at": sorted(k for k, v in speedups.items() if v >= 1.3),
        "speedup_ge_1_3_fails_at": sorted(k for k, v in speedups.items() if v < 1.3),
        "median_rl_over_heuristic_search_time": float(np.median([r["rl_over_heuristic_search_time"] for r in rows])),
        "max_cpu_latency_error": max(abs(c["ratio"] - 1) for c in checks),
    }
    summary["targets"] = {
        "learned_le_best_heuristic_on_average": bool(summary["mean_learned_over_best_heuristic"] <= 1.0 + 1e-9),
        "speedup_ge_1_3_parallel": bool(branchy) and not summary["speedup_ge_1_3_fails_at"],
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
        for model in MODELS:
            raw = from_zoo(model, repeats=5 if args.quick else 9, cache=False, fuse=False, batch=batch)
            cpu_ms = simulate(raw, parse_devices("cpu"), np.zeros(raw.n, dtype=int)).makespan_ms
            checks.append({"model": model, "batch_size": batch, "ops": raw.n, "simulated_ms": cpu_ms,
                           "measured_ms": raw.measured_ms, "ratio": cpu_ms / raw.measured_ms, "threads": raw.threads})
            rows += _rows_for(coarsen(raw), batch, episodes, console)

    table = Table(title=f"Makespan (ms) per policy, zoo models on V100s (NVLink), {episodes} RL episodes")
    cols = ("model", "batch", "devices", "T1/T∞", "width", "bound", "single", "expert", "heft", "metf", "msct",
            "learned", "rl-scratch", "learned/best-h", "single/learned", "RL/heur. time")
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "devices") else "right")
    for r in rows:
        m = r["makespan_ms"]
        table.add_row(r["model"] + (" *" if r["parallel_branches"] else ""), str(r["batch_size"]), r["devices"],
                      f"{r['parallelism']:.2f}", str(r["branch_width"]), f"{r['speedup_bound']:.2f}x",
                      *(f"{m[k]:.3f}" for k in ("single", "expert", "heft", "metf", "msct", "learned", "rl_scratch")),
                      f"{r['learned_over_best_heuristic']:.3f}", f"{r['speedup_vs_single']:.2f}x",
                      f"{r['rl_over_heuristic_search_time']:.0f}x")
    console.print(table)
    console.print("* = parallel compute branches: T1/T∞ >= 1.25 on the measured op latencies (T1/T∞ column); "
                  "width = max antichain of ops with >= 2% of the work; bound = T1 / max(T∞, T1/n) on the devices")
    cpu = Table(title="Simulated vs measured single-device CPU latency (full size, same threads)")
    for col in ("model", "batch", "ops", "simulated ms", "measured ms", "ratio"):
        cpu.add_column(col, justify="left" if col == "model" else "right")
    for c in checks:
        cpu.add_row(c["model"], str(c["batch_size"]), str(c["ops"]), f"{c['simulated_ms']:.1f}",
                    f"{c['measured_ms']:.1f}", f"{c['ratio']:.3f}")
    console.print(cpu)

    summary = _summary(rows, checks)
    console.print(json.dumps(summary, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"bench": "placement", "episodes": episodes, "batch_sizes": batches,
           "seconds": time.perf_counter() - t_start, "rows": rows, "cpu_check": checks, "summary": summary}
    (RESULTS / "placement.json").write_text(json.dumps(out, indent=2))
    console.print(f"wrote {RESULTS / 'placement.json'}")


if __name__ == "__main__":
    main()
