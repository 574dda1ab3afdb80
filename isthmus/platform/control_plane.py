"""The control plane: tells edge agents where to split their model and serves the partitions.

Runs beside the OptimizerActor. Its plan source is a `PlanSource`; the optimizer side calls
`plan_source.publish({agent id or site: AgentAssignment})` and every agent watching the plan
(`WatchPlan`, a server stream) receives its new assignment at once.

Security (see `isthmus certs init`):
- mTLS: the server requires a client certificate signed by the CA; its CN is the agent id.
- bearer token per agent in the `authorization: Bearer <token>` metadata; the server keeps only
  `sha256(token)` (tokens.json, re-read when it changes) and compares in constant time; the token
  must belong to the agent named by the certificate.
- request size limit (`max_request_bytes`, default 1 MiB): larger messages get RESOURCE_EXHAUSTED.
- tokens and keys are never logged; rejections log the certificate CN and the reason only.

Partitions are content-addressed: `partition_id` = hex sha256 of the TorchScript bytes; they are
streamed in 256 KiB chunks and the agent verifies the sha256 before it switches.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from isthmus import _proto
from isthmus.platform._grpc import ServerTLS, TokenAuth, build_server

__all__ = ["AgentAssignment", "ControlPlaneServer", "PartitionStore", "PlanSource"]

_log = logging.getLogger("isthmus.control_plane")
_CHUNK_BYTES = 256 * 1024
_SERVICE = "isthmus.v1.ControlPlane"


class AgentAssignment(BaseModel):
    """What one agent (or every agent of a site) runs: the head up to `split`, exits for fallback."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = Field(description="Model name the cloud tail is registered under.")
    split: int = Field(ge=-1, description="Split index as the partitioner numbers it (last layer on the device).")
    exit: int = Field(ge=-1, description="Early exit whose prediction the cloud returns (-1 = the final exit).")
    head: bytes | None = Field(None, description="TorchScript bytes of layers <= split; None = send the raw input.")
    local_exits: dict[int, bytes] = Field(default_factory=dict,
                                          description="exit index -> TorchScript mapping the head's output to logits.")
    inference_target: str = Field(description="host:port of the cloud Inference endpoint.")
    inference_tls: bool = Field(False, description="Whether the Inference endpoint uses TLS (same CA).")

    @field_validator("inference_target")
    @classmethod
    def _target(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"inference_target {v!r} is not host:port. To fix: e.g. '127.0.0.1:50052'.")
        return v


class PartitionStore:
    """Content-addressed partition bytes, in memory or as `<sha256>.pt` files in `directory`."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self._dir = Path(directory) if directory else None
        self._mem: dict[str, bytes] = {}
        if self._dir:
            self._dir.mkdir(parents=True, exist_ok=True)

    def path(self, partition_id: str) -> Path | None:
        """File of a partition when the store is on disk."""
        return self._dir / f"{partition_id}.pt" if self._dir else None

    def put(self, data: bytes) -> tuple[str, int]:
        """Store `data`; returns `(sha256 hex, size)`."""
        digest = hashlib.sha256(data).hexdigest()
        if self._dir:
            path = self.path(digest)
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
        else:
            self._mem[digest] = bytes(data)
        return digest, len(data)

    def get(self, partition_id: str) -> bytes | None:
        """The stored bytes (as on disk now: corruption is the agent's checksum's job), or None."""
        if not (len(partition_id) == 64 and all(c in "0123456789abcdef" for c in partition_id)):
            return None
        if self._dir:
            path = self.path(partition_id)
            return path.read_bytes() if path.is_file() else None
        return self._mem.get(partition_id)


class PlanSource:
    """Thread-safe current plan: `{agent id or site: AgentAssignment}` plus a version counter.

    `publish` stores the partitions, bumps the version and wakes every `WatchPlan` stream.
    Telemetry from agents is kept (last `telemetry_limit` reports) for the optimizer to read.
    """

    def __init__(self, store: PartitionStore | None = None, *, telemetry_limit: int = 10_000) -> None:
        self.store = store or PartitionStore()
        self._cond = threading.Condition()
        self._version = 0
        self._assignments: dict[str, Any] = {}
        self._telemetry: collections.deque[dict] = collections.deque(maxlen=telemetry_limit)
        self._agents: dict[str, dict] = {}

    @property
    def version(self) -> int:
        return self._version

    def publish(self, assignments: Mapping[str, AgentAssignment | Mapping[str, Any]]) -> int:
        """Replace the plan; returns the new version. Keys are agent ids or site names."""
        pb = _proto.load("control_plane_pb2")
        built: dict[str, Any] = {}
        for key, raw in assignments.items():
            a = raw if isinstance(raw, AgentAssignment) else AgentAssignment.model_validate(raw)
            if a.head is None and a.local_exits:
                raise ValueError(f"assignment {key!r}: local_exits given without a head. To fix: local exits "
                                 "read the head's output; give head bytes or drop local_exits.")
            msg = pb.Assignment(agent_id=key, model=a.model, split=a.split, exit=a.exit,
                                inference_target=a.inference_target, inference_tls=a.inference_tls,
                                assigned=True)
            if a.head is not None:
                msg.head.CopyFrom(self._ref(a.head))
            for exit_index in sorted(a.local_exits):
                msg.local_exits.add(exit=exit_index, partition=self._ref(a.local_exits[exit_index]))
            built[key] = msg
        with self._cond:
            self._version += 1
            for msg in built.values():
                msg.version = self._version
            self._assignments = built
            self._cond.notify_all()
            return self._version

    def _ref(self, data: bytes) -> Any:
        pb = _proto.load("control_plane_pb2")
        digest, size = self.store.put(data)
        return pb.PartitionRef(partition_id=digest, sha256=digest, size_bytes=size)

    def assignment_for(self, agent_id: str, site: str) -> tuple[int, Any]:
        """`(version, Assignment)` for an agent: its own entry, else its site's, else unassigned."""
        pb = _proto.load("control_plane_pb2")
        with self._cond:
            msg = self._assignments.get(agent_id) or self._assignments.get(site)
            if msg is None:
                return self._version, pb.Assignment(version=self._version, agent_id=agent_id, assigned=False)
            out = pb.Assignment()
            out.CopyFrom(msg)
            out.agent_id = agent_id
            return self._version, out

    def may_fetch(self, agent_id: str, site: str, partition_id: str) -> bool:
        """Whether the agent's current assignment references this partition (least privilege)."""
        _, a = self.assignment_for(agent_id, site)
        refs = ([a.head.partition_id] if a.HasField("head") else []) + [e.partition.partition_id
                                                                         for e in a.local_exits]
        return a.assigned and partition_id in refs

    def wait_change(self, known_version: int, timeout_s: float) -> int:
        """Block until the version differs from `known_version` or `timeout_s` passes."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != known_version, timeout=timeout_s)
            return self._version

    def record_agent(self, agent_id: str, info: dict) -> None:
        with self._cond:
            self._agents[agent_id] = info

    def agents(self) -> dict[str, dict]:
        """Registered agents: `{agent id: {site, device, profile, registered_at, registrations}}`."""
        with self._cond:
            return {k: dict(v) for k, v in self._agents.items()}

    def record_telemetry(self, report: dict) -> None:
        self._telemetry.append(report)

    def telemetry(self, agent_id: str | None = None) -> list[dict]:
        """Telemetry reports received, oldest first (optionally of one agent)."""
        return [r for r in list(self._telemetry) if agent_id is None or r["agent_id"] == agent_id]


class _Servicer:
    def __init__(self, plan: PlanSource, tokens: TokenAuth, stopping: threading.Event,
                 telemetry_interval_s: float, on_telemetry: Callable[[dict], None] | None) -> None:
        self._plan = plan
        self._tokens = tokens
        self._stopping = stopping
        self._interval = telemetry_interval_s
        self._on_telemetry = on_telemetry

    def _authenticate(self, context: grpc.ServicerContext) -> str:
        return self._tokens.authenticate(context)

    def _check_id(self, context: grpc.ServicerContext, agent_id: str, claimed: str) -> None:
        if claimed and claimed != agent_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"agent_id {claimed[:64]!r} does not match the certificate CN {agent_id!r}. "
                          "To fix: set agent_id in the agent config to its certificate's CN.")

    def Register(self, request: Any, context: grpc.ServicerContext) -> Any:
        pb = _proto.load("control_plane_pb2")
        agent_id = self._authenticate(context)
        self._check_id(context, agent_id, request.agent_id)
        if not request.site:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "site is empty. To fix: set `site` in the agent config.")
        previous = self._plan.agents().get(agent_id, {})
        self._plan.record_agent(agent_id, {
            "site": request.site, "device": request.device, "agent_version": request.agent_version,
            "profile": {"layer_ms": dict(request.profile.layer_ms), "uplink_mbps": request.profile.uplink_mbps,
                        "rtt_ms": request.profile.rtt_ms},
            "registered_at": time.time(), "registrations": previous.get("registrations", 0) + 1})
        _log.info("agent %s registered (site %s, device %s)", agent_id, request.site, request.device)
        return pb.RegisterReply(agent_id=agent_id, plan_version=self._plan.version,
                                telemetry_interval_s=self._interval)

    def WatchPlan(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        agent_id = self._authenticate(context)
        self._check_id(context, agent_id, request.agent_id)
        info = self._plan.agents().get(agent_id)
        if info is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "agent is not registered. To fix: call Register first.")
        sent = None
        while context.is_active() and not self._stopping.is_set():
            version, assignment = self._plan.assignment_for(agent_id, info["site"])
            if version != sent:
                sent = version
                yield assignment
            self._plan.wait_change(version, timeout_s=0.5)

    def FetchPartition(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        pb = _proto.load("control_plane_pb2")
        agent_id = self._authenticate(context)
        info = self._plan.agents().get(agent_id)
        if info is None or not self._plan.may_fetch(agent_id, info["site"], request.partition_id):
            _log.warning("agent %s denied partition %s (not in its assignment)", agent_id, request.partition_id[:12])
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"partition {request.partition_id[:64]!r} is not in this agent's current assignment. "
                          "To fix: fetch the partitions your latest Assignment names.")
        data = self._plan.store.get(request.partition_id)
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"partition {request.partition_id[:64]!r} is unknown. "
                                                     "To fix: fetch a partition_id from your current Assignment.")
        _log.info("agent %s fetches partition %s (%d bytes)", agent_id, request.partition_id[:12], len(data))
        for offset in range(0, max(len(data), 1), _CHUNK_BYTES):
            yield pb.PartitionChunk(offset=offset, data=data[offset:offset + _CHUNK_BYTES], total_size=len(data))

    def ReportTelemetry(self, request: Any, context: grpc.ServicerContext) -> Any:
        pb = _proto.load("control_plane_pb2")
        agent_id = self._authenticate(context)
        self._check_id(context, agent_id, request.agent_id)
        report = {"agent_id": agent_id, "received_at": time.time(), "plan_version": request.plan_version,
                  "requests": request.requests, "local_exit_answers": request.local_exit_answers,
                  "latency_ms_p50": request.latency_ms_p50, "latency_ms_p99": request.latency_ms_p99,
                  "uplink_mbps": request.uplink_mbps, "rtt_ms": request.rtt_ms,
                  "errors": [e[:500] for e in request.errors[:50]], "head_sha256": request.head_sha256,
                  "head_ms_p50": request.head_ms_p50, "server_ms_p50": request.server_ms_p50,
                  "split": request.split, "exit": request.exit}
        self._plan.record_telemetry(report)
        if report["errors"]:
            _log.warning("agent %s reports errors: %s", agent_id, "; ".join(report["errors"])[:1000])
        if self._on_telemetry is not None:
            try:
                self._on_telemetry(report)
            except Exception:  # the sink's failure must not break the agent's call
                _log.exception("telemetry sink failed")
        return pb.TelemetryAck(plan_version=self._plan.version)


class ControlPlaneServer:
    """gRPC ControlPlane over mTLS with per-agent bearer tokens, health checking and reflection.

    `ControlPlaneServer(plan, certs_dir="certs").start()` serves on `address`; `stop()` ends every
    stream. `on_telemetry(report_dict)` is called for each ReportTelemetry (the OptimizerActor hook).
    """

    def __init__(self, plan: PlanSource, *, certs_dir: str | Path | None = None, tls: ServerTLS | None = None,
                 tokens_file: str | Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 max_request_bytes: int = 1024 * 1024, telemetry_interval_s: float = 5.0,
                 on_telemetry: Callable[[dict], None] | None = None, max_workers: int = 32) -> None:
        if tls is None and certs_dir is None:
            raise ValueError("the control plane needs TLS. To fix: pass certs_dir= (from `isthmus certs init DIR`).")
        self.plan = plan
        self._tls = tls or ServerTLS.from_certs_dir(certs_dir)
        tokens_path = Path(tokens_file) if tokens_file else Path(certs_dir or self._tls.cert.parent) / "tokens.json"
        tokens = TokenAuth(tokens_path)  # fails now, with a clear message, on a bad tokens file
        self._stopping = threading.Event()
        self._server, self.port, self._health = build_server(
            host=host, port=port, tls=self._tls, service_names=[_SERVICE],
            max_request_bytes=max_request_bytes, max_workers=max_workers)
        self.host = host
        grpc_mod = _proto.load("control_plane_pb2_grpc")
        grpc_mod.add_ControlPlaneServicer_to_server(
            _Servicer(plan, tokens, self._stopping, telemetry_interval_s, on_telemetry),
            self._server)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "ControlPlaneServer":
        self._server.start()
        _log.info("control plane serving on %s (mTLS)", self.address)
        return self

    def stop(self, grace_s: float | None = 0.5) -> None:
        """Stop serving: open WatchPlan streams end, agents see UNAVAILABLE and reconnect."""
        self._stopping.set()
        with self.plan._cond:
            self.plan._cond.notify_all()
        self._server.stop(grace_s).wait()

    def __enter__(self) -> "ControlPlaneServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
