"""The edge agent as users run it: the real `isthmus-edge-agent` process against a real control plane
(mTLS + token) and a real gRPC Inference server (mTLS) running TorchScript tails.

What must hold (issue #5): control-plane restart -> the agent reconnects and resumes; corrupt
partition bytes -> rejected by checksum and the old partition kept; cloud down -> answers from
the local early exit. Plus: plan changes switch the split atomically under load.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from edge_helpers import INPUT_SHAPE, TinyChain, infer, start_agent, status, wait_for, write_agent_config  # noqa: E402

from isthmus.platform._grpc import ServerTLS, free_port  # noqa: E402
from isthmus.platform.certs import init_certs  # noqa: E402
from isthmus.platform.control_plane import ControlPlaneServer, PartitionStore, PlanSource  # noqa: E402
from isthmus.platform.inference_server import InferenceServer  # noqa: E402
from isthmus.platform.tracing import load_spans  # noqa: E402

pytestmark = pytest.mark.timeout(300)


class _World:
    """Certificates, a partition store on disk, a control plane, a cloud endpoint and one agent process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.certs = root / "certs"
        init_certs(self.certs, agents=["cam-1-a"])
        self.chain = TinyChain(seed=1)
        self.tls = ServerTLS.from_certs_dir(self.certs)
        self.cloud = self.start_cloud()
        self.plan = PlanSource(PartitionStore(root / "partitions"))
        self.plan.publish({"cam-1": self.assignment(1)})
        self.cp_port = free_port()
        self.cp = ControlPlaneServer(self.plan, certs_dir=self.certs, port=self.cp_port).start()
        self.http_port = free_port()
        self.config = write_agent_config(root / "agent.toml", self.certs, "cam-1-a",
                                         control_plane=f"127.0.0.1:{self.cp_port}", listen_port=self.http_port,
                                         trace_file=str(root / "spans.jsonl"), state_dir=str(root / "state"))
        self.log = root / "agent.log"
        self.proc = start_agent(self.config, self.log)
        self.x = torch.randn(4, *INPUT_SHAPE[1:], generator=torch.Generator().manual_seed(7))

    def start_cloud(self, port: int = 0) -> InferenceServer:
        """The ingress the agent talks to: mTLS + the agent's bearer token."""
        return InferenceServer(self.chain.tails(), tls=self.tls, tokens_file=self.certs / "tokens.json",
                               port=port).start()

    def assignment(self, split: int) -> dict:
        return self.chain.assignment(split, self.cloud.address, tls=True)

    def publish_and_wait(self, split: int) -> None:
        assignment = self.assignment(split)
        self.plan.publish({"cam-1": assignment})
        head = hashlib.sha256(assignment["head"]).hexdigest() if assignment["head"] else ""
        wait_for(lambda: ((status(self.http_port).get("loaded") or {}).get("head_sha256"),
                          status(self.http_port)["loaded"]["model"]) == (head, "tiny"), 60,
                 f"the agent to load split {split}")

    def restart_control_plane(self, split: int) -> None:
        """A fresh control plane process state on the same port, fed the plan again by the optimizer."""
        plan = PlanSource(PartitionStore(self.root / "partitions"))
        plan.publish({"cam-1": self.assignment(split)})
        self.plan = plan
        self.cp = ControlPlaneServer(plan, certs_dir=self.certs, port=self.cp_port).start()

    def stop_agent(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def close(self) -> None:
        self.stop_agent()
        self.cp.stop()
        self.cloud.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    w = _World(tmp_path_factory.mktemp("edge"))
    try:
        wait_for(lambda: w.proc.poll() is not None or status(w.http_port).get("loaded"), 120,
                 "the agent to register and load its first partition")
        assert w.proc.poll() is None, w.log.read_text()
        yield w
    finally:
        w.close()
        print(w.log.read_text()[-4000:])


def test_agent_splits_and_matches_the_full_model(world: _World) -> None:
    world.publish_and_wait(0)  # nothing on the device: the raw input goes to the cloud
    code, reply = infer(world.http_port, world.x)
    assert code == 200 and (reply["source"], reply["split"]) == ("cloud", 0)
    assert reply["prediction"] == world.chain.reference(world.x, 3)
    world.publish_and_wait(1)
    code, reply = infer(world.http_port, world.x)
    assert code == 200, reply
    assert (reply["source"], reply["split"], reply["exit"], reply["degraded"]) == ("cloud", 1, 3, False)
    assert reply["prediction"] == world.chain.reference(world.x, 3)
    # telemetry with a bandwidth probe reaches the control plane
    wait_for(lambda: any(r["uplink_mbps"] > 0 for r in world.plan.telemetry("cam-1-a")), 30, "a bandwidth report")
    report = wait_for(lambda: [r for r in world.plan.telemetry("cam-1-a") if r["requests"] and r["split"] == 1], 30,
                      "a latency report of split 1")[-1]
    assert report["head_ms_p50"] > 0 and report["server_ms_p50"] > 0 and report["latency_ms_p50"] > 0
    assert world.plan.agents()["cam-1-a"]["site"] == "cam-1"
    # the caller's W3C traceparent is continued; the span joins the runtime's JSONL span format
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    code, reply = infer(world.http_port, world.x, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert code == 200 and reply["trace_id"] == trace_id
    spans = [s for s in load_spans(world.root / "spans.jsonl") if s["trace_id"] == trace_id]
    assert len(spans) == 1 and spans[0]["parent_id"] == parent and spans[0]["name"] == "edge_agent"
    assert spans[0]["attributes"]["isthmus.split"] == 1 and spans[0]["duration_ms"] > 0


def test_plan_change_switches_atomically_under_load(world: _World) -> None:
    world.publish_and_wait(1)
    expected = world.chain.reference(world.x, 3)
    deadline = time.monotonic() + 60
    replies: list[tuple[int, dict]] = []

    def load() -> None:
        tail = 0
        while time.monotonic() < deadline and len(replies) < 1200 and tail < 5:
            replies.append(infer(world.http_port, world.x))
            tail += replies[-1][0] == 200 and replies[-1][1]["split"] == 2

    with cf.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(load) for _ in range(3)]
        wait_for(lambda: len(replies) >= 6, 30, "load before the plan change")
        world.plan.publish({"cam-1": world.assignment(2)})
        for f in futures:
            f.result()
    assert all(code == 200 for code, _ in replies), [r for r in replies if r[0] != 200][:3]
    assert {r["split"] for _, r in replies} == {1, 2}
    assert all(r["source"] == "cloud" and r["prediction"] == expected for _, r in replies)
    assert status(world.http_port)["loaded"]["split"] == 2


@pytest.mark.security
def test_corrupt_partition_rejected_and_old_kept(world: _World) -> None:
    world.publish_and_wait(1)
    before = status(world.http_port)
    fresh = TinyChain(seed=2)  # a model version the agent has never downloaded
    for key, tail in fresh.tails("tiny-v2").items():
        world.cloud.set_tail(key, tail)
    new_head = fresh.head(2)
    digest, _ = world.plan.store.put(new_head)
    path = world.plan.store.path(digest)
    corrupt = bytearray(new_head)
    corrupt[len(corrupt) // 2] ^= 0xFF
    path.write_bytes(bytes(corrupt))  # the bytes on disk rot after export
    world.plan.publish({"cam-1": fresh.assignment(2, world.cloud.address, model="tiny-v2", tls=True)})
    wait_for(lambda: status(world.http_port)["rejected_partitions"] > before["rejected_partitions"], 60,
             "the agent to reject the corrupt partition")
    now = status(world.http_port)
    assert now["loaded"]["split"] == 1 and now["loaded"]["head_sha256"] == before["loaded"]["head_sha256"]
    code, reply = infer(world.http_port, world.x)
    assert code == 200 and (reply["model"], reply["split"]) == ("tiny", 1)
    assert reply["prediction"] == world.chain.reference(world.x, 3)
    wait_for(lambda: any("sha256 mismatch" in e for r in world.plan.telemetry("cam-1-a") for e in r["errors"]),
             30, "the checksum error in telemetry")
    path.write_bytes(new_head)  # repaired: the agent's retry (with backoff) now succeeds
    wait_for(lambda: status(world.http_port)["loaded"]["model"] == "tiny-v2", 60,
             "the agent to load the repaired partition")
    code, reply = infer(world.http_port, world.x)
    assert code == 200 and reply["prediction"] == fresh.reference(world.x, 3)


def test_cloud_down_answers_from_local_exit(world: _World) -> None:
    world.publish_and_wait(2)
    port = world.cloud.port
    world.cloud.stop()
    try:
        code, reply = infer(world.http_port, world.x)
        assert code == 200, reply
        assert (reply["source"], reply["degraded"], reply["exit"], reply["split"]) == ("local_exit", True, 2, 2)
        assert "local early exit 2" in reply["reason"]
        assert reply["prediction"] == world.chain.reference(world.x, 2)
        code, again = infer(world.http_port, world.x)  # within the retry window: straight to the local exit
        assert code == 200 and again["source"] == "local_exit" and "skipping the cloud" in again["reason"]
    finally:
        world.cloud = world.start_cloud(port)
    code, reply = wait_for(lambda: (lambda r: r if r[1].get("source") == "cloud" else None)(
        infer(world.http_port, world.x)), 30, "the cloud to answer again")
    assert reply["prediction"] == world.chain.reference(world.x, 3)


def test_black_holed_cloud_costs_one_timeout_then_local_exits(world: _World) -> None:
    with socket.socket() as hole:  # accepts connections (kernel backlog) and never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        target = f"127.0.0.1:{hole.getsockname()[1]}"
        world.plan.publish({"cam-1": world.chain.assignment(2, target, tls=True)})
        wait_for(lambda: (status(world.http_port).get("loaded") or {}).get("inference_target") == target, 60,
                 "the agent to load the assignment with the silent cloud")
        code, first = infer(world.http_port, world.x)
        assert code == 200 and first["source"] == "local_exit" and "DEADLINE_EXCEEDED" in first["reason"]
        assert first["latency_ms"] >= 1900  # it waited cloud_timeout_s = 2 s once
        code, second = infer(world.http_port, world.x)
        assert code == 200 and second["source"] == "local_exit" and "skipping the cloud" in second["reason"]
        assert second["latency_ms"] < first["latency_ms"] / 2
        assert second["prediction"] == world.chain.reference(world.x, 2)
    world.publish_and_wait(1)
    code, reply = infer(world.http_port, world.x)  # a new endpoint starts with a clean record
    assert code == 200 and reply["source"] == "cloud"


def test_control_plane_restart_reconnects_and_resumes(world: _World) -> None:
    world.publish_and_wait(1)
    registrations = status(world.http_port)["registrations"]
    world.cp.stop()
    wait_for(lambda: not status(world.http_port)["connected"], 30, "the agent to notice the control plane is gone")
    code, reply = infer(world.http_port, world.x)  # keeps serving the planned split meanwhile
    assert code == 200 and reply["source"] == "cloud" and reply["split"] == 1
    time.sleep(1.5)  # a few reconnect attempts with backoff fail
    world.restart_control_plane(1)
    wait_for(lambda: status(world.http_port)["registrations"] > registrations and status(world.http_port)["connected"],
             60, "the agent to re-register")
    assert status(world.http_port)["loaded"]["split"] == 1
    world.publish_and_wait(2)  # and follows the plan again
    assert infer(world.http_port, world.x)[1]["split"] == 2


class _TwoOut(torch.nn.Module):
    """A DAG cut: the head sends two tensors (a conv branch and a pooled skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.conv(x)), x.mean(dim=(2, 3))


class _TwoIn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2 * 64 + 1, 10)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([a.flatten(1), b], dim=1))


def test_dag_cut_sends_several_tensors(world: _World) -> None:
    from edge_helpers import script_bytes

    torch.manual_seed(3)
    head, tail, local = _TwoOut().eval(), _TwoIn().eval(), _TwoIn().eval()
    world.cloud.set_tail(("dag", 1, 2), script_bytes(tail))
    world.plan.publish({"cam-1": {"model": "dag", "split": 1, "exit": 2, "head": script_bytes(head),
                                  "local_exits": {1: script_bytes(local)}, "inference_target": world.cloud.address,
                                  "inference_tls": True}})
    wait_for(lambda: (status(world.http_port).get("loaded") or {}).get("model") == "dag", 60, "the DAG partition")
    code, reply = infer(world.http_port, world.x)
    with torch.no_grad():
        expected = tail(*head(world.x)).argmax(dim=1).tolist()
    assert code == 200 and reply["source"] == "cloud" and reply["prediction"] == expected


def test_agent_restart_while_control_plane_down_serves_saved_partition(world: _World) -> None:
    world.publish_and_wait(1)
    world.cp.stop()
    world.stop_agent()
    world.proc = start_agent(world.config, world.root / "agent-restarted.log")
    loaded = wait_for(lambda: world.proc.poll() is not None or status(world.http_port).get("loaded"), 120,
                      "the restarted agent to load its saved partition")
    assert world.proc.poll() is None and loaded["split"] == 1
    code, reply = infer(world.http_port, world.x)
    assert code == 200 and reply["source"] == "cloud" and reply["prediction"] == world.chain.reference(world.x, 3)
    assert status(world.http_port)["connected"] is False and status(world.http_port)["registrations"] == 0
    world.restart_control_plane(2)
    wait_for(lambda: status(world.http_port)["connected"] and status(world.http_port)["loaded"]["split"] == 2, 60,
             "the agent to connect and follow the plan")
