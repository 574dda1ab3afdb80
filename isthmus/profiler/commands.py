"""CLI: `isthmus profile MODEL [--version V] [--size S] [--device KIND] [--json]`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)


def _device(kind: str, spec_path: str | None):
    """The declared Device of `kind`: from the spec's `devices` if given, else the registry of device kinds; None
    for this machine's CPU (`HOST_KINDS`: the profile as measured)."""
    from isthmus.profiler.devices import DEVICE_KINDS, HOST_KINDS
    from isthmus.spec import Device, load_spec

    if kind in HOST_KINDS:
        return None
    devices = dict(load_spec(spec_path).devices) if spec_path else {
        k: Device(**v) for k, v in DEVICE_KINDS.items()}
    if kind not in devices:
        where = f"the devices of {spec_path}" if spec_path else "the built-in kinds (or pass --spec)"
        raise ValueError(f"unknown device kind {kind!r}. To fix: use one of {sorted(devices)} from {where}")
    return devices[kind]


def profile(model: str = typer.Argument(..., help="Zoo model name (see `isthmus models list`)."),
            version: str = typer.Option("fp32", help="Model version (see `isthmus models versions MODEL`)."),
            size: str = typer.Option("full", help="'full' (realistic size) or 'small' (digits size)."),
            device: str = typer.Option("local-cpu", help="Device kind to scale the local profile to "
                                       "(latency / speed_factor): a key of the spec's `devices` or a built-in kind."),
            spec: str = typer.Option(None, help="Spec YAML whose `devices` declare --device."),
            repeats: int = typer.Option(20, min=1, help="Timed calls per layer (median)."),
            refresh: bool = typer.Option(False, help="Re-measure instead of using the cached profile."),
            as_json: bool = typer.Option(False, "--json", help="Print the profile as JSON.")) -> None:
    """Per-layer latency, output bytes and FLOPs of a zoo model on this CPU (cached), optionally scaled."""
    from rich.console import Console
    from rich.table import Table

    from isthmus.models.commands import cli_errors
    from isthmus.models.zoo import ZOO_NAMES
    from isthmus.tables import print_table

    with cli_errors():
        if model not in ZOO_NAMES:
            raise ValueError(f"unknown zoo model {model!r}. To fix: use one of {list(ZOO_NAMES)}")
        if size not in ("full", "small"):
            raise ValueError(f"--size {size!r} is not 'full' or 'small'. To fix: pass --size full or --size small")
        target = _device(device, spec)
        from isthmus.models.runtime import quiet_torch
        from isthmus.profiler import profile_model, speed_factor

        with quiet_torch():
            prof = profile_model(model, version, size, repeats=repeats, progress=not as_json, refresh=refresh)
    factor = 1.0
    if target is not None:
        factor = speed_factor(target)
        prof = prof.scaled(factor, device=device)
    if as_json:
        print(prof.to_json())
        return
    table = Table(title=f"{model}/{version} ({size}) on {prof.device}: {prof.latency_ms:.2f} ms, "
                        f"{prof.threads} thread(s)" + (f", speed factor {factor:.3g}" if target else ""))
    for col in ("layer", "kind", "latency ms", "out KiB", "MFLOPs"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for layer in prof.layers:
        table.add_row(layer.name, layer.kind, f"{layer.latency_ms:.3f}", f"{layer.out_bytes / 1024:.1f}",
                      f"{layer.flops / 1e6:.2f}")
    print_table(table)
    for e in prof.exits:
        acc = "-" if e.accuracy is None else f"{e.accuracy:.3f}"
        branch_ms = sum(x.latency_ms for x in e.layers)
        Console().print(f"exit after layer {e.after}: branch {branch_ms:.3f} ms, accuracy {acc}")
