"""The `isthmus` command line. Each area registers its own commands (see `_COMMAND_MODULES`).

A command module exposes `register(app: typer.Typer) -> None` and keeps heavy imports
(ray, torch, cvxpy, tritonclient) inside the command functions so `isthmus --help` stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="isthmus",
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
