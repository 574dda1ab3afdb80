"""Edge agent through a 30 s outage of its cloud (issue #8 item 4), with the real agent process.

Timeline (bounded: one request every 0.1 s, at most 400, for 30 s):
  0-10 s   control plane down, inference ingress up  -> answered by the cloud at the planned split
  10-30 s  control plane and ingress down             -> answered from the local early exit, the reply
                                                          says so (`source: local_exit`, `degraded`, reason)
then both come back on the same ports: the agent re-registers, answers from the cloud at the planned
split again, and follows the next plan. Every request of the window must be answered (HTTP 200).
"""

from __future__ import annotations

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

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

_OUTAGE_S = 30.0
_CP_ONLY_S = 10.0
_PERIOD_S = 0.1
_MAX_REQUESTS = 400


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("outage")
    certs = root / "certs"
    init_certs(certs, agents=["cam-1-a"])
    chain = TinyChain(seed=5)
    tls = ServerTLS.from_certs_dir(certs)
    w = {"root": root, "certs": certs, "chain": chain, "tls": tls, "cp_port": free_port(), "http_port": free_port()}

    def cloud(port: int = 0) -> InferenceServer:
        return InferenceServer(chain.tails(), tls=tls, tokens_file=certs / "tokens.json", port=port).start()

    def control_plane(split: int) -> ControlPlaneServer:
        plan = PlanSource(PartitionStore(root / "partitions"))  # a restarted control plane, fed the plan again
        plan.publish({"cam-1": chain.assignment(split, w["cloud"].address, tls=True)})
        return ControlPlaneServer(plan, certs_dir=certs, port=w["cp_port"]).start()

    w["new_cloud"], w["new_cp"] = cloud, control_plane
    w["cloud"] = cloud()
    w["cp"] = control_plane(1)
    config = write_agent_config(root / "agent.toml", certs, "cam-1-a", control_plane=f"127.0.0.1:{w['cp_port']}",
                                listen_port=w["http_port"], backoff_max_s=4.0, cloud_retry_s=1.0)
    w["log"] = root / "agent.log"
    w["proc"] = start_agent(config, w["log"])
    try:
        wait_for(lambda: w["proc"].poll() is not None or (status(w["http_port"]).get("loaded") or {}).get("split"),
                 120, "the agent to load its first partition")
        assert w["proc"].poll() is None, w["log"].read_text()[-3000:]
        yield w
    finally:
        w["proc"].terminate()
        w["proc"].wait(timeout=30)
        w["cp"].stop()
        w["cloud"].stop()
        print(w["log"].read_text()[-3000:])


def test_cloud_outage_of_30_s_every_request_answered_then_planned_split_resumes(world: dict) -> None:
    port = world["http_port"]
    chain: TinyChain = world["chain"]
    x = torch.randn(2, *INPUT_SHAPE[1:], generator=torch.Generator().manual_seed(11))
    full, early = chain.reference(x, 3), chain.reference(x, 1)
    code, reply = infer(port, x)
    assert code == 200 and (reply["source"], reply["split"]) == ("cloud", 1), reply
    registrations = status(port)["registrations"]

    cloud_port = world["cloud"].port
    world["cp"].stop()
    t0 = time.monotonic()
    replies: list[tuple[float, int, dict]] = []
    ingress_down = False
    while time.monotonic() - t0 < _OUTAGE_S and len(replies) < _MAX_REQUESTS:
        t = time.monotonic() - t0
        if t >= _CP_ONLY_S and not ingress_down:
            world["cloud"].stop()
            ingress_down = True
        code, reply = infer(port, x)
        replies.append((time.monotonic() - t0, code, reply))
        time.sleep(max(0.0, _PERIOD_S - (time.monotonic() - t0 - t)))
    assert ingress_down and time.monotonic() - t0 >= _OUTAGE_S - 1

    failed = [(t, code, r) for t, code, r in replies if code != 200]
    assert not failed, failed[:3]
    cp_only = [r for t, _, r in replies if t < _CP_ONLY_S]
    both = [r for t, _, r in replies if t >= _CP_ONLY_S + 0.5]  # requests a little after the ingress stopped
    assert len(cp_only) >= 20 and len(both) >= 40, (len(cp_only), len(both))
    # the control plane alone being down changes nothing for callers: the planned split, from the cloud
    assert all((r["source"], r["split"], r["degraded"]) == ("cloud", 1, False) for r in cp_only)
    assert all(r["prediction"] == full for r in cp_only)
    # with the ingress gone too: the local early exit answers, and says so
    assert all(r["source"] == "local_exit" and r["degraded"] and r["exit"] == 1 for r in both)
    assert all("answered from local early exit 1" in r["reason"] for r in both)
    assert all(r["prediction"] == early for r in both)
    assert status(port)["connected"] is False
    worst_local_ms = max(r["latency_ms"] for r in both)

    # the cloud comes back on the same ports
    back = time.monotonic()
    world["cloud"] = world["new_cloud"](cloud_port)
    world["cp"] = world["new_cp"](1)
    wait_for(lambda: status(port)["registrations"] > registrations and status(port)["connected"], 60,
             "the agent to re-register")
    reregister_s = time.monotonic() - back
    code, reply = wait_for(lambda: (lambda r: r if r[1].get("source") == "cloud" else None)(infer(port, x)), 60,
                           "the cloud to answer again")
    cloud_back_s = time.monotonic() - back
    assert (reply["split"], reply["degraded"], reply["prediction"]) == (1, False, full)
    # ... and it follows the plan again: a new split is pushed and served
    world["cp"].plan.publish({"cam-1": chain.assignment(2, world["cloud"].address, tls=True)})
    wait_for(lambda: (status(port).get("loaded") or {}).get("split") == 2, 60, "the agent to load split 2")
    code, reply = infer(port, x)
    assert code == 200 and (reply["source"], reply["split"], reply["prediction"]) == ("cloud", 2, full)
    print(f"\noutage {_OUTAGE_S:.0f} s: {len(replies)} requests, 0 failed ({len(cp_only)} cloud at split 1 with the "
          f"control plane down, {len(both)} from local exit 1 with the cloud down, worst {worst_local_ms:.1f} ms); "
          f"re-registered {reregister_s:.1f} s and cloud answers {cloud_back_s:.1f} s after the restart")


def _best_agent_split(bandwidth_mbps: float) -> int:
    """The partitioner's latency model over TinyChain (layers L1..L3 + the classifier) for the splits the cloud
    has a tail for: agent split k = layers 1..k on the device (k = 0: the raw input is sent).

    Per-sample bytes: input 256, after L1 1024, after L2 512, after L3 128; 1 ms per layer on the device,
    0.1 ms in the cloud: the raw input wins above ~0.38 Mbit/s, running all three layers wins below.
    """
    from isthmus.partition.chain import ChainPath, ChainTable

    path = ChainPath(exit=None, names=["l1", "l2", "l3", "fc"], device_ms=[1.0] * 4, server_ms=[0.1] * 4,
                     out_bytes=[1024, 512, 128, 40])
    table = ChainTable([path], input_bytes=256)
    return 1 + min(range(-1, 3), key=lambda k: table.latency_ms(None, k, bandwidth_mbps))


def test_bandwidth_collapse_moves_the_partition_toward_the_device(world: dict) -> None:
    """Emulated uplink 4 -> 0.1 Mbit/s: the agent's probe measures it, telemetry carries it to the control plane,
    the partitioner's choice for that bandwidth is pushed, and the agent serves the deeper split."""
    port = world["http_port"]
    chain: TinyChain = world["chain"]
    cloud, plan = world["cloud"], world["cp"].plan
    cloud.set_tail(("tiny", 3, 3), chain.tail(3, 3))
    x = torch.randn(1, *INPUT_SHAPE[1:], generator=torch.Generator().manual_seed(12))
    expected = chain.reference(x, 3)
    assert (_best_agent_split(4.0), _best_agent_split(0.1)) == (0, 3)

    def measured(predicate) -> float:
        since = time.time()
        report = wait_for(lambda: [r for r in plan.telemetry("cam-1-a")
                                   if r["received_at"] > since and r["uplink_mbps"] > 0
                                   and predicate(r["uplink_mbps"])], 60, "a bandwidth report")[-1]
        return report["uplink_mbps"]

    def follow(mbps: float) -> int:
        split = _best_agent_split(mbps)
        plan.publish({"cam-1": chain.assignment(split, cloud.address, tls=True)})
        wait_for(lambda: (status(port).get("loaded") or {}).get("split") == split, 60, f"the agent to load split {split}")
        return split

    assert infer(port, x)[0] == 200
    assert world["new_cp"] and status(port)["connected"]
    from edge_helpers import http

    assert http(port, "/admin/uplink", {"uplink_mbps": 4.0})[0] == 200
    before_mbps = measured(lambda mbps: 1.5 < mbps < 10)
    assert follow(before_mbps) == 0
    code, reply = infer(port, x)
    assert code == 200 and (reply["source"], reply["split"], reply["prediction"]) == ("cloud", 0, expected)

    assert http(port, "/admin/uplink", {"uplink_mbps": 0.1})[0] == 200  # the uplink collapses
    after_mbps = measured(lambda mbps: mbps < 0.3)
    assert follow(after_mbps) == 3
    code, reply = infer(port, x)
    assert code == 200 and (reply["source"], reply["split"], reply["prediction"]) == ("cloud", 3, expected)
    assert http(port, "/admin/uplink", {"uplink_mbps": 0})[0] == 200
    print(f"\nbandwidth collapse: probe {before_mbps:.2f} -> {after_mbps:.3f} Mbit/s (emulated 4 -> 0.1); "
          "split 0 (raw input) -> 3 (all layers on the device)")
