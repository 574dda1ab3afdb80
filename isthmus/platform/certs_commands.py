"""CLI: `isthmus certs init DIR`, `isthmus certs add-agent DIR ID`."""

from __future__ import annotations

from typing import List, Optional

import typer

__all__ = ["register"]

_certs = typer.Typer(help="Certificates and tokens for the control plane (a small CA, mTLS).",
                     no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(_certs, name="certs")


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[red]{message}[/red]", highlight=False)   # no hard wraps: copyable
    raise typer.Exit(2)


@_certs.command("init")
def init(directory: str = typer.Argument(..., help="Directory to write the CA, certificates and tokens."),
         agent: Optional[List[str]] = typer.Option(None, "--agent", help="Agent id (repeatable; default agent-1)."),
         host: Optional[List[str]] = typer.Option(None, "--host",
                                                  help="Server host name or IP (repeatable; default localhost, 127.0.0.1)."),
         days: int = typer.Option(365, help="Validity of server and agent certificates in days."),
         force: bool = typer.Option(False, help="Replace an existing CA.")) -> None:
    """Create a CA, a server certificate and one client certificate + bearer token per agent."""
    from rich.console import Console

    from isthmus.platform.certs import CertError, init_certs

    try:
        paths = init_certs(directory, agents=agent or ["agent-1"], hosts=host or ["localhost", "127.0.0.1"],
                           days=days, force=force)
    except (CertError, OSError) as err:
        _fail(str(err))
        return
    out = Console()
    out.print(f"[green]CA[/green] {paths.ca_cert}\n[green]server[/green] {paths.server_cert} "
              f"(key {paths.server_key})\n[green]tokens[/green] {paths.tokens} (sha256 hashes only)")
    for agent_id, path in paths.agents.items():
        out.print(f"[green]agent[/green] {agent_id}: {path}/agent.pem, agent.key, token")


@_certs.command("add-agent")
def add_agent_cmd(directory: str = typer.Argument(..., help="Directory written by `isthmus certs init`."),
                  agent_id: str = typer.Argument(..., help="New agent id (the certificate CN)."),
                  days: int = typer.Option(365, help="Validity in days."),
                  force: bool = typer.Option(False, "--force", help="Rotate the certificate and token of an agent "
                                             "that already has them (the deployed agent then needs the new files).")
                  ) -> None:
    """Issue a client certificate and a bearer token for one more agent."""
    from rich.console import Console

    from isthmus.platform.certs import CertError, add_agent

    try:
        path = add_agent(directory, agent_id, days=days, force=force)
    except (CertError, OSError) as err:
        _fail(str(err))
        return
    Console().print(f"[green]agent[/green] {agent_id}: {path}/agent.pem, agent.key, token")
