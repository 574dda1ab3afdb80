"""Triton launcher: a real `tritonserver` process (the binary shipped in nvidia-pytriton).

Triton's PyTorch backend is not shipped with nvidia-pytriton, its Python backend is, so every
model is a Python-backend model whose `model.py` loads a TorchScript file with `torch.jit.load`
and runs one forward pass per dynamic batch: the requests Triton groups (up to `max_batch_size`,
waiting at most `max_queue_delay_us` for a preferred size) are concatenated along dim 0, run
once, and split back, so a batch of b requests costs one call of `forward` on a (b, ...) tensor.

Every model has one input `INPUT0` (shape `(batch, *input_shape)`, dtype `dtype`) and one output
`OUTPUT0` (float32, shape `(batch, *output_shape)`; `output_shape` is measured by running the
TorchScript file once on zeros when it is not given).

    >>> repo = write_model_repository(tmp / "repo", [TritonModel(name="mlp", torchscript_path=p,
    ...                                                          input_shape=(64,))])
    >>> with TritonServer(repo) as server:          # start() waits until every model is ready
    ...     client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "TritonError",
    "TritonModel",
    "TritonServer",
    "find_tritonserver",
    "free_port",
    "measure_output_shape",
    "write_model_repository",
]

INPUT_NAME = "INPUT0"
OUTPUT_NAME = "OUTPUT0"

_DTYPES = {  # numpy dtype name -> Triton config type
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
}


class TritonError(RuntimeError):
    """Triton could not be found, started, or did not become ready."""


class TritonModel(BaseModel):
    """One TorchScript model (or partition) served by Triton's Python backend with dynamic batching."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Triton model name; letters, digits, '_', '-' and '.'.")
    torchscript_path: Path = Field(description="TorchScript file (torch.jit.save) run by the model.")
    input_shape: tuple[int, ...] = Field(description="Shape of one sample, without the batch dimension.")
    dtype: str = Field(default="float32", description=f"Input dtype, one of {sorted(_DTYPES)}.")
    output_shape: tuple[int, ...] | None = Field(
        default=None, description="Shape of one output sample; measured from the TorchScript file when None."
    )
    max_batch_size: int = Field(default=8, ge=1, description="Largest batch Triton forms.")
    preferred_batch_sizes: list[int] = Field(default_factory=list, description="Batch sizes Triton waits for.")
    max_queue_delay_us: int = Field(default=0, ge=0, description="Longest wait to fill a batch, microseconds.")
    instance_count: int = Field(default=1, ge=1, description="Model instances (each a Python stub process).")
    dynamic_batching: bool = Field(default=True, description="False serves every request on its own.")
    torch_threads: int = Field(default=1, ge=1, description="torch intra-op threads per instance.")
    emulate_latency_ms: float = Field(default=0.0, ge=0, description="Emulated device kind: a batch of b rows "
                                      "answers no sooner than max(emulate_latency_ms, b·emulate_ms_per_row) after "
                                      "it started (0: off).")
    emulate_ms_per_row: float = Field(default=0.0, ge=0, description="Emulated device kind: 1000 / capacity_rps.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "_-." for c in value) or value.startswith("."):
            raise ValueError(
                f"model name {value!r} is not a valid Triton model directory name. "
                "To fix: use letters, digits, '_', '-' or '.' (e.g. 'resnet_fp32')."
            )
        return value

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, value: str) -> str:
        if value not in _DTYPES:
            raise ValueError(f"dtype {value!r} is not supported. To fix: use one of {sorted(_DTYPES)}.")
        return value

    @model_validator(mode="after")
    def _check_batches(self) -> TritonModel:
        too_big = [b for b in self.preferred_batch_sizes if b < 1 or b > self.max_batch_size]
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes {too_big} of model {self.name!r} are outside 1..max_batch_size="
                f"{self.max_batch_size}. To fix: raise max_batch_size or drop those sizes."
            )
        return self


# --------------------------------------------------------------------------------------------
# model repository

_MODEL_PY = '''\
"""Generated by isthmus.platform.triton: runs a TorchScript file on each dynamic batch."""
import json
import os
import time

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("torch_threads", "1")))
        self.emulate_s = float(params.get("emulate_latency_ms", "0")) / 1000.0
        self.emulate_row_s = float(params.get("emulate_ms_per_row", "0")) / 1000.0
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.model = torch.jit.load(path, map_location="cpu").eval()

    def execute(self, requests):
        start_s = time.monotonic()
        arrays = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        batch = torch.from_numpy(np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0])
        with torch.inference_mode():
            out = self.model(batch)
        if isinstance(out, (tuple, list)):
            out = out[-1]
        out = out.float().contiguous().numpy()
        responses, start = [], 0
        for n in sizes:
            tensor = pb_utils.Tensor("OUTPUT0", out[start:start + n])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += n
        if self.emulate_s or self.emulate_row_s:  # an emulated device kind answers no sooner than it would
            time.sleep(max(0.0, start_s + max(self.emulate_s, self.emulate_row_s * len(out)) - time.monotonic()))
        return responses
'''


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _config_pbtxt(model: TritonModel, output_shape: tuple[int, ...]) -> str:
    lines = [
        f'name: "{model.name}"',
        'backend: "python"',
        f"max_batch_size: {model.max_batch_size}",
        f'input [{{ name: "{INPUT_NAME}" data_type: {_DTYPES[model.dtype]} dims: {_dims(model.input_shape)} }}]',
        f'output [{{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: {_dims(output_shape)} }}]',
        f"instance_group [{{ count: {model.instance_count} kind: KIND_CPU }}]",
        f'parameters {{ key: "torch_threads" value: {{ string_value: "{model.torch_threads}" }} }}',
    ]
    for key in ("emulate_latency_ms", "emulate_ms_per_row"):
        if getattr(model, key):
            lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{getattr(model, key)!r}" }} }}')
    if model.dynamic_batching:
        preferred = f" preferred_batch_size: {_dims(tuple(model.preferred_batch_sizes))}" if (
            model.preferred_batch_sizes
        ) else ""
        lines.append(f"dynamic_batching {{{preferred} max_queue_delay_microseconds: {model.max_queue_delay_us} }}")
    return "\n".join(lines) + "\n"


def measure_output_shape(model: TritonModel) -> tuple[int, ...]:
    """Run the TorchScript file once on a zero batch of 1 and return the output's per-sample shape."""
    import numpy as np
    import torch

    scripted = torch.jit.load(str(model.torchscript_path), map_location="cpu").eval()
    sample = torch.from_numpy(np.zeros((1, *model.input_shape), dtype=model.dtype))
    with torch.inference_mode():
        out = scripted(sample)
    if isinstance(out, (tuple, list)):
        out = out[-1]
    return tuple(int(d) for d in out.shape[1:])


def write_model_repository(repo: Path, models: list[TritonModel]) -> Path:
    """Write a Triton model repository: `repo/<name>/config.pbtxt` and `repo/<name>/1/{model.py,model.pt}`.

    Existing model directories of the same names are replaced; other entries are left alone.
    Returns `repo`.
    """
    repo = Path(repo)
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"models {duplicates} appear twice. To fix: give every TritonModel a unique name.")
    for model in models:
        if not model.torchscript_path.is_file():
            raise ValueError(
                f"torchscript_path {str(model.torchscript_path)!r} of model {model.name!r} does not exist. "
                "To fix: save the model with torch.jit.save(torch.jit.script(m), path) first."
            )
    repo.mkdir(parents=True, exist_ok=True)
    for model in models:
        output_shape = model.output_shape if model.output_shape is not None else measure_output_shape(model)
        model_dir = repo / model.name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / "1").mkdir(parents=True)
        shutil.copyfile(model.torchscript_path, model_dir / "1" / "model.pt")
        (model_dir / "1" / "model.py").write_text(_MODEL_PY)
        (model_dir / "config.pbtxt").write_text(_config_pbtxt(model, output_shape))
    return repo


# --------------------------------------------------------------------------------------------
# server process


def find_tritonserver() -> Path:
    """Path of the `tritonserver` binary shipped in nvidia-pytriton; raises TritonError if absent."""
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise TritonError("nvidia-pytriton is not installed. To fix: pip install nvidia-pytriton") from exc
    binary = Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonError(f"no tritonserver binary at {binary}. To fix: reinstall nvidia-pytriton.")
    return binary


# Ports handed out by free_port: above Ray's default worker ports (10002-19999), below Serve's direct-ingress HTTP
# ports (from 30000, taken in order) and the kernel's ephemeral range. Ports bound at once come from the first
# range, ports bound later by someone else (Serve's ingress and HAProxy listeners) from the second, so a port
# chosen for Serve cannot be handed to a Triton server before Serve binds it.
_FREE_PORTS = (20000, 29000)
_LATE_BOUND_PORTS = (29000, 30000)


def free_port(late_bound: bool = False) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, drawn at random from `_FREE_PORTS` (or, for a port that
    another process binds later, `_LATE_BOUND_PORTS`), below the kernel's ephemeral range.

    A port is often bound well after it is chosen (Serve's fallback proxy binds its port when Serve starts, minutes
    after the cluster picked it). Ports from the ephemeral range can meanwhile be taken by any of the port-0 binds
    Ray's processes make (seen in a fresh-clone CI run: "Failed to bind to address [::]:42431"); ports below it
    are only taken by explicit binds — and one of those, a Triton server's, took the port a deploy had chosen for
    Serve's ingress before HAProxy bound it (another fresh-clone run), hence the separate late-bound range. Where
    the range cannot be read or leaves no room, the OS picks (port 0)."""
    import random

    low, high = _LATE_BOUND_PORTS if late_bound else _FREE_PORTS
    try:
        high = min(high, int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        high = 0
    rng = random.SystemRandom()
    for _ in range(64 if high > low else 0):
        port = rng.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stub_dir(dist: Path) -> Path:
    """A backends directory whose Python-backend stub matches this interpreter (like pytriton does).

    The shipped `backends/python` has no stub; the stub for each Python version lives apart, so
    a private copy of `backends/` with the right stub is made once per (version, dist) in /tmp.
    """
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonError(
            f"nvidia-pytriton ships no Python-backend stub for Python {version} (looked at {stub}). "
            "To fix: use a Python version listed under pytriton/tritonserver/python_backend_stubs."
        )
    key = f"{version}-{hashlib.sha1(str(dist).encode()).hexdigest()[:10]}-{os.getuid()}"
    target = Path(tempfile.gettempdir()) / f"isthmus-triton-backends-{key}"
    if not (target / "python" / "triton_python_backend_stub").is_file():
        staging = Path(tempfile.mkdtemp(prefix="isthmus-triton-backends-"))
        shutil.copytree(dist / "backends", staging / "backends")
        shutil.copy2(stub, staging / "backends" / "python" / "triton_python_backend_stub")
        try:
            os.replace(staging / "backends", target)
        except OSError:  # another process won the race; its copy is identical
            pass
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _server_env() -> dict[str, str]:
    """Environment for tritonserver and its Python stub.

    The stub embeds libpython: `LD_LIBRARY_PATH` starts with this interpreter's LIBDIR (else it loads
    a mismatched system libpython and dies with an `_thread.RLock` error), then the libraries of
    nvidia-pytriton; `PATH` and `PYTHONPATH` point at this environment so the stub imports torch.
    """
    import pytriton

    env = os.environ.copy()
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = ":".join(parts)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    site_paths = [p for p in sys.path if p and Path(p).is_dir()]
    env["PYTHONPATH"] = ":".join(dict.fromkeys(site_paths + [env.get("PYTHONPATH", "")]).keys()).strip(":")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class TritonServer:
    """A `tritonserver` process serving `model_repository` on 127.0.0.1 (gRPC, HTTP, metrics).

    Ports default to free ones. `trace_config` maps Triton `--trace-config` keys to values, e.g.
    `{"mode": "opentelemetry", "rate": 1, "level": "TIMESTAMPS", "opentelemetry,url": "http://..."}`.
    The process runs in its own session, so `stop()` also ends its Python-backend stubs.
    """

    def __init__(
        self,
        model_repository: Path,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        trace_config: dict[str, Any] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.model_repository = Path(model_repository)
        if not self.model_repository.is_dir():
            raise ValueError(
                f"model_repository {str(self.model_repository)!r} is not a directory. "
                "To fix: create it with write_model_repository(repo, models)."
            )
        self._auto_ports = not (grpc_port or http_port or metrics_port)
        self._started_once = False
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.trace_config = dict(trace_config or {})
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="isthmus-triton-log-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / "tritonserver.log"
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._log_file: Any = None
        self._lock = threading.RLock()

    # urls -------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # lifecycle ---------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The tritonserver command line this server runs."""
        binary = find_tritonserver()
        backends = _stub_dir(binary.parent.parent)
        shm_prefix = f"isthmus-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        cmd = [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={binary.parent.parent / 'caches'}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            "--backend-config=python,shm-default-byte-size=4194304",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--grpc-address=127.0.0.1",
            "--http-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            "--metrics-config=summary_latencies=true",
            "--metrics-interval-ms=1000",
            "--model-control-mode=explicit",  # load_model/unload_model swap models while serving
            "--load-model=*",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--log-verbose=0",
            "--exit-timeout-secs=5",
        ]
        cmd += [f"--trace-config={key}={value}" for key, value in self.trace_config.items()]
        return cmd

    def start(self, timeout_s: float = 60) -> None:
        """Start the process and wait until the server and every model in the repository are ready.

        Ports picked by the OS may be taken by someone else before Triton binds them: on the first
        start with automatic ports, a bind failure is retried twice on fresh ports. Restarts keep ports.
        """
        for attempt in range(3):
            with self._lock:
                if self.is_alive():
                    return
                self._ready = False
                self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - owned until stop()
                self._proc = subprocess.Popen(
                    self.command(),
                    stdout=self._log_file,
                    stderr=subprocess.STDOUT,
                    env=_server_env(),
                    start_new_session=True,
                )
            try:
                self._wait_ready(timeout_s)
                self._started_once = True
                return
            except TritonError as err:
                port_clash = "address already in use" in str(err).lower()
                if not (port_clash and self._auto_ports and not self._started_once and attempt < 2):
                    raise
                self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()

    def _wait_ready(self, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient

        expected = sorted(p.name for p in self.model_repository.iterdir() if (p / "config.pbtxt").is_file())
        deadline = time.monotonic() + timeout_s
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            while time.monotonic() < deadline:
                if not self.is_alive():
                    code = self._proc.returncode if self._proc else None
                    self.stop()
                    raise TritonError(
                        f"tritonserver exited with code {code} before it was ready.\n{self.log_tail()}\n"
                        "To fix: read the log above (model.py errors, a busy port, or a bad config.pbtxt)."
                    )
                try:
                    if client.is_server_ready() and all(client.is_model_ready(name) for name in expected):
                        self._ready = True
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        self.stop()
        raise TritonError(
            f"tritonserver was not ready within timeout_s={timeout_s} (models {expected}).\n{self.log_tail()}\n"
            "To fix: raise timeout_s on a loaded machine, or read the log above."
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def is_alive(self) -> bool:
        """The process runs (it may still be loading models)."""
        return self._proc is not None and self._proc.poll() is None

    def is_ready(self) -> bool:
        """The process runs and `start()` saw the server and every model ready."""
        return self._ready and self.is_alive()

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM the process group (server + stubs), then SIGKILL what is left after `timeout_s`."""
        with self._lock:
            proc, self._proc, self._ready = self._proc, None, False
            if proc is not None:
                _kill_group(proc, timeout_s)
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def kill(self) -> None:
        """SIGKILL the server process only (a crash, for chaos tests); its stubs exit on their own."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()

    def restart(self, timeout_s: float = 60) -> None:
        """Stop (if running) and start again on the same ports; a successful restart counts in `restarts`."""
        with self._lock:
            self.stop()
            self.start(timeout_s)
            self.restarts += 1

    def load_model(self, name: str, timeout_s: float = 120.0) -> None:
        """(Re)load model `name` from the repository while the others keep serving.

        Triton keeps serving the old version of a reloaded model until the new one is ready.
        """
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            client.load_model(name, client_timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - InferenceServerException; re-raised with the log
            raise TritonError(f"loading model {name!r} failed: {exc}\n{self.log_tail()}\n"
                              "To fix: check the model's files in the repository and the log above.") from None
        finally:
            client.close()

    def unload_model(self, name: str) -> None:
        """Unload model `name` (requests in flight finish first)."""
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            client.unload_model(name)
        finally:
            client.close()

    def model_metrics(self, timeout_s: float = 2.0) -> dict[str, dict[str, float]]:
        """Per-model figures from Triton's Prometheus endpoint (summary quantiles over its recent window).

        Keys: `requests`, `failures`, `inferences`, `executions`, `pending` (the queue now),
        `latency_ms_p50`/`p99` (request, server side), `queue_ms_p50`/`p99`, `compute_ms_p50`,
        and `mean_batch_size` = inferences / executions.
        """
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=timeout_s) as response:  # noqa: S310 - 127.0.0.1
            return _parse_metrics(response.read().decode())

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # best effort: never leave a server behind
        try:
            self.stop(timeout_s=5)
        except Exception:  # noqa: BLE001
            pass


_METRIC_KEYS = {  # (prometheus name, quantile or None) -> our key; durations are in microseconds
    ("nv_inference_request_success", None): "requests",
    ("nv_inference_count", None): "inferences",
    ("nv_inference_exec_count", None): "executions",
    ("nv_inference_pending_request_count", None): "pending",
    ("nv_inference_request_summary_us", "0.5"): "latency_ms_p50",
    ("nv_inference_request_summary_us", "0.99"): "latency_ms_p99",
    ("nv_inference_queue_summary_us", "0.5"): "queue_ms_p50",
    ("nv_inference_queue_summary_us", "0.99"): "queue_ms_p99",
    ("nv_inference_compute_infer_summary_us", "0.5"): "compute_ms_p50",
}


def _parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """Parse Triton's Prometheus text into {model: {key: value}} (see TritonServer.model_metrics)."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" not in line:
            continue
        name, rest = line.split("{", 1)
        labels_text, _, value_text = rest.rpartition("}")
        labels = dict(part.split("=", 1) for part in labels_text.split(",") if "=" in part)
        labels = {k: v.strip('"') for k, v in labels.items()}
        model = labels.get("model")
        if model is None:
            continue
        entry = out.setdefault(model, {"failures": 0.0})
        if name == "nv_inference_request_failure":
            entry["failures"] += float(value_text)
            continue
        key = _METRIC_KEYS.get((name, labels.get("quantile")))
        if key is None:
            continue
        value = float(value_text)
        if value != value:  # NaN: an empty summary window
            value = 0.0
        entry[key] = value / 1000.0 if key.endswith("_ms_p50") or key.endswith("_ms_p99") else value
    for entry in out.values():
        executions = entry.get("executions", 0.0)
        entry["mean_batch_size"] = entry.get("inferences", 0.0) / executions if executions else 0.0
    return out


def _kill_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the process group led by `proc`, wait, then SIGKILL whatever is left in it."""
    pgid = proc.pid  # start_new_session=True: the server leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # stubs exit shortly after their server
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()
