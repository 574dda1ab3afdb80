"""Profiler and model-version bench (same run, same machine, ratios against baselines).

1. Edgent per-layer-type regression: fitted on random synthetic layers measured on this CPU
   (the offline stage), evaluated on every layer of the full-size zoo CNNs (layers it did not see).
   MAPE per kind of the Edgent linear form and of a per-kind power law (log-log), against two
   baselines fitted on the same data:
   - roofline: latency = FLOPs / (measured local GFLOPS)   (no fitting per kind),
   - one global linear model over (input bytes, FLOPs) for every kind (no per-kind split).
   Also the whole-model latency predicted (Σ predicted layers) vs measured (Σ measured layers).
2. Model versions: per zoo model, accuracy on digits (drop vs fp32) and full-size CPU latency
   (speedup vs fp32) of int8, low-rank, distilled and every early exit.
Writes bench/results/profiler.json.

    python bench/profiler.py            # profiles, trained models and versions are cached under $ISTHMUS_CACHE
    python bench/profiler.py --quick    # fewer synthetic layers, fewer repeats, two models' versions
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CNNS = ("alexnet_exits", "vgg", "resnet", "inception")


def _roofline_mape(layers: list[Any], gflops: float) -> float:
    errs = [abs(x.flops / (gflops * 1e6) - x.latency_ms) / x.latency_ms * 100 for x in layers if x.latency_ms > 0]
    return statistics.mean(errs)


def regression_part(per_kind: int, repeats: int, profile_repeats: int) -> dict[str, Any]:
    from isthmus.profiler import local_gflops, profile_model
    from isthmus.profiler.regression import LayerRegression, mape, synthetic_layers

    t0 = time.perf_counter()
    train = synthetic_layers(per_kind=per_kind, seed=0, repeats=repeats)
    fit_s = time.perf_counter() - t0
    edgent = LayerRegression.fit(train)
    loglog = LayerRegression.fit(train, form="loglog")
    global_fit = LayerRegression.fit([type(x)(x.name, "any", x.latency_ms, x.out_bytes, x.in_bytes, x.flops)
                                      for x in train])
    gflops = local_gflops()
    kinds = ("conv", "fc", "pool", "relu", "lrn", "bn")
    per_model, unseen = [], []
    for name in CNNS:
        # re-measured in this run, so the fitted and the evaluated layers share the machine's load
        prof = profile_model(name, "fp32", "full", repeats=profile_repeats, progress=False, refresh=True)
        layers = [x for x in prof.layers if x.kind in kinds]
        unseen += layers
        measured = sum(x.latency_ms for x in prof.layers)
        predicted = sum(edgent.predict(x) for x in prof.layers)
        predicted_ll = sum(loglog.predict(x) for x in prof.layers)
        per_model.append({"model": name, "layers": len(prof.layers), "measured_ms": measured,
                          "predicted_ms": predicted, "error_pct": abs(predicted - measured) / measured * 100,
                          "predicted_loglog_ms": predicted_ll,
                          "error_loglog_pct": abs(predicted_ll - measured) / measured * 100})
    rows = []
    for kind in kinds + ("all",):
        sel = [x for x in unseen if kind == "all" or x.kind == kind]
        if not sel:
            continue
        as_any = [type(x)(x.name, "any", x.latency_ms, x.out_bytes, x.in_bytes, x.flops) for x in sel]
        row = {"kind": kind, "layers": len(sel), "edgent_mape": mape(edgent, sel)["all"],
               "loglog_mape": mape(loglog, sel)["all"],
               "global_mape": mape(global_fit, as_any)["all"], "roofline_mape": _roofline_mape(sel, gflops)}
        row["global_over_edgent"] = row["global_mape"] / max(row["edgent_mape"], 1e-9)
        row["roofline_over_edgent"] = row["roofline_mape"] / max(row["edgent_mape"], 1e-9)
        rows.append(row)
    return {"train_layers": len(train), "offline_profiling_s": fit_s, "local_gflops": gflops,
            "mape_on_unseen_zoo_layers": rows, "whole_model": per_model}


def versions_part(models: tuple[str, ...], repeats: int) -> list[dict[str, Any]]:
    from isthmus.models.versions import MAX_DROP, version_table

    out = []
    for name in models:
        for row in version_table(name, repeats=repeats):
            bound = MAX_DROP.get(row["name"])
            out.append({"model": name, "version": row["name"], "accuracy": row["accuracy"],
                        "accuracy_drop": row["accuracy_drop"], "stated_max_drop": bound,
                        "within_bound": None if bound is None else row["accuracy_drop"] <= bound,
                        "latency_ms_cpu": row["latency_ms"]["cpu"], "speedup_vs_fp32": row["speedup"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer layers and repeats, two models' versions")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from isthmus.models.runtime import default_threads
    from isthmus.models.zoo import ZOO_NAMES

    console = Console()
    with console.status("regression: profiling synthetic layers and the zoo"):
        reg = regression_part(per_kind=6 if args.quick else 12, repeats=5 if args.quick else 10,
                              profile_repeats=5 if args.quick else 10)
    table = Table(title=f"Per-layer latency regression, MAPE % on {sum(r['layers'] for r in reg['mape_on_unseen_zoo_layers'] if r['kind'] != 'all')} "
                        f"unseen zoo layers (fit on {reg['train_layers']} synthetic layers)")
    for col in ("kind", "layers", "Edgent per-kind", "log-log per-kind", "global linear", "roofline",
                "global / Edgent", "roofline / Edgent"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for r in reg["mape_on_unseen_zoo_layers"]:
        table.add_row(r["kind"], str(r["layers"]), f"{r['edgent_mape']:.1f}", f"{r['loglog_mape']:.1f}",
                      f"{r['global_mape']:.1f}",
                      f"{r['roofline_mape']:.1f}", f"{r['global_over_edgent']:.2f}x",
                      f"{r['roofline_over_edgent']:.2f}x")
    console.print(table)
    whole = Table(title="Whole model: Σ predicted vs Σ measured layer latency (full size, this CPU)")
    for col in ("model", "layers", "measured ms", "Edgent ms", "error %", "log-log ms", "error %"):
        whole.add_column(col, justify="left" if col == "model" else "right")
    for r in reg["whole_model"]:
        whole.add_row(r["model"], str(r["layers"]), f"{r['measured_ms']:.1f}", f"{r['predicted_ms']:.1f}",
                      f"{r['error_pct']:.1f}", f"{r['predicted_loglog_ms']:.1f}", f"{r['error_loglog_pct']:.1f}")
    console.print(whole)

    models = ("resnet", "rnnlm") if args.quick else tuple(ZOO_NAMES)
    with console.status("versions: training, compressing and timing (cached)"):
        vers = versions_part(models, repeats=3 if args.quick else 10)
    vt = Table(title="Model versions: accuracy on digits (small), latency on this CPU (full size)")
    for col in ("model", "version", "accuracy", "drop", "stated max", "latency ms", "speedup vs fp32"):
        vt.add_column(col, justify="left" if col in ("model", "version") else "right")
    for r in vers:
        vt.add_row(r["model"], r["version"], f"{r['accuracy']:.3f}", f"{r['accuracy_drop']:+.3f}",
                   "-" if r["stated_max_drop"] is None else f"{r['stated_max_drop']:.2f}",
                   f"{r['latency_ms_cpu']:.1f}", f"{r['speedup_vs_fp32']:.2f}x")
    console.print(vt)
    RESULTS.mkdir(exist_ok=True)
    out = {"threads": default_threads(), "quick": args.quick, "regression": reg, "versions": vers}
    (RESULTS / "profiler.json").write_text(json.dumps(out, indent=1))
    console.print(f"wrote {RESULTS / 'profiler.json'}")


if __name__ == "__main__":
    main()
