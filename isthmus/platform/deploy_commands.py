"""CLI: `isthmus deploy`, `isthmus status`, `isthmus down` (the code is `isthmus.platform.deploy`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

_STATE_HELP = "Where the deployment keeps its state and certificates (default ~/.isthmus/deploy)."


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy_command)
    app.command("status")(status_command)
    app.command("down")(down_command)


def _state_dir(value: Path | None) -> Path:
    from isthmus.platform.deploy import DEFAULT_STATE_DIR

    return value or DEFAULT_STATE_DIR


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `fn`; a DeployError / SpecError / cluster or node error prints in red and exits 2."""
    from rich.console import Console

    from isthmus.platform.cluster import ClusterError
    from isthmus.platform.deploy import DeployError
    from isthmus.platform.nodes import NodeError
    from isthmus.spec import SpecError

    try:
        return fn(*args, **kwargs)
    except (DeployError, SpecError, ClusterError, NodeError) as err:
        Console(stderr=True, soft_wrap=True).print(f"[red]{err}[/red]", highlight=False)   # no hard wraps: copyable
        raise typer.Exit(2)


def deploy_command(
        spec: str = typer.Argument(..., help="Spec YAML; models by `zoo` name or TorchScript `artifact`."),
        local: bool = typer.Option(False, "--local", help="Start the cluster on this machine: a Ray head and one "
                                   "node per planned instance (they keep running until `isthmus down`)."),
        address: str = typer.Option(None, "--address", help="Deploy on a running cluster (the head's GCS address, "
                                    "HOST:6379) whose nodes carry region:<site> resources."),
        emulate_devices: bool = typer.Option(False, "--emulate-devices", help="Emulation: each instance answers no "
                                             "sooner than its version's declared latency_ms on its device kind, so "
                                             "N instances serve N times one instance's rate on this CPU."),
        state_dir: Path = typer.Option(None, "--state-dir", help=_STATE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print `isthmus status --json` when it is up.")) -> None:
    """Plan SPEC and run the plan: one node + DeviceActor + Triton per planned instance, Serve, the
    OptimizerActor (re-plans on measured rates) and the control plane. Returns once every instance serves."""
    from rich.console import Console

    from isthmus.platform.deploy import deploy

    console = Console(stderr=True)
    start = time.monotonic()
    with console.status("deploying") as spinner:
        def progress(text: str) -> None:
            console.log(f"[bold]{text}[/bold] ({time.monotonic() - start:.0f} s)")
            spinner.update(text)

        result = _run(deploy, spec, local=local, address=address, emulate=emulate_devices,
                      state_dir=_state_dir(state_dir), progress=progress)
    if as_json:
        typer.echo(json.dumps(result))
        return
    _print_status(result)
    console.print(f"deployed in {time.monotonic() - start:.0f} s; `isthmus status` to watch it, `isthmus down` to "
                  "stop it")


def status_command(state_dir: Path = typer.Option(None, "--state-dir", help=_STATE_HELP),
                   as_json: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """Plan version and $/h, endpoints, planned vs running instances per pool, per service the measured rate,
    p50/p99 and share within the SLO (last 30 s at the ingress), and the last re-plans."""
    from isthmus.platform.deploy import status

    result = _run(status, _state_dir(state_dir))
    if as_json:
        typer.echo(json.dumps(result))
        return
    _print_status(result)


def down_command(state_dir: Path = typer.Option(None, "--state-dir", help=_STATE_HELP),
                 purge: bool = typer.Option(False, "--purge", help="Also delete the state dir (certificates "
                                            "included).")) -> None:
    """Stop everything `isthmus deploy` started (Serve, Triton servers, actors, and with --local every Ray
    process of the deployment)."""
    from isthmus.platform.deploy import down

    result = _run(down, _state_dir(state_dir), purge=purge)
    if result["left"]:
        typer.echo(f"stopped {result['stopped_processes']} processes; still running: {result['left']}. To fix: "
                   f"kill them (kill -9 {' '.join(map(str, result['left']))})", err=True)
        raise typer.Exit(1)
    typer.echo(f"stopped {result['stopped_processes']} processes")


def _fmt(value: Any, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def _print_status(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from isthmus.tables import print_table

    console = Console()
    emulated = " (device kinds emulated)" if result.get("emulated_devices") else ""
    console.print(f"[bold]{result['spec']}[/bold]: plan version {result['plan_version']}, "
                  f"${result['cost_per_hour']:.3f}/h{emulated}")
    for name, endpoint in result["endpoints"].items():
        console.print(f"  {name:14s} {endpoint}")
    fleet = Table(title="fleet: instances per (site, instance type, model version)")
    for column in ("site", "instance type", "model version", "planned", "running"):
        fleet.add_column(column, overflow="fold", justify="right" if column in ("planned", "running") else "left")
    for pool in result["fleet"]:
        style = "" if pool["running"] == pool["planned"] else "yellow"
        fleet.add_row(pool["site"], pool["instance_type"], pool["model_version"], str(pool["planned"]),
                      str(pool["running"]), style=style)
    print_table(fleet, console)
    for pool in result["fleet"]:
        if pool.get("without_node"):
            console.print(f"[yellow]{pool['without_node']} planned instance(s) of {escape(pool['model_version'])} at "
                          f"{escape(pool['site'])} ({escape(pool['instance_type'])}) without a node. To fix: add nodes "
                          f"with resources region:{escape(pool['site'])} and instance:{escape(pool['instance_type'])} "
                          "(the Terraform unit's count): Isthmus puts instances on them within seconds[/yellow]")
    services = Table(title="services (measured at the ingress)")
    for column in ("service", "rate rps", "p50 ms", "p99 ms", "SLO ms", "within SLO"):
        services.add_column(column, overflow="fold", justify="left" if column == "service" else "right")
    for s in result["services"]:
        services.add_row(s["name"], _fmt(s["rate_rps"]), _fmt(s["latency_ms_p50"]), _fmt(s["latency_ms_p99"]),
                         _fmt(s["slo_ms"], "{:g}"), _fmt(s["slo_attainment"], "{:.1%}"))
    print_table(services, console)
    if result["replans"]:
        replans = Table(title="last re-plans")
        for column in ("plan version", "at", "reason"):
            replans.add_column(column, overflow="fold")
        for r in result["replans"]:
            replans.add_row(str(r["plan_version"]), r["at"], escape(r["reason"]))
        print_table(replans, console)
