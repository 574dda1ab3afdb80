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
    from rich.markup import escape

    Console(stderr=True).print(f"[red]{escape(message)}[/red]", highlight=False, soft_wrap=True)
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
    seconds: float = typer.Option(0.0, "--seconds", help="Stop after this long (0: until Ctrl-C or SIGTERM)."),
) -> None:
    """Start a real tritonserver (Python backend, dynamic batching) for one TorchScript file; print its URLs and
    tensors. The model is loaded and run once on a zeros batch of --input-shape first, so a file that is not
    TorchScript or a wrong shape fails here in one line. Ctrl-C or SIGTERM stops Triton and its stubs."""
    from pydantic import ValidationError

    from isthmus.platform.signals import sigterm_as_interrupt
    from isthmus.platform.triton import (INPUT_NAME, OUTPUT_NAME, TritonError, TritonModel, TritonServer,
                                         measure_output_shape, write_model_repository)

    shape = _shape(input_shape)
    try:
        model = TritonModel(name=name, torchscript_path=torchscript, input_shape=shape, dtype=dtype,
                            max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                            dynamic_batching=not no_batching)
    except ValidationError as err:
        raise _fail("; ".join(f"{e['loc'][0]} = {e.get('input')!r}: {e['msg']}" if e["loc"] else e["msg"]
                              for e in err.errors())) from None
    _check_runs(torchscript, shape, dtype)
    model = model.model_copy(update={"output_shape": measure_output_shape(model)})
    repo = write_model_repository(Path(tempfile.mkdtemp(prefix="isthmus-triton-serve-")) / "repo", [model])
    server = TritonServer(repo, grpc_port=grpc_port or None)
    with sigterm_as_interrupt():
        try:
            server.start(timeout_s=180)
            print(f"grpc {server.grpc_url}  http {server.http_url}  metrics {server.metrics_url}  model {name!r}\n"
                  f"input {INPUT_NAME} {dtype} {[-1, *shape]}  output {OUTPUT_NAME} float32 "
                  f"{[-1, *model.output_shape]}  (-1: the batch dimension)", flush=True)
            deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
            while server.is_alive() and time.monotonic() < deadline:
                time.sleep(0.5)
        except TritonError as err:
            raise _fail(str(err)) from None
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()


def _check_runs(torchscript: Path, shape: tuple[int, ...], dtype: str) -> None:
    """Load the file as `isthmus validate` loads an artifact and run it once on zeros of (2, *shape); exit 2 with
    one line and a fix when it is not TorchScript or rejects the shape."""
    from isthmus.models.artifact import forward_problem, load_artifact
    from isthmus.spec import Artifact

    artifact = Artifact(path=str(torchscript), input_shape=list(shape), dtype=dtype)
    try:
        module = load_artifact(artifact)
    except ValueError as err:
        raise _fail(str(err)) from None
    problem = forward_problem(module, artifact, str(torchscript),
                              fix="To fix: give --input-shape as the shape of one sample without the batch dimension "
                                  "(and --dtype as the model's input dtype)")
    if problem:
        raise _fail(problem)
