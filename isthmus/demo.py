"""`isthmus demo`: the whole system on one machine, in one command (`make demo`).

A local Ray cluster (regions us-east and eu-west, edge site cam-1), the small AlexNet of the zoo
trained on digits (cached), profiled per layer; the geo planner plans split routes; the
OptimizerActor deploys the plan on Ray Serve + one Triton per region (DeviceActors); a control
plane (mTLS + tokens) assigns two edge-agent processes their head partition; their uplinks are
token buckets of `bandwidth_mbps`. The driver sends paced requests (digits test images) through
the agents, halves the agents' uplink midway, forwards the agents' bandwidth probes to the
OptimizerActor, which re-plans (drift > 20 %) and rolls Serve over; the new plan's split is
published to the agents, which switch atomically.

Numbers the plan is made from (all measured here, none given):

    compute:  per-layer latency of the model on this CPU (edge and cloud devices declared at this
              CPU's speed, so head_ms / tail_ms / latency_ms are the profile's);
    bytes:    what an agent puts on its uplink per request (the encoded InferRequest), raw input
              or split activation;
    rtt_ms:   the path's fixed overhead O = p50(measured) − compute − 8·bytes/bandwidth, from a
              short calibration run on the deployed system, after a warm-up whose latencies are dropped;
    route:    L_r = head_ms + O + 8·bytes_r/bandwidth + tail_ms   (shared/DESIGN.md, Spec v1).

To make the re-plan visible, split tails are offered in eu-west only (the dearer region) and the
SLO is set between the raw route's latency before and after the drop: before it, raw inputs to
us-east are cheapest; after it, only the split route (fewer bytes on the uplink) meets the SLO.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

__all__ = ["DemoError", "DemoSettings", "register", "run_demo"]

SERVICE = "digits"
MODEL = "alexnet"
ZOO = "alexnet_exits"
VERSION = "fp32"
EDGE_SITE = "cam-1"
REGIONS = {"us-east": ("c.small", "cpu-a", 0.5), "eu-west": ("c.small", "cpu-b", 0.6)}
TAIL_REGION = "eu-west"
AGENTS = ("cam-1-a", "cam-1-b")
HOPS = ("edge_agent", "ingress", "deployment", "triton")


class DemoError(RuntimeError):
    """The demo cannot run or a step failed (the message says which and how to fix it)."""


@dataclass
class DemoSettings:
    """Durations and load of one demo run (`--quick` shortens the phases)."""

    warmup_s: float = 4.0    # load whose latencies are dropped: first calls open connections, warm caches
    calibrate_s: float = 8.0
    before_s: float = 30.0
    after_s: float = 40.0
    rate_rps_per_agent: float = 5.0
    bandwidth_mbps: float = 0.2
    probe_interval_s: float = 5.0

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(calibrate_s=8.0, before_s=15.0, after_s=25.0)


@dataclass
class _Sample:
    agent: str
    t_s: float
    latency_ms: float
    ok: bool
    split: int | None = None
    correct: bool = False
    plan_version: int = 0
    trace_id: str = ""
    source: str = ""
    error: str = ""


@dataclass
class _State:
    """What the run produced, for the summary and the report."""

    samples: list[_Sample] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    plans: list[dict] = field(default_factory=list)
    replans: list[dict] = field(default_factory=list)
    overhead_ms: float = 0.0
    slo_ms: float = 0.0
    accuracy_model: float = 0.0
    t0: float = field(default_factory=time.monotonic)

    def event(self, name: str, **extra: Any) -> None:
        self.events.append({"event": name, "t_s": time.monotonic() - self.t0, **extra})


# ---------------------------------------------------------------- model, profile, partitions

def _wire_bytes(tensor: Any, split: int) -> int:
    """Bytes an agent's uplink carries for one request with this tensor (the encoded InferRequest)."""
    from isthmus import _proto

    pb = _proto.load("inference_pb2")
    return pb.InferRequest(model=SERVICE, split=split, exit=-1, tensor=_proto.encode_tensor(tensor.numpy()),
                           request_id="0" * 16).ByteSize()


def _prepare_model(workdir: Path) -> dict[str, Any]:
    """Train (cached), profile, and export the full model plus head/tail TorchScript files of every split."""
    import dataclasses

    import torch

    from isthmus.models.export import to_torchscript
    from isthmus.models.train import train_small
    from isthmus.models.zoo import example_input
    from isthmus.profiler import profile_model

    model, info = train_small(ZOO)
    profile = profile_model(ZOO, VERSION, size="small", progress=False)
    final_only = dataclasses.replace(profile, exits=[])  # the agents' splits ride the final classifier's path
    x = example_input(ZOO, "small")
    full_path = to_torchscript(model, x, workdir / "full.pt")
    return {"model": model, "accuracy": float(info["accuracy"]), "profile": final_only, "x": x,
            "full_path": full_path, "input_bytes": _wire_bytes(x, 0)}


def _split_candidates(spec: Any, prepared: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """Sending splits of the final path (Pareto-useful ones from `fill_splits`), their files and wire bytes."""
    import torch

    from isthmus.partition import fill_splits
    from isthmus.partition.splits import export_partitions, split_modules

    filled = fill_splits(spec, profiles={(ZOO, VERSION): prepared["profile"]})
    out = []
    for point in filled.models[0].versions[0].splits:
        if not point.tail_ms or point.exit is not None or point.split == 0:
            continue  # device-only routes, exits and split 0 (= raw input on the wire) stay out of the demo
        head, _ = split_modules(prepared["model"], point.split, None)
        with torch.no_grad():
            activation = head(prepared["x"])
        head_path, tail_path = export_partitions(ZOO, "small", point.split, None, workdir, model=prepared["model"])
        out.append({"point": point, "head": head_path, "tail": tail_path, "shape": tuple(activation.shape[1:]),
                    "bytes": _wire_bytes(activation, point.split)})
    if not out:
        raise DemoError("the partitioner kept no split that sends an activation. To fix: check the profile "
                        f"of {ZOO} (isthmus profile {ZOO} --size small)")
    return out


def _spec(prepared: dict[str, Any], splits: list[dict[str, Any]], *, bandwidth_mbps: float, overhead_ms: float,
          slo_ms: float, rate_rps: float) -> Any:
    """The demo's Spec v1 from measured numbers (module docstring)."""
    from isthmus.profiler import local_gflops
    from isthmus.spec import parse_spec

    tflops = local_gflops() / 1000.0  # every device kind runs at this CPU's speed: profiles apply as measured
    devices = {kind: {"kind": "cpu", "tflops": tflops, "mem_gb": 4} for _, kind, _ in REGIONS.values()}
    devices["edge-cpu"] = {"kind": "cpu", "tflops": tflops, "mem_gb": 1}
    tail_kind = REGIONS[TAIL_REGION][1]
    split_points = [dict(s["point"].model_dump(), activation_bytes=s["bytes"],
                         tail_ms={tail_kind: s["point"].tail_ms[tail_kind]}) for s in splits]
    full_ms = prepared["profile"].latency_ms
    return parse_spec({
        "name": "demo",
        "regions": [{"name": name, "instance_types": [{"name": it, "device": kind, "price_per_hour": price,
                                                       "max_count": 2}]}
                    for name, (it, kind, price) in REGIONS.items()],
        "edge_sites": [{"name": EDGE_SITE, "device": "edge-cpu", "count": len(AGENTS)}],
        "devices": devices,
        "links": [{"src": EDGE_SITE, "dst": name, "rtt_ms": overhead_ms, "bandwidth_mbps": bandwidth_mbps}
                  for name in REGIONS],
        "sources": [{"name": "cams", "location": EDGE_SITE, "rate_rps": rate_rps,
                     "data_versions": [{"name": "raw", "bytes": prepared["input_bytes"]}]}],
        "models": [{"name": MODEL, "zoo": ZOO, "versions": [{
            "name": VERSION, "accuracy": prepared["accuracy"],
            "latency_ms": {kind: full_ms for _, kind, _ in REGIONS.values()},
            "splits": split_points}]}],
        "services": [{"name": SERVICE, "source": "cams", "model": MODEL, "slo_ms": slo_ms}],
    })


def _transfer_ms(nbytes: int, bandwidth_mbps: float) -> float:
    return 8.0 * nbytes / (bandwidth_mbps * 1e3)


def _choose_slo_ms(prepared: dict[str, Any], splits: list[dict[str, Any]], overhead_ms: float,
                   bandwidth_mbps: float) -> float:
    """An SLO between the raw route after the drop (must miss it) and the larger of the raw route before the
    drop and the best split route after it (both must meet it)."""
    full_ms = prepared["profile"].latency_ms
    raw_before = overhead_ms + full_ms + _transfer_ms(prepared["input_bytes"], bandwidth_mbps)
    raw_after = overhead_ms + full_ms + _transfer_ms(prepared["input_bytes"], bandwidth_mbps / 2)
    tail_kind = REGIONS[TAIL_REGION][1]
    split_after = min(overhead_ms + s["point"].head_ms["edge-cpu"] + s["point"].tail_ms[tail_kind]
                      + _transfer_ms(s["bytes"], bandwidth_mbps / 2) for s in splits)
    low = max(raw_before, split_after)
    if not low < raw_after:
        raise DemoError(f"at {bandwidth_mbps / 2:g} Mbps no split is faster than sending the raw input "
                        f"({split_after:.1f} vs {raw_after:.1f} ms). To fix: lower --bandwidth-mbps")
    return (low + raw_after) / 2


# ---------------------------------------------------------------- agents and load

def _http_json(port: int, path: str, body: dict | None = None, timeout_s: float = 30.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - 127.0.0.1 only
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _start_agents(out: Path, certs: Path, cp_port: int, settings: DemoSettings) -> dict[str, dict]:
    from isthmus.edge_agent import write_config
    from isthmus.platform._grpc import free_port

    agents = {}
    for agent_id in AGENTS:
        port = free_port()
        config = write_config(out / "agents" / f"{agent_id}.toml", certs_dir=certs, agent_id=agent_id,
                              site=EDGE_SITE, device="edge-cpu", control_plane=f"127.0.0.1:{cp_port}",
                              listen=f"127.0.0.1:{port}", uplink_mbps=settings.bandwidth_mbps,
                              telemetry_interval_s=1.0, probe_interval_s=settings.probe_interval_s,
                              cloud_timeout_s=20.0, backoff_initial_s=0.2, backoff_max_s=2.0,
                              trace_file=str(out / "agents" / f"{agent_id}.spans.jsonl"))
        log = (out / "agents" / f"{agent_id}.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "isthmus.edge_agent", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        agents[agent_id] = {"port": port, "proc": proc, "log": out / "agents" / f"{agent_id}.log"}
    return agents


def _wait_agents_loaded(agents: dict[str, dict], split: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for agent_id, agent in agents.items():
        while True:
            if agent["proc"].poll() is not None:
                raise DemoError(f"edge agent {agent_id} exited (code {agent['proc'].returncode}): "
                                f"{agent['log'].read_text()[-600:]}. To fix: read {agent['log']}")
            try:
                loaded = _http_json(agent["port"], "/status", timeout_s=5)[1].get("loaded") or {}
            except OSError:
                loaded = {}
            if loaded.get("split") == split:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"edge agent {agent_id} did not load split {split} within {timeout_s:.0f} s "
                                f"(loaded: {loaded}). To fix: read {agent['log']}")
            time.sleep(0.2)


def _drive(agents: dict[str, dict], data: tuple[Any, Any], state: _State, duration_s: float, rate_rps: float,
           phase: str, at: dict[float, Any] | None = None) -> None:
    """Paced load: each agent gets one request every 1/rate s (never more than one outstanding), for duration_s.

    `at` maps seconds into the phase → a callable run once then (the bandwidth drop)."""
    x, y = data
    stop = time.monotonic() + duration_s
    pending = sorted((at or {}).items())

    def loop(index: int, agent_id: str) -> None:
        port, i = agents[agent_id]["port"], index
        next_s = time.monotonic()
        while time.monotonic() < stop:
            row = i % len(x)
            i += len(agents)
            start = time.monotonic()
            try:
                code, reply = _http_json(port, "/infer", {"input": x[row:row + 1].tolist()})
            except OSError as err:
                code, reply = 0, {"error": str(err)}
            latency_ms = (time.monotonic() - start) * 1e3
            ok = code == 200 and reply.get("source") == "cloud"
            state.samples.append(_Sample(
                agent=agent_id, t_s=start - state.t0, latency_ms=latency_ms, ok=ok, split=reply.get("split"),
                correct=ok and reply.get("prediction") == [int(y[row])], plan_version=reply.get("plan_version", 0),
                trace_id=reply.get("trace_id", ""), source=str(reply.get("source", "")),
                error="" if ok else str(reply.get("error") or reply.get("reason") or code)[:300]))
            next_s = max(next_s + 1.0 / rate_rps, time.monotonic())  # a stalled request's slots are skipped,
            time.sleep(max(0.0, next_s - time.monotonic()))           # not made up in a burst

    threads = [threading.Thread(target=loop, args=(n, a), daemon=True) for n, a in enumerate(agents)]
    begin = time.monotonic()
    state.event(f"{phase}_start")
    for t in threads:
        t.start()
    for when, action in pending:
        time.sleep(max(0.0, begin + when - time.monotonic()))
        action()
    for t in threads:
        t.join(timeout=duration_s + 120)
    state.event(f"{phase}_end")


# ---------------------------------------------------------------- plan → agents

def _assignments(plan: Any, splits: list[dict[str, Any]], target: str) -> dict[str, dict]:
    """One assignment per agent: agents are spread over the service's routes by the plan's fractions."""
    routes = sorted((r for r in plan.routes if r.service == SERVICE and r.fraction > 0), key=lambda r: -r.fraction)
    heads = {s["point"].split: s["head"].read_bytes() for s in splits}
    out = {}
    for n, agent_id in enumerate(AGENTS):
        position, cumulative, chosen = (n + 0.5) / len(AGENTS), 0.0, routes[-1]
        for route in routes:
            cumulative += route.fraction
            if position <= cumulative:
                chosen = route
                break
        split = chosen.split
        out[agent_id] = {"model": SERVICE, "split": -1 if split is None else split, "exit": -1,
                         "head": None if split is None else heads[split], "inference_target": target,
                         "inference_tls": False}
    return out


def _mean_split(plan: Any) -> float:
    """Request-weighted split index of a plan (-1 = raw input: the whole model in the cloud)."""
    return sum(r.fraction * (-1 if r.split is None else r.split) for r in plan.routes if r.service == SERVICE)


class _BandwidthWatcher:
    """Forwards the agents' bandwidth probes (median of the latest per agent) to the OptimizerActor; on a
    re-plan that changes routing, publishes the new plan's assignments to the agents."""

    def __init__(self, plan_source: Any, optimizer: Any, splits: list, target: str, state: _State,
                 agents: dict[str, dict]) -> None:
        self.plan_source, self.optimizer, self.splits, self.target, self.state = (
            plan_source, optimizer, splits, target, state)
        self.agents = agents
        self._stop = threading.Event()
        self._seen: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error = ""

    def start(self) -> "_BandwidthWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _latest(self) -> dict[str, float]:
        latest = {}
        for agent_id in AGENTS:
            reports = [r for r in self.plan_source.telemetry(agent_id) if r.get("uplink_mbps", 0) > 0]
            if reports:
                latest[agent_id] = float(reports[-1]["uplink_mbps"])
        return latest

    def _run(self) -> None:
        import ray

        from isthmus.spec import Plan

        while not self._stop.wait(0.5):
            latest = self._latest()
            if len(latest) < len(AGENTS) or latest == self._seen:
                continue
            self._seen = latest
            mbps = statistics.median(latest.values())
            try:
                entry = ray.get(self.optimizer.report.remote(
                    {"bandwidth_mbps": {(EDGE_SITE, region): mbps for region in REGIONS}}), timeout=300)
            except Exception as err:  # noqa: BLE001 - recorded and shown; the load keeps running
                self.error = f"{type(err).__name__}: {str(err)[:300]}"
                continue
            self.state.event("telemetry", bandwidth_mbps=mbps, drift=entry["drift"], replanned=entry["replanned"],
                             changed=entry["changed"])
            if entry["replanned"]:
                plan = Plan.model_validate(ray.get(self.optimizer.plan.remote(), timeout=60))
                self.state.replans.append({**{k: v for k, v in entry.items() if k != "rollout"},
                                           "rollout": entry.get("rollout", {}), "bandwidth_mbps": mbps,
                                           "mean_split": _mean_split(plan), "t_s": time.monotonic() - self.state.t0})
                if entry["changed"]:
                    self.state.plans.append({"t_s": time.monotonic() - self.state.t0, "bandwidth_mbps": mbps,
                                             "plan": plan.model_dump(mode="json")})
                    assignments = _assignments(plan, self.splits, self.target)
                    version = self.plan_source.publish(assignments)
                    self.state.event("published", plan_source_version=version, mean_split=_mean_split(plan))
                    self._wait_switched({a: v["split"] for a, v in assignments.items()})

    def _wait_switched(self, splits: dict[str, int], timeout_s: float = 60.0) -> None:
        """Record `agents_switched` once every agent reports the new split loaded (its /status)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                loaded = {a: (_http_json(self.agents[a]["port"], "/status", timeout_s=5)[1].get("loaded") or {})
                          for a in splits}
            except OSError:
                loaded = {}
            if loaded and all(loaded[a].get("split") == split for a, split in splits.items()):
                self.state.event("agents_switched", splits=splits)
                return
            time.sleep(0.1)


# ---------------------------------------------------------------- the run

def _digits_test() -> tuple[Any, Any]:
    from isthmus.models.train import digits

    x, y = digits(ZOO, "test")
    return x.numpy(), y.numpy()


def run_demo(out: Path, settings: DemoSettings, progress: Any = None) -> dict[str, Any]:
    """Run the demo end to end, write `out/summary.json`, `out/report.html`, `out/traces.jsonl`; return the summary.

    `progress(step: str)` is called at the start of every step (the CLI shows it with Rich).
    """
    from isthmus.platform.triton import find_tritonserver

    step = progress or (lambda _s: None)
    out = Path(out).resolve()  # agent configs hold paths, which an agent resolves against its config's folder
    try:
        find_tritonserver()
    except Exception as err:  # noqa: BLE001 - any failure to find the binary stops the demo the same way
        raise DemoError(f"no tritonserver binary ({err}). To fix: pip install nvidia-pytriton") from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "agents").mkdir(exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    for old in [out / "traces.jsonl", *(out / "agents").glob("*.spans.jsonl"), work / "serve.spans.jsonl",
                work / "triton.spans.jsonl"]:
        old.unlink(missing_ok=True)
    state = _State()
    step("train + profile the small zoo model on digits (cached after the first run)")
    prepared = _prepare_model(work)
    state.accuracy_model = prepared["accuracy"]
    rate = settings.rate_rps_per_agent * len(AGENTS)
    guess = _spec(prepared, [], bandwidth_mbps=settings.bandwidth_mbps, overhead_ms=10.0, slo_ms=1000.0,
                  rate_rps=rate)
    step("partition: split candidates (head / tail TorchScript)")
    splits = _split_candidates(guess, prepared, work / "partitions")
    with _Runtime(out, work, prepared, splits, settings) as runtime:
        step("start the local Ray cluster (us-east, eu-west, cam-1) and Triton per region")
        runtime.start_cluster(guess)
        step("deploy the first plan on Serve; control plane and two edge agents")
        runtime.deploy_initial(guess)
        step(f"warm up ({settings.warmup_s:g} s), calibrate the path overhead ({settings.calibrate_s:g} s of load)")
        data = _digits_test()
        _drive(runtime.agents, data, _State(t0=state.t0), settings.warmup_s, settings.rate_rps_per_agent, "warmup")
        calib = _State(t0=state.t0)
        _drive(runtime.agents, data, calib, settings.calibrate_s, settings.rate_rps_per_agent, "calibrate")
        good = [s.latency_ms for s in calib.samples if s.ok]
        if not good:
            raise DemoError(f"no calibration request succeeded: {[s.error for s in calib.samples][:3]}. "
                            f"To fix: read the agent logs in {out / 'agents'}")
        state.overhead_ms = statistics.median(good) - prepared["profile"].latency_ms - _transfer_ms(
            prepared["input_bytes"], settings.bandwidth_mbps)
        state.slo_ms = _choose_slo_ms(prepared, splits, state.overhead_ms, settings.bandwidth_mbps)
        spec = _spec(prepared, splits, bandwidth_mbps=settings.bandwidth_mbps, overhead_ms=state.overhead_ms,
                     slo_ms=state.slo_ms, rate_rps=rate)
        step("plan with split routes; the OptimizerActor deploys it")
        plan = runtime.start_optimizer(spec)
        state.plans.append({"t_s": time.monotonic() - state.t0, "bandwidth_mbps": settings.bandwidth_mbps,
                            "plan": plan.model_dump(mode="json")})
        runtime.publish(plan)
        watcher = _BandwidthWatcher(runtime.plan_source, runtime.optimizer, splits, runtime.target, state,
                                    runtime.agents).start()
        try:
            step(f"drive load {settings.before_s:g} s, halve the uplink, {settings.after_s:g} s more")

            def drop() -> None:
                for agent in runtime.agents.values():
                    _http_json(agent["port"], "/admin/uplink", {"uplink_mbps": settings.bandwidth_mbps / 2})
                state.event("bandwidth_drop", bandwidth_mbps=settings.bandwidth_mbps / 2)

            _drive(runtime.agents, data, state, settings.before_s + settings.after_s, settings.rate_rps_per_agent,
                   "load", at={settings.before_s: drop})
        finally:
            watcher.stop()
        step("collect traces and write the report")
        from isthmus.demo_report import collect_traces, summarize_run, write_report

        traces = collect_traces(out, timeout_s=30.0)
        summary = summarize_run(out, state, spec, traces, watcher.error, settings)
    write_report(out, summary, state)
    return summary


class _Runtime:
    """Everything the demo starts, stopped in reverse order on exit (even after an error)."""

    def __init__(self, out: Path, work: Path, prepared: dict, splits: list, settings: DemoSettings) -> None:
        self.out, self.work, self.prepared, self.splits, self.settings = out, work, prepared, splits, settings
        self.cluster = self.receiver = self.cp = self.optimizer = self.plan_source = None
        self.devices: dict[str, Any] = {}
        self.agents: dict[str, dict] = {}
        self.serve_options: dict[str, Any] = {}
        self.target = ""

    def __enter__(self) -> "_Runtime":
        return self

    def start_cluster(self, spec: Any) -> None:
        import ray

        from isthmus.platform import serve_app
        from isthmus.platform.cluster import ClusterError, start_local_cluster
        from isthmus.platform.tracing import OtlpHttpReceiver, triton_trace_config
        from isthmus.platform.triton import TritonModel

        self.receiver = OtlpHttpReceiver(str(self.work / "triton.spans.jsonl")).start()
        try:
            self.cluster = start_local_cluster(spec)
        except ClusterError as err:
            raise DemoError(f"the local Ray cluster did not come up: {err}. To fix: retry when the machine is "
                            "less loaded (every site's raylet must register within 2 minutes)") from None
        full = TritonModel(name=serve_app.triton_model_name(MODEL, VERSION), torchscript_path=self.prepared["full_path"],
                           input_shape=tuple(self.prepared["x"].shape[1:]), max_batch_size=8,
                           dynamic_batching=False)
        tails = [TritonModel(name=serve_app.triton_model_name(MODEL, VERSION, s["point"].split, None),
                             torchscript_path=s["tail"], input_shape=s["shape"], max_batch_size=8,
                             dynamic_batching=False)
                 for s in self.splits]
        for region in REGIONS:
            models = [full, *tails] if region == TAIL_REGION else [full]
            self.devices[region] = serve_app.start_site_device(
                region, REGIONS[region][1], models, spec, workdir=str(self.work / f"triton-{region}"),
                trace_config=triton_trace_config(self.receiver.url), start_timeout_s=300.0)
        try:
            ray.get([d.start.remote() for d in self.devices.values()], timeout=600)
        except Exception as err:  # noqa: BLE001 - a Ray task error wrapping TritonError, or a timeout
            lines = [line for line in str(err).splitlines() if "Error" in line]
            raise DemoError(f"Triton did not start: {(lines or [str(err)])[-1][:400]}. To fix: retry when the "
                            f"machine is less loaded; Triton's logs are in {self.work}/triton-*/logs") from None

    def deploy_initial(self, spec: Any) -> None:
        """Plan the calibration spec (raw inputs), deploy it on Serve, start the control plane and the agents.

        Both regions' site apps stay deployed for the whole run (`keep_apps`), so a re-plan only moves
        the ingress's weights."""
        from isthmus.optimizer import GeoPlanner
        from isthmus.platform._grpc import free_port
        from isthmus.platform.certs import init_certs
        from isthmus.platform.control_plane import ControlPlaneServer, PartitionStore, PlanSource
        from isthmus.platform.serve_app import INGRESS_APP, apply_serve_config, serve_config

        plan = GeoPlanner(spec, latency_headroom=0.0).solve()
        first = next(r for r in plan.routes if r.fraction > 0)
        everywhere = plan.model_copy(update={"routes": [
            first.model_copy(update={"site": region, "fraction": 1.0 / len(REGIONS), "instance_type": it})
            for region, (it, _, _) in REGIONS.items()]})
        http_port, grpc_port = free_port(), free_port()
        # Triton over HTTP: its gRPC endpoint drops a few percent of the trace contexts it is sent (tracing.py)
        site_options = {"tracing": {"jsonl_path": str(self.work / "serve.spans.jsonl")}, "triton_protocol": "http"}
        keep = [a for a in serve_config(everywhere, spec, **site_options)["applications"] if a["name"] != INGRESS_APP]
        self.serve_options = {"http_port": http_port, "grpc_port": grpc_port, **site_options, "keep_apps": keep}
        apply_serve_config(serve_config(plan, spec, **self.serve_options), timeout_s=300)
        self.target = f"127.0.0.1:{grpc_port}"
        certs = self.work / "certs"
        init_certs(certs, agents=AGENTS, force=True)
        self.plan_source = PlanSource(PartitionStore(self.work / "store"))
        self.publish(plan)
        self.cp = ControlPlaneServer(self.plan_source, certs_dir=certs, port=free_port()).start()
        self.agents = _start_agents(self.out, certs, self.cp.port, self.settings)
        _wait_agents_loaded(self.agents, -1, timeout_s=180)

    def start_optimizer(self, spec: Any) -> Any:
        import ray

        from isthmus.optimizer.actor import start_optimizer
        from isthmus.spec import Plan

        self.optimizer = start_optimizer(spec, serve_options=self.serve_options, drift_threshold=0.2,
                                         resources={"isthmus:head": 0.01})
        ray.get(self.optimizer.deploy.remote(), timeout=300)
        return Plan.model_validate(ray.get(self.optimizer.plan.remote(), timeout=60))

    def publish(self, plan: Any) -> int:
        return self.plan_source.publish(_assignments(plan, self.splits, self.target))

    def __exit__(self, *exc: object) -> None:
        for agent in self.agents.values():
            if agent["proc"].poll() is None:
                agent["proc"].terminate()
        for agent in self.agents.values():
            try:
                agent["proc"].wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent["proc"].kill()
        if self.cp is not None:
            self.cp.stop()
        try:
            import ray
        except ImportError:
            return
        if ray.is_initialized():
            try:
                from ray import serve

                serve.shutdown()
            except Exception:  # noqa: BLE001 - best effort before the cluster goes
                pass
            for device in self.devices.values():
                try:
                    ray.get(device.stop.remote(), timeout=60)
                except Exception:  # noqa: BLE001
                    pass
            if self.optimizer is not None:
                ray.kill(self.optimizer)
            ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
        if self.receiver is not None:
            self.receiver.stop()


# ---------------------------------------------------------------- CLI

def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(quick: bool = typer.Option(False, "--quick", help="Shorter load phases (< 5 min on 2 cores)."),
         out: Path = typer.Option(Path("demo-out"), "--out", help="Where summary.json, report.html and "
                                  "traces.jsonl are written."),
         bandwidth_mbps: float = typer.Option(0.2, "--bandwidth-mbps", help="Edge uplink before the drop (halved "
                                              "midway).")) -> None:
    """Run the whole system on this machine: cluster, training, planning, Serve + Triton, edge agents, a
    bandwidth drop and the re-plan it causes; print a table per service and write a report."""
    from rich.console import Console

    console = Console()
    if not bandwidth_mbps > 0:
        console.print(f"[red]--bandwidth-mbps is {bandwidth_mbps}. To fix: give a positive uplink, e.g. 0.2[/red]")
        raise typer.Exit(2)
    settings = DemoSettings.quick() if quick else DemoSettings()
    settings.bandwidth_mbps = bandwidth_mbps
    start = time.monotonic()
    with console.status("starting") as status:
        def progress(text: str) -> None:
            console.log(f"[bold]{text}[/bold] ({time.monotonic() - start:.0f} s)")
            status.update(text)

        from isthmus.spec import SpecError

        try:
            summary = run_demo(out, settings, progress)
        except (DemoError, SpecError) as err:
            console.print(f"[red]{err}[/red]", highlight=False)
            raise typer.Exit(2)
    from isthmus.demo_report import print_summary

    print_summary(console, summary)
    console.print(f"wrote {out}/summary.json, {out}/report.html, {out}/traces.jsonl "
                  f"in {time.monotonic() - start:.0f} s")
