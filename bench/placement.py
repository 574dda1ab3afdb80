"""Placement bench: makespan of every policy for the zoo models on 2, 4 and 8 V100s (NVLink), one simulator.

Per (model, devices): single device, expert (layer-wise pipeline), HEFT, m-ETF, m-SCT (Baechi),
learned (REINFORCE, Placeto-style moves, started from the best heuristic) and rl-scratch (the same
policy started from the single-device placement). Ratios, all from the same run:
- learned / best heuristic makespan (target <= 1 on average);
- single / learned (target >= 1.3 where the model has parallel branches);
- search time of the RL policy / the slowest heuristic (Baechi reports heuristics ~10^3x faster);
- simulated / measured single-device CPU latency of each zoo model at full size (target within 15%).

    python bench/placement.py [--quick]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer RL episodes and CPU timing rounds")
    args = parser.parse_args()
    episodes = 40 if args.quick else 150

    from rich.console import Console
    from rich.table import Table

    from isthmus.placement.devices import parse_devices
    from isthmus.placement.graph import coarsen, from_zoo
    from isthmus.placement.learned import learn_placement
    from isthmus.placement.place import compare_policies
    from isthmus.placement.simulator import simulate

    console = Console(width=170)
    t_start = time.perf_counter()
    rows, checks = [], []
    for model in MODELS:
        raw = from_zoo(model, repeats=5 if args.quick else 9, cache=False, fuse=False)
        cpu_ms = simulate(raw, parse_devices("cpu"), np.zeros(raw.n, dtype=int)).makespan_ms
        checks.append({"model": model, "ops": raw.n, "simulated_ms": cpu_ms, "measured_ms": raw.measured_ms,
                       "ratio": cpu_ms / raw.measured_ms, "threads": raw.threads})
        graph = coarsen(raw)
        for devices in DEVICES:
            ds = parse_devices(devices)
            report = compare_policies(graph, ds, devices, episodes=episodes, seed=0)
            scratch = learn_placement(graph, ds, init=np.zeros(graph.n, dtype=int), episodes=episodes, seed=0)
            p = dict(report.policies, rl_scratch=scratch.makespan_ms)
            best_h = min(p[k] for k in ("single", "expert", "heft", "metf", "msct"))
            heuristic_s = max(report.search_s[k] for k in ("single", "expert", "heft", "metf", "msct"))
            rows.append({"model": model, "devices": devices, "ops": graph.n,
                         "parallel_branches": report.parallel_branches, "makespan_ms": p,
                         "learned_over_best_heuristic": p["learned"] / best_h,
                         "speedup_vs_single": p["single"] / p["learned"],
                         "rl_scratch_over_best_heuristic": p["rl_scratch"] / best_h,
                         "search_s": dict(report.search_s, rl_scratch=scratch.search_s),
                         "rl_over_heuristic_search_time": report.search_s["learned"] / heuristic_s,
                         "lower_bound_ms": report.lower_bound_ms})
            console.print(f"{model} {devices}: learned {p['learned']:.3f} ms, best heuristic {best_h:.3f} ms",
                          highlight=False)

    table = Table(title=f"Makespan (ms) per policy, zoo models on V100s (NVLink), {episodes} RL episodes")
    for col in ("model", "devices", "single", "expert", "heft", "metf", "msct", "learned", "rl-scratch",
                "learned/best-h", "single/learned", "RL/heur. time"):
        table.add_column(col, justify="left" if col in ("model", "devices") else "right")
    for r in rows:
        m = r["makespan_ms"]
        table.add_row(r["model"] + (" *" if r["parallel_branches"] else ""), r["devices"],
                      *(f"{m[k]:.3f}" for k in ("single", "expert", "heft", "metf", "msct", "learned", "rl_scratch")),
                      f"{r['learned_over_best_heuristic']:.3f}", f"{r['speedup_vs_single']:.2f}x",
                      f"{r['rl_over_heuristic_search_time']:.0f}x")
    console.print(table)
    console.print("* = the model has parallel branches")
    cpu = Table(title="Simulated vs measured single-device CPU latency (full size, same threads)")
    for col in ("model", "ops", "simulated ms", "measured ms", "ratio"):
        cpu.add_column(col, justify="left" if col == "model" else "right")
    for c in checks:
        cpu.add_row(c["model"], str(c["ops"]), f"{c['simulated_ms']:.1f}", f"{c['measured_ms']:.1f}",
                    f"{c['ratio']:.3f}")
    console.print(cpu)

    branchy = [r for r in rows if r["parallel_branches"]]
    summary = {
        "mean_learned_over_best_heuristic": float(np.mean([r["learned_over_best_heuristic"] for r in rows])),
        "mean_rl_scratch_over_best_heuristic": float(np.mean([r["rl_scratch_over_best_heuristic"] for r in rows])),
        "speedup_vs_single_parallel_models": {f"{r['model']}/{r['devices']}": r["speedup_vs_single"]
                                              for r in branchy},
        "min_speedup_vs_single_parallel_models": min((r["speedup_vs_single"] for r in branchy), default=None),
        "median_rl_over_heuristic_search_time": float(np.median([r["rl_over_heuristic_search_time"] for r in rows])),
        "max_cpu_latency_error": max(abs(c["ratio"] - 1) for c in checks),
        "targets": {"learned_le_best_heuristic_on_average": None, "speedup_ge_1_3_parallel": None,
                    "cpu_within_15pct": None},
    }
    summary["targets"] = {
        "learned_le_best_heuristic_on_average": bool(summary["mean_learned_over_best_heuristic"] <= 1.0 + 1e-9),
        "speedup_ge_1_3_parallel": bool((summary["min_speedup_vs_single_parallel_models"] or 0) >= 1.3),
        "cpu_within_15pct": bool(summary["max_cpu_latency_error"] <= 0.15),
    }
    console.print(json.dumps(summary, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"bench": "placement", "episodes": episodes, "seconds": time.perf_counter() - t_start,
           "rows": rows, "cpu_check": checks, "summary": summary}
    (RESULTS / "placement.json").write_text(json.dumps(out, indent=2))
    console.print(f"wrote {RESULTS / 'placement.json'}")


if __name__ == "__main__":
    main()
