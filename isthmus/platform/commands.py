"""CLI of the runtime: `isthmus up`, `isthmus serve-config`, `isthmus trace summary`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

_trace = typer.Typer(help="Read OpenTelemetry span files written by the runtime.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("serve-config")(serve_config_command)
    app.add_typer(_trace, name="trace")


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[red]{message}[/red]", highlight=False)
    raise typer.Exit(2)


def _load_spec(path: str):
    from isthmus.spec import SpecError, load_spec

    try:
        return load_spec(path)
    except SpecError as err:
        _fail(str(err))


def up(spec: str = typer.Argument(..., help="Spec YAML: one Ray node per region and edge site."),
       local: bool = typer.Option(False, "--local", help="Start a local multi-node cluster (ray.cluster_utils)."),
       address: str = typer.Option(None, "--address", help="Join a cluster: ray://host:10001, auto, or host:6379."),
       exit_after_s: float = typer.Option(0.0, "--exit-after-s", help="--local: stop after this many s (0: Ctrl-C)."),
       as_json: bool = typer.Option(False, "--json", help="Print the site → node table as JSON.")) -> None:
    """Bring up (--local) or check (--address) a Ray cluster with a node per site (resources region:/edge:)."""
    from isthmus.platform.cluster import ClusterError, connect, node_sites, start_local_cluster

    loaded = _load_spec(spec)
    if local == bool(address):
        _fail("give exactly one of --local or --address. To fix: `isthmus up SPEC --local` for a cluster on this "
              "machine, `isthmus up SPEC --address ray://HEAD:10001` to check an existing one")
    import ray

    cluster = None
    try:
        if local:
            cluster = start_local_cluster(loaded)
            ray_address = cluster.address
        else:
            connect(loaded, address)
            ray_address = address
        sites = node_sites(ray.nodes())
    except ClusterError as err:
        _fail(str(err))
    _print_sites(ray_address, sites, as_json)
    if cluster is None:
        ray.shutdown()
        return
    _wait(exit_after_s)
    ray.shutdown()
    cluster.shutdown()


def _print_sites(address: str, sites: dict[str, list[str]], as_json: bool) -> None:
    from rich.table import Table

    from isthmus.tables import print_table

    if as_json:
        typer.echo(json.dumps({"address": address, "sites": sites}))
        return
    table = Table(title=f"Ray cluster at {address}")
    table.add_column("resource")
    table.add_column("node ids")
    for resource, nodes in sorted(sites.items()):
        table.add_row(resource, ", ".join(n[:12] for n in nodes))
    print_table(table)


def _wait(exit_after_s: float) -> None:
    """Until `exit_after_s` passed (0: never), Ctrl-C or SIGTERM; then the caller stops the local cluster."""
    import time

    from isthmus.platform.signals import sigterm_as_interrupt

    deadline = time.monotonic() + exit_after_s if exit_after_s > 0 else float("inf")
    with sigterm_as_interrupt():  # replaces ray.init's handler, which exits without cluster.shutdown()
        try:
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            pass


def _parse_urls(values: list[str]) -> dict[str, str]:
    urls = {}
    for value in values or []:
        site, sep, url = value.partition("=")
        if not sep or not site or not url:
            _fail(f"--triton-url {value!r} is not SITE=HOST:PORT. To fix: e.g. --triton-url us-east=10.0.0.5:8001")
        urls[site] = url
    return urls


def serve_config_command(
        plan: str = typer.Argument(..., help="Plan JSON (isthmus plan SPEC --json > plan.json)."),
        spec: str = typer.Option(None, "--spec", help="The plan's spec: tells regions from edge sites."),
        edge: list[str] = typer.Option([], "--edge", help="Without --spec: a site that is an edge site."),
        http_port: int = typer.Option(8000, "--http-port", help="Port of Serve's HTTP ingress (on 127.0.0.1)."),
        grpc_port: int = typer.Option(9000, "--grpc-port", help="Port of Serve's gRPC ingress (isthmus.v1.Inference)."),
        triton_url: list[str] = typer.Option([], "--triton-url", help="SITE=HOST:PORT (default: the site's "
                                             "DeviceActor)."),
        triton_protocol: str = typer.Option("grpc", "--triton-protocol", help="grpc, or http (Triton's HTTP "
                                            "endpoint keeps every request's trace context)."),
        trace_jsonl: str = typer.Option(None, "--trace-jsonl", help="Append spans to this JSONL file."),
        otlp_endpoint: str = typer.Option(None, "--otlp-endpoint", help="Export spans over OTLP gRPC here.")) -> None:
    """Print the Serve config YAML that runs PLAN (`serve deploy` it, or `serve run` it)."""
    import yaml

    from isthmus.platform.serve_app import serve_config
    from isthmus.platform.tracing import TracingConfig
    from isthmus.spec import SpecError, load_plan

    try:
        loaded_plan = load_plan(plan)
    except SpecError as err:
        _fail(str(err))
    loaded_spec = _load_spec(spec) if spec else None
    if loaded_spec is None:
        typer.echo(f"# no --spec: sites {sorted(edge) or 'none'} pinned as edge:<site>, all others as region:<site>",
                   err=True)
    try:
        tracing = TracingConfig(jsonl_path=trace_jsonl, otlp_endpoint=otlp_endpoint).model_dump(exclude_none=True)
        config = serve_config(loaded_plan, loaded_spec, triton_urls=_parse_urls(triton_url), http_port=http_port,
                              grpc_port=grpc_port, tracing=tracing if (trace_jsonl or otlp_endpoint) else None,
                              edge_sites=edge, triton_protocol=triton_protocol)
    except ValueError as err:
        _fail(str(err).splitlines()[-1] if "validation error" in str(err) else str(err))
    typer.echo(yaml.safe_dump(config, sort_keys=False))


@_trace.command("summary")
def trace_summary(file: str = typer.Argument(..., help="JSONL span file (the runtime's tracing output)."),
                  spec: str = typer.Option(None, "--spec", help="The plan's spec: adds each route's predicted "
                                           "compute (the part of L_r spent at the site)."),
                  as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON.")) -> None:
    """Per-hop latency of every trace (one row per hop and service, so the deployment at each site is its own row)
    and, per route, the plan's prediction beside the latency measured at the ingress.

    The ingress measures from a request's arrival there to its reply, so the client's uplink is not in it; the
    plan's route latency L_r is rtt + transfer + compute, network included. The table shows L_r as "predicted
    L_r (incl. network)" and "ingress p50 / predicted L_r (incl. network)" (below 1 where the network is a large
    part of L_r); with --spec also "predicted compute", L_r without the network and the split head: the
    prediction to compare the ingress p50 with ("ingress p50 / predicted compute")."""
    from rich.console import Console
    from rich.table import Table

    from isthmus.platform.tracing import load_spans, summarize
    from isthmus.tables import print_table

    if not Path(file).is_file():
        _fail(f"{file}: no such file. To fix: pass the JSONL span file (TracingConfig.jsonl_path)")
    try:
        summary = summarize(load_spans(file), _load_spec(spec) if spec else None)
    except ValueError as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console = Console()
    hops = Table(title=f"{summary['traces']} traces, {summary['spans']} spans: per-hop latency (ms)")
    for column in ("hop", "service", "n", "depth", "p50", "p99", "mean"):
        hops.add_column(column, justify="left" if column in ("hop", "service") else "right")
    for h in summary["hops"]:
        hops.add_row(h["hop"], h["service"], str(h["n"]), f"{h['depth']:.1f}", f"{h['p50_ms']:.2f}",
                     f"{h['p99_ms']:.2f}", f"{h['mean_ms']:.2f}")
    print_table(hops, console)
    if summary["routes"]:
        routes = Table(title="predicted (plan) vs measured at the ingress (ms)")
        for column in ("service", "site", "model version", "n", "predicted L_r (incl. network)", "predicted compute",
                       "ingress p50", "ingress p99", "ingress p50 / predicted L_r (incl. network)",
                       "ingress p50 / predicted compute"):
            routes.add_column(column, justify="left" if column in ("service", "site", "model version") else "right")
        for r in summary["routes"]:
            compute = r["predicted_compute_ms"]
            routes.add_row(r["service"], r["site"], r["model_version"], str(r["n"]), f"{r['predicted_ms']:.2f}",
                           "-" if compute is None else f"{compute:.2f}", f"{r['measured_p50_ms']:.2f}",
                           f"{r['measured_p99_ms']:.2f}", f"{r['measured_over_predicted']:.2f}",
                           "-" if not compute else f"{r['measured_p50_ms'] / compute:.2f}")
        print_table(routes, console)
