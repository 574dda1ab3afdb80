"""DeviceActor: one Ray actor per (site, device) that owns a real Triton server on its node.

The caller pins it to its site, e.g.
`DeviceActor.options(resources={"region:us-east": 0.01}).remote("us-east", "t4", models)`.
`start()` writes the model repository (TorchScript partitions as Python-backend models with
dynamic batching) and launches `tritonserver`; a background thread checks the server every
`health_interval_s` and restarts it (same ports, so clients keep their URL) when the process died
or stopped answering `failures_before_restart` checks in a row.

`health()` reports what the server measured over its recent window (Triton's summary metrics):
per model p50/p99 request latency, queue time, mean batch size and the pending queue, plus
the actor's own end-to-end p50/p99 over its last `infer()` calls.
"""

from __future__ import annotations

import collections
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from isthmus.platform.triton import INPUT_NAME, OUTPUT_NAME, TritonModel, TritonServer, write_model_repository

__all__ = ["DeviceActor"]


def _percentile_ms(samples: collections.deque[float], q: float) -> float:
    return float(np.percentile(np.fromiter(samples, float), q)) if samples else 0.0


class _DeviceActor:
    """Owns one `TritonServer` serving `models` on this node (see the module docstring)."""

    def __init__(
        self,
        site: str,
        device: str,
        models: list[TritonModel],
        *,
        workdir: str | None = None,
        trace_config: dict[str, Any] | None = None,
        health_interval_s: float = 1.0,
        failures_before_restart: int = 3,
        start_timeout_s: float = 120.0,
    ) -> None:
        if not models:
            raise ValueError(f"DeviceActor {site}/{device} got no models. To fix: pass at least one TritonModel.")
        self.site = site
        self.device = device
        self.models = [m if isinstance(m, TritonModel) else TritonModel.model_validate(m) for m in models]
        root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"isthmus-device-{site}-{device}-"))
        self._repo = root / "model_repository"
        self._repo.mkdir(parents=True, exist_ok=True)
        self._server = TritonServer(self._repo, trace_config=trace_config, log_dir=root / "logs")
        self._health_interval_s = health_interval_s
        self._failures_before_restart = failures_before_restart
        self._start_timeout_s = start_timeout_s
        self._latencies_ms: collections.deque[float] = collections.deque(maxlen=1000)
        self._client: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restart_lock = threading.Lock()
        self._last_error = ""

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> str:
        """Write the model repository, start Triton, start the health loop; returns the gRPC URL."""
        write_model_repository(self._repo, self.models)
        self._server.start(self._start_timeout_s)
        if self._thread is None:
            self._thread = threading.Thread(target=self._health_loop, name="triton-health", daemon=True)
            self._thread.start()
        return self._server.grpc_url

    def load_models(self, models: list[TritonModel]) -> list[str]:
        """Serve exactly `models` from now on without restarting Triton; returns the names served.

        New and changed models are written and (re)loaded while the rest keep serving (Triton keeps
        the old version of a reloaded model until the new one is ready); models not listed are
        unloaded and removed from the repository, so a later restart serves the same set.
        """
        import shutil

        models = [m if isinstance(m, TritonModel) else TritonModel.model_validate(m) for m in models]
        if not models:
            raise ValueError(f"DeviceActor {self.site}/{self.device}: load_models got no models. "
                             "To fix: pass at least one TritonModel (call stop() to stop serving).")
        old = {m.name: m for m in self.models}
        changed = [m for m in models if old.get(m.name) != m]
        with self._restart_lock:
            write_model_repository(self._repo, changed)
            for model in changed:
                self._server.load_model(model.name, self._start_timeout_s)
            for name in sorted(set(old) - {m.name for m in models}):
                self._server.unload_model(name)
                shutil.rmtree(self._repo / name, ignore_errors=True)
            self.models = models
        return [m.name for m in models]

    def stop(self) -> None:
        """Stop the health loop and the Triton server."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server.stop()

    def grpc_url(self) -> str:
        return self._server.grpc_url

    def http_url(self) -> str:
        return self._server.http_url

    def metrics_url(self) -> str:
        return self._server.metrics_url

    def node_id(self) -> str:
        """The Ray node this actor (and its Triton) runs on."""
        return ray.get_runtime_context().get_node_id()

    def kill_triton(self) -> int:
        """SIGKILL the Triton process (chaos tests); the health loop restarts it. Returns the killed pid."""
        pid = self._server.pid or -1
        self._server.kill()
        return pid

    # health -----------------------------------------------------------------------------------
    def _responsive(self) -> bool:
        import tritonclient.grpc as grpcclient

        try:
            client = grpcclient.InferenceServerClient(self._server.grpc_url)
            try:
                return bool(client.is_server_live(client_timeout=2.0))
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001 - any failure counts as unresponsive
            self._last_error = repr(exc)
            return False

    def _health_loop(self) -> None:
        failures = 0
        while not self._stop.wait(self._health_interval_s):
            alive = self._server.is_alive()
            failures = 0 if alive and self._responsive() else failures + 1
            if not alive or failures >= self._failures_before_restart:
                self._restart()
                failures = 0

    def _restart(self) -> None:
        with self._restart_lock:
            try:
                self._server.restart(self._start_timeout_s)
                self._client = None
            except Exception as exc:  # noqa: BLE001 - keep the loop alive, retry next tick
                self._last_error = repr(exc)

    def health(self) -> dict[str, Any]:
        """{alive (Triton up and its models ready), restarts, grpc_url, latency_ms_p50/p99 (server, worst model), queue (pending requests),
        client_latency_ms_p50/p99 (this actor's infer calls), models: {name: Triton metrics}, last_error}."""
        alive = self._server.is_ready()
        models: dict[str, dict[str, float]] = {}
        if alive:
            try:
                models = self._server.model_metrics()
            except Exception as exc:  # noqa: BLE001 - still starting or just died
                self._last_error = repr(exc)
        return {
            "site": self.site,
            "device": self.device,
            "alive": alive,
            "restarts": self._server.restarts,
            "grpc_url": self._server.grpc_url,
            "latency_ms_p50": max((m.get("latency_ms_p50", 0.0) for m in models.values()), default=0.0),
            "latency_ms_p99": max((m.get("latency_ms_p99", 0.0) for m in models.values()), default=0.0),
            "queue": int(sum(m.get("pending", 0.0) for m in models.values())),
            "client_latency_ms_p50": _percentile_ms(self._latencies_ms, 50),
            "client_latency_ms_p99": _percentile_ms(self._latencies_ms, 99),
            "models": models,
            "last_error": self._last_error,
        }

    # inference --------------------------------------------------------------------------------
    def infer(self, name: str, batch: np.ndarray, timeout_s: float = 30.0) -> np.ndarray:
        """Run `batch` (shape (b, *input_shape)) through model `name` on this node's Triton."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        if name not in {m.name for m in self.models}:
            raise ValueError(f"model {name!r} is not served here. To fix: use one of {[m.name for m in self.models]}.")
        batch = np.ascontiguousarray(batch)
        tensor = grpcclient.InferInput(INPUT_NAME, list(batch.shape), np_to_triton_dtype(batch.dtype))
        tensor.set_data_from_numpy(batch)
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self._server.grpc_url)
        start = time.perf_counter()
        try:
            result = self._client.infer(name, [tensor], client_timeout=timeout_s)
        except InferenceServerException as exc:  # not picklable by Ray: re-raise as a plain error
            raise RuntimeError(f"Triton at {self._server.grpc_url} failed on model {name!r}: {exc}") from None
        self._latencies_ms.append((time.perf_counter() - start) * 1000.0)
        return result.as_numpy(OUTPUT_NAME)


DeviceActor = ray.remote(num_cpus=0, max_concurrency=16, max_restarts=0)(_DeviceActor)
