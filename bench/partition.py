"""Partition bench: Edgent / Neurosurgeon / DADS on a Raspberry-Pi-class device with a desktop-class
edge server, bandwidths 0.1–100 Mbps, against device-only and cloud-only (same run, same profiles).

Per model (AlexNet-exits, VGG, ResNet, Inception; full size, profiled on this CPU and scaled with
`isthmus.profiler.speed_factor` to `rpi3` and `desktop` of isthmus.partition.profiles.DEFAULT_DEVICES):
- latency of the chosen partition (chains: Neurosurgeon's split; DAGs: the DADS min-cut) and its
  speedup over device-only and cloud-only (Neurosurgeon reports 3.1x on average);
- gap to the exact optimum: chains against brute force over every (exit, split), DAGs against an
  independent MILP (cvxpy + HiGHS) over closed device sets — target 0 %;
- Edgent (AlexNet-exits) over SLOs 100–1000 ms: deadline-hit rate and mean accuracy (exit
  accuracies measured on digits), against Neurosurgeon (full model only) and device-only;
- decision time from prebuilt tables (targets: < 1 ms for chains, < 20 ms for a 200-node DAG),
  against the brute-force / MILP time;
- a real split run (head and tail in two processes, token-bucket loopback): predicted vs measured
  end-to-end latency, MAPE (target < 15 %).
Writes bench/results/partition.json and one plot per model, bench/results/partition_<model>.png.

    python bench/partition.py            # profiles are cached under $ISTHMUS_CACHE after the first run
    python bench/partition.py --quick    # fewer bandwidths and SLOs
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("alexnet_exits", "vgg", "resnet", "inception")
DEVICE, SERVER = "rpi3", "desktop"
RTT_MS = 5.0
_PLOT_SLO_MS = 300.0  # Edgent's curve in the plots
_TARGET_CHAIN_DECISION_MS = 1.0
_TARGET_DAG200_DECISION_MS = 20.0


def _bandwidths(quick: bool) -> list[float]:
    return [0.1, 1.0, 10.0, 100.0] if quick else [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]


def _slos(quick: bool) -> list[float]:
    return [100.0, 400.0, 1000.0] if quick else [100.0 * i for i in range(1, 11)]


def _brute_chain_ms(table: Any, bw: float) -> tuple[float, float]:
    """(best latency of the final exit over every split, seconds taken), straight from the formula."""
    start = time.perf_counter()
    t = table.final
    best = float("inf")
    for k in range(-1, t.n):
        head = sum(t.path.device_ms[: k + 1])
        tail = sum(t.path.server_ms[k + 1:])
        send = 0.0 if k == t.n - 1 else RTT_MS + 8.0 * (table.input_bytes if k < 0 else t.path.out_bytes[k]) / (
            1000.0 * bw)
        best = min(best, head + send + tail)
    return best, time.perf_counter() - start


def _milp_ms(graph: Any, bw: float, rtt_ms: float) -> tuple[float, float]:
    """Exact optimum over closed device sets by MILP (independent of the max-flow), and seconds taken."""
    import cvxpy as cp
    import numpy as np

    names = graph.names()
    idx = {n: i for i, n in enumerate(names)}
    n = len(names)
    x = cp.Variable(n, boolean=True)  # 1 = on the device
    sent = cp.Variable(n + 1, nonneg=True)  # per producer (+ the request, last)
    any_sent = cp.Variable(nonneg=True)
    cons = [sent <= 1, any_sent >= sent]
    has_pred = set()
    for u, v in graph.edges:
        cons += [x[idx[v]] <= x[idx[u]], sent[idx[u]] >= x[idx[u]] - x[idx[v]]]
        has_pred.add(v)
    cons += [sent[n] >= 1 - x[idx[e]] for e in names if e not in has_pred]
    dev = np.array([node.device_ms for node in graph.nodes])
    srv = np.array([node.server_ms for node in graph.nodes])
    tx = np.array([node.out_bytes for node in graph.nodes] + [graph.input_bytes]) * 8.0 / (1000.0 * bw)
    objective = dev @ x + srv @ (1 - x) + tx @ sent + rtt_ms * any_sent
    start = time.perf_counter()
    prob = cp.Problem(cp.Minimize(objective), cons)
    prob.solve(solver=cp.HIGHS)
    return float(prob.value), time.perf_counter() - start


def _random_dag(n: int, seed: int) -> Any:
    from isthmus.partition import parse_graph

    rng = random.Random(seed)
    nodes = [{"name": f"n{i}", "device_ms": rng.uniform(1, 60), "server_ms": rng.uniform(0.05, 3),
              "out_bytes": rng.randint(1_000, 1_500_000)} for i in range(n)]
    edges = [[f"n{i}", f"n{j}"] for j in range(1, n) for i in range(max(0, j - 4), j)
             if rng.random() < 0.45 or i == j - 1]
    return parse_graph({"input_bytes": 150_000, "nodes": nodes, "edges": edges})


def _model_results(name: str, bandwidths: list[float], slos: list[float], repeats: int) -> dict[str, Any]:
    from isthmus.partition import ModelPartitioner
    from isthmus.partition.profiles import DEFAULT_DEVICES
    from isthmus.profiler import profile_model
    from isthmus.spec import Device

    if name == "alexnet_exits":
        from isthmus.models.train import cached_accuracy, train_small

        if cached_accuracy(name) is None:
            train_small(name)  # exit accuracies on digits (cached; under a minute)
    local = profile_model(name, size="full", repeats=repeats, progress=True)
    part = ModelPartitioner(local, Device(**DEFAULT_DEVICES[DEVICE]), Device(**DEFAULT_DEVICES[SERVER]))
    chosen = "neurosurgeon" if part.chain else "dads"
    rows, gaps, exact_s, decide_ms = [], [], [], []
    for bw in bandwidths:
        row = {"bandwidth_mbps": bw}
        for strategy in part.strategies(None):
            row[strategy] = part.decide(strategy, bw, RTT_MS).latency_ms
        if part.has_exits:
            row[f"edgent_slo{_PLOT_SLO_MS:g}"] = part.decide("edgent", bw, RTT_MS, _PLOT_SLO_MS).latency_ms
        if part.chain:
            best, secs = _brute_chain_ms(part.table, bw)
        else:
            best, secs = _milp_ms(part.graph, bw, RTT_MS)
        row["exact"] = best
        gaps.append(row[chosen] / best - 1.0)
        exact_s.append(secs * 1e3)
        decide_ms.append(part.decision_ms(chosen, bw, RTT_MS, None, repeats=20))
        rows.append(row)
    out: dict[str, Any] = {
        "graph": "chain" if part.chain else "dag", "layers": len(local.layers), "chosen": chosen,
        "device_only_ms": part.table.device_only().latency_ms, "rows": rows,
        "speedup_vs_device_only": statistics.mean(r["device_only"] / r[chosen] for r in rows),
        "speedup_vs_cloud_only": statistics.mean(r["cloud_only"] / r[chosen] for r in rows),
        "speedup_vs_best_single": statistics.mean(min(r["device_only"], r["cloud_only"]) / r[chosen] for r in rows),
        "max_gap_to_exact": max(gaps), "decision_ms": statistics.mean(decide_ms),
        "exact_ms": statistics.mean(exact_s)}
    if not part.chain:
        ns_ratio = [r["neurosurgeon"] / r["dads"] for r in rows]
        out["dads_speedup_vs_neurosurgeon"] = statistics.mean(ns_ratio)
    if part.has_exits:
        out["edgent"] = _edgent(part, bandwidths, slos)
    return out


def _edgent(part: Any, bandwidths: list[float], slos: list[float]) -> dict[str, Any]:
    """Deadline-hit rate and accuracy over (bandwidth, SLO): Edgent vs Neurosurgeon vs device-only."""
    final_acc = part.table.final.path.accuracy
    stats = {s: {"hits": 0, "acc": []} for s in ("edgent", "neurosurgeon", "device_only")}
    choices = []
    for bw in bandwidths:
        for slo in slos:
            for strategy in stats:
                d = part.decide(strategy, bw, RTT_MS, slo)
                met = d.latency_ms <= slo
                stats[strategy]["hits"] += met
                # a missed deadline yields no answer in time: counts as accuracy 0 (Edgent's framing)
                acc = d.accuracy if d.accuracy is not None else final_acc
                stats[strategy]["acc"].append((acc or 0.0) if met else 0.0)
                if strategy == "edgent":
                    choices.append({"bandwidth_mbps": bw, "slo_ms": slo, "exit": d.exit, "split": d.split,
                                    "latency_ms": d.latency_ms, "accuracy": acc, "met_slo": met})
    n = len(bandwidths) * len(slos)
    res = {s: {"hit_rate": v["hits"] / n, "mean_accuracy": statistics.mean(v["acc"])} for s, v in stats.items()}
    res["choices"] = choices
    res["exit_accuracy"] = {str(p.exit): p.accuracy for p in part.table.paths}
    return res


def _dag200(repeats: int) -> dict[str, Any]:
    from isthmus.partition import partition_graph

    graph = _random_dag(200, seed=1)
    start = time.perf_counter()
    partition_graph(graph, 5.0, RTT_MS)  # first call also builds the graph's flow network
    cold_ms = (time.perf_counter() - start) * 1e3
    times, gaps, milp = [], [], []
    for bw in (0.5, 5.0, 50.0):
        calls = []
        for _ in range(repeats):
            start = time.perf_counter()
            best = partition_graph(graph, bw, RTT_MS)
            calls.append((time.perf_counter() - start) * 1e3)
        times.append(statistics.median(calls))
        if bw == 5.0:  # the 200-binary MILP takes tens of seconds on a shared CPU: one bandwidth
            exact, secs = _milp_ms(graph, bw, RTT_MS)
            gaps.append(best.latency_ms / exact - 1.0)
            milp.append(secs * 1e3)
    return {"nodes": 200, "edges": len(graph.edges), "decision_ms": statistics.mean(times), "cold_ms": cold_ms,
            "milp_ms": statistics.mean(milp), "max_gap_to_exact": max(gaps)}


def _split_run(requests: int) -> dict[str, Any]:
    """Real split run of full AlexNet-exits (two processes, token-bucket loopback): predicted vs measured."""
    import tempfile

    import torch

    from isthmus.models import build, example_input
    from isthmus.partition.splitrun import predict_vs_measure

    torch.manual_seed(0)
    cases = [(None, -1, 20.0), (None, 6, 5.0), (None, 15, 1.0), (3, 2, 10.0), (None, 2, 10.0)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = predict_vs_measure("alexnet_exits", build("alexnet_exits", "full"), example_input("alexnet_exits"),
                                  cases, tmp, requests=requests)
    return {"rows": rows, "mape": statistics.mean(r["error"] for r in rows), "target_mape": 0.15}


def _plot(name: str, result: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    bws = [r["bandwidth_mbps"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    edgent = f"edgent_slo{_PLOT_SLO_MS:g}"
    for strategy, style in (("device_only", "k--"), ("cloud_only", "b:"), ("neurosurgeon", "g-o"),
                            ("dads", "r-s"), (edgent, "m-^")):
        if strategy in rows[0]:
            label = f"edgent (SLO {_PLOT_SLO_MS:g} ms)" if strategy == edgent else strategy
            ax.plot(bws, [r[strategy] for r in rows], style, label=label, markersize=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bandwidth (Mbps)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title(f"{name}: {DEVICE} -> {SERVER}, rtt {RTT_MS:g} ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = RESULTS / f"partition_{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer bandwidths and SLOs")
    parser.add_argument("--repeats", type=int, default=10, help="profiler repeats per layer (when not cached)")
    parser.add_argument("--no-split-run", action="store_true", help="skip the real two-process split run (~3 min)")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    RESULTS.mkdir(parents=True, exist_ok=True)
    bandwidths, slos = _bandwidths(args.quick), _slos(args.quick)
    results: dict[str, Any] = {"device": DEVICE, "server": SERVER, "rtt_ms": RTT_MS, "bandwidths_mbps": bandwidths,
                               "slos_ms": slos, "models": {}}
    for name in MODELS:
        results["models"][name] = _model_results(name, bandwidths, slos, args.repeats)
        results["models"][name]["plot"] = str(_plot(name, results["models"][name]).relative_to(RESULTS.parent))
    results["dag200"] = _dag200(repeats=5 if args.quick else 20)
    if not args.no_split_run:
        results["split_run"] = _split_run(requests=4 if args.quick else 6)

    console = Console(width=150)
    table = Table(title=f"Partition: {DEVICE} -> {SERVER}, {bandwidths[0]:g}-{bandwidths[-1]:g} Mbps, "
                        f"rtt {RTT_MS:g} ms (speedups = baseline latency / chosen latency, mean over bandwidths)")
    for col in ("model", "graph", "chosen", "x vs device-only", "x vs cloud-only", "x vs best single",
                "gap to exact", "decision ms (median)", "exact search ms", "exact / decision"):
        table.add_column(col, justify="left" if col in ("model", "graph", "chosen") else "right")
    for name, r in results["models"].items():
        table.add_row(name, f"{r['graph']} ({r['layers']})", r["chosen"], f"{r['speedup_vs_device_only']:.2f}",
                      f"{r['speedup_vs_cloud_only']:.2f}", f"{r['speedup_vs_best_single']:.2f}",
                      f"{100 * r['max_gap_to_exact']:.4f} %", f"{r['decision_ms']:.4f}", f"{r['exact_ms']:.2f}",
                      f"{r['exact_ms'] / r['decision_ms']:.1f}")
    d = results["dag200"]
    table.add_row("random DAG", f"dag ({d['nodes']})", "dads", "-", "-", "-", f"{100 * d['max_gap_to_exact']:.4f} %",
                  f"{d['decision_ms']:.3f} (cold {d['cold_ms']:.1f})", f"{d['milp_ms']:.1f}",
                  f"{d['milp_ms'] / d['decision_ms']:.0f}")
    console.print(table)
    means = [r["speedup_vs_device_only"] for r in results["models"].values()]
    means_cloud = [r["speedup_vs_cloud_only"] for r in results["models"].values()]
    results["summary"] = {
        "mean_speedup_vs_device_only": statistics.mean(means),
        "mean_speedup_vs_cloud_only": statistics.mean(means_cloud),
        "max_gap_to_exact": max([r["max_gap_to_exact"] for r in results["models"].values()] + [d["max_gap_to_exact"]]),
        "chain_decision_ms_max": max(r["decision_ms"] for r in results["models"].values() if r["graph"] == "chain"),
        "dag200_decision_ms": d["decision_ms"],
        "targets": {"chain_decision_ms": _TARGET_CHAIN_DECISION_MS, "dag200_decision_ms": _TARGET_DAG200_DECISION_MS,
                    "neurosurgeon_reported_mean_speedup": 3.1}}
    edgent = results["models"]["alexnet_exits"].get("edgent")
    if edgent:
        et = Table(title=f"Edgent on alexnet_exits over SLOs {slos[0]:g}-{slos[-1]:g} ms x {len(bandwidths)} "
                         "bandwidths (missed deadline = accuracy 0)")
        for col in ("strategy", "deadline-hit rate", "mean accuracy", "hit-rate ratio (Edgent / this)"):
            et.add_column(col, justify="left" if col == "strategy" else "right")
        for s in ("edgent", "neurosurgeon", "device_only"):
            ratio = edgent["edgent"]["hit_rate"] / edgent[s]["hit_rate"] if edgent[s]["hit_rate"] else float("inf")
            et.add_row(s, f"{edgent[s]['hit_rate']:.3f}", f"{edgent[s]['mean_accuracy']:.3f}", f"{ratio:.2f}")
        console.print(et)
        console.print(f"exit accuracies (digits): {edgent['exit_accuracy']}", highlight=False)
    if "split_run" in results:
        st = Table(title="Real split run (head and tail processes, token-bucket loopback, 1 thread each)")
        for col in ("exit", "split", "Mbps", "bytes", "predicted ms", "measured ms", "error"):
            st.add_column(col, justify="right")
        for r in results["split_run"]["rows"]:
            st.add_row(str(r["exit"]), str(r["split"]), f"{r['bandwidth_mbps']:g}", f"{r['activation_bytes']:,}",
                       f"{r['predicted_ms']:.1f}", f"{r['measured_ms']:.1f}", f"{100 * r['error']:.1f} %")
        console.print(st)
        console.print(f"split-run MAPE {100 * results['split_run']['mape']:.1f} % (target < 15 %)", highlight=False)
        results["summary"]["split_run_mape"] = results["split_run"]["mape"]
    s = results["summary"]
    console.print(f"mean speedup vs device-only {s['mean_speedup_vs_device_only']:.2f}x, vs cloud-only "
                  f"{s['mean_speedup_vs_cloud_only']:.2f}x (Neurosurgeon reports 3.1x); max gap to exact "
                  f"{100 * s['max_gap_to_exact']:.4f} %; chain decision {s['chain_decision_ms_max']:.4f} ms "
                  f"(< {_TARGET_CHAIN_DECISION_MS}); 200-node DAG {s['dag200_decision_ms']:.2f} ms "
                  f"(< {_TARGET_DAG200_DECISION_MS})", highlight=False)
    (RESULTS / "partition.json").write_text(json.dumps(results, indent=1))
    console.print(f"wrote {RESULTS / 'partition.json'}")


if __name__ == "__main__":
    main()
