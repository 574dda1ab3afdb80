"""The edge agent: runs the head partition on the device and streams activations to the cloud.

Threads: a control loop (Register, then WatchPlan; on any error it reconnects after an exponential
backoff with jitter, `delay = min(max, initial * multiplier^n) * (1 - jitter * U[0,1))`), a loader
(fetches partitions in chunks, checks sha256 against the Assignment, loads TorchScript, then swaps
one immutable bundle by reference, so a request never sees a half-loaded model; a bad download keeps
the old bundle and is retried with backoff), a telemetry loop (bandwidth probe + latency
percentiles -> ReportTelemetry) and a local HTTP endpoint (`POST /infer`).

Uplink emulation: every byte sent to the cloud passes a token bucket of `uplink_mbps`
(`wait = max(0, -tokens / rate)` after taking the bytes; burst `uplink_burst_bytes`, default 0, so a
message of B bytes occupies the link for `8 B / (uplink_mbps 1e6)` seconds, queued FIFO).

When the cloud call fails the agent answers from the deepest local early exit it has loaded and
says so: `{"source": "local_exit", "degraded": true, "reason": ...}`.

Imports: stdlib, numpy, torch, grpcio (+ pyarrow through the tensor codec). No Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import secrets
import threading
import time
from collections import deque
from typing import Any

import grpc
import numpy as np

from isthmus import _proto
from isthmus.edge_agent.config import AgentConfig

__all__ = ["AgentError", "EdgeAgent", "TokenBucket", "backoff_delay_s"]

_log = logging.getLogger("isthmus.edge_agent")
_AGENT_VERSION = "0.1.0"
_LATENCY_WINDOW = 2048


class AgentError(RuntimeError):
    """A request the agent cannot answer; `http_status` says how the local endpoint reports it."""

    def __init__(self, message: str, http_status: int = 503) -> None:
        super().__init__(message)
        self.http_status = http_status


def backoff_delay_s(attempt: int, *, initial_s: float, max_s: float, multiplier: float, jitter: float,
                    rng: random.Random | None = None) -> float:
    """`min(max_s, initial_s * multiplier**attempt) * (1 - jitter * U[0, 1))`."""
    base = min(max_s, initial_s * multiplier ** min(attempt, 64))
    return base * (1.0 - jitter * (rng or random).random())


_PROBE_LINK_SHARE = 0.02  # of the probe interval a bandwidth probe holds the uplink for


def probe_bytes(uplink_mbps: float, probe_interval_s: float) -> int:
    """Bytes B of the large probe: the uplink held for 2 % of the interval, B = rate · 0.02 · interval, clipped to
    [2 KiB, 4 MiB]."""
    return int(min(4 << 20, max(2 << 10, uplink_mbps * 1e6 / 8 * _PROBE_LINK_SHARE * probe_interval_s)))


class TokenBucket:
    """Token bucket in bytes: `rate = uplink_mbps * 1e6 / 8` bytes/s, capacity `burst_bytes`.

    `consume(n)` takes n tokens (the balance may go negative) and sleeps `max(0, -tokens / rate)`,
    so concurrent senders queue FIFO behind each other like on a real link. rate 0 = unlimited.
    """

    def __init__(self, uplink_mbps: float, burst_bytes: int = 0) -> None:
        self._lock = threading.Lock()
        self._burst = float(burst_bytes)
        self._tokens = float(burst_bytes)
        self._stamp = time.monotonic()
        self._rate = 0.0
        self.set_rate(uplink_mbps)

    @property
    def uplink_mbps(self) -> float:
        return self._rate * 8 / 1e6

    def set_rate(self, uplink_mbps: float) -> None:
        if uplink_mbps < 0:
            raise ValueError(f"uplink_mbps={uplink_mbps} must be >= 0 (0 = unlimited).")
        with self._lock:
            self._refill(time.monotonic())
            self._rate = uplink_mbps * 1e6 / 8

    def _refill(self, now: float) -> None:
        if self._rate > 0:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def consume(self, nbytes: int) -> float:
        """Take `nbytes`; returns the seconds slept."""
        with self._lock:
            if self._rate <= 0:
                return 0.0
            self._refill(time.monotonic())
            self._tokens -= nbytes
            wait_s = max(0.0, -self._tokens / self._rate)
        if wait_s:
            time.sleep(wait_s)
        return wait_s


@dataclasses.dataclass(frozen=True)
class _Bundle:
    """One loaded assignment; swapped by reference (atomic)."""

    version: int
    model: str
    split: int
    exit: int
    head: Any
    head_sha256: str
    local_exits: tuple[tuple[int, Any], ...]  # deepest first
    target: str
    tls: bool
    key: tuple


def _assignment_key(a: Any) -> tuple:
    exits = tuple((e.exit, e.partition.sha256) for e in a.local_exits)
    return (a.model, a.split, a.exit, a.head.sha256 if a.HasField("head") else "", exits,
            a.inference_target, a.inference_tls)


class _ChecksumError(RuntimeError):
    pass


class _CloudSkipped(RuntimeError):
    pass


class _Breaker:
    """After a failed cloud call, requests skip the cloud for `delay` seconds (doubling from
    `initial_s` to `max_s` while it keeps failing), so a black-holed link costs one timeout, not
    one per request; the first request after the window tries the cloud again."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self._initial_s, self._max_s = initial_s, max_s
        self._lock = threading.Lock()
        self._delay_s = 0.0
        self._until = 0.0
        self._reason = ""

    def open_reason(self) -> str:
        with self._lock:
            left = self._until - time.monotonic()
            if left <= 0:
                return ""
            return f"{self._reason}; skipping the cloud for {left:.1f} s more"

    def failure(self, reason: str) -> None:
        with self._lock:
            self._delay_s = min(self._max_s, max(self._initial_s, 2 * self._delay_s))
            self._until = time.monotonic() + self._delay_s
            self._reason = reason

    def success(self) -> None:
        with self._lock:
            self._delay_s, self._until = 0.0, 0.0


class EdgeAgent:
    """The device-side runtime; `start()` launches its threads, `stop()` ends them."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.uplink = TokenBucket(config.uplink_mbps, config.uplink_burst_bytes)
        self._stop = threading.Event()
        self._bundle: _Bundle | None = None
        self._desired: Any = None
        self._desired_event = threading.Event()
        self._lock = threading.Lock()
        self._cp_channel: grpc.Channel | None = None
        self._watch_call: Any = None
        self._cloud_channels: dict[tuple[str, bool], grpc.Channel] = {}
        self._module_cache: dict[str, tuple[Any, bytes]] = {}  # sha256 -> (module, verified bytes)
        self._latencies_ms: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._head_ms: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._server_ms: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._errors: deque[str] = deque(maxlen=50)
        self._counts = {"requests": 0, "local_exit_answers": 0, "failed": 0}
        self._window_requests = 0
        self._window_local = 0
        self._state = {"connected": False, "registrations": 0, "plan_version": 0, "last_error": "",
                       "uplink_probe_mbps": 0.0, "rtt_ms": 0.0, "rejected_partitions": 0, "switches": 0}
        self._telemetry_interval_s = config.telemetry_interval_s
        self._threads: list[threading.Thread] = []
        self._http = None
        self._rng = random.Random()
        self._metadata = (("authorization", f"Bearer {config.token}"),)
        self._last_input: tuple[tuple[int, ...], Any] | None = None
        self._fetched: dict[str, bytes] = {}
        self._breaker = _Breaker(config.cloud_retry_s, max(config.cloud_retry_s, config.backoff_max_s))

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> "EdgeAgent":
        from isthmus.edge_agent.http import serve_http

        self._http = serve_http(self)
        self._restore_state()
        for name, target in (("cp-watch", self._control_loop), ("loader", self._loader_loop),
                             ("telemetry", self._telemetry_loop)):
            thread = threading.Thread(target=target, name=f"edge-agent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        _log.info("edge agent %s (site %s, device %s) listening on http://%s:%d", self.config.agent_id,
                  self.config.site, self.config.device, *self.http_address)
        return self

    @property
    def http_address(self) -> tuple[str, int]:
        return self._http.server_address[:2] if self._http else self.config.listen_host_port()

    def stop(self) -> None:
        self._stop.set()
        self._desired_event.set()
        call = self._watch_call
        if call is not None:
            call.cancel()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for channel in [self._cp_channel, *self._cloud_channels.values()]:
            if channel is not None:
                channel.close()  # cancels calls in flight (a Register waiting on a dead peer)
        for thread in self._threads:
            thread.join(timeout=5)

    def wait(self) -> None:
        """Block until `stop()`."""
        while not self._stop.wait(1.0):
            pass

    # ----------------------------------------------------------------- channels
    def _credentials(self) -> grpc.ChannelCredentials:
        c = self.config
        return grpc.ssl_channel_credentials(root_certificates=c.ca_cert.read_bytes(),
                                            private_key=c.key.read_bytes(), certificate_chain=c.cert.read_bytes())

    def _channel_options(self) -> list[tuple[str, Any]]:
        options = [("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000),
                   ("grpc.keepalive_permit_without_calls", 1),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   # gRPC's own reconnect backoff (default up to 120 s) would keep a channel to a cloud that
                   # came back failing fast for minutes; bound it by the agent's backoff settings (not
                   # min_reconnect_backoff_ms: that is also the connect timeout, 20 s, kept for slow links)
                   ("grpc.initial_reconnect_backoff_ms", int(self.config.backoff_initial_s * 1000)),
                   ("grpc.max_reconnect_backoff_ms", int(self.config.backoff_max_s * 1000))]
        if self.config.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.config.tls_server_name))
        return options

    def _cloud_channel(self, target: str, tls: bool) -> grpc.Channel:
        key = (target, tls)
        with self._lock:
            channel = self._cloud_channels.get(key)
            if channel is None:
                channel = (grpc.secure_channel(target, self._credentials(), self._channel_options()) if tls
                           else grpc.insecure_channel(target, self._channel_options()))
                self._cloud_channels[key] = channel
            return channel

    # ----------------------------------------------------------------- control loop
    def _control_loop(self) -> None:
        cp = _proto.load("control_plane_pb2")
        stubs = _proto.load("control_plane_pb2_grpc")
        attempt = 0
        while not self._stop.is_set():
            channel = grpc.secure_channel(self.config.control_plane, self._credentials(), self._channel_options())
            self._cp_channel = channel
            try:
                stub = stubs.ControlPlaneStub(channel)
                reply = stub.Register(cp.RegisterRequest(
                    agent_id=self.config.agent_id, site=self.config.site, device=self.config.device,
                    profile=self._profile(), agent_version=_AGENT_VERSION), metadata=self._metadata, timeout=10)
                if reply.telemetry_interval_s > 0:
                    self._telemetry_interval_s = reply.telemetry_interval_s
                self._set_state(connected=True, registrations=self._state["registrations"] + 1, last_error="")
                _log.info("registered with the control plane at %s", self.config.control_plane)
                attempt = 0
                known = self._bundle.version if self._bundle else 0
                self._watch_call = stub.WatchPlan(cp.WatchPlanRequest(agent_id=self.config.agent_id,
                                                                      known_version=known), metadata=self._metadata)
                for assignment in self._watch_call:
                    self._set_state(plan_version=assignment.version)
                    if assignment.assigned:
                        with self._lock:
                            self._desired = assignment
                        self._desired_event.set()
                if not self._stop.is_set():
                    self._note_error("control plane closed the plan stream")
            except grpc.RpcError as err:
                if not self._stop.is_set():
                    self._note_error(f"control plane {self.config.control_plane}: {err.code().name} "
                                     f"{(err.details() or '')[:200]}")
            finally:
                self._watch_call = None
                self._set_state(connected=False)
            if self._stop.is_set():
                break
            channel.close()
            delay = backoff_delay_s(attempt, initial_s=self.config.backoff_initial_s,
                                    max_s=self.config.backoff_max_s, multiplier=self.config.backoff_multiplier,
                                    jitter=self.config.backoff_jitter, rng=self._rng)
            attempt += 1
            _log.info("reconnecting to the control plane in %.2f s (attempt %d)", delay, attempt)
            self._stop.wait(delay)

    def _profile(self) -> Any:
        cp = _proto.load("control_plane_pb2")
        layer_ms: dict[str, float] = {}
        if self.config.profile_file:
            try:
                layer_ms = {str(k): float(v) for k, v in json.loads(self.config.profile_file.read_text()).items()}
            except (OSError, ValueError, AttributeError) as err:
                self._note_error(f"profile_file {self.config.profile_file}: {err}")
        return cp.Profile(layer_ms=layer_ms, uplink_mbps=self._state["uplink_probe_mbps"],
                          rtt_ms=self._state["rtt_ms"])

    # ----------------------------------------------------------------- loader
    def _loader_loop(self) -> None:
        attempt, delay = 0, None
        while not self._stop.is_set():
            self._desired_event.wait(timeout=delay)
            self._desired_event.clear()
            if self._stop.is_set():
                break
            with self._lock:
                desired = self._desired
            current = self._bundle
            if desired is None:
                delay = None
                continue
            if current is not None and current.key == _assignment_key(desired):
                if current.version != desired.version:
                    self._bundle = dataclasses.replace(current, version=desired.version)
                attempt, delay = 0, None
                continue
            try:
                self._fetched = {}
                bundle = self._load(desired)
                if current is None or (current.target, current.tls) != (bundle.target, bundle.tls):
                    self._breaker.success()  # a new cloud endpoint starts with a clean record
                self._bundle = bundle
                try:
                    self._save_state(desired, self._fetched)
                except OSError as err:
                    self._note_error(f"cannot save state to {self.config.state_dir}: {err}")
                self._set_state(switches=self._state["switches"] + 1)
                _log.info("switched to model %s split %d exit %d (plan version %d)", desired.model,
                          desired.split, desired.exit, desired.version)
                attempt, delay = 0, None
            except Exception as err:  # any failed download/load keeps the old bundle
                if isinstance(err, _ChecksumError):
                    self._set_state(rejected_partitions=self._state["rejected_partitions"] + 1)
                self._note_error(f"cannot load plan version {desired.version}: {err}; kept the "
                                 f"{'old partition' if current else 'agent idle'}")
                self._report_now()
                delay = backoff_delay_s(attempt, initial_s=self.config.backoff_initial_s,
                                        max_s=self.config.backoff_max_s, multiplier=self.config.backoff_multiplier,
                                        jitter=self.config.backoff_jitter, rng=self._rng)
                attempt += 1

    def _load(self, a: Any) -> _Bundle:
        head = self._module(a.head) if a.HasField("head") else None
        exits = []
        for local in sorted(a.local_exits, key=lambda e: -e.exit):
            exits.append((local.exit, self._module(local.partition)))
        self._warm_up(head, exits)
        return _Bundle(version=a.version, model=a.model, split=a.split, exit=a.exit, head=head,
                       head_sha256=a.head.sha256 if head is not None else "", local_exits=tuple(exits),
                       target=a.inference_target, tls=a.inference_tls, key=_assignment_key(a))

    def _warm_up(self, head: Any, exits: list[tuple[int, Any]]) -> None:
        """Run new modules twice on zeros shaped like the last request (TorchScript optimises on the
        first calls), before the swap, so the first requests after a switch are not slow."""
        import torch

        example = self._last_input
        if example is None:
            return
        try:
            with torch.no_grad():
                for _ in range(2):
                    activation = head(torch.zeros(example[0], dtype=example[1])) if head is not None else None
                    for _, module in exits[:1]:
                        if activation is not None:
                            module(*_as_tuple(activation))
        except RuntimeError as err:  # a new model with another input shape: nothing to warm up with
            _log.info("warm-up skipped: %s", str(err)[:120])

    def _module(self, ref: Any) -> Any:
        import torch  # imported on the first partition, so an idle agent starts fast

        if torch.get_num_threads() != self.config.threads:
            torch.set_num_threads(self.config.threads)
        if ref.sha256 in self._module_cache:
            module, data = self._module_cache[ref.sha256]
        else:
            data = self._fetch(ref)
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
            module.eval()
            if len(self._module_cache) >= 16:
                self._module_cache.pop(next(iter(self._module_cache)))
            self._module_cache[ref.sha256] = (module, data)
        self._fetched[ref.sha256] = data
        return module

    def _restore_state(self) -> None:
        """Load the last assignment from `state_dir` (its partitions are re-verified from disk)."""
        if not self.config.state_dir:
            return
        path = self.config.state_dir / "assignment.pb"
        if path.is_file():
            assignment = _proto.load("control_plane_pb2").Assignment()
            try:
                assignment.ParseFromString(path.read_bytes())
            except Exception as err:  # protobuf's DecodeError: a torn or foreign file
                self._note_error(f"ignoring unreadable {path}: {err}")
                return
            with self._lock:
                self._desired = assignment
            self._desired_event.set()
            _log.info("restoring plan version %d from %s", assignment.version, path)

    def _save_state(self, assignment: Any, blobs: dict[str, bytes]) -> None:
        if not self.config.state_dir:
            return
        parts = self.config.state_dir / "partitions"
        parts.mkdir(parents=True, exist_ok=True)
        for digest, data in blobs.items():
            if not (parts / f"{digest}.pt").exists():
                _atomic_write(parts / f"{digest}.pt", data)
        _atomic_write(self.config.state_dir / "assignment.pb", assignment.SerializeToString())
        keep = {f"{d}.pt" for d in _assignment_key_shas(assignment)}
        for old in parts.glob("*.pt"):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def _cached_bytes(self, ref: Any) -> bytes | None:
        if not self.config.state_dir:
            return None
        path = self.config.state_dir / "partitions" / f"{ref.sha256}.pt"
        if path.is_file():
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == ref.sha256:
                return data
            self._note_error(f"cached partition {path.name[:12]} fails its sha256; fetching it again")
        return None

    def _fetch(self, ref: Any) -> bytes:
        cached = self._cached_bytes(ref)
        if cached is not None:
            return cached
        cp = _proto.load("control_plane_pb2")
        stubs = _proto.load("control_plane_pb2_grpc")
        if ref.size_bytes > self.config.max_partition_bytes:
            raise RuntimeError(f"partition {ref.sha256[:12]} has {ref.size_bytes} bytes, above "
                               f"max_partition_bytes={self.config.max_partition_bytes}")
        channel = self._cp_channel
        if channel is None:
            raise RuntimeError("not connected to the control plane")
        digest, parts, received = hashlib.sha256(), [], 0
        stream = stubs.ControlPlaneStub(channel).FetchPartition(
            cp.FetchPartitionRequest(partition_id=ref.partition_id), metadata=self._metadata, timeout=120)
        for chunk in stream:
            if chunk.offset != received or received + len(chunk.data) > ref.size_bytes:
                stream.cancel()
                raise _ChecksumError(f"partition {ref.sha256[:12]}: chunk at offset {chunk.offset} does not fit "
                                     f"(received {received} of {ref.size_bytes} bytes)")
            digest.update(chunk.data)
            parts.append(chunk.data)
            received += len(chunk.data)
        if digest.hexdigest() != ref.sha256:
            raise _ChecksumError(f"partition {ref.sha256[:12]}: sha256 mismatch (got {digest.hexdigest()[:12]}, "
                                 f"{received} bytes) - rejected")
        return b"".join(parts)

    # ----------------------------------------------------------------- serving
    def infer(self, array: np.ndarray, *, traceparent: str = "") -> dict[str, Any]:
        """Run one request: head on the device, tail in the cloud (or the deepest local exit)."""
        bundle = self._bundle
        if bundle is None:  # answered before importing torch: an idle agent says so at once
            raise AgentError("no partition loaded yet (waiting for the control plane's plan). "
                             "To fix: retry shortly; check /status for the last error.")
        import torch

        trace_id, parent = _parse_traceparent(traceparent)
        span_id = secrets.token_hex(8)
        start_ns = time.time_ns()
        start = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(array))
        self._last_input = (tuple(x.shape), x.dtype)
        try:
            with torch.no_grad():
                activation = bundle.head(x) if bundle.head is not None else x
        except RuntimeError as err:
            raise AgentError(f"head partition (split {bundle.split}) cannot run on input of shape "
                             f"{list(array.shape)}: {str(err)[:200]}. To fix: send the model's input shape.",
                             http_status=400) from None
        head_ms = (time.perf_counter() - start) * 1e3
        reply: dict[str, Any] = {"model": bundle.model, "split": bundle.split, "plan_version": bundle.version,
                                 "head_ms": head_ms, "trace_id": trace_id}
        skip = self._breaker.open_reason() if bundle.local_exits else ""
        try:
            if skip:
                raise _CloudSkipped(skip)
            logits, prediction, server_ms = self._cloud_infer(bundle, activation, f"00-{trace_id}-{span_id}-01")
            self._breaker.success()
            reply.update(source="cloud", exit=bundle.exit, degraded=False, server_ms=server_ms)
        except (grpc.RpcError, _CloudSkipped) as err:
            if isinstance(err, grpc.RpcError):
                reason = f"cloud {bundle.target} failed: {err.code().name}"
                self._breaker.failure(reason)
            else:
                reason = str(err)
            logits, exit_index = self._local_exit(bundle, activation, reason)
            prediction = logits.reshape(logits.shape[0], -1).argmax(dim=1).tolist()
            reply.update(source="local_exit", exit=exit_index, degraded=True,
                         reason=f"{reason}; answered from local early exit {exit_index}")
        latency_ms = (time.perf_counter() - start) * 1e3
        reply.update(prediction=prediction, logits=np.asarray(logits).tolist(), latency_ms=latency_ms)
        with self._lock:
            self._latencies_ms.append(latency_ms)
            self._head_ms.append(head_ms)
            if "server_ms" in reply:
                self._server_ms.append(reply["server_ms"])
            self._counts["requests"] += 1
            self._window_requests += 1
            if reply["degraded"]:
                self._counts["local_exit_answers"] += 1
                self._window_local += 1
        self._trace(trace_id, span_id, parent, start_ns, reply)
        return reply

    def _cloud_infer(self, bundle: _Bundle, activation: Any, traceparent: str) -> tuple[Any, list[int], float]:
        inf = _proto.load("inference_pb2")
        stubs = _proto.load("inference_pb2_grpc")
        tensors = [_proto.encode_tensor(t, arrow=self.config.arrow) for t in _as_tuple(activation)]
        # on the wire split 0 means "the raw input" (no head ran on the device), as the Serve ingress reads it
        split = bundle.split if bundle.head is not None else 0
        request = inf.InferRequest(model=bundle.model, split=split, exit=bundle.exit, tensor=tensors[0],
                                   extra_tensors=tensors[1:], request_id=secrets.token_hex(8))
        self.uplink.consume(request.ByteSize())
        stub = stubs.InferenceStub(self._cloud_channel(bundle.target, bundle.tls))
        # the bearer token travels only over TLS
        metadata = (*self._metadata, ("traceparent", traceparent)) if bundle.tls else (("traceparent", traceparent),)
        reply = stub.Infer(request, timeout=self.config.cloud_timeout_s, metadata=metadata)
        try:
            logits = _proto.decode_tensor(reply.output)
        except _proto.TensorDecodeError as err:
            raise AgentError(f"cloud reply is not a tensor: {err}", http_status=502) from None
        return logits, list(reply.prediction), reply.server_ms

    def _local_exit(self, bundle: _Bundle, activation: Any, reason: str) -> tuple[Any, int]:
        import torch

        errors = []
        for exit_index, module in bundle.local_exits:
            try:
                with torch.no_grad():
                    return module(*_as_tuple(activation)), exit_index
            except RuntimeError as err:  # e.g. out of memory: try the next shallower exit
                errors.append(f"exit {exit_index}: {str(err)[:100]}")
        with self._lock:
            self._counts["failed"] += 1
        raise AgentError(f"{reason} and no local early exit could answer ({'; '.join(errors) or 'none loaded'}). "
                         "To fix: restore the cloud link, or plan an exit the device can run.")

    def _trace(self, trace_id: str, span_id: str, parent: str, start_ns: int, reply: dict) -> None:
        """Append this request's span to `trace_file` in the JSONL span format of
        `isthmus.platform.tracing` (one O_APPEND write per line), so it joins the cloud's spans."""
        if not self.config.trace_file:
            return
        end_ns = time.time_ns()
        record = {"trace_id": trace_id, "span_id": span_id, "parent_id": parent or None, "name": "edge_agent",
                  "service": f"edge:{self.config.site}", "kind": "CLIENT", "start_ns": start_ns, "end_ns": end_ns,
                  "duration_ms": (end_ns - start_ns) / 1e6, "status": "ERROR" if reply["degraded"] else "OK",
                  "attributes": {"isthmus.agent": self.config.agent_id, "isthmus.model": reply["model"],
                                 "isthmus.split": reply["split"], "isthmus.exit": reply["exit"],
                                 "isthmus.source": reply["source"]}}
        fd = os.open(self.config.trace_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)

    # ----------------------------------------------------------------- telemetry
    def probe_uplink(self) -> tuple[float, float]:
        """Measure `(uplink_mbps, rtt_ms)` to the cloud: `8 (B - b) / (t_B - t_b)` with a small b and large B.

        B (`probe_bytes`) holds the uplink for 2 % of the probe interval at the last measured rate (0.2 s at the
        default 10 s): requests queue behind a probe, so on a slow uplink a fixed-size probe stalls them
        (32 KiB at 0.2 Mbit/s held the link 1.3 s, the demo's p99)."""
        bundle = self._bundle
        if bundle is None:
            raise AgentError("no cloud endpoint yet")
        inf = _proto.load("inference_pb2")
        stub = _proto.load("inference_pb2_grpc").InferenceStub(self._cloud_channel(bundle.target, bundle.tls))
        last = self._state["uplink_probe_mbps"] or self.uplink.uplink_mbps or 100.0
        big = probe_bytes(last, self.config.probe_interval_s)
        timings = []
        for size in (64, big):
            request = inf.ProbeRequest(payload=b"\0" * size)
            start = time.perf_counter()
            self.uplink.consume(request.ByteSize())
            stub.Probe(request, timeout=self.config.cloud_timeout_s + 8 * size / 1e5,
                       metadata=self._metadata if bundle.tls else ())
            timings.append(time.perf_counter() - start)
        mbps = 8 * (big - 64) / max(timings[1] - timings[0], 1e-6) / 1e6
        self._set_state(uplink_probe_mbps=mbps, rtt_ms=timings[0] * 1e3)
        return mbps, timings[0] * 1e3

    def _telemetry_loop(self) -> None:
        last_probe = 0.0
        while not self._stop.wait(self._telemetry_interval_s):
            if self._bundle is not None and time.monotonic() - last_probe >= self.config.probe_interval_s:
                last_probe = time.monotonic()
                try:
                    self.probe_uplink()
                except (grpc.RpcError, AgentError) as err:
                    self._note_error(f"bandwidth probe failed: {err.code().name if isinstance(err, grpc.RpcError) else err}")
            self._report_now()

    def _report_now(self) -> bool:
        cp = _proto.load("control_plane_pb2")
        channel = self._cp_channel
        if channel is None or not self._state["connected"]:
            return False
        with self._lock:
            window = sorted(self._latencies_ms)
            head_ms, server_ms = sorted(self._head_ms), sorted(self._server_ms)
            errors = list(self._errors)
            requests, local = self._window_requests, self._window_local
        bundle = self._bundle
        report = cp.TelemetryReport(
            agent_id=self.config.agent_id, plan_version=bundle.version if bundle else 0, requests=requests,
            local_exit_answers=local, latency_ms_p50=_quantile(window, 0.5), latency_ms_p99=_quantile(window, 0.99),
            uplink_mbps=self._state["uplink_probe_mbps"], rtt_ms=self._state["rtt_ms"], errors=errors,
            head_sha256=bundle.head_sha256 if bundle else "", unix_time_s=time.time(),
            head_ms_p50=_quantile(head_ms, 0.5), server_ms_p50=_quantile(server_ms, 0.5),
            split=bundle.split if bundle else 0, exit=bundle.exit if bundle else 0)
        try:
            _proto.load("control_plane_pb2_grpc").ControlPlaneStub(channel).ReportTelemetry(
                report, metadata=self._metadata, timeout=5)
        except grpc.RpcError:
            return False
        with self._lock:
            for window_values in (self._latencies_ms, self._head_ms, self._server_ms):
                window_values.clear()
            self._window_requests -= requests
            self._window_local -= local
            for _ in errors:
                if self._errors:
                    self._errors.popleft()
        return True

    # ----------------------------------------------------------------- state
    def _set_state(self, **values: Any) -> None:
        with self._lock:
            self._state.update(values)

    def _note_error(self, message: str) -> None:
        _log.warning("%s", message)
        with self._lock:
            self._errors.append(message)
            self._state["last_error"] = message

    def status(self) -> dict[str, Any]:
        """Connection, loaded partition and counters (what `GET /status` returns)."""
        bundle = self._bundle
        with self._lock:
            state = dict(self._state)
            counts = dict(self._counts)
        loaded = None
        if bundle is not None:
            loaded = {"version": bundle.version, "model": bundle.model, "split": bundle.split, "exit": bundle.exit,
                      "head_sha256": bundle.head_sha256, "local_exits": [e for e, _ in bundle.local_exits],
                      "inference_target": bundle.target}
        return {"agent_id": self.config.agent_id, "site": self.config.site, "device": self.config.device,
                "uplink_mbps": self.uplink.uplink_mbps, "loaded": loaded, **state, **counts}


def _assignment_key_shas(a: Any) -> list[str]:
    return ([a.head.sha256] if a.HasField("head") else []) + [e.partition.sha256 for e in a.local_exits]


def _atomic_write(path: Any, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _as_tuple(activation: Any) -> tuple:
    """The head's output as the tuple of tensors the tail takes (a DAG cut may send several)."""
    return tuple(activation) if isinstance(activation, (tuple, list)) else (activation,)


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def _parse_traceparent(header: str) -> tuple[str, str]:
    """`(trace_id, parent_span_id)` from a W3C traceparent, or a new trace id and no parent."""
    parts = header.split("-") if header else []
    if (len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16
            and all(c in "0123456789abcdef" for c in parts[1] + parts[2]) and set(parts[1]) != {"0"}):
        return parts[1], parts[2]
    return secrets.token_hex(16), ""
