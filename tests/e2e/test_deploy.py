"""`isthmus deploy / status / down` on a model that is not in the zoo, as a user runs them (the CLI, in processes).

One deployment for the module: a TorchScript conv net named by `artifact` in a two-region spec, latencies from
`isthmus fill-latencies`, `deploy --local --emulate-devices`; requests through the HTTP and the gRPC ingress are
compared with the model run in torch; a rate the test drives (no `report()`) re-plans to more instances and the
new node serves; bad input exits 2 and leaves the deployment serving; `down` leaves no process behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

ISTHMUS = [sys.executable, "-m", "isthmus.cli"]
SERVICE = "digits"
CAPACITY_RPS = 10.0   # one emulated instance's throughput the spec's device kind is chosen for


def _run(*args: str, timeout_s: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*ISTHMUS, *args], capture_output=True, text=True, timeout=timeout_s)


def _net(path: Path):
    import torch

    class Net(torch.nn.Module):   # not a zoo model: a user's own
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.fc = torch.nn.Linear(4 * 10 * 10, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    model = torch.jit.script(Net().eval())
    torch.jit.save(model, str(path))
    return model


def _spec(tflops: float, rate_rps: float, **extra) -> dict:
    regions = [{"name": name, "instance_types": [{"name": "c.small", "device": "slow", "price_per_hour": price,
                                                  "max_count": 4}]}
               for name, price in (("us-east", 0.5), ("eu-west", 0.6))]
    spec = {"name": "mynet", "regions": regions, "devices": {"slow": {"kind": "cpu", "tflops": tflops, "mem_gb": 4}},
            "links": [{"src": "users", "dst": r["name"], "rtt_ms": 5, "bandwidth_mbps": 1000} for r in regions],
            "sources": [{"name": "users", "location": "users", "rate_rps": rate_rps,
                         "data_versions": [{"name": "raw", "bytes": 600}]}],
            "models": [{"name": "net", "versions": [{"name": "fp32", "accuracy": 0.9, "artifact": {
                "path": "net.pt", "input_shape": [1, 12, 12], "dtype": "float32"}}]}],
            "services": [{"name": SERVICE, "source": "users", "model": "net", "slo_ms": 1000}]}
    spec.update(extra)
    return spec


def _filled(work: Path, name: str, spec: dict) -> dict:
    (work / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    result = _run("fill-latencies", str(work / f"{name}.yaml"), "-o", str(work / f"{name}-filled.yaml"))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load((work / f"{name}-filled.yaml").read_text())


def _post(url: str, body: dict, timeout_s: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - 127.0.0.1
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _status(state: Path) -> dict:
    result = _run("status", "--state-dir", str(state), "--json", timeout_s=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, tritonserver: str):
    """Fill latencies (the device kind chosen so one instance serves CAPACITY_RPS), deploy, yield, down."""
    from isthmus.profiler.devices import local_gflops

    work = tmp_path_factory.mktemp("deploy")
    model = _net(work / "net.pt")
    gflops = local_gflops()
    probe = _filled(work, "probe", _spec(gflops / 1000, 1.0))     # speed factor 1: this CPU's own numbers
    local_capacity = probe["models"][0]["versions"][0]["capacity_rps"]["slow"]
    spec = _filled(work, "spec", _spec(gflops / 1000 * CAPACITY_RPS / local_capacity, 1.0))
    version = spec["models"][0]["versions"][0]
    capacity = version["capacity_rps"]["slow"]
    spec["sources"][0]["rate_rps"] = 1.2 * capacity                 # two instances of one pool
    (work / "spec-filled.yaml").write_text(yaml.safe_dump(spec))
    state = work / "state"
    started = time.monotonic()
    result = _run("deploy", str(work / "spec-filled.yaml"), "--local", "--emulate-devices", "--state-dir",
                  str(state), "--json")
    info = {"work": work, "state": state, "model": model, "capacity": capacity, "deploy_s": time.monotonic() - started,
            "result": result, "status": json.loads(result.stdout) if result.returncode == 0 else None}
    try:
        yield info
    finally:
        if (state / "deployment.json").exists():
            _run("down", "--state-dir", str(state), timeout_s=300)


def _expected(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_deploy_serves_planned_instances_over_http_and_grpc(deployment) -> None:
    assert deployment["result"].returncode == 0, deployment["result"].stderr[-3000:]
    status = deployment["status"]
    assert {"http", "grpc", "control_plane"} <= set(status["endpoints"])
    assert status["fleet"] and all(p["planned"] == p["running"] for p in status["fleet"]), status["fleet"]
    assert max(p["planned"] for p in status["fleet"]) == 2, status["fleet"]
    rng = np.random.default_rng(0)
    nodes = set()
    for batch in (1, 1, 1, 1, 3, 1, 1, 1):
        x = rng.random((batch, 1, 12, 12), dtype=np.float32)
        code, reply = _post(status["endpoints"]["http"], {"service": SERVICE, "input": x.tolist()})
        assert code == 200, reply
        np.testing.assert_allclose(np.array(reply["output"]), _expected(deployment["model"], x), rtol=1e-4, atol=1e-5)
        nodes.add(reply["node_id"])
    assert len(nodes) == 2, nodes      # the pool's two instances, each its own node

    import grpc

    from isthmus import _proto

    pb = _proto.load("inference_pb2")
    with grpc.insecure_channel(status["endpoints"]["grpc"]) as channel:
        infer = channel.unary_unary("/isthmus.v1.Inference/Infer", request_serializer=pb.InferRequest.SerializeToString,
                                    response_deserializer=pb.InferReply.FromString)
        for _ in range(4):
            x = rng.random((2, 1, 12, 12), dtype=np.float32)
            reply = infer(pb.InferRequest(model=SERVICE, split=0, exit=-1, tensor=_proto.encode_tensor(x)), timeout=60)
            np.testing.assert_allclose(_proto.decode_tensor(reply.output), _expected(deployment["model"], x),
                                       rtol=1e-4, atol=1e-5)
    assert _status(deployment["state"])["plan_version"] == 0


def test_bad_input_exits_2_and_leaves_the_deployment_serving(deployment) -> None:
    assert deployment["result"].returncode == 0, deployment["result"].stderr[-3000:]
    work, state = deployment["work"], deployment["state"]
    spec = yaml.safe_load((work / "spec-filled.yaml").read_text())
    cases = {}
    again = _run("deploy", str(work / "spec-filled.yaml"), "--local", "--state-dir", str(state))
    cases["second deploy"] = (again, "isthmus down")
    for name, change, expect in (
            ("missing artifact", {"path": "missing.pt"}, "artifact.path"),
            ("wrong shape", {"input_shape": [3, 7]}, "input_shape")):
        bad = json.loads(json.dumps(spec))
        bad["models"][0]["versions"][0]["artifact"].update(change)
        (work / f"{name}.yaml").write_text(yaml.safe_dump(bad))
        cases[name] = (_run("deploy", str(work / f"{name}.yaml"), "--local", "--state-dir", str(work / "other")),
                       expect)
    tight = json.loads(json.dumps(spec))
    tight["services"][0]["slo_ms"] = 0.001
    (work / "tight.yaml").write_text(yaml.safe_dump(tight))
    cases["infeasible"] = (_run("deploy", str(work / "tight.yaml"), "--local", "--state-dir", str(work / "other")),
                           SERVICE)
    elsewhere = json.loads(json.dumps(spec))
    elsewhere["regions"].append({"name": "ap-south", "instance_types": [
        {"name": "c.small", "device": "slow", "price_per_hour": 0.1, "max_count": 4}]})
    elsewhere["links"].append({"src": "users", "dst": "ap-south", "rtt_ms": 5, "bandwidth_mbps": 1000})
    (work / "elsewhere.yaml").write_text(yaml.safe_dump(elsewhere))
    address = json.loads((state / "deployment.json").read_text())["address"]
    cases["address without the site"] = (
        _run("deploy", str(work / "elsewhere.yaml"), "--address", address, "--state-dir", str(work / "other")),
        "ap-south")
    for name, (result, expect) in cases.items():
        assert result.returncode == 2, (name, result.stdout[-500:], result.stderr[-2000:])
        assert expect in result.stderr and "To fix" in result.stderr, (name, result.stderr[-2000:])
    status = _status(state)
    assert all(p["planned"] == p["running"] for p in status["fleet"]), status["fleet"]
    code, reply = _post(status["endpoints"]["http"], {"service": SERVICE, "input": np.zeros((1, 1, 12, 12)).tolist()})
    assert code == 200, reply


def test_measured_rate_replans_to_more_instances_without_a_failed_request(deployment) -> None:
    """Load at 1.65 × one instance's capacity (the plan has 2 for 1.2 ×): the ingress measures it, the
    OptimizerActor plans for it at 80 % utilisation (1.65 / 0.8 > 2 instances), a third node joins and serves;
    every request of the run succeeds."""
    import ray

    from isthmus.platform.deploy import connect_optimizer

    assert deployment["result"].returncode == 0, deployment["result"].stderr[-3000:]
    state, url = deployment["state"], deployment["status"]["endpoints"]["http"]
    rate = 1.65 * deployment["capacity"]
    results: Counter = Counter()
    nodes_after: set = set()
    replanned_at: list[float] = []
    stop = threading.Event()
    body = {"service": SERVICE, "input": np.zeros((1, 1, 12, 12)).tolist()}

    def one() -> None:
        code, reply = _post(url, body)
        results["ok" if code == 200 else f"{code}: {str(reply)[:200]}"] += 1
        if code == 200 and replanned_at:
            nodes_after.add(reply["node_id"])

    threads: list[threading.Thread] = []
    start = time.monotonic()

    def drive() -> None:   # open loop at `rate`, bounded: at most 90 s
        i = 0
        while not stop.is_set() and time.monotonic() - start < 90:
            thread = threading.Thread(target=one, daemon=True)
            thread.start()
            threads.append(thread)
            i += 1
            time.sleep(max(0.0, start + i / rate - time.monotonic()))

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    fleet = []
    optimizer = connect_optimizer(state)[1]   # one Ray connection: an `isthmus status` process per poll costs a core
    try:
        while time.monotonic() - start < 80:
            fleet = ray.get(optimizer.fleet_status.remote(), timeout=60)
            if not replanned_at and sum(p["planned"] for p in fleet) >= 3:
                replanned_at.append(time.monotonic() - start)
            if replanned_at and all(p["planned"] == p["running"] for p in fleet) and \
                    time.monotonic() - start > replanned_at[0] + 15:
                break
            time.sleep(1.0)
    finally:
        stop.set()
        driver.join(timeout=30)
        for thread in threads:
            thread.join(timeout=120)
        ray.shutdown()
    status = _status(state)
    if not (replanned_at and replanned_at[0] <= 30) or set(results) != {"ok"}:
        print(json.dumps({"replanned_at": replanned_at, "status": status, "results": results}, indent=1))
    assert replanned_at and replanned_at[0] <= 30, (replanned_at, fleet, status["last_reports"],
                                                    status["watch_error"], status["services"], results)
    assert all(p["planned"] == p["running"] for p in fleet) and sum(p["planned"] for p in fleet) >= 3, fleet
    assert set(results) == {"ok"}, results
    assert len(nodes_after) >= 3, nodes_after
    replans = status["replans"]
    assert any(r["changed"] and "rates_rps" in r["reason"] for r in replans), replans
    print(f"\nrate {rate:.1f} rps, re-planned to {sum(p['planned'] for p in fleet)} instances "
          f"{replanned_at[0]:.1f} s after the load began; {sum(results.values())} requests, all ok; "
          f"deploy took {deployment['deploy_s']:.0f} s")


def test_down_leaves_no_process_behind(deployment) -> None:
    from isthmus.platform.nodes import processes

    state = deployment["state"]
    if not (state / "deployment.json").exists():
        pytest.skip("nothing deployed")
    temp = json.loads((state / "deployment.json").read_text()).get("temp_dir")
    result = _run("down", "--state-dir", str(state), timeout_s=300)
    assert result.returncode == 0, result.stderr
    assert processes(temp) == [] and processes(str(state)) == []
    assert not (state / "deployment.json").exists() and (state / "certs").is_dir()   # state kept without --purge
    again = _run("status", "--state-dir", str(state), "--json")
    assert again.returncode == 2 and "To fix" in again.stderr
