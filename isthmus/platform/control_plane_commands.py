"""CLI: `isthmus control-plane` and `isthmus inference-server`, the two servers edge agents talk to.

    isthmus control-plane --certs certs --assignments plan-assignments.json --port 50051
    isthmus inference-server --tail alexnet_exits:7:-1=tail.pt --certs certs --port 50052

With `--certs` both servers run mTLS and require each agent's bearer token (certs/tokens.json).

The assignments file maps agent ids or site names to assignments; partition paths are relative
to the file, which is re-read (and pushed to agents) whenever it changes:

    {"cam-1": {"model": "alexnet_exits", "split": 7, "exit": -1, "head": "parts/head.pt",
               "local_exits": {"7": "parts/exit7.pt"}, "inference_target": "10.0.0.5:50052",
               "inference_tls": true}}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from isthmus.platform.certs_commands import _fail  # one error printer for both command modules

__all__ = ["load_assignments", "parse_tail_spec", "register"]


def register(app: typer.Typer) -> None:
    app.command("control-plane")(control_plane)
    app.command("inference-server")(inference_server)


class _InputError(ValueError):
    pass


def load_assignments(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read an assignments JSON file; partition paths become bytes. `_InputError` names the bad entry."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except OSError as err:
        raise _InputError(f"assignments file {p} cannot be read ({err.strerror}). To fix: pass an existing file.") \
            from None
    except json.JSONDecodeError as err:
        raise _InputError(f"assignments file {p} is not JSON (line {err.lineno}: {err.msg}). "
                          "To fix: check the syntax.") from None
    if not isinstance(raw, dict):
        raise _InputError(f"assignments file {p} must map agent ids or sites to assignments. "
                          "To fix: {\"cam-1\": {\"model\": ..., \"split\": ..., ...}}.")

    def read(key: str, field: str, rel: Any) -> bytes:
        q = p.parent / str(rel)
        try:
            return q.read_bytes()
        except OSError as err:
            raise _InputError(f"assignments[{key!r}].{field} = {str(rel)!r}: {err.strerror}. "
                              "To fix: give a TorchScript file path relative to the assignments file.") from None

    out: dict[str, dict[str, Any]] = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict):
            raise _InputError(f"assignments[{key!r}] must be an object. To fix: see `isthmus control-plane --help`.")
        entry = dict(entry)
        if entry.get("head") is not None:
            entry["head"] = read(key, "head", entry["head"])
        exits = entry.get("local_exits") or {}
        if not isinstance(exits, dict):
            raise _InputError(f"assignments[{key!r}].local_exits must map exit numbers to files.")
        try:
            entry["local_exits"] = {int(e): read(key, f"local_exits[{e}]", f) for e, f in exits.items()}
        except ValueError:
            raise _InputError(f"assignments[{key!r}].local_exits keys must be exit numbers, got "
                              f"{sorted(exits)}.") from None
        out[key] = entry
    return out


def parse_tail_spec(spec: str) -> tuple[tuple[str, int, int], Path]:
    """`MODEL:SPLIT:EXIT=PATH` -> ((model, split, exit), path)."""
    key, sep, path = spec.partition("=")
    parts = key.rsplit(":", 2)
    try:
        if not sep or len(parts) != 3 or not parts[0]:
            raise ValueError
        return (parts[0], int(parts[1]), int(parts[2])), Path(path)
    except ValueError:
        raise _InputError(f"--tail {spec!r} is not MODEL:SPLIT:EXIT=PATH. To fix: e.g. "
                          "--tail alexnet_exits:7:-1=tail.pt (split 0 = the raw input, exit -1 = final).") from None


def _serve_forever(ready: str, stop_check: Any = None) -> None:
    """Print `ready` (Rich markup), then wait until Ctrl-C or SIGTERM; either returns, so the caller stops its
    server and exits 0. SIGTERM is caught before `ready` is printed, so whoever waits for it may send one."""
    from rich.console import Console

    from isthmus.platform.signals import sigterm_as_interrupt

    with sigterm_as_interrupt():
        try:
            Console().print(ready)
            while True:
                time.sleep(1.0)
                if stop_check is not None:
                    stop_check()
        except KeyboardInterrupt:
            pass


def control_plane(certs: str = typer.Option(..., help="Directory from `isthmus certs init`."),
                  assignments: str = typer.Option(..., help="Assignments JSON (re-read when it changes)."),
                  host: str = typer.Option("127.0.0.1", help="Address to bind."),
                  port: int = typer.Option(50051, help="Port to bind."),
                  partitions: Optional[str] = typer.Option(None, help="Directory to keep partitions in "
                                                                      "(default: memory)."),
                  max_request_bytes: int = typer.Option(1024 * 1024, help="Largest request accepted.")) -> None:
    """Serve the ControlPlane (mTLS + bearer tokens) for edge agents until Ctrl-C or SIGTERM."""
    import logging

    from pydantic import ValidationError
    from rich.console import Console

    from isthmus.platform.certs import CertError
    from isthmus.platform.control_plane import ControlPlaneServer, PartitionStore, PlanSource

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = PlanSource(PartitionStore(partitions))
    source = Path(assignments)

    def publish() -> None:
        plan.publish(load_assignments(source))

    try:
        publish()
        server = ControlPlaneServer(plan, certs_dir=certs, host=host, port=port,
                                    max_request_bytes=max_request_bytes).start()
    except (_InputError, CertError, OSError, ValueError, ValidationError) as err:
        _fail(str(err))
        return
    seen = [source.stat().st_mtime]

    def reload() -> None:
        try:
            mtime = source.stat().st_mtime
            if mtime != seen[0]:
                seen[0] = mtime
                publish()
                Console().print(f"plan version {plan.version} published from {source}")
        except (_InputError, OSError, ValueError) as err:  # keep serving the last good plan
            Console(stderr=True).print(f"[red]{err}[/red] (kept plan version {plan.version})", highlight=False)

    _serve_forever(f"[green]control plane[/green] on {server.address} (mTLS), plan version {plan.version}", reload)
    server.stop()


def inference_server(tail: List[str] = typer.Option(..., help="MODEL:SPLIT:EXIT=PATH of a TorchScript tail "
                                                              "(repeatable)."),
                     certs: Optional[str] = typer.Option(None, help="Serve mTLS with these certificates."),
                     host: str = typer.Option("127.0.0.1", help="Address to bind."),
                     port: int = typer.Option(50052, help="Port to bind."),
                     name: str = typer.Option("cloud", help="Reported as served_by."),
                     max_request_bytes: int = typer.Option(64 * 1024 * 1024, help="Largest request accepted.")
                     ) -> None:
    """Serve `isthmus.v1.Inference` over TorchScript tails until Ctrl-C or SIGTERM."""
    from isthmus.platform._grpc import ServerTLS
    from isthmus.platform.inference_server import InferenceServer

    try:
        tails = {}
        for spec in tail:
            key, path = parse_tail_spec(spec)
            try:
                tails[key] = path.read_bytes()
            except OSError as err:
                raise _InputError(f"--tail {spec!r}: {path}: {err.strerror}. To fix: give an existing file.") \
                    from None
        tls = ServerTLS.from_certs_dir(certs) if certs else None
        tokens = Path(certs) / "tokens.json" if certs else None  # mTLS + each agent's bearer token
        server = InferenceServer(tails, host=host, port=port, tls=tls, name=name, tokens_file=tokens,
                                 max_request_bytes=max_request_bytes).start()
    except (_InputError, OSError, ValueError, TypeError) as err:  # CertError is a ValueError
        _fail(str(err))
        return
    _serve_forever(f"[green]inference server[/green] {name} on {server.address} "
                   f"({'mTLS + bearer tokens' if certs else 'plaintext'}), tails {sorted(tails)}")
    server.stop()
