"""CLI: `isthmus place MODEL --devices 4xv100` (op placement), `isthmus configure SPEC --model M` (config search),
`isthmus fill-latencies SPEC` (a spec's missing latencies: zoo models from placements, TorchScript artifacts
timed on this CPU)."""

from __future__ import annotations

import json
from typing import Optional

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("place")(place)
    app.command("configure")(configure)
    app.command("fill-latencies")(fill_latencies)


def _fail(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[red]{escape(message)}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _graph(model: str, size: str, batch: int = 1):  # -> OpGraph
    from isthmus.placement.graph import from_zoo

    try:
        return from_zoo(model, size=size, batch=batch)
    except ValueError as err:
        _fail(str(err))


def place(
    model: str = typer.Argument(..., help="Zoo model: alexnet_exits, vgg, resnet, inception, rnnlm."),
    devices: str = typer.Option("4xv100", "--devices", help="Devices of one node, e.g. 4xv100 or 2xv100+2xk80."),
    link: Optional[str] = typer.Option(None, "--link", help="Override the link between devices: pcie, nvlink, "
                                       "network."),
    size: str = typer.Option("full", "--size", help="Model size: full or small."),
    batch_size: int = typer.Option(1, "--batch-size", help="Requests per forward pass (ops are measured on this "
                                   "CPU at that batch; e.g. 8 for a dynamically batched server)."),
    episodes: int = typer.Option(150, "--episodes", help="REINFORCE steps of the learned policy."),
    seed: int = typer.Option(0, "--seed", help="Seed of the learned policy."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Place a model's ops over a node's devices: single, expert, HEFT, m-SCT, m-ETF and learned (RL), with
    every makespan from the same simulator."""
    from isthmus.placement.devices import parse_devices
    from isthmus.placement.place import compare_policies

    if episodes < 0:
        _fail(f"--episodes is {episodes}, must be >= 0. To fix: pass e.g. --episodes 150")
    try:
        device_set = parse_devices(devices, link)
    except ValueError as err:
        _fail(str(err))
    graph = _graph(model, size, batch_size)
    try:
        report = compare_policies(graph, device_set, devices, episodes=episodes, seed=seed)
    except ValueError as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from isthmus.tables import print_table

    single = report.policies["single"]
    table = Table(title=f"{model} on {devices}, batch {graph.batch} ({graph.n} ops, lower bound "
                        f"{report.lower_bound_ms:.3f} ms; T1/T∞ {report.parallelism:.2f}, heavy-op width "
                        f"{report.branch_width}, speed-up bound {report.speedup_bound:.2f}x)")
    for col in ("policy", "makespan ms", "speed-up vs single", "search s"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, span in report.policies.items():
        table.add_row(name, f"{span:.4f}", f"{single / span:.2f}x", f"{report.search_s[name]:.4f}")
    print_table(table)
    used = sorted(set(report.placement.values()))
    Console().print(f"learned placement uses {len(used)} device(s): {', '.join(used)}")


def configure(
    spec: str = typer.Argument(..., help="Spec YAML: regions, instance types, devices, links, services."),
    model: str = typer.Option(..., "--model", help="A model of the spec with `zoo` set."),
    method: str = typer.Option("bo", "--method", help="bo, lcf, uniform or exhaustive."),
    requests: int = typer.Option(10000, "--requests", help="Requests in the job (cost = price x job time)."),
    qos_ms: Optional[float] = typer.Option(None, "--qos-ms", help="Latency QoS (default: the tightest SLO of the "
                                           "model's services)."),
    max_probes: Optional[int] = typer.Option(None, "--max-probes", help="Most configurations to probe."),
    size: str = typer.Option("full", "--size", help="Model size: full or small."),
    seed: int = typer.Option(0, "--seed", help="Seed of the search."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Search (region, instance type, count) for the cheapest job under the latency QoS (AutoDeep's BO, or the
    LCF / uniform / exhaustive baselines)."""
    from isthmus.placement.configure import METHODS, search, space_from_spec
    from isthmus.spec import SpecError, load_spec

    if method not in METHODS:
        _fail(f"--method is {method!r}. To fix: use one of {list(METHODS)}")
    if max_probes is not None and max_probes < 1:
        _fail(f"--max-probes is {max_probes}, must be >= 1. To fix: pass a positive number")
    if qos_ms is not None and not qos_ms > 0:
        _fail(f"--qos-ms is {qos_ms}, must be > 0. To fix: give the latency QoS in ms")
    try:
        loaded = load_spec(spec)
    except SpecError as err:
        _fail(str(err))
    names = [m.name for m in loaded.models]
    if model not in names:
        _fail(f"--model {model!r} is not in {spec}. To fix: use one of {names}")
    zoo = loaded.model(model).zoo
    if zoo is None:
        _fail(f"model {model!r} has no `zoo`, so its ops cannot be placed. To fix: set `zoo:` to one of "
              "alexnet_exits, vgg, resnet, inception, rnnlm")
    graph = _graph(zoo, size)
    try:
        space = space_from_spec(loaded, model, graph, requests=requests, qos_ms=qos_ms)
        result = search(space, method, max_probes=max_probes, seed=seed)
    except ValueError as err:
        _fail(str(err))
    out = result.to_dict()
    out.update({"model": model, "space_size": len(space), "qos_ms": space.qos_ms, "rate_rps": space.rate_rps,
                "requests": requests})
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from isthmus.tables import print_table

    table = Table(title=f"{method} over {len(space)} configurations of {model} (QoS {space.qos_ms:.2f} ms, "
                        f"{space.rate_rps:.0f} rps, {requests} requests)")
    for col in ("#", "region", "instance type", "count", "latency ms", "cost $", "feasible", "policy"):
        table.add_column(col)
    for i, p in enumerate(result.history, 1):
        table.add_row(str(i), p.region, p.instance_type, str(p.count), f"{p.latency_ms:.3f}", f"{p.cost:.5f}",
                      "yes" if p.feasible else "no", p.policy)
    print_table(table)
    if result.best is None:
        Console().print("[yellow]no probed configuration meets the QoS and capacity[/yellow]")
    else:
        b = result.best
        Console().print(f"best: {b.region} {b.instance_type} x{b.count}: ${b.cost:.5f}, {b.latency_ms:.3f} ms "
                        f"after {result.probes} probes")


def fill_latencies(
    spec: str = typer.Argument(..., help="Spec YAML whose zoo models or TorchScript artifacts lack latency_ms for "
                               "some device kinds."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Write the filled spec here (default: "
                                         "print it)."),
    size: str = typer.Option("full", "--size", help="Zoo model size: full or small."),
) -> None:
    """Fill latency_ms / capacity_rps for the spec's device kinds a version lacks: every zoo model's fp32
    version from the best placement over one instance's devices (simulated makespan and pipeline period),
    every version with an `artifact` by timing its TorchScript file on this CPU (batch 1 and a batch sweep),
    scaled to each device kind by its declared TFLOPS. Given values are kept."""
    from pathlib import Path

    from isthmus.models.artifact import check_artifacts, fill_artifact_latencies
    from isthmus.placement.place import fill_spec
    from isthmus.spec import SpecError, dump_spec, load_spec

    try:
        loaded = load_spec(spec, allow_unmeasured=True)
    except SpecError as err:
        _fail(str(err))
    graphs = {m.zoo: _graph(m.zoo, size) for m in loaded.models if m.zoo}
    if not graphs and not loaded.artifact_versions():
        _fail(f"{spec} has no model with `zoo` set and no version with an `artifact`, so there is nothing to "
              "measure. To fix: set `zoo:` on a model, or `artifact: {path: model.pt, input_shape: [...]}` on a "
              "version")
    problems = check_artifacts(loaded)
    if problems:
        _fail(str(SpecError(problems, spec)))
    filled = fill_artifact_latencies(fill_spec(loaded, graphs), progress=True)
    text = dump_spec(filled, Path(output).parent if output else None)
    if output is None:
        typer.echo(text)
        return
    Path(output).write_text(text)
    typer.echo(f"wrote {output}")
