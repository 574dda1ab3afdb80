"""CLI: `isthmus partition` — DADS min-cut on a graph JSON, or Edgent / Neurosurgeon / DADS for a zoo model."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("partition")(partition)


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[red]{message}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def partition(
    model: Optional[str] = typer.Argument(None, help="Zoo model (alexnet_exits, vgg, resnet, inception, rnnlm)."),
    graph: Optional[str] = typer.Option(None, "--graph", help="Partition graph JSON (format: docs/spec.md)."),
    bandwidth_mbps: Optional[float] = typer.Option(None, "--bandwidth-mbps", help="Device -> site Mbit/s."),
    rtt_ms: Optional[float] = typer.Option(None, "--rtt-ms", help="Device <-> site round trip, ms (default 0, "
                                           "or the spec's link)."),
    slo_ms: Optional[float] = typer.Option(None, "--slo-ms", help="Latency SLO for Edgent's exit choice, ms."),
    device: Optional[str] = typer.Option(None, "--device", help="Edge device kind (or, with --spec, an edge site)."),
    site_device: Optional[str] = typer.Option(None, "--site-device", help="Device kind of the cloud/edge server."),
    spec: Optional[str] = typer.Option(None, "--spec", help="Spec YAML to take devices and the link from."),
    site: Optional[str] = typer.Option(None, "--site", help="With --spec: the region (or edge site) to offload to."),
    version: str = typer.Option("fp32", "--version", help="Model version to profile."),
    size: str = typer.Option("full", "--size", help="Zoo size: full (realistic latency) or small (digits)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Where to split a model between an edge device and a site, and which early exit to take.

    With --graph: the exact DADS min-cut (device_nodes, cut, latency_ms).

    With MODEL: profiled on this CPU, scaled to --device / --site-device (or the spec's); compares Edgent, Neurosurgeon and DADS with device-only and cloud-only.
    """
    if (graph is None) == (model is None):
        _fail("give either MODEL or --graph G.json. To fix: e.g. `isthmus partition --graph g.json "
              "--bandwidth-mbps 10` or `isthmus partition alexnet_exits --device rpi3 --site-device t4 "
              "--bandwidth-mbps 10 --slo-ms 500`")
    if graph is not None:
        _graph_command(graph, bandwidth_mbps, rtt_ms or 0.0, as_json)
    else:
        _model_command(model, version, size, device, site_device, spec, site, bandwidth_mbps, rtt_ms, slo_ms, as_json)


def _check_link(bandwidth_mbps: float | None, rtt_ms: float) -> float:
    if bandwidth_mbps is None:
        _fail("--bandwidth-mbps is required. To fix: give the device -> site bandwidth in Mbit/s "
              "(or --spec with a link)")
    if not bandwidth_mbps > 0:
        _fail(f"--bandwidth-mbps is {bandwidth_mbps}, must be > 0. To fix: give the link's Mbit/s")
    if rtt_ms < 0:
        _fail(f"--rtt-ms is {rtt_ms}, must be >= 0. To fix: give the round-trip time in ms")
    return bandwidth_mbps


def _graph_command(path: str, bandwidth_mbps: float | None, rtt_ms: float, as_json: bool) -> None:
    from isthmus.partition.graph import GraphError, load_graph, partition_graph

    bw = _check_link(bandwidth_mbps, rtt_ms)
    try:
        g = load_graph(path)
    except GraphError as err:
        _fail(str(err))
    result = partition_graph(g, bw, rtt_ms)
    if as_json:
        print(json.dumps(result.to_dict(), indent=1))
        return
    from rich.console import Console

    Console().print(f"device ({len(result.device_nodes)}): {', '.join(result.device_nodes) or '-'}\n"
                    f"server ({len(result.server_nodes)}): {', '.join(result.server_nodes) or '-'}\n"
                    f"cut: {', '.join(result.cut) or '- (nothing sent)'} ({result.cut_bytes} bytes)\n"
                    f"latency_ms: {result.latency_ms:.3f} = device {result.device_ms:.3f} + transfer "
                    f"{result.transfer_ms:.3f} + rtt {result.rtt_ms:.3f} + server {result.server_ms:.3f}",
                    highlight=False)


def _resolve_devices(device: str | None, site_device: str | None, spec_path: str | None, site: str | None,
                     bandwidth_mbps: float | None, rtt_ms: float | None) -> dict[str, Any]:
    """Edge and server Device objects and the link, from --spec/--site or the default device kinds."""
    from isthmus.partition.profiles import DEFAULT_DEVICES
    from isthmus.spec import Device, SpecError, load_spec

    if spec_path is None:
        if site is not None:
            _fail("--site needs --spec (a region name means nothing without one). To fix: add --spec SPEC, "
                  "or give the server's device kind with --site-device")
        for flag, kind in (("--device", device), ("--site-device", site_device)):
            if kind is None:
                _fail(f"{flag} is required. To fix: give one of {sorted(DEFAULT_DEVICES)} (or use --spec)")
            if kind not in DEFAULT_DEVICES:
                _fail(f"{flag} {kind!r} is not a known device kind. To fix: use one of {sorted(DEFAULT_DEVICES)}, "
                      "or declare it in a spec and pass --spec")
        return {"device": device, "site_device": site_device, "edge": Device(**DEFAULT_DEVICES[device]),
                "server": Device(**DEFAULT_DEVICES[site_device]), "bandwidth_mbps": bandwidth_mbps,
                "rtt_ms": rtt_ms or 0.0}
    try:
        loaded = load_spec(spec_path)
    except SpecError as err:
        _fail(str(err))
    edge_sites = {e.name: e for e in loaded.edge_sites}
    regions = {r.name: r for r in loaded.regions}
    if site is None or (site not in regions and site not in edge_sites):
        _fail(f"--site {site!r} is not a region or edge site of {spec_path}. To fix: use one of "
              f"{sorted(regions) + sorted(edge_sites)}")
    if device in edge_sites:
        places, kind = [device], edge_sites[device].device
    elif device in loaded.devices:
        places, kind = [e.name for e in loaded.edge_sites if e.device == device], device
    else:
        _fail(f"--device {device!r} is neither an edge site nor a device kind of {spec_path}. To fix: use one of "
              f"{sorted(edge_sites) + sorted(loaded.devices)}")
    if site_device is None:
        kinds = ([it.device for it in regions[site].instance_types] if site in regions
                 else [edge_sites[site].device])
        if not kinds:
            _fail(f"site {site!r} has no instance types. To fix: add one, or pass --site-device")
        site_device = max(kinds, key=lambda k: loaded.devices[k].tflops)
    elif site_device not in loaded.devices:
        _fail(f"--site-device {site_device!r} is not declared in {spec_path}. To fix: use one of "
              f"{sorted(loaded.devices)}")
    link = next((l for l in loaded.links for p in places if {l.src, l.dst} == {p, site}), None)
    if bandwidth_mbps is None and link is None:
        _fail(f"no link between {places or kind!r} and {site!r} in {spec_path}. To fix: add one, or pass "
              "--bandwidth-mbps (and --rtt-ms)")
    return {"device": kind, "site_device": site_device, "edge": loaded.devices[kind],
            "server": loaded.devices[site_device],
            "bandwidth_mbps": bandwidth_mbps if bandwidth_mbps is not None else link.bandwidth_mbps,
            "rtt_ms": rtt_ms if rtt_ms is not None else (link.rtt_ms if link else 0.0)}


def _model_command(model: str, version: str, size: str, device: str | None, site_device: str | None,
                   spec: str | None, site: str | None, bandwidth_mbps: float | None, rtt_ms: float | None,
                   slo_ms: float | None, as_json: bool) -> None:
    from isthmus.models import ZOO_NAMES

    if model not in ZOO_NAMES:
        _fail(f"unknown zoo model {model!r}. To fix: use one of {list(ZOO_NAMES)}, or --graph for your own graph")
    if size not in ("full", "small"):
        _fail(f"--size {size!r} is not 'full' or 'small'. To fix: pass --size full (realistic latency) or small")
    if slo_ms is not None and not slo_ms > 0:
        _fail(f"--slo-ms is {slo_ms}, must be > 0. To fix: give the latency SLO in ms")
    where = _resolve_devices(device, site_device, spec, site, bandwidth_mbps, rtt_ms)
    bw = _check_link(where["bandwidth_mbps"], where["rtt_ms"])
    from isthmus.partition.compare import compare_strategies
    from isthmus.profiler import profile_model

    try:
        local = profile_model(model, version=version, size=size, progress=not as_json)
    except ValueError as err:
        _fail(str(err))
    report = compare_strategies(local, where["edge"], where["server"], bw, where["rtt_ms"], slo_ms)
    report = {"model": model, "version": version, "size": size, "device": where["device"],
              "site_device": where["site_device"], "bandwidth_mbps": bw, "rtt_ms": where["rtt_ms"],
              "slo_ms": slo_ms} | report
    if as_json:
        print(json.dumps(report, indent=1))
        return
    _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from isthmus.tables import print_table

    table = Table(title=f"{report['model']}/{report['version']}: {report['device']} -> {report['site_device']} "
                        f"at {report['bandwidth_mbps']:g} Mbps, rtt {report['rtt_ms']:g} ms")
    for col in ("strategy", "exit", "split", "placement", "sent bytes", "latency ms", "accuracy", "SLO met"):
        table.add_column(col, justify="right" if col not in ("strategy", "placement") else "left")
    for name, row in report["strategies"].items():
        acc = row.get("accuracy")
        met = row.get("met_slo")
        exit_ = "-" if row.get("exit") is None else str(row["exit"])
        table.add_row(name, exit_, str(row.get("split", "-")), row["placement"].removesuffix("-only"),
                      f"{row['activation_bytes']:,}", f"{row['latency_ms']:.2f}",
                      "-" if acc is None else f"{acc:.3f}", "-" if met is None else ("yes" if met else "NO"))
    console = Console()
    print_table(table, console)
    console.print(f"chosen ({report['chosen']}): latency {report['latency_ms']:.2f} ms; "
                  f"decision {report['decision_ms']:.4f} ms", highlight=False)
    if report.get("device_nodes") is not None:
        console.print(f"device_nodes: {len(report['device_nodes'])}, cut: {report['cut']}", highlight=False)
