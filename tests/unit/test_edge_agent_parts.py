"""Edge agent pieces without a cloud: config validation, token bucket, backoff, tensor codec,
the plan source, the local HTTP endpoint's limits, and that the agent never imports Ray."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isthmus import _proto
from isthmus.edge_agent import ConfigError, EdgeAgent, TokenBucket, backoff_delay_s, parse_config
from isthmus.platform._grpc import free_port
from isthmus.platform.certs import init_certs
from isthmus.platform.control_plane import PlanSource


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    init_certs(d, agents=["a1"])
    return d


def _raw(certs: Path, **extra) -> dict:
    return {"agent_id": "a1", "site": "cam-1", "device": "rpi3", "control_plane": "127.0.0.1:1",
            "ca_cert": str(certs / "ca.pem"), "cert": str(certs / "agents/a1/agent.pem"),
            "key": str(certs / "agents/a1/agent.key"), "token_file": str(certs / "agents/a1/token"), **extra}


def test_config_reads_token_and_hides_it(certs: Path) -> None:
    config = parse_config(_raw(certs))
    token = (certs / "agents/a1/token").read_text().strip()
    assert config.token == token and token not in repr(config)


@pytest.mark.parametrize("extra, needle", [
    ({"control_plane": "nohost"}, "control_plane = 'nohost' is not host:port"),
    ({"uplink_mbps": -1}, "uplink_mbps = -1 must be >= 0"),
    ({"cloud_timeout_s": 0}, "cloud_timeout_s = 0 must be a positive number"),
    ({"colour": "red"}, "unknown config key(s) ['colour']"),
    ({"site": ""}, "missing config key(s) ['site']"),
    ({"cert": "/nonexistent.pem"}, "cert = '/nonexistent.pem' does not exist"),
    ({"token_file": "/nonexistent-token"}, "token_file '/nonexistent-token' cannot be read"),
    ({"backoff_jitter": 2}, "backoff_jitter = 2 must be in [0, 1]"),
])
def test_config_errors_name_the_key(certs: Path, extra: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_raw(certs, **extra))
    assert needle in str(info.value)


def test_cli_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text("agent_id = 'a1'\n")
    proc = subprocess.run([sys.executable, "-m", "isthmus.edge_agent", "--config", str(tmp_path / "agent.toml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "missing config key(s)" in proc.stderr and "Traceback" not in proc.stderr


def test_token_bucket_paces_bytes_at_the_rate() -> None:
    bucket = TokenBucket(uplink_mbps=8.0)  # 1e6 bytes/s, no burst
    start = time.perf_counter()
    for _ in range(3):
        bucket.consume(100_000)
    elapsed = time.perf_counter() - start
    assert 0.29 <= elapsed < 1.5, elapsed  # 3 x 0.1 s of link time
    threads = [threading.Thread(target=bucket.consume, args=(100_000,)) for _ in range(3)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - start >= 0.29  # concurrent senders share the link
    bucket.set_rate(0)
    start = time.perf_counter()
    assert bucket.consume(10**9) == 0.0 and time.perf_counter() - start < 0.05


def test_the_bandwidth_probe_holds_the_uplink_briefly() -> None:
    from isthmus.edge_agent.agent import probe_bytes

    for mbps, interval_s in ((0.2, 5.0), (0.1, 5.0), (4.0, 10.0), (100.0, 10.0)):
        link_s = 8 * probe_bytes(mbps, interval_s) / (mbps * 1e6)
        assert link_s <= max(0.02 * interval_s, 8 * 2048 / (mbps * 1e6)) + 1e-9, (mbps, interval_s, link_s)
    assert 8 * probe_bytes(0.2, 5.0) / 0.2e6 <= 0.1  # the demo's uplink: at most 0.1 s behind a probe, not 1.3 s
    assert probe_bytes(0.001, 10.0) == 2048 and probe_bytes(10_000.0, 10.0) == 4 << 20
    assert probe_bytes(4.0, 10.0) == 100_000


def test_backoff_grows_caps_and_jitters() -> None:
    rng = random.Random(0)
    kw = dict(initial_s=0.5, max_s=30.0, multiplier=2.0)
    assert [backoff_delay_s(n, jitter=0.0, **kw) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    delays = [backoff_delay_s(3, jitter=0.5, rng=rng, **kw) for _ in range(200)]
    assert 2.0 <= min(delays) and max(delays) <= 4.0 and len(set(delays)) > 100
    assert backoff_delay_s(10_000, jitter=0.0, **kw) == 30.0


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
       dtype=st.sampled_from(["float32", "int64", "uint8", "float16"]), arrow=st.booleans())
def test_tensor_codec_round_trips(shape: list[int], dtype: str, arrow: bool) -> None:
    array = (np.arange(int(np.prod(shape))) % 7).astype(dtype).reshape(shape)
    back = _proto.decode_tensor(_proto.encode_tensor(array, arrow=arrow))
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=64), dtype=st.text(max_size=8) | st.sampled_from(["float32", "int8"]),
       shape=st.lists(st.integers(-3, 10**6), max_size=10), encoding=st.integers(0, 3))
def test_tensor_decoding_of_garbage_gives_only_clear_errors(data: bytes, dtype: str, shape: list[int],
                                                            encoding: int) -> None:
    pb = _proto.load("tensor_pb2")
    message = pb.Tensor(encoding=encoding, dtype=dtype, shape=shape, data=data)
    try:
        out = _proto.decode_tensor(message, max_bytes=1 << 20)
    except _proto.TensorDecodeError as err:
        assert "To fix" in str(err)
    else:
        assert list(out.shape) == shape and out.dtype.name == dtype


def test_plan_source_validates_and_versions() -> None:
    plan = PlanSource()
    good = {"model": "m", "split": 1, "exit": 2, "head": b"head-bytes", "inference_target": "127.0.0.1:9"}
    assert plan.publish({"cam-1": good}) == 1
    version, a = plan.assignment_for("agent-x", "cam-1")
    assert version == 1 and a.assigned and a.agent_id == "agent-x" and a.head.size_bytes == 10
    assert plan.store.get(a.head.partition_id) == b"head-bytes"
    assert not plan.assignment_for("agent-y", "cam-9")[1].assigned
    with pytest.raises(ValueError, match="local_exits given without a head"):
        plan.publish({"cam-1": {**good, "head": None, "local_exits": {1: b"x"}}})
    with pytest.raises(ValueError, match="not host:port"):
        plan.publish({"cam-1": {**good, "inference_target": "nowhere"}})
    assert plan.version == 1  # a rejected publish changes nothing
    t0 = time.monotonic()
    threading.Timer(0.2, lambda: plan.publish({})).start()
    assert plan.wait_change(1, timeout_s=10) == 2 and time.monotonic() - t0 < 5


def _post(port: int, path: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_local_endpoint_limits_and_errors(certs: Path) -> None:
    port = free_port()
    config = parse_config(_raw(certs, listen=f"127.0.0.1:{port}", max_request_bytes=1000,
                               backoff_initial_s=5.0, telemetry_interval_s=60.0))
    agent = EdgeAgent(config).start()
    try:
        assert _post(port, "/infer", b"{" + b" " * 5000 + b"}")[0] == 413
        code, body = _post(port, "/infer", b"not json")
        assert code == 400 and "not JSON" in body["error"]
        code, body = _post(port, "/infer", b"\x00" * 12, "application/octet-stream")
        assert code == 400 and "X-Shape" in body["error"]
        code, body = _post(port, "/infer", json.dumps({"input": [[1.0, 2.0]]}).encode())
        assert code == 503 and "no partition loaded" in body["error"]  # the control plane is unreachable
        code, body = _post(port, "/admin/uplink", json.dumps({"uplink_mbps": 4.5}).encode())
        assert code == 200 and agent.uplink.uplink_mbps == pytest.approx(4.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as resp:
            status = json.loads(resp.read())
        assert status["connected"] is False and status["loaded"] is None
        assert config.token not in json.dumps(status)
    finally:
        agent.stop()


def test_agent_imports_no_ray() -> None:
    code = ("import sys, isthmus.edge_agent.__main__, isthmus.edge_agent.http, isthmus._proto as p; "
            "p.load('control_plane_pb2_grpc'); p.load('inference_pb2_grpc'); "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'cvxpy', 'tritonclient', 'pytriton'}); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
