"""`isthmus serve-config PLAN > serve.yaml` then Ray's own `serve deploy serve.yaml` (the CLI, over the dashboard's
REST API) runs the plan: a request through Serve's HTTP proxy and one through its gRPC proxy (the product's
`isthmus.v1.Inference` servicer, a user's client built from the generated stubs, no aliasing of proto modules)
reach a real Triton on the node the plan chose.

One module-scoped local cluster: a head with Ray's dashboard (what `serve deploy -a` talks to) and one node for
the spec's region; Triton runs from this process (its URL goes in with --triton-url).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from isthmus.platform import serve_app  # noqa: E402
from isthmus.platform.triton import TritonModel, TritonServer, free_port  # noqa: E402
from isthmus.platform.triton import write_model_repository  # noqa: E402
from isthmus.spec import parse_spec  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SPEC = {
    "name": "deploy", "regions": [{"name": "us-east", "instance_types": [
        {"name": "c.small", "device": "cpu", "price_per_hour": 0.5, "max_count": 1}]}],
    "devices": {"cpu": {"kind": "cpu", "tflops": 1, "mem_gb": 4}},
    "sources": [{"name": "clients", "location": "us-east", "rate_rps": 20, "data_versions": [{"name": "raw",
                                                                                             "bytes": 64}]}],
    "models": [{"name": "mlp", "versions": [{"name": "fp32", "accuracy": 0.9, "latency_ms": {"cpu": 2},
                                              "capacity_rps": {"cpu": 100}}]}],
    "services": [{"name": "detect", "source": "clients", "model": "mlp", "slo_ms": 200}],
}
_ISTHMUS = [sys.executable, "-m", "isthmus.cli"]


def _serve_cli() -> list[str]:
    serve = Path(sys.executable).with_name("serve")
    if serve.is_file():
        return [str(serve)]
    found = shutil.which("serve")
    if found is None:
        pytest.skip("Ray's `serve` CLI is not installed next to this Python")
    return [found]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, tritonserver: str, mlp_torchscript: Path):
    from isthmus.platform.cluster import start_local_cluster

    tmp = tmp_path_factory.mktemp("deploy")
    repo = write_model_repository(tmp / "repo", [TritonModel(
        name=serve_app.triton_model_name("mlp", "fp32"), torchscript_path=mlp_torchscript, input_shape=(16,))])
    triton = TritonServer(repo, log_dir=tmp / "triton-logs")
    dashboard_port, http_port, grpc_port = free_port(), free_port(), free_port()
    (tmp / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    cluster = None
    try:
        triton.start(timeout_s=180)
        cluster = start_local_cluster(parse_spec(SPEC), dashboard_port=dashboard_port)
        model = torch.jit.load(str(mlp_torchscript))
        yield {"tmp": tmp, "model": model, "dashboard": f"http://127.0.0.1:{dashboard_port}",
               "http_port": http_port, "grpc_port": grpc_port, "triton_url": triton.grpc_url,
               "triton_http_url": triton.http_url}
    finally:
        if cluster is not None:
            from ray import serve

            try:
                serve.shutdown()
            except Exception:  # noqa: BLE001 - best effort before the cluster goes
                pass
            ray.shutdown()
            cluster.shutdown()
        triton.stop()


def _run(cmd: list[str], timeout_s: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)


def _wait_dashboard(url: str, timeout_s: float = 180) -> None:
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/serve/applications/", timeout=10) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError as err:
            last = repr(err)
        time.sleep(1)
    pytest.fail(f"Ray's dashboard at {url} did not answer /api/serve/applications/ in {timeout_s} s: {last}")


def _x(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)


def test_serve_deploy_runs_the_serve_config_yaml(deployed) -> None:
    tmp = deployed["tmp"]
    plan = _run([*_ISTHMUS, "plan", str(tmp / "spec.yaml"), "--json"], timeout_s=120)
    assert plan.returncode == 0, plan.stderr
    (tmp / "plan.json").write_text(plan.stdout)
    config = _run([*_ISTHMUS, "serve-config", str(tmp / "plan.json"), "--spec", str(tmp / "spec.yaml"),
                   "--http-port", str(deployed["http_port"]), "--grpc-port", str(deployed["grpc_port"]),
                   "--triton-url", f"us-east={deployed['triton_url']}"], timeout_s=120)
    assert config.returncode == 0, config.stderr
    (tmp / "serve.yaml").write_text(config.stdout)
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load(config.stdout))  # Ray's own schema of `serve deploy`

    _wait_dashboard(deployed["dashboard"])
    deploy = _run([*_serve_cli(), "deploy", str(tmp / "serve.yaml"), "-a", deployed["dashboard"]])
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    _wait_running(deployed["dashboard"])
    reply = _infer_http(deployed, _x(2))
    assert reply["site"] == "us-east"
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    assert "region:us-east" in nodes[reply["node_id"]], nodes[reply["node_id"]]


def _wait_running(dashboard: str) -> dict:
    deadline, status = time.monotonic() + 240, {}
    while time.monotonic() < deadline:
        shown = _run([*_serve_cli(), "status", "-a", dashboard], timeout_s=60)
        status = yaml.safe_load(shown.stdout) or {} if shown.returncode == 0 else {}
        apps = status.get("applications") or {}
        if apps and all(a.get("status") == "RUNNING" for a in apps.values()):
            break
        assert not any(a.get("status") == "DEPLOY_FAILED" for a in apps.values()), status
        time.sleep(2)
    apps = status.get("applications") or {}
    site = serve_app.site_app_name("us-east", "mlp", "fp32")
    assert {serve_app.INGRESS_APP, site} <= set(apps), status
    assert all(a["status"] == "RUNNING" for a in apps.values()), status
    return status


def _infer_http(deployed: dict, x: np.ndarray) -> dict:
    """POST through Serve's HTTP proxy; checks the output against the torch model."""
    request = urllib.request.Request(f"http://127.0.0.1:{deployed['http_port']}/", data=json.dumps(
        {"service": "detect", "input": x.tolist()}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - 127.0.0.1
        reply = json.loads(response.read())
    expected = deployed["model"](torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(reply["output"], dtype=np.float32), expected, atol=1e-5)
    return reply


def test_a_users_grpc_client_works_through_serves_grpc_proxy(deployed) -> None:
    """Stubs generated from protos/isthmus/v1 (what a user compiles), no sys.modules aliasing: Serve's proxy
    hands the request to the ingress as bytes (serve_app.add_InferenceServicer_to_server), so no pickling of
    generated classes is involved."""
    import grpc

    from isthmus import _proto

    aliased = [name for name in sys.modules if name.startswith("isthmus.v1")]
    assert not aliased, aliased
    pb, stubs = _proto.load("inference_pb2"), _proto.load("inference_pb2_grpc")
    x = _x(3)
    deadline = time.monotonic() + 120
    while True:  # the gRPC proxy may answer UNAVAILABLE for a moment after the apps turn RUNNING
        try:
            with grpc.insecure_channel(f"127.0.0.1:{deployed['grpc_port']}") as channel:
                reply = stubs.InferenceStub(channel).Infer(
                    pb.InferRequest(model="detect", tensor=_proto.encode_tensor(x)), timeout=60,
                    metadata=(("application", serve_app.INGRESS_APP),))
            break
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(1)
    expected = deployed["model"](torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(_proto.decode_tensor(reply.output), expected, atol=1e-5)
    assert reply.served_by.startswith("us-east@") and list(reply.prediction) == list(expected.argmax(axis=1))


def test_redeploy_with_tritons_http_endpoint(deployed) -> None:
    """`--triton-protocol http`: the site deployment calls Triton's HTTP endpoint (binary tensors); a gRPC client
    pointed at an HTTP port would fail, so a correct reply shows the protocol switch took."""
    tmp = deployed["tmp"]
    config = _run([*_ISTHMUS, "serve-config", str(tmp / "plan.json"), "--spec", str(tmp / "spec.yaml"),
                   "--http-port", str(deployed["http_port"]), "--grpc-port", str(deployed["grpc_port"]),
                   "--triton-url", f"us-east={deployed['triton_http_url']}", "--triton-protocol", "http"],
                  timeout_s=120)
    assert config.returncode == 0, config.stderr
    site = next(a for a in yaml.safe_load(config.stdout)["applications"] if a["name"] != serve_app.INGRESS_APP)
    assert site["args"]["triton_protocol"] == "http"
    (tmp / "serve-http.yaml").write_text(config.stdout)
    before = _replica_ids(site["name"])
    deploy = _run([*_serve_cli(), "deploy", str(tmp / "serve-http.yaml"), "-a", deployed["dashboard"]])
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    deadline = time.monotonic() + 240
    while not (_replica_ids(site["name"]) - before and _deployed_args(site["name"]).get("triton_protocol") == "http"):
        assert time.monotonic() < deadline, (before, _replica_ids(site["name"]))
        time.sleep(1)
    _wait_running(deployed["dashboard"])
    for rows in (1, 3):
        assert _infer_http(deployed, _x(rows))["site"] == "us-east"
    bad = _run([*_ISTHMUS, "serve-config", str(tmp / "plan.json"), "--spec", str(tmp / "spec.yaml"),
                "--triton-protocol", "udp"], timeout_s=120)
    assert bad.returncode == 2 and "To fix" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def _serve_details() -> dict:
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


def _replica_ids(app: str) -> set[str]:
    """Ids of the app's RUNNING SiteModel replicas (new args replace them)."""
    app_details = _serve_details()["applications"].get(app) or {}
    deployment = (app_details.get("deployments") or {}).get("SiteModel") or {}  # empty while the app rebuilds
    return {r["replica_id"] for r in deployment.get("replicas", []) if r.get("state") == "RUNNING"}


def _deployed_args(app: str) -> dict:
    app_details = _serve_details()["applications"].get(app) or {}
    return (app_details.get("deployed_app_config") or {}).get("args") or {}
