"""`isthmus deploy --address` on a cluster someone else started (as the Terraform modules do): the plan's instances
take the nodes that exist, `status` says which planned instances have none, `down` stops Isthmus and leaves the
cluster's nodes to their owner.

The cluster: a Ray head and two nodes with `region:us-east` and `instance:c.small`, started with `ray start` like
a Terraform unit's; the spec plans three instances there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

ISTHMUS = [sys.executable, "-m", "isthmus.cli"]


def _run(*args: str, timeout_s: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*ISTHMUS, *args], capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tritonserver: str):
    """A head and two us-east nodes (not started by Isthmus); stopped at the end."""
    import ray

    from isthmus.platform.cluster import _local_serve_ports, serve_env
    from isthmus.platform.nodes import LocalNodes, kill_processes, processes, temp_dir
    from isthmus.platform.triton import free_port

    work = tmp_path_factory.mktemp("address")
    temp = temp_dir(work / "cluster")
    nodes = LocalNodes.start_head(temp, {**serve_env(), **_local_serve_ports()}, port=free_port(),
                                  client_port=free_port())
    try:
        ray.init(address=nodes.address, logging_level="ERROR")
        for n in range(2):
            nodes.add(f"terraform-{n}", {"region:us-east": 1.0, "instance:c.small": 1.0})
        ray.shutdown()
        yield {"work": work, "address": nodes.address}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        kill_processes([pid for pid, _ in processes(temp)])


def test_deploy_on_existing_nodes_shows_the_instances_without_a_node(cluster, mlp_torchscript: Path) -> None:
    work = cluster["work"]
    spec = {"name": "onfleet", "devices": {"t4": {"kind": "gpu", "tflops": 8.1, "mem_gb": 16}},
            "regions": [{"name": "us-east", "instance_types": [
                {"name": "c.small", "device": "t4", "price_per_hour": 0.5, "max_count": 4}]}],
            "links": [{"src": "users", "dst": "us-east", "rtt_ms": 5, "bandwidth_mbps": 1000}],
            "sources": [{"name": "users", "location": "users", "rate_rps": 25,
                         "data_versions": [{"name": "raw", "bytes": 64}]}],
            "models": [{"name": "mlp", "versions": [{"name": "fp32", "accuracy": 0.9, "latency_ms": {"t4": 5},
                                                      "capacity_rps": {"t4": 10},
                                                      "artifact": {"path": str(mlp_torchscript),
                                                                   "input_shape": [16]}}]}],
            "services": [{"name": "classify", "source": "users", "model": "mlp", "slo_ms": 500}]}
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    state = work / "state"
    result = _run("deploy", str(work / "spec.yaml"), "--address", cluster["address"], "--state-dir", str(state),
                  "--json")
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        status = json.loads(result.stdout)
        assert status["fleet"] == [{"site": "us-east", "instance_type": "c.small", "model_version": "mlp/fp32",
                                    "planned": 3, "running": 2, "without_node": 1}], status["fleet"]
        nodes = set()
        for _ in range(8):
            body = json.dumps({"service": "classify", "input": np.ones((1, 16)).tolist()}).encode()
            request = urllib.request.Request(status["endpoints"]["http"] + "/", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - 127.0.0.1
                nodes.add(json.loads(response.read())["node_id"])
        assert len(nodes) == 2, nodes
        shown = _run("status", "--state-dir", str(state))
        assert "without a node" in shown.stdout, shown.stdout
    finally:
        down = _run("down", "--state-dir", str(state), timeout_s=300)
    assert down.returncode == 0, down.stderr
    import ray

    ray.init(address=cluster["address"], logging_level="ERROR")
    try:
        alive = [n for n in ray.nodes() if n["Alive"] and "region:us-east" in n["Resources"]]
        assert len(alive) == 2           # the cluster's own nodes stay
        from ray.util import list_named_actors

        assert not [a for a in list_named_actors(all_namespaces=True) if a["name"].startswith("isthmus")]
    finally:
        ray.shutdown()
