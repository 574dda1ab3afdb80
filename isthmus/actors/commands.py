"""CLI: `isthmus triton-serve MODEL.pt --input-shape 1,8,8` runs one TorchScript file on a real Triton."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("triton-serve")(triton_serve)


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(2)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise _fail(f"--input-shape {text!r} is not a comma-separated list of positive ints. "
                    "To fix: give one sample's shape without the batch dimension, e.g. --input-shape 1,8,8")
    return shape


def triton_serve(
    torchscript: Path = typer.Argument(..., help="TorchScript file (torch.jit.save)."),
    input_shape: str = typer.Option(..., "--input-shape", help="One sample's shape, no batch dim: 1,8,8."),
    name: str = typer.Option("model", help="Triton model name."),
    dtype: str = typer.Option("float32", help="Input dtype."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", help="Largest dynamic batch."),
    max_queue_delay_us: int = typer.Option(1000, "--max-queue-delay-us", help="Longest wait to fill a batch."),
    no_batching: bool = typer.Option(False, "--no-batching", help="Serve every request on its own."),
    grpc_port: int = typer.Option(0, "--grpc-port", help="gRPC port on 127.0.0.1 (0: a free one)."),
    seconds: float = typer.Option(0.0, "--seconds", help="Stop after this long (0: until Ctrl-C)."),
) -> None:
    """Start a real tritonserver (Python backend, dynamic batching) for one TorchScript file; print its URLs."""
    from pydantic import ValidationError

    from isthmus.platform.triton import TritonError, TritonModel, TritonServer, write_model_repository

    shape = _shape(input_shape)
    try:
        model = TritonModel(name=name, torchscript_path=torchscript, input_shape=shape, dtype=dtype,
                            max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                            dynamic_batching=not no_batching)
        repo = write_model_repository(Path(tempfile.mkdtemp(prefix="isthmus-triton-serve-")) / "repo", [model])
    except ValidationError as err:
        raise _fail("; ".join(f"{e['loc'][0]} = {e.get('input')!r}: {e['msg']}" if e["loc"] else e["msg"]
                              for e in err.errors())) from None
    except (ValueError, RuntimeError) as err:  # missing file, or a file torch cannot load
        raise _fail(f"{torchscript}: {err}") from None
    server = TritonServer(repo, grpc_port=grpc_port or None)
    try:
        server.start(timeout_s=180)
    except TritonError as err:
        raise _fail(str(err)) from None
    print(f"grpc {server.grpc_url}  http {server.http_url}  metrics {server.metrics_url}  model {name!r}", flush=True)
    try:
        deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
        while server.is_alive() and time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
