"""CLI: `isthmus models list`, `isthmus models versions MODEL`, `isthmus models export MODEL`."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

import typer

models_app = typer.Typer(help="The model zoo and its versions (fp32, int8, low-rank, distilled, early exits).",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn a ValueError (bad model, version, size, device; SpecError is one) into its message on
    stderr and exit code 2."""
    try:
        yield
    except ValueError as err:
        from rich.console import Console

        Console(stderr=True).print(f"[red]{err}[/red]", highlight=False)
        raise typer.Exit(2) from None


@models_app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """The zoo: graph type, layers, parameters and input of each model (full and small size)."""
    from rich.table import Table

    from isthmus.models.versions import version_names
    from isthmus.tables import print_table
    from isthmus.models.zoo import CHAIN_NAMES, ZOO_NAMES, build, example_input

    rows = []
    for name in ZOO_NAMES:
        row = {"name": name, "graph": "chain" if name in CHAIN_NAMES else "DAG", "versions": version_names(name)}
        for size in ("full", "small"):
            model = build(name, size)
            row[f"params_{size}"] = sum(p.numel() for p in model.parameters())
            row[f"input_{size}"] = list(example_input(name, size).shape)
            if size == "full":
                row["layers"] = len(model.layers) if hasattr(model, "layers") else None
            del model
        rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = Table(title="Isthmus model zoo")
    for col in ("model", "graph", "chain layers", "full params", "full input", "small params", "versions"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["graph"], str(r["layers"] or "-"), f"{r['params_full'] / 1e6:.1f} M",
                      "x".join(map(str, r["input_full"][1:])), f"{r['params_small'] / 1e3:.0f} k",
                      ", ".join(r["versions"]))
    print_table(table)


@contextlib.contextmanager
def _progress(what: str, total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar of `total` steps on stderr; the block gets `step(line)`, which prints `line` (each step
    stays readable in a log) and advances the bar."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task, done = bar.add_task(what, total=total), 0

        def step(line: str) -> None:
            nonlocal done
            done += 1
            bar.console.print(f"{line} ({done}/{total})", highlight=False)
            bar.advance(task)

        yield step


@models_app.command("versions")
def versions(model: str = typer.Argument(..., help="Zoo model name (see `isthmus models list`)."),
             as_json: bool = typer.Option(False, "--json", help="Print Spec v1 `versions` entries as JSON."),
             repeats: int = typer.Option(10, min=1, help="Timed full-size forwards per version (median)."),
             refresh: bool = typer.Option(False, help="Re-measure instead of using the cache.")) -> None:
    """Accuracy (digits) and CPU latency (full size) of every version; trains and caches on first use."""
    from rich.table import Table

    from isthmus.models.runtime import quiet_torch
    from isthmus.models.versions import MAX_DROP, version_names, version_table
    from isthmus.tables import print_table

    with cli_errors():
        names = version_names(model)
    with _progress(f"{model} versions (training, compressing, timing; cached after the first run)",
                   len(names)) as measured, quiet_torch():
        rows = version_table(model, repeats=repeats, refresh=refresh, progress=lambda row: measured(
            f"{model} {row['name']}: accuracy {row['accuracy']:.3f}, {row['latency_ms']['cpu']:.1f} ms"))
    if as_json:
        print(json.dumps([{"name": r["name"], "accuracy": r["accuracy"], "latency_ms": r["latency_ms"]}
                          for r in rows], indent=1))
        return
    table = Table(title=f"{model} versions: accuracy on digits (small), latency on this CPU (full size, "
                        f"{rows[0]['threads']} thread)")
    for col in ("version", "accuracy", "drop vs fp32", "stated max drop", "latency ms", "speedup", "small size"):
        table.add_column(col, justify="right" if col != "version" else "left")
    for r in rows:
        bound = MAX_DROP.get(r["name"])
        table.add_row(r["name"], f"{r['accuracy']:.3f}", f"{r['accuracy_drop']:+.3f}",
                      f"{bound:.2f}" if bound is not None else "-", f"{r['latency_ms']['cpu']:.1f}",
                      f"{r['speedup']:.2f}x", f"{r['small_bytes'] / 1024:.0f} KiB")
    print_table(table)


@models_app.command("export")
def export(model: str = typer.Argument(..., help="Zoo model name."),
           version: str = typer.Option("fp32", help="Version (see `isthmus models versions MODEL`)."),
           size: str = typer.Option("small", help="'small' (digits-trained weights) or 'full'."),
           out: str = typer.Option("exported", help="Output directory.")) -> None:
    """Write a version as a TorchScript file (what Triton and the edge agent load)."""
    from isthmus.models.export import export_version
    from isthmus.models.versions import version_names

    with cli_errors():
        if version not in version_names(model):
            raise ValueError(f"unknown version {version!r} of {model!r}. To fix: use one of {version_names(model)}")
        if size not in ("full", "small"):
            raise ValueError(f"size {size!r} is not 'full' or 'small'. To fix: pass --size small or --size full")
    from isthmus.models.runtime import quiet_torch

    with quiet_torch():
        print(export_version(model, version, size, out))
