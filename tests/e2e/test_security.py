"""The control plane and the inference ingress reject whoever should not be there, and keep serving
everyone else.

Real mTLS over gRPC on 127.0.0.1, each rejection on BOTH endpoints: no client certificate, a
certificate from another CA, an expired certificate, a missing / wrong / someone else's bearer
token; a too-large message on every RPC method (RESOURCE_EXHAUSTED, then the same channel is served);
secrets never logged over a whole agent session at DEBUG.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
import threading
from pathlib import Path

import grpc
import pytest

from isthmus import _proto
from isthmus.platform._grpc import ServerTLS
from isthmus.platform.certs import init_certs, issue_cert, load_ca, write_pair
from isthmus.platform.control_plane import ControlPlaneServer, PlanSource
from isthmus.platform.inference_server import InferenceServer

pytestmark = [pytest.mark.security, pytest.mark.timeout(120)]

_CP = _proto.load("control_plane_pb2")
_CP_GRPC = _proto.load("control_plane_pb2_grpc")
_INF = _proto.load("inference_pb2")
_INF_GRPC = _proto.load("inference_pb2_grpc")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    init_certs(root / "good", agents=["a1", "a2"])
    init_certs(root / "other", agents=["a1"])  # same agent id, another CA
    ca_key, ca_cert = load_ca(root / "good")
    key, cert = issue_cert(ca_key, ca_cert, "a1", not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10),
                           days=1)
    write_pair(key, cert, root / "expired.pem", root / "expired.key")
    return {"good": root / "good", "other": root / "other", "expired_cert": root / "expired.pem",
            "expired_key": root / "expired.key"}


@pytest.fixture(scope="module")
def server(pki: dict[str, Path]):
    plan = PlanSource()
    with ControlPlaneServer(plan, certs_dir=pki["good"], max_request_bytes=64 * 1024) as cp:
        yield cp


_LIMIT_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def ingress(pki: dict[str, Path]):
    """The inference ingress the agent talks to: mTLS + bearer tokens, a 64 KiB request limit."""
    import torch

    torch.manual_seed(0)
    tail = torch.nn.Linear(4, 3).eval()
    with InferenceServer({("m", 1, -1): tail}, tls=ServerTLS.from_certs_dir(pki["good"]),
                         tokens_file=pki["good"] / "tokens.json", max_request_bytes=_LIMIT_BYTES) as inf:
        inf.reference = tail  # type: ignore[attr-defined]
        yield inf


def _channel(address: str, ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes(),
                                         private_key=key.read_bytes() if key else None,
                                         certificate_chain=cert.read_bytes() if cert else None)
    return grpc.secure_channel(address, creds)


def _agent_channel(server: ControlPlaneServer, certs: Path, agent_id: str) -> grpc.Channel:
    agent = certs / "agents" / agent_id
    return _channel(server.address, certs / "ca.pem", agent / "agent.pem", agent / "agent.key")


def _token(certs: Path, agent_id: str) -> str:
    return (certs / "agents" / agent_id / "token").read_text().strip()


def _register(channel: grpc.Channel, token: str | None, agent_id: str = "a1", **profile_kw) -> object:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    request = _CP.RegisterRequest(agent_id=agent_id, site="cam-1", device="rpi3", profile=_CP.Profile(**profile_kw))
    return _CP_GRPC.ControlPlaneStub(channel).Register(request, metadata=metadata, timeout=10)


def _code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


def _infer_request(rows: int = 2) -> object:
    import numpy as np

    return _INF.InferRequest(model="m", split=1, exit=-1, tensor=_proto.encode_tensor(np.ones((rows, 4), "float32")))


def _infer(channel: grpc.Channel, token: str | None, agent_id: str = "a1") -> object:
    """One Infer call to the ingress (agent_id is implied by the certificate there)."""
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    return _INF_GRPC.InferenceStub(channel).Infer(_infer_request(), metadata=metadata, timeout=10)


@pytest.fixture(params=["control_plane", "ingress"])
def endpoint(request: pytest.FixtureRequest, server: ControlPlaneServer, ingress: InferenceServer):
    """`(address, call(channel, token))`: Register on the control plane, Infer on the ingress."""
    if request.param == "control_plane":
        return server.address, _register
    return ingress.address, _infer


def test_good_agent_registers_and_infers(server: ControlPlaneServer, ingress: InferenceServer,
                                         pki: dict[str, Path]) -> None:
    import torch

    with _agent_channel(server, pki["good"], "a1") as channel:
        assert _register(channel, _token(pki["good"], "a1")).agent_id == "a1"
    agent = pki["good"] / "agents" / "a1"
    with _channel(ingress.address, pki["good"] / "ca.pem", agent / "agent.pem", agent / "agent.key") as channel:
        reply = _infer(channel, _token(pki["good"], "a1"))
        assert list(reply.prediction) == ingress.reference(torch.ones(2, 4)).argmax(1).tolist()


def test_no_client_certificate_rejected(endpoint, pki: dict[str, Path]) -> None:
    address, call = endpoint
    with _channel(address, pki["good"] / "ca.pem") as channel:
        assert _code(lambda: call(channel, _token(pki["good"], "a1"))) == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_rejected(endpoint, pki: dict[str, Path]) -> None:
    address, call = endpoint
    other = pki["other"] / "agents" / "a1"
    # trusts the real server CA, but presents a client certificate the server's CA never signed
    with _channel(address, pki["good"] / "ca.pem", other / "agent.pem", other / "agent.key") as channel:
        assert _code(lambda: call(channel, _token(pki["good"], "a1"))) == grpc.StatusCode.UNAVAILABLE


def test_expired_certificate_rejected(endpoint, pki: dict[str, Path]) -> None:
    address, call = endpoint
    with _channel(address, pki["good"] / "ca.pem", pki["expired_cert"], pki["expired_key"]) as channel:
        assert _code(lambda: call(channel, _token(pki["good"], "a1"))) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("token", [None, "", "not-the-token", "Bearer"])
def test_missing_or_wrong_token_rejected(endpoint, pki: dict[str, Path], token: str | None) -> None:
    address, call = endpoint
    agent = pki["good"] / "agents" / "a1"
    with _channel(address, pki["good"] / "ca.pem", agent / "agent.pem", agent / "agent.key") as channel:
        assert _code(lambda: call(channel, token)) == grpc.StatusCode.UNAUTHENTICATED


def test_another_agents_token_rejected(endpoint, pki: dict[str, Path]) -> None:
    address, call = endpoint
    agent = pki["good"] / "agents" / "a1"
    with _channel(address, pki["good"] / "ca.pem", agent / "agent.pem", agent / "agent.key") as channel:
        assert _code(lambda: call(channel, _token(pki["good"], "a2"))) == grpc.StatusCode.UNAUTHENTICATED


def test_claiming_another_agent_id_denied(server: ControlPlaneServer, pki: dict[str, Path]) -> None:
    with _agent_channel(server, pki["good"], "a1") as channel:
        code = _code(lambda: _register(channel, _token(pki["good"], "a1"), agent_id="a2"))
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_ingress_without_mtls_refuses_tokens_file(pki: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="tokens_file needs mTLS.*To fix"):
        InferenceServer({}, tokens_file=pki["good"] / "tokens.json")


_HUGE = "x" * (_LIMIT_BYTES + 1024)


def _oversized_calls(channel: grpc.Channel, metadata: tuple) -> dict[str, object]:
    """One too-large message per RPC method of both services (each > the 64 KiB limit)."""
    import numpy as np

    cp = _CP_GRPC.ControlPlaneStub(channel)
    inf = _INF_GRPC.InferenceStub(channel)
    big_tensor = _proto.encode_tensor(np.zeros((1, _LIMIT_BYTES // 4 + 256), "float32"))
    return {
        "Register": lambda: cp.Register(_CP.RegisterRequest(agent_id="a1", site="cam-1", device=_HUGE),
                                        metadata=metadata, timeout=10),
        "WatchPlan": lambda: list(cp.WatchPlan(_CP.WatchPlanRequest(agent_id=_HUGE), metadata=metadata, timeout=10)),
        "FetchPartition": lambda: list(cp.FetchPartition(_CP.FetchPartitionRequest(partition_id=_HUGE),
                                                         metadata=metadata, timeout=10)),
        "ReportTelemetry": lambda: cp.ReportTelemetry(_CP.TelemetryReport(agent_id="a1", errors=[_HUGE]),
                                                      metadata=metadata, timeout=10),
        "Infer": lambda: inf.Infer(_INF.InferRequest(model="m", split=1, exit=-1, tensor=big_tensor),
                                   metadata=metadata, timeout=10),
        "Probe": lambda: inf.Probe(_INF.ProbeRequest(payload=_HUGE.encode()), metadata=metadata, timeout=10),
    }


@pytest.mark.parametrize("method", ["Register", "WatchPlan", "FetchPartition", "ReportTelemetry", "Infer", "Probe"])
def test_oversized_request_rejected_on_every_method(server: ControlPlaneServer, ingress: InferenceServer,
                                                    pki: dict[str, Path], method: str) -> None:
    """RESOURCE_EXHAUSTED for the too-large message; the same channel is served right after."""
    import torch

    good = pki["good"]
    token = _token(good, "a1")
    metadata = (("authorization", f"Bearer {token}"),)
    address = server.address if method in {"Register", "WatchPlan", "FetchPartition", "ReportTelemetry"} \
        else ingress.address
    agent = good / "agents" / "a1"
    with _channel(address, good / "ca.pem", agent / "agent.pem", agent / "agent.key") as channel:
        assert _code(_oversized_calls(channel, metadata)[method]) == grpc.StatusCode.RESOURCE_EXHAUSTED
        if address == server.address:
            assert _register(channel, token).agent_id == "a1"
        else:
            reply = _infer(channel, token)
            assert list(reply.prediction) == ingress.reference(torch.ones(2, 4)).argmax(1).tolist()


def test_server_keeps_serving_others_and_logs_no_secret(server: ControlPlaneServer, ingress: InferenceServer,
                                                        pki: dict[str, Path],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A good agent's plan stream stays open through a burst of rejected calls and still gets the next plan."""
    caplog.set_level(logging.DEBUG)
    good = pki["good"]
    token = _token(good, "a2")
    received: list[object] = []
    endpoints = [(server.address, _register), (ingress.address, _infer)]
    with _agent_channel(server, good, "a2") as channel:
        _register(channel, token, agent_id="a2")
        stream = _CP_GRPC.ControlPlaneStub(channel).WatchPlan(
            _CP.WatchPlanRequest(agent_id="a2"), metadata=(("authorization", f"Bearer {token}"),), timeout=60)
        reader = threading.Thread(target=lambda: received.extend(a for _, a in zip(range(2), stream)), daemon=True)
        reader.start()
        for _ in range(2):
            for ep in endpoints:
                test_no_client_certificate_rejected(ep, pki)
                test_certificate_from_another_ca_rejected(ep, pki)
                test_missing_or_wrong_token_rejected(ep, pki, "not-the-token")
            test_oversized_request_rejected_on_every_method(server, ingress, pki, "Register")
        server.plan.publish({"cam-1": {"model": "tiny", "split": 0, "exit": 3, "inference_target": "127.0.0.1:1"}})
        reader.join(timeout=30)
        stream.cancel()
    assert [a.assigned for a in received] == [False, True]
    assert received[1].model == "tiny" and received[1].agent_id == "a2"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "rejected agent a1" in logged  # rejections are logged ...
    for agent_id in ("a1", "a2"):
        assert _token(good, agent_id) not in logged  # ... but never a secret
    assert (good / "server.key").read_text().splitlines()[1] not in logged


def test_health_and_reflection_over_mtls(server: ControlPlaneServer, pki: dict[str, Path]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with _agent_channel(server, pki["good"], "a1") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="isthmus.v1.ControlPlane"), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert "isthmus.v1.ControlPlane" in names


def test_revoked_token_rejected_without_restart_and_missing_file_fails_closed(tmp_path: Path) -> None:
    import json
    import os

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    init_certs(tmp_path, agents=["r1", "r2"])
    tokens = tmp_path / "tokens.json"
    with ControlPlaneServer(PlanSource(), certs_dir=tmp_path) as cp:
        with _agent_channel(cp, tmp_path, "r1") as c1, _agent_channel(cp, tmp_path, "r2") as c2:
            assert _register(c1, _token(tmp_path, "r1"), agent_id="r1").agent_id == "r1"
            hashes = json.loads(tokens.read_text())
            del hashes["r1"]
            tokens.write_text(json.dumps(hashes))
            later = tokens.stat().st_mtime + 2  # the server re-reads the file when its mtime changes
            os.utime(tokens, (later, later))
            assert _code(lambda: _register(c1, _token(tmp_path, "r1"), agent_id="r1")) == \
                grpc.StatusCode.UNAUTHENTICATED
            assert _register(c2, _token(tmp_path, "r2"), agent_id="r2").agent_id == "r2"
            tokens.unlink()
            assert _code(lambda: _register(c2, _token(tmp_path, "r2"), agent_id="r2")) == \
                grpc.StatusCode.UNAUTHENTICATED
            check = health_pb2_grpc.HealthStub(c2).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_agent_fetches_only_partitions_of_its_own_assignment(server: ControlPlaneServer, pki: dict[str, Path]) -> None:
    good = pki["good"]
    server.plan.publish({
        "cam-1": {"model": "m", "split": 1, "exit": -1, "head": b"cam-1 head", "inference_target": "127.0.0.1:1"},
        "cam-2": {"model": "m", "split": 1, "exit": -1, "head": b"secret cam-2 head", "inference_target": "127.0.0.1:1"},
    })
    token = _token(good, "a1")
    metadata = (("authorization", f"Bearer {token}"),)
    with _agent_channel(server, good, "a1") as channel:
        _register(channel, token)  # a1 sits at cam-1
        stub = _CP_GRPC.ControlPlaneStub(channel)
        mine = server.plan.assignment_for("a1", "cam-1")[1].head.partition_id
        theirs = server.plan.assignment_for("x", "cam-2")[1].head.partition_id
        chunks = list(stub.FetchPartition(_CP.FetchPartitionRequest(partition_id=mine), metadata=metadata, timeout=10))
        assert b"".join(c.data for c in chunks) == b"cam-1 head"
        denied = _code(lambda: list(stub.FetchPartition(_CP.FetchPartitionRequest(partition_id=theirs),
                                                        metadata=metadata, timeout=10)))
        assert denied == grpc.StatusCode.PERMISSION_DENIED


def test_inference_server_survives_garbage_and_keeps_serving(pki: dict[str, Path]) -> None:
    import random
    import socket

    import numpy as np
    import torch

    inf_pb = _proto.load("inference_pb2")
    inf_grpc = _proto.load("inference_pb2_grpc")
    tail = torch.nn.Linear(4, 3).eval()
    rng = random.Random(0)
    with InferenceServer({("m", 1, -1): tail}, max_request_bytes=1 << 16) as inf:
        for _ in range(20):  # raw bytes that are not HTTP/2 at all
            with socket.create_connection(("127.0.0.1", inf.port), timeout=5) as sock:
                sock.sendall(rng.randbytes(rng.randint(1, 4096)))
        with grpc.insecure_channel(inf.address) as channel:
            stub = inf_grpc.InferenceStub(channel)
            good = inf_pb.InferRequest(model="m", split=1, exit=-1,
                                       tensor=_proto.encode_tensor(np.ones((2, 4), dtype="float32")))
            bad_tensors = [
                {"dtype": "float32", "shape": [2, 4], "data": b"short"},
                {"dtype": "complex128", "shape": [1], "data": b"\0" * 16},
                {"dtype": "float32", "shape": [10**9, 10**9], "data": b""},
                {"dtype": "float32", "shape": [2, 5], "data": b"\0" * 40},  # decodes; the tail cannot run it
                {"dtype": "float32", "shape": [1], "data": b"\0" * 4, "encoding": 1},  # not Arrow IPC
            ]
            for fields in bad_tensors:
                request = inf_pb.InferRequest(model="m", split=1, exit=-1, tensor=_proto.load("tensor_pb2").Tensor(**fields))
                assert _code(lambda: stub.Infer(request, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
                assert list(stub.Infer(good, timeout=10).prediction) == tail(torch.ones(2, 4)).argmax(1).tolist()
            missing = inf_pb.InferRequest(model="m", split=2, exit=-1, tensor=good.tensor)
            assert _code(lambda: stub.Infer(missing, timeout=10)) == grpc.StatusCode.NOT_FOUND


@pytest.mark.timeout(300)
def test_full_agent_session_at_debug_logs_no_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A whole agent session (register, download, infer through the ingress, probe, telemetry, a rejected
    oversized local request, control-plane restart, shutdown) with the agent process and both servers
    logging at DEBUG: no token, token hash or private-key line appears in any log, /status or trace."""
    sys.path.insert(0, str(Path(__file__).parent))
    from edge_helpers import TinyChain, infer, start_agent, status, wait_for, write_agent_config

    from isthmus.platform._grpc import free_port

    caplog.set_level(logging.DEBUG)
    certs = tmp_path / "certs"
    init_certs(certs, agents=["cam-1-a"])
    chain = TinyChain(seed=4)
    tls = ServerTLS.from_certs_dir(certs)
    cp_port, http_port = free_port(), free_port()
    with InferenceServer(chain.tails(), tls=tls, tokens_file=certs / "tokens.json") as cloud:
        plan = PlanSource()
        plan.publish({"cam-1": chain.assignment(1, cloud.address, tls=True)})
        cp = ControlPlaneServer(plan, certs_dir=certs, port=cp_port).start()
        config = write_agent_config(tmp_path / "agent.toml", certs, "cam-1-a", control_plane=f"127.0.0.1:{cp_port}",
                                    listen_port=http_port, trace_file=str(tmp_path / "spans.jsonl"),
                                    max_request_bytes=100_000)
        log = tmp_path / "agent.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GRPC_VERBOSITY": "debug"}
        proc = subprocess.Popen([sys.executable, "-m", "isthmus.edge_agent", "--config", str(config),
                                 "--log-level", "DEBUG"], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        try:
            wait_for(lambda: proc.poll() is not None or (status(http_port).get("loaded") or {}).get("split") == 1,
                     120, "the agent to load split 1")
            assert proc.poll() is None, log.read_text()[-3000:]
            import torch

            x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
            for _ in range(5):
                code, reply = infer(http_port, x)
                assert code == 200 and reply["source"] == "cloud", reply
            request = urllib.request.Request(f"http://127.0.0.1:{http_port}/infer", data=b" " * 200_000,
                                             headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as too_big:
                urllib.request.urlopen(request, timeout=10)
            assert too_big.value.code == 413
            wait_for(lambda: any(r["uplink_mbps"] > 0 and r["requests"] for r in plan.telemetry("cam-1-a")), 60,
                     "a telemetry report with a bandwidth probe")
            registrations = status(http_port)["registrations"]
            cp.stop()
            cp = ControlPlaneServer(plan, certs_dir=certs, port=cp_port).start()
            wait_for(lambda: status(http_port)["registrations"] > registrations, 60, "the agent to re-register")
            agent_status = json.dumps(status(http_port))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            cp.stop()
    token = (certs / "agents" / "cam-1-a" / "token").read_text().strip()
    token_hash = json.loads((certs / "tokens.json").read_text())["cam-1-a"]
    key_lines = [line for name in ("agents/cam-1-a/agent.key", "server.key", "ca.key")
                 for line in (certs / name).read_text().splitlines() if line and not line.startswith("-----")]
    agent_log = log.read_text()
    assert "DEBUG" in agent_log and "registered with the control plane" in agent_log  # the log is real
    texts = {"agent log": agent_log, "server logs": "\n".join(r.getMessage() for r in caplog.records),
             "status": agent_status, "spans": (tmp_path / "spans.jsonl").read_text()}
    for where, text in texts.items():
        for secret in (token, token_hash.split(":")[-1], *key_lines):
            assert secret not in text, f"a secret appears in the {where}"
