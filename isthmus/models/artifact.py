"""Model versions from TorchScript files (`artifact:` in a spec): check, load and measure them.

`check_artifacts(spec)` lists every artifact that cannot run, as (YAML path, message) pairs like
`SpecError`'s; `fill_artifact_latencies(spec)` measures each artifact version on this CPU and scales
the result to the spec's device kinds, as the zoo profiles are scaled (`isthmus.profiler.speed_factor`):

    latency_ms(d)   = local latency at batch 1 / speed_factor(d)
    capacity_rps(d) = max_b 1000·b / local latency at batch b  · speed_factor(d)

torch is imported inside the functions, so importing this module (the CLI) stays light.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from isthmus.spec import Artifact, Spec

__all__ = ["BATCHES", "ArtifactTiming", "check_artifacts", "forward_problem", "load_artifact", "measure_artifact",
           "fill_artifact_latencies"]

BATCHES = (1, 2, 4, 8, 16)
"""Batch sizes of the capacity sweep; it stops after the first batch whose call takes over `max_call_ms`."""

_HOW_TO_SAVE = ("To fix: save the model as TorchScript: torch.jit.save(torch.jit.script(model), path) "
                "(or torch.jit.trace(model, example) for a model that does not script)")


def _error_line(err: BaseException) -> str:
    """The line of a torch error that says what went wrong: the last `XError: ...` line of a TorchScript
    interpreter traceback, else the first line (never the whole traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "Traceback of TorchScript" in str(err):
        lines = [line for line in lines if re.match(r"^[\w.]*(Error|Exception): ", line)][-1:] or lines
    return (lines[0] if lines else type(err).__name__)[:240]


def load_artifact(artifact: Artifact) -> Any:
    """The artifact's TorchScript module (torch.jit.ScriptModule) on the CPU, in eval() mode.

    Raises ValueError (saying how to fix it) when the file is missing or is not TorchScript."""
    import os

    import torch

    if not os.path.isfile(artifact.path):
        raise ValueError(f"file {artifact.path} does not exist. To fix: check the path (in a spec: relative to the "
                         "spec file's folder, or absolute)")
    try:
        return torch.jit.load(artifact.path, map_location="cpu").eval()
    except Exception as err:  # a text file, a torch.save state dict or pickled module, a truncated file
        raise ValueError(f"{artifact.path} is not a TorchScript file ({_error_line(err).split('. ')[0]}). "
                         f"{_HOW_TO_SAVE}") from None


def _zeros(artifact: Artifact, batch: int) -> Any:
    import torch

    return torch.zeros((batch, *artifact.input_shape), dtype=getattr(torch, artifact.dtype))


_SPEC_SHAPE_FIX = ("To fix: set input_shape to the shape of one sample without the batch dimension (and dtype to "
                   "the model's input dtype), or point path at the model they describe")


def forward_problem(module: Any, artifact: Artifact, model: str, fix: str = _SPEC_SHAPE_FIX) -> str | None:
    """Why `module` (named `model` in the message) rejects a zeros batch of 2 samples of the artifact's shape
    and dtype, in one line ending with `fix`; None when it runs."""
    import torch

    x = _zeros(artifact, 2)
    try:
        with torch.inference_mode():
            module(x)
    except Exception as err:
        return (f"{model} rejects a zeros batch of shape {list(x.shape)} ({artifact.dtype}): {_error_line(err)}. "
                f"{fix}")
    return None


def check_artifacts(spec: Spec) -> list[tuple[str, str]]:
    """(YAML path, message) for every artifact that is missing, is not TorchScript, or rejects a zeros batch
    of shape (2, *input_shape) of its dtype. Empty when all run (and without importing torch when the spec
    has no artifact)."""
    problems = []
    for path, _, version in spec.artifact_versions():
        try:
            module = load_artifact(version.artifact)
        except ValueError as err:
            problems.append((f"{path}.artifact.path", str(err)))
            continue
        problem = forward_problem(module, version.artifact, f"the model at {path}.artifact.path "
                                  f"({version.artifact.path})")
        if problem:
            problems.append((f"{path}.artifact.input_shape", problem))
    return problems


@dataclass(frozen=True)
class ArtifactTiming:
    """Median ms of one forward pass on this CPU per batch size measured."""

    batch_ms: dict[int, float]

    @property
    def latency_ms(self) -> float:
        """Per-request latency: the batch-1 call."""
        return self.batch_ms[1]

    @property
    def best_batch(self) -> int:
        """The batch size with the most requests per second."""
        return max(self.batch_ms, key=lambda b: b / self.batch_ms[b])

    @property
    def capacity_rps(self) -> float:
        """Sustained requests/s of one instance: max over batches b of 1000·b / latency_ms(b)."""
        return 1000.0 * self.best_batch / self.batch_ms[self.best_batch]


def measure_artifact(artifact: Artifact, budget_ms: float = 500.0, max_call_ms: float = 1000.0,
                     threads: int | None = None) -> ArtifactTiming:
    """Time the whole model's forward pass on zeros at each of `BATCHES` (median, after warm-up calls),
    with `threads` torch threads (default `$ISTHMUS_THREADS`, else 1). Each batch gets about `budget_ms` of
    timed calls (3 to 25); the sweep stops after a batch whose call takes over `max_call_ms`."""
    import torch

    from isthmus.models.runtime import median_ms, torch_threads

    module = load_artifact(artifact)
    batch_ms: dict[int, float] = {}
    with torch_threads(threads), torch.inference_mode():
        for b in BATCHES:
            call = lambda x=_zeros(artifact, b): module(x)  # noqa: E731
            probe_ms = median_ms(call, repeats=1, warmup=2)  # after warm-up: TorchScript optimises early calls
            repeats = int(min(25, max(3, budget_ms / max(probe_ms, 1e-3))))
            batch_ms[b] = probe_ms if probe_ms > max_call_ms else median_ms(call, repeats, warmup=0)
            if batch_ms[b] > max_call_ms:
                break
    return ArtifactTiming(batch_ms)


def fill_artifact_latencies(spec: Spec, progress: bool = False) -> Spec:
    """A copy of `spec` where every artifact version gets latency_ms / capacity_rps for each device kind the
    spec's instance types or edge sites use and the version lacks: measured here, scaled by speed_factor.
    Given values are kept. `progress` prints one line per version (Rich, to stderr)."""
    from rich.console import Console

    from isthmus.profiler.devices import speed_factor

    out = spec.model_copy(deep=True)
    kinds = sorted({it.device for r in out.regions for it in r.instance_types} | {e.device for e in out.edge_sites})
    todo = []  # (model/version, version, device kinds it lacks)
    for _, model, version in out.artifact_versions():
        missing = [k for k in kinds if k not in version.latency_ms]
        if missing:
            todo.append((f"{model.name}/{version.name}", version, missing))
    factors = {k: speed_factor(out.devices[k]) for k in kinds} if todo else {}
    console = Console(stderr=True, quiet=not progress)
    for name, version, missing in todo:
        with console.status(f"measuring {name} ({version.artifact.path}) on this CPU"):
            timing = measure_artifact(version.artifact)
        for k in missing:
            version.latency_ms[k] = timing.latency_ms / factors[k]
            version.capacity_rps.setdefault(k, timing.capacity_rps * factors[k])
        console.print(f"{name}: {timing.latency_ms:.3f} ms at batch 1, {timing.capacity_rps:.0f} rps at batch "
                      f"{timing.best_batch} on this CPU; scaled to {', '.join(missing)}", highlight=False,
                      soft_wrap=True)
    return out
