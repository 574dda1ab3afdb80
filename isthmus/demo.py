"""`isthmus demo`: the whole system on one machine, in one command (`make demo`) — a client of `isthmus deploy`.

The demo writes a spec (regions us-east and eu-west, edge site cam-1, the small AlexNet of the zoo trained on
digits, profiled per layer, with its split points), deploys it with the same code as `isthmus deploy --local`
(a Ray node, DeviceActor and Triton per planned instance, Serve, the OptimizerActor, the control plane with
mTLS + tokens), starts two edge-agent processes whose uplinks are token buckets of `bandwidth_mbps`, sends
paced requests (digits test images) through the agents and halves their uplink midway. Everything after that
is the product's own loop: the agents' bandwidth probes reach the OptimizerActor through the control plane, it
re-plans (drift > 20 %), starts the new plan's instances, rolls Serve over, publishes the new split to the
agents, waits for them to switch and retires what the plan no longer uses. The demo only watches and reports.

Numbers the plan is made from (all measured here, none given):

    compute:  per-layer latency of the model on this CPU (edge and cloud devices declared at this
              CPU's speed, so head_ms / tail_ms / latency_ms are the profile's);
    bytes:    what an agent puts on its uplink per request (the encoded InferRequest), raw input
              or split activation;
    rtt_ms:   the path's fixed overhead O = p50(measured) − compute − 8·bytes/bandwidth, from a
              short calibration run on the deployed system, after a warm-up whose latencies are dropped;
              the re-measured spec goes to the running OptimizerActor (`update_spec`);
    route:    L_r = head_ms + O + 8·bytes_r/bandwidth + tail_ms   (docs/spec.md, semantics).

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
AGENTS = ("cam-1-1", "cam-1-2")   # the agent certificates `isthmus deploy` issues for an edge site of count 2
HOPS = ("edge_agent", "ingress", "deployment", "triton")


class DemoError(RuntimeError):
    """The demo cannot run or a step failed (the message says which and how to fix it)."""


@dataclass
class DemoSettings:
    """Durations and load of one demo run (`--quick` shortens the phases)."""

    warmup_s: float = 4.0    # load whose latencies are dropped: first calls open connections, warm caches
    calibrate_s: float = 8.0
    before_s: float = 30.0
    after_s: float = 55.0   # the re-plan starts an eu-west instance (node + Triton) before the agents switch
    rate_rps_per_agent: float = 5.0
    bandwidth_mbps: float = 0.2
    probe_interval_s: float = 5.0

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(calibrate_s=8.0, before_s=15.0, after_s=45.0)


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


# ---------------------------------------------------------------- watching the product's loop

def _mean_split(plan: Any) -> float:
    """Request-weighted split index of a plan (-1 = raw input: the whole model in the cloud)."""
    return sum(r.fraction * (-1 if r.split is None else r.split) for r in plan.routes if r.service == SERVICE)


class _PlanWatch:
    """Records every plan the OptimizerActor rolls out (for the report's predicted latency); controls nothing."""

    def __init__(self, optimizer: Any, state: _State, bandwidth_mbps: float) -> None:
        self.optimizer, self.state, self.bandwidth_mbps = optimizer, state, bandwidth_mbps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._version: int | None = None

    def start(self) -> "_PlanWatch":
        self._check()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._check()

    def _check(self) -> None:
        import ray

        from isthmus.spec import Plan

        version = ray.get(self.optimizer.plan_version.remote(), timeout=60)
        if version != self._version:
            plan = Plan.model_validate(ray.get(self.optimizer.plan.remote(), timeout=60))
            self._version = version
            self.state.plans.append({"t_s": time.monotonic() - self.state.t0, "bandwidth_mbps": self.bandwidth_mbps,
                                     "plan": plan.model_dump(mode="json"), "plan_version": version})

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._check()
            except Exception:  # noqa: BLE001 - a slow answer under load: look again next time
                continue


def _from_history(state: _State, history: list[dict], t0_unix: float) -> None:
    """The product loop's telemetry reports and re-plans (OptimizerActor history) as the report's events."""
    from isthmus.spec import Plan

    for entry in history:
        if entry.get("at_unix", 0) < t0_unix or entry.get("source") == "spec":   # the demo's own calibration
            continue
        t_s = entry["at_unix"] - t0_unix
        mbps = statistics.median((entry.get("measured") or {"-": 0.0}).values())
        if entry["source"] == "agents":
            state.events.append({"event": "telemetry", "t_s": t_s, "bandwidth_mbps": mbps, "drift": entry["drift"],
                                 "replanned": entry["replanned"], "changed": entry["changed"]})
        if entry.get("replanned"):
            after = [p for p in state.plans if p.get("plan_version", -1) == entry.get("plan_version")]
            plan = Plan.model_validate(after[-1]["plan"]) if after else None
            state.replans.append({k: v for k, v in entry.items() if k not in ("telemetry", "measured")} | {
                "bandwidth_mbps": mbps, "mean_split": _mean_split(plan) if plan else None, "t_s": t_s})
        if (entry.get("published") or {}).get("at_unix"):
            state.events.append({"event": "published", "t_s": entry["published"]["at_unix"] - t0_unix,
                                 "plan_source_version": entry["published"]["version"]})


def _switched_t(state: _State, after_t: float) -> float | None:
    """When the last agent's first request on the final plan's split came back after `after_t` (from the
    requests' replies: each says which split its agent ran)."""
    final = {a: s.split for s in sorted(state.samples, key=lambda s: s.t_s) for a in [s.agent] if s.ok}
    firsts = []
    for agent, split in final.items():
        t = min((s.t_s for s in state.samples if s.agent == agent and s.t_s > after_t and s.ok and s.split == split),
                default=None)
        if t is None:
            return None
        firsts.append(t)
    return max(firsts) if firsts else None


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
    t0_unix = time.time() - (time.monotonic() - state.t0)
    step("train + profile the small zoo model on digits (cached after the first run)")
    prepared = _prepare_model(work)
    state.accuracy_model = prepared["accuracy"]
    rate = settings.rate_rps_per_agent * len(AGENTS)
    first = _spec(prepared, [], bandwidth_mbps=settings.bandwidth_mbps, overhead_ms=10.0, slo_ms=1000.0, rate_rps=rate)
    step("partition: split candidates (head / tail TorchScript)")
    splits = _split_candidates(first, prepared, work / "partitions")
    guess = _spec(prepared, splits, bandwidth_mbps=settings.bandwidth_mbps, overhead_ms=10.0, slo_ms=1000.0,
                  rate_rps=rate)
    with _Deployment(work) as deployment:
        step("isthmus deploy (local): cluster, an instance per plan entry, Serve, OptimizerActor, control plane")
        status = deployment.deploy(guess, step)
        step("start two edge agents; the control plane assigns them the raw-input route")
        cp_port = int(status["endpoints"]["control_plane"].rsplit(":", 1)[1])
        deployment.agents = _start_agents(out, work / "certs", cp_port, settings)
        _wait_agents_loaded(deployment.agents, -1, timeout_s=180)
        step(f"warm up ({settings.warmup_s:g} s), calibrate the path overhead ({settings.calibrate_s:g} s of load)")
        data = _digits_test()
        _drive(deployment.agents, data, _State(t0=state.t0), settings.warmup_s, settings.rate_rps_per_agent, "warmup")
        calib = _State(t0=state.t0)
        _drive(deployment.agents, data, calib, settings.calibrate_s, settings.rate_rps_per_agent, "calibrate")
        good = [s.latency_ms for s in calib.samples if s.ok]
        if not good:
            raise DemoError(f"no calibration request succeeded: {[s.error for s in calib.samples][:3]}. "
                            f"To fix: read the agent logs in {out / 'agents'}")
        state.overhead_ms = statistics.median(good) - prepared["profile"].latency_ms - _transfer_ms(
            prepared["input_bytes"], settings.bandwidth_mbps)
        state.slo_ms = _choose_slo_ms(prepared, splits, state.overhead_ms, settings.bandwidth_mbps)
        spec = _spec(prepared, splits, bandwidth_mbps=settings.bandwidth_mbps, overhead_ms=state.overhead_ms,
                     slo_ms=state.slo_ms, rate_rps=rate)
        step("the measured spec goes to the running OptimizerActor, which plans it with split routes")
        optimizer = deployment.optimizer()
        import ray

        ray.get(optimizer.update_spec.remote(spec.model_dump(mode="json")), timeout=600)
        watch = _PlanWatch(optimizer, state, settings.bandwidth_mbps).start()
        try:
            step(f"drive load {settings.before_s:g} s, halve the uplink, {settings.after_s:g} s more")

            def drop() -> None:
                for agent in deployment.agents.values():
                    _http_json(agent["port"], "/admin/uplink", {"uplink_mbps": settings.bandwidth_mbps / 2})
                state.event("bandwidth_drop", bandwidth_mbps=settings.bandwidth_mbps / 2)
                watch.bandwidth_mbps = settings.bandwidth_mbps / 2

            _drive(deployment.agents, data, state, settings.before_s + settings.after_s,
                   settings.rate_rps_per_agent, "load", at={settings.before_s: drop})
        finally:
            watch.stop()
        _from_history(state, ray.get(optimizer.history.remote(), timeout=60), t0_unix)
        drop_t = next(e["t_s"] for e in state.events if e["event"] == "bandwidth_drop")
        switched = _switched_t(state, drop_t)
        if switched is not None and len(state.plans) > 1:
            state.events.append({"event": "agents_switched", "t_s": switched})
        watch_error = ray.get(optimizer.status.remote(), timeout=60)["watch_error"]
        step("collect traces and write the report")
        from isthmus.demo_report import collect_traces, summarize_run, write_report

        traces = collect_traces(out, timeout_s=30.0)
        summary = summarize_run(out, state, spec, traces, watch_error, settings)
    write_report(out, summary, state)
    return summary


class _Deployment:
    """The demo's deployment (`isthmus deploy --local` into `work`) and agent processes, stopped on exit."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.agents: dict[str, dict] = {}
        self.deployed = False

    def __enter__(self) -> "_Deployment":
        return self

    def deploy(self, spec: Any, step: Any) -> dict:
        from isthmus.platform.deploy import DeployError, deploy, down
        from isthmus.spec import dump_spec

        path = self.work / "spec.yaml"
        path.write_text(dump_spec(spec, self.work))
        try:   # an earlier demo that was interrupted
            down(self.work)
        except DeployError:
            pass
        self.deployed = True
        try:
            return deploy(str(path), local=True, state_dir=self.work, progress=step)
        except DeployError as err:
            raise DemoError(str(err)) from None

    def optimizer(self) -> Any:
        from isthmus.platform.deploy import connect_optimizer

        return connect_optimizer(self.work)[1]

    def __exit__(self, *exc: object) -> None:
        for agent in self.agents.values():
            if agent["proc"].poll() is None:
                agent["proc"].terminate()
        for agent in self.agents.values():
            try:
                agent["proc"].wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent["proc"].kill()
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        if self.deployed:
            from isthmus.platform.deploy import DeployError, down

            try:
                down(self.work)
            except DeployError:
                pass


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
