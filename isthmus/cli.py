"""The `isthmus` command line. Each area registers its own commands (see `_COMMAND_MODULES`).

A command module exposes `register(app: typer.Typer) -> None` and keeps heavy imports
(ray, torch, cvxpy, tritonclient) inside the command functions so `isthmus --help` stays fast.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from pathlib import Path

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

# `isthmus --help` lists the commands by workflow, in this order (each area's register() adds them).
PANELS = {
    "Plan": ("validate", "plan", "fill-latencies"),
    "Models": ("models", "profile", "partition", "place", "configure"),
    "Run": ("deploy", "status", "down", "demo", "up", "serve-config", "triton-serve", "trace"),
    "Edge & security": ("certs", "control-plane", "inference-server"),
    "Fleet": ("fleet",),
}
_ORDER = [name for names in PANELS.values() for name in names]
_TYPE_NAMES = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH"}


class _Root(TyperGroup):
    """The `isthmus` group: commands in the PANELS, and help that reads well (see `_tidy`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name, command in self.commands.items():
            command.rich_help_panel = next((panel for panel, names in PANELS.items() if name in names), "Other")
            _tidy(command)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return sorted(self.commands, key=lambda name: _ORDER.index(name) if name in _ORDER else len(_ORDER))

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)   # with the completion options, added after __init__
        for param in params:
            _readable_type(param)
        return params


def _tidy(command) -> None:
    """Readable value types (`_readable_type`) and a one-line summary in the command list (typer keeps
    the docstring's line breaks there), for `command` and its subcommands."""
    for param in [*command.params, command.get_help_option(typer.Context(command))]:
        _readable_type(param)
    if command.help and not command.short_help:
        command.short_help = " ".join(inspect.cleandoc(command.help).split("\n\n")[0].split())
    for sub in getattr(command, "commands", {}).values():
        _tidy(sub)


def _readable_type(param) -> None:
    """Typer 0.29 labels every value with its Python annotation (`--json <bool>`, `--edge <list[str]>`):
    flags get no label, other values click's names (TEXT, INTEGER, FLOAT, PATH)."""
    if isinstance(param, TyperOption) and param.metavar is None:
        param.metavar = "" if param.is_flag else _type_name(param)
    elif isinstance(param, TyperArgument) and param.metavar is None:
        param.metavar = param.name.upper()
        name = _type_name(param)
        if name is not None:   # an argument's type label ignores its metavar
            param.display_type_rich = lambda ctx, name=name: name


def _type_name(param) -> str | None:
    """TEXT / INTEGER / FLOAT / PATH for a value of that type (or a list of them); None: keep typer's label."""
    annotation = param.type_descriptor.annotation
    element = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
    return _TYPE_NAMES.get(element)


app = typer.Typer(
    name="isthmus",
    cls=_Root,
    help="Plan and run DNN inference across cloud regions and edge devices at the lowest cost "
    "that meets every service's latency SLO and accuracy floor.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

_COMMAND_MODULES = [
    "isthmus.platform.certs_commands",
    "isthmus.platform.control_plane_commands",
    "isthmus.platform.fleet_commands",
    "isthmus.optimizer.commands",
    "isthmus.demo",
    "isthmus.partition.commands",
    "isthmus.actors.commands",
    "isthmus.platform.commands",
    "isthmus.platform.deploy_commands",
    "isthmus.models.commands",
    "isthmus.profiler.commands",
    "isthmus.placement.commands",
]



@app.callback()
def _root() -> None:
    """Isthmus: one spec in, the cheapest plan that meets every SLO out, then run it."""


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
