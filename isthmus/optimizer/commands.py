"""CLI commands of the geo planner: `isthmus validate`, `isthmus plan`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)


def validate(spec: str = typer.Argument(..., help="Path to a spec YAML file.")) -> None:
    """Check a spec; print every problem with its YAML path and how to fix it (exit code 2)."""
    from rich.console import Console

    from isthmus.spec import SpecError, load_spec

    try:
        loaded = load_spec(spec)
    except SpecError as err:
        Console(stderr=True).print(f"[red]{err}[/red]", highlight=False)
        raise typer.Exit(2)
    Console().print(f"[green]{spec}: valid[/green] ({len(loaded.services)} services, "
                    f"{len(loaded.regions)} regions, {len(loaded.edge_sites)} edge sites)")
