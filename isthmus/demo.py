"""`isthmus demo`: the main job of `make demo`.

Until the runtime demo of issue #5 lands, it plans every spec in `examples/` with the geo planner
and prints each plan beside the baselines' costs, writing the Plan JSONs into `--out DIR`.
"""

from __future__ import annotations

from pathlib import Path

import typer

_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(examples: Path = typer.Option(_EXAMPLES, help="Folder of spec YAML files to plan."),
         out: Path = typer.Option(Path("demo-out"), help="Where the Plan JSON files are written."),
         time_limit_s: float = typer.Option(60.0, "--time-limit-s", help="Solver time limit per spec.")) -> None:
    """Plan every example spec and compare the plan's cost with the baselines'."""
    from rich.console import Console

    from isthmus.optimizer.baselines import baseline_costs
    from isthmus.optimizer.commands import _print_compare, _print_plan
    from isthmus.optimizer.planner import GeoPlanner
    from isthmus.spec import SpecError, load_spec

    console = Console()
    specs = sorted(examples.glob("*.yaml"))
    if not specs:
        console.print(f"[red]no *.yaml specs in {examples}. To fix: pass --examples DIR[/red]")
        raise typer.Exit(2)
    out.mkdir(parents=True, exist_ok=True)
    for path in specs:
        console.rule(f"[bold]{path.name}")
        try:
            spec = load_spec(path)
            planner = GeoPlanner(spec, time_limit_s=time_limit_s, latency_headroom=0.0)
            plan = planner.solve()
        except SpecError as err:
            console.print(f"[red]{err}[/red]", highlight=False)
            raise typer.Exit(2)
        _print_plan(plan)
        _print_compare(plan.cost_per_hour, baseline_costs(spec, planner.table))
        (out / f"{path.stem}.plan.json").write_text(plan.model_dump_json(indent=2))
    console.print(f"plans written to {out}/")
