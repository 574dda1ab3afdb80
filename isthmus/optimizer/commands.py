"""CLI commands of the geo planner: `isthmus validate`, `isthmus plan`."""

from __future__ import annotations

import json

import typer

from isthmus.spec import SpecError


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("plan")(plan)


def _exit(err: SpecError | str) -> None:
    """Print the error (it says how to fix it) on stderr, without hard wraps, and exit with code 2."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[red]{escape(str(err))}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _load(spec: str):
    from isthmus.spec import load_spec

    try:
        return load_spec(spec)
    except SpecError as err:
        _exit(err)


def validate(spec: str = typer.Argument(..., help="Path to a spec YAML file.")) -> None:
    """Check a spec and that its TorchScript artifacts load and run on their input_shape; print every problem
    with its YAML path and how to fix it (exit code 2)."""
    from rich.console import Console

    from isthmus.models.artifact import check_artifacts
    from isthmus.spec import load_spec

    try:
        loaded, problems = load_spec(spec), []
    except SpecError as err:  # artifact versions not measured yet: also check their files
        try:
            loaded, problems = load_spec(spec, allow_unmeasured=True), err.problems
        except SpecError:
            _exit(err)
    problems += check_artifacts(loaded)
    if problems:
        _exit(SpecError(problems, spec))
    Console().print(f"[green]{spec}: valid[/green] ({len(loaded.services)} services, "
                    f"{len(loaded.regions)} regions, {len(loaded.edge_sites)} edge sites)")


def plan(spec: str = typer.Argument(..., help="Path to a spec YAML file."),
         as_json: bool = typer.Option(False, "--json", help="Print the Plan JSON (docs/spec.md) only."),
         method: str = typer.Option("auto", help="auto | milp | lp-round (auto: exact MILP up to 20,000 routes)."),
         time_limit_s: float = typer.Option(60.0, "--time-limit-s", help="Solver time limit in seconds."),
         compare: bool = typer.Option(False, "--compare", help="Also print every baseline's cost beside the plan."),
         out: str = typer.Option(None, "--out", help="Also write the Plan JSON to this file."),
         splits: bool = typer.Option(True, "--splits/--no-splits",
                                     help="Measure edge/cloud split points (profiler + partitioner) for zoo models "
                                          "used by edge sources that have none in the spec.")) -> None:
    """Choose data version, model version, site and instance type per service at minimum cost per hour."""
    from rich.console import Console

    from isthmus.optimizer.planner import GeoPlanner

    if method not in ("auto", "milp", "lp-round"):
        _exit(f"--method {method!r} is not one of auto, milp, lp-round. To fix: pass --method auto")
    if not time_limit_s > 0:
        _exit(f"--time-limit-s is {time_limit_s:g}, must be > 0. To fix: give the solver's time limit in seconds, "
              "e.g. --time-limit-s 60")
    loaded = _load(spec)
    if splits and _needs_splits(loaded):
        from isthmus.partition import fill_splits

        Console(stderr=True).print("measuring edge/cloud split points of zoo models (cached after the first run)")
        loaded = fill_splits(loaded)
    planner = GeoPlanner(loaded, method=method, time_limit_s=time_limit_s, latency_headroom=0.0)
    try:
        result = planner.solve()
    except SpecError as err:
        Console(stderr=True).print(f"[red]infeasible: {err}[/red]", highlight=False)
        raise typer.Exit(2)
    text = result.model_dump_json(indent=2)
    if out:
        with open(out, "w") as fh:
            fh.write(text)
    if as_json:
        typer.echo(text)
        return
    _print_plan(result)
    if compare:
        from isthmus.optimizer.baselines import baseline_costs

        _print_compare(result.cost_per_hour, baseline_costs(loaded, planner.table))


def _needs_splits(spec) -> bool:
    """An edge-site source feeds a zoo model none of whose versions has split points yet."""
    edge = {e.name for e in spec.edge_sites}
    return any(spec.source(s.source).location in edge and spec.model(s.model).zoo
               and not any(v.splits for v in spec.model(s.model).versions) for s in spec.services)


def _print_plan(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from isthmus.tables import print_table

    console = Console()
    routes = Table(title=f"Plan for {result.spec}: routes")
    splits = any(r.split is not None for r in result.routes)   # only edge sources split: no column otherwise
    for col in ("service", "fraction", "data", "model", "site / type", *["split/exit"] * splits, "latency ms",
                "accuracy"):
        routes.add_column(col)
    for r in result.routes:
        split = [] if not splits else ["-" if r.split is None else f"{r.split}/{r.exit if r.exit is not None else 'final'}"]
        routes.add_row(r.service, f"{r.fraction:.3f}", r.data_version, r.model_version,
                       f"{r.site} {r.instance_type}" if r.instance_type else r.site, *split, f"{r.latency_ms:.1f}",
                       f"{r.accuracy:.3f}")
    print_table(routes, console)
    inst = Table(title="Instances")
    for col in ("site", "instance type", "model version", "count"):
        inst.add_column(col)
    for i in result.instances:
        inst.add_row(i.site, i.instance_type, i.model_version, str(i.count))
    print_table(inst, console)
    svc = Table(title="Services")
    for col in ("service", "max latency ms", "accuracy"):
        svc.add_column(col)
    for s in result.services:
        svc.add_row(s.name, f"{s.latency_ms_max:.1f}", f"{s.accuracy:.4f}")
    print_table(svc, console)
    gap = (result.cost_per_hour / result.lower_bound_per_hour - 1) * 100 if result.lower_bound_per_hour > 0 else 0.0
    console.print(f"cost ${result.cost_per_hour:.3f}/h (compute ${result.compute_cost_per_hour:.3f}, egress "
                  f"${result.egress_cost_per_hour:.3f}); lower bound ${result.lower_bound_per_hour:.3f}/h "
                  f"(gap {gap:.2f}%); {result.solver.method} {result.solver.status} in {result.solver.seconds:.2f} s "
                  f"over {result.solver.routes} routes")


def _print_compare(cost: float, baselines: dict[str, float]) -> None:
    from rich.table import Table

    from isthmus.tables import print_table

    table = Table(title="Baselines against the plan")
    for col in ("policy", "$/h", "baseline / isthmus"):
        table.add_column(col)
    table.add_row("isthmus", f"{cost:.3f}", "1.00")
    for name, value in baselines.items():
        ratio = "infeasible" if value == float("inf") else f"{value / cost:.2f}" if cost > 0 else "-"
        table.add_row(name, "infeasible" if value == float("inf") else f"{value:.3f}", ratio)
    print_table(table)
