"""Edge agent bench: does the emulated uplink give the latency the planner predicts, what does the
agent add, how good is its bandwidth probe, and what does the local-exit fallback cost?

Real path on 127.0.0.1: `isthmus certs` PKI, ControlPlane (mTLS + token), Inference server (mTLS)
with the zoo's `alexnet_exits` (size small) split by `isthmus.partition.splits.split_modules`, an
in-process EdgeAgent answering HTTP `POST /infer`. Per (uplink_mbps, split):

- predicted `L = head_ms + rtt_ms + 8 * request_bytes / (uplink_mbps * 1e3) + tail_ms` (head/tail
  measured alone, the same run), against the measured p50 through the agent -> ratio (target 0.8-1.25);
- bandwidth probe estimate / configured uplink_mbps;
- baseline "direct": a plain gRPC client calling Infer with the whole model (no agent, no limit);
  agent overhead = agent p50 (split -1, unlimited) / direct p50;
- fallback: p50 answering from the local exit with the cloud down / p50 through the cloud.

    python bench/edge_agent.py [--quick]
Writes bench/results/edge_agent.json.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "alexnet_exits"


def _script(module: Any, example: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(module.eval(), example), buf)
    return buf.getvalue()


def _median_ms(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _post(port: int, body: bytes) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    import grpc
    import torch
    from rich.console import Console
    from rich.table import Table

    from isthmus import _proto
    from isthmus.edge_agent import EdgeAgent, load_config, write_config
    from isthmus.models import build, example_input
    from isthmus.partition.splits import split_modules
    from isthmus.platform._grpc import ServerTLS, free_port
    from isthmus.platform.certs import init_certs
    from isthmus.platform.control_plane import ControlPlaneServer, PlanSource
    from isthmus.platform.inference_server import InferenceServer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = 15 if args.quick else 40
    rates = [0.5, 2.0] if args.quick else [0.25, 0.5, 1.0, 2.0, 4.0]
    splits = [-1, 3, 7, 14]  # raw input (256 B), 2 KB, 1 KB, 256 B activations; exits sit at 3, 7, 9, 11
    model = build(MODEL, "small").eval()
    x = example_input(MODEL, "small")
    body = json.dumps({"input": x.tolist()}).encode()
    parts: dict[int, dict[str, Any]] = {}
    with torch.no_grad():
        for k in splits:
            head, tail = split_modules(model, k, None)
            act = head(x) if k >= 0 else x
            parts[k] = {"head": _script(head, x) if k >= 0 else None, "tail": _script(tail, act),
                        "head_mod": head, "tail_mod": tail, "act": act}
            parts[k]["head_ms"] = _median_ms(lambda: head(x), n) if k >= 0 else 0.0
            parts[k]["tail_ms"] = _median_ms(lambda: tail(act), n)
        for k in splits:  # the deepest exit reachable from the split runs locally when the cloud is down
            exits = [int(e) for e in model.exits if int(e) <= k]
            if exits and k in exits:
                parts[k]["local"] = {k: _script(torch.nn.Sequential(*model.exits[str(k)]), parts[k]["act"])}

    tmp = Path(tempfile.mkdtemp(prefix="isthmus-bench-edge-"))
    init_certs(tmp / "certs", agents=["bench-agent"])
    tls = ServerTLS.from_certs_dir(tmp / "certs")
    # the agent sends split 0 on the wire when it runs no head (the raw input)
    cloud = InferenceServer({(MODEL, max(k, 0), -1): p["tail"] for k, p in parts.items()}, tls=tls).start()
    plan = PlanSource()
    cp = ControlPlaneServer(plan, certs_dir=tmp / "certs").start()
    port = free_port()
    config = load_config(write_config(tmp / "agent.toml", certs_dir=tmp / "certs", agent_id="bench-agent",
                                      site="cam-1", device="cpu", control_plane=cp.address,
                                      listen=f"127.0.0.1:{port}", telemetry_interval_s=3600.0))
    agent = EdgeAgent(config).start()
    rows: list[dict[str, Any]] = []
    probes: list[dict[str, float]] = []
    try:
        def publish(k: int) -> None:
            plan.publish({"cam-1": {"model": MODEL, "split": k, "exit": -1, "head": parts[k]["head"],
                                    "local_exits": parts[k].get("local", {}), "inference_target": cloud.address,
                                    "inference_tls": True}})
            deadline = time.monotonic() + 60
            while (agent.status()["loaded"] or {}).get("split") != k:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"agent did not load split {k}: {agent.status()['last_error']}")
                time.sleep(0.05)

        # baseline: a direct gRPC client, whole model in the cloud, no agent, no uplink limit
        inf = _proto.load("inference_pb2")
        agent_dir = tmp / "certs" / "agents" / "bench-agent"
        creds = grpc.ssl_channel_credentials((tmp / "certs" / "ca.pem").read_bytes(),
                                             (agent_dir / "agent.key").read_bytes(),
                                             (agent_dir / "agent.pem").read_bytes())
        with grpc.secure_channel(cloud.address, creds) as channel:
            stub = _proto.load("inference_pb2_grpc").InferenceStub(channel)
            request = inf.InferRequest(model=MODEL, split=0, exit=-1, tensor=_proto.encode_tensor(x))
            stub.Infer(request, timeout=30)
            direct_ms = _median_ms(lambda: stub.Infer(request, timeout=30), n)
            rtt_ms = _median_ms(lambda: stub.Probe(inf.ProbeRequest(payload=b"\0" * 64), timeout=30), n)

        publish(-1)
        agent.uplink.set_rate(0)
        _post(port, body)
        agent_unlimited_ms = _median_ms(lambda: _post(port, body), n)

        for k in splits:
            publish(k)
            p = parts[k]
            sent = inf.InferRequest(model=MODEL, split=max(k, 0), exit=-1, request_id="0" * 16,
                                    tensor=_proto.encode_tensor(p["act"])).ByteSize()
            agent.uplink.set_rate(0)
            for _ in range(5):  # warm up the new partition and the channel
                _post(port, body)
            base = statistics.median(_post(port, body)["latency_ms"] for _ in range(n))
            for mbps in rates:
                agent.uplink.set_rate(mbps)
                transfer = 8 * sent / (mbps * 1e3)
                predicted = p["head_ms"] + rtt_ms + transfer + p["tail_ms"]
                measured = statistics.median(_post(port, body)["latency_ms"] for _ in range(n))
                rows.append({"uplink_mbps": mbps, "split": k, "request_bytes": sent, "predicted_ms": predicted,
                             "measured_p50_ms": measured, "ratio": measured / predicted,
                             "unlimited_p50_ms": base, "transfer_predicted_ms": transfer,
                             "transfer_measured_ms": measured - base,
                             "transfer_ratio": (measured - base) / transfer})
        for mbps in rates:
            agent.uplink.set_rate(mbps)
            probes.append({"uplink_mbps": mbps, "probe_mbps": agent.probe_uplink()[0]})

        # fallback: the cloud goes away, the agent answers from its local exit
        k_local = max(k for k in splits if "local" in parts[k])
        agent.uplink.set_rate(0)
        publish(k_local)
        cloud_ms = _median_ms(lambda: _post(port, body), n)
        cloud.stop()
        assert _post(port, body)["source"] == "local_exit"
        local_ms = _median_ms(lambda: _post(port, body), n)
    finally:
        agent.stop()
        cp.stop()
        cloud.stop()

    table = Table(title="Edge agent: emulated uplink vs the planner's formula (same run)")
    for col in ("uplink Mbps", "split", "request B", "transfer pred ms", "transfer meas ms", "meas/pred",
                "e2e pred ms", "e2e p50 ms", "e2e meas/pred"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['uplink_mbps']:g}", str(r["split"]), str(r["request_bytes"]),
                      f"{r['transfer_predicted_ms']:.1f}", f"{r['transfer_measured_ms']:.1f}",
                      f"{r['transfer_ratio']:.2f}", f"{r['predicted_ms']:.1f}", f"{r['measured_p50_ms']:.1f}",
                      f"{r['ratio']:.2f}")
    console = Console()
    console.print(table)
    summary = {
        "direct_grpc_p50_ms": direct_ms, "agent_unlimited_p50_ms": agent_unlimited_ms,
        "agent_overhead_ratio": agent_unlimited_ms / direct_ms, "rtt_ms": rtt_ms,
        "fallback_split": k_local, "cloud_p50_ms": cloud_ms, "local_exit_p50_ms": local_ms,
        "local_exit_over_cloud_ratio": local_ms / cloud_ms,
        "transfer_ratio_median": statistics.median(r["transfer_ratio"] for r in rows),
        "e2e_ratio_median": statistics.median(r["ratio"] for r in rows),
        "e2e_within_25pct": sum(0.75 <= r["ratio"] <= 1.25 for r in rows) / len(rows),
        "probe_ratios": {f"{p['uplink_mbps']:g}": p["probe_mbps"] / p["uplink_mbps"] for p in probes},
    }
    console.print(f"emulated transfer / 8·bytes/bw: median x{summary['transfer_ratio_median']:.2f}; end to end "
                  f"measured/predicted median x{summary['e2e_ratio_median']:.2f} "
                  f"({summary['e2e_within_25pct']:.0%} of points within 25%)")
    console.print(f"agent overhead: {agent_unlimited_ms:.1f} ms via agent HTTP vs {direct_ms:.1f} ms direct gRPC "
                  f"(x{summary['agent_overhead_ratio']:.2f}); local exit {local_ms:.1f} ms vs cloud {cloud_ms:.1f} ms "
                  f"(x{summary['local_exit_over_cloud_ratio']:.2f}); probe/config "
                  + ", ".join(f"{k} Mbps x{v:.2f}" for k, v in summary["probe_ratios"].items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "edge_agent.json").write_text(json.dumps({"quick": args.quick, "model": MODEL, "requests_per_point": n,
                                                         "summary": summary, "rows": rows,
                                                         "probes": probes}, indent=2))


if __name__ == "__main__":
    main()
