"""`isthmus deploy / status / down`: the one way the system comes up, is read, and goes away.

`deploy(spec_path, ...)` plans the spec, then brings up (in this order, each step waiting for the last):

1. the cluster — `local`: a Ray head started with `ray start` (it keeps running after the command returns;
   resource `isthmus:head`); `address`: an existing cluster, checked to have a node for every planned site;
2. the OptimizerActor (detached, on the head), which starts the plan's fleet — with `local`, one Ray node per
   planned instance (`region:<site>`, `instance:<type>`) and on each a DeviceActor owning one Triton that
   serves the instance's model version (`InstanceFleet`) — then deploys the Serve apps, one replica per
   instance, and from then on polls the ingress's measured rates and re-plans on drift;
3. the control plane (detached actor on the head; mTLS + per-agent tokens, certificates in `<state>/certs`),
   through which edge agents register, receive their split and report telemetry.

Everything the commands need later is in `<state>/deployment.json`; `status` and `down` read it. A deploy
refuses to start over a running one, and a deploy that fails half-way takes down what it started.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from isthmus.spec import Plan, Spec

__all__ = ["DeployError", "DEFAULT_STATE_DIR", "deploy", "status", "down", "connect_optimizer", "triton_models"]

DEFAULT_STATE_DIR = Path.home() / ".isthmus" / "deploy"
STATE_FILE = "deployment.json"
CONTROL_PLANE_NAME = "isthmus-control-plane"
_NAMESPACE = "isthmus"
_HEAD = {"isthmus:head": 0.01}
# The fleet follows the ingress's measured rate λ so that instances run at <= 80 % of capacity: it is planned
# for λ / 0.8, so a rate that drifts up is served by the current instances while new ones start.
TARGET_UTILIZATION = 0.8


class DeployError(RuntimeError):
    """Bad input to deploy/status/down, or a step that failed; the message says how to fix it (exit code 2)."""


def _state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    path = _state_path(state_dir)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DeployError(f"{path} is unreadable ({err}). To fix: `isthmus down --state-dir {state_dir} --purge` "
                          "after stopping what it started by hand") from None


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    path = _state_path(state_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _alive(state: dict[str, Any]) -> bool:
    """Whether the deployment described by `state` still runs (local: its Ray processes; else: its head answers)."""
    from isthmus.platform.nodes import processes

    if state.get("mode") == "local":
        return bool(processes(state["temp_dir"]))
    try:
        _connect(state)
        import ray

        ray.get_actor(state["optimizer"], namespace=_NAMESPACE)
        return True
    except Exception:  # noqa: BLE001 - any failure to reach it: not running
        return False
    finally:
        _disconnect()


def _connect(state: dict[str, Any]) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=state["address"], namespace=_NAMESPACE, log_to_driver=False, logging_level="ERROR")


def _disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


# ---------------------------------------------------------------- models

def triton_models(spec: Spec, workdir: Path) -> dict[str, list[dict]]:
    """"model/version" → the TritonModel dicts its instances serve: the version's `artifact` (a TorchScript
    file), or for a zoo model its exported TorchScript and one tail per split point with a tail latency.
    Versions that have neither are left out (the planner gives them no instance only if they cannot run)."""
    from isthmus.platform.serve_app import triton_model_name

    out: dict[str, list[dict]] = {}
    for model in spec.models:
        for version in model.versions:
            key = f"{model.name}/{version.name}"
            name = triton_model_name(model.name, version.name)
            if version.artifact is not None:
                out[key] = [{"name": name, "torchscript_path": str(version.artifact.path),
                             "input_shape": list(version.artifact.input_shape), "dtype": version.artifact.dtype}]
            elif model.zoo:
                out[key] = _zoo_models(model.zoo, model.name, version, workdir / "models")
    return out


def _zoo_models(zoo: str, model: str, version: Any, out_dir: Path) -> list[dict]:
    """A zoo version's full model (digits-trained "small" size) and its split tails, exported as TorchScript."""
    import torch

    from isthmus.models.export import export_version
    from isthmus.models.zoo import example_input
    from isthmus.partition.splits import export_partitions
    from isthmus.platform.serve_app import triton_model_name

    x = example_input(zoo, "small")
    try:
        path = export_version(zoo, version.name, "small", out_dir)
    except (KeyError, ValueError) as err:
        raise DeployError(f"model {model!r} version {version.name!r}: cannot export it from the zoo ({err}). "
                          "To fix: give the version an `artifact` (a TorchScript file)") from None
    out = [{"name": triton_model_name(model, version.name), "torchscript_path": str(path),
            "input_shape": list(x.shape[1:])}]
    for point in version.splits:
        if not point.tail_ms:
            continue
        head, tail = export_partitions(zoo, "small", point.split, point.exit, out_dir)
        with torch.no_grad():
            activation = torch.jit.load(str(head))(x)
        out.append({"name": triton_model_name(model, version.name, point.split, point.exit),
                    "torchscript_path": str(tail), "input_shape": list(activation.shape[1:]),
                    "split": point.split, "exit": point.exit, "head_path": str(head)})
    return out


# ---------------------------------------------------------------- control plane

class _ControlPlane:
    """The control plane as a detached actor on the head: a `ControlPlaneServer` over a `PlanSource`, and the
    OTLP/HTTP receiver the instances' Triton servers export their spans to (`<state>/triton.spans.jsonl`)."""

    def __init__(self, certs_dir: str, store_dir: str, host: str, port: int, triton_spans: str) -> None:
        from isthmus.platform.control_plane import ControlPlaneServer, PartitionStore, PlanSource
        from isthmus.platform.tracing import OtlpHttpReceiver

        self.plan = PlanSource(PartitionStore(store_dir))
        self.server = ControlPlaneServer(self.plan, certs_dir=certs_dir, host=host, port=port).start()
        self.receiver = OtlpHttpReceiver(triton_spans).start()

    def address(self) -> str:
        return self.server.address

    def traces_url(self) -> str:
        return self.receiver.url

    def publish(self, assignments: dict[str, dict]) -> int:
        return self.plan.publish(assignments)

    def version(self) -> int:
        return self.plan.version

    def agents(self) -> dict[str, dict]:
        return self.plan.agents()

    def telemetry(self, since_unix: float = 0.0) -> list[dict]:
        return [r for r in self.plan.telemetry() if r["received_at"] > since_unix]

    def stop(self) -> None:
        self.server.stop()
        self.receiver.stop()


# ---------------------------------------------------------------- deploy

def _check_spec(spec_path: str) -> tuple[Spec, Plan]:
    """Load, check artifacts, plan: every problem before anything starts."""
    from isthmus.models.artifact import check_artifacts
    from isthmus.optimizer import GeoPlanner
    from isthmus.spec import SpecError, load_spec

    spec = load_spec(spec_path)
    problems = check_artifacts(spec)
    if problems:
        raise SpecError(problems, spec_path)
    plan = GeoPlanner(spec).solve()
    missing = sorted({f"{i.model_version}" for i in plan.instances if i.count > 0} - _runnable(spec))
    if missing:
        raise DeployError(f"the plan runs {missing}, which have neither an `artifact` nor a `zoo` model. To fix: "
                          "give each version an artifact: {path: model.pt, input_shape: [...], dtype: float32}")
    return spec, plan


def _runnable(spec: Spec) -> set[str]:
    return {f"{m.name}/{v.name}" for m in spec.models for v in m.versions if v.artifact is not None or m.zoo}


def deploy(spec_path: str, *, local: bool, address: str | None = None, emulate: bool = False,
           state_dir: str | Path = DEFAULT_STATE_DIR, progress: Callable[[str], None] | None = None,
           timeout_s: float = 900.0) -> dict[str, Any]:
    """Bring the spec's plan up (module docstring) and return `status(state_dir)` once every instance serves."""
    step = progress or (lambda _s: None)
    state_dir = Path(state_dir).resolve()
    if local == bool(address):
        raise DeployError("give exactly one of --local or --address. To fix: `isthmus deploy SPEC --local` on this "
                          "machine, `isthmus deploy SPEC --address HEAD:6379` on a cluster the Terraform modules "
                          "started")
    previous = _read_state(state_dir)
    if previous is not None and _alive(previous):
        raise DeployError(f"a deployment of spec {previous['spec_name']!r} is running from {state_dir} (since "
                          f"{previous['started_at']}). To fix: `isthmus down --state-dir {state_dir}` first, or "
                          "deploy with another --state-dir")
    step("check the spec and plan it")
    spec, plan = _check_spec(spec_path)
    state_dir.mkdir(parents=True, exist_ok=True)
    step("export the models Triton serves")
    models = triton_models(spec, state_dir)
    state: dict[str, Any] = {"spec_path": str(Path(spec_path).resolve()), "spec_name": spec.name,
                             "mode": "local" if local else "address", "state_dir": str(state_dir),
                             "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "emulate": emulate,
                             "optimizer": f"isthmus-optimizer:{spec.name}"}
    try:
        _bring_up(spec, plan, models, state, address, step, timeout_s)
    except BaseException:
        if state.get("address"):
            down(state_dir)
        raise
    step("deployed")
    return status(state_dir)


def _bring_up(spec: Spec, plan: Plan, models: dict[str, list[dict]], state: dict[str, Any], address: str | None,
              step: Callable[[str], None], timeout_s: float) -> None:
    import ray

    from isthmus.optimizer.actor import start_optimizer
    from isthmus.platform.certs import init_certs
    from isthmus.platform.cluster import (ClusterError, _local_serve_ports, check_gcs_answers, missing_sites,
                                          serve_env)
    from isthmus.platform.nodes import LocalNodes, temp_dir
    from isthmus.platform.tracing import triton_trace_config
    from isthmus.platform.triton import free_port

    state_dir = Path(state["state_dir"])
    nodes = None
    if address is None:
        step("start the Ray head (it keeps running after this command)")
        state["temp_dir"] = temp_dir(state_dir)
        nodes = LocalNodes.start_head(state["temp_dir"], {**serve_env(), **_local_serve_ports()}, port=free_port(),
                                      client_port=free_port())
        state["address"] = nodes.address
        _write_state(state_dir, state)
        _connect(state)
    else:
        state["address"] = address
        try:
            check_gcs_answers(address)
            _connect(state)
        except ClusterError as err:
            state.pop("address")
            raise DeployError(str(err)) from None
        except (ConnectionError, RuntimeError, ValueError) as err:
            state.pop("address")
            raise DeployError(f"cannot connect to Ray at {address!r}: {str(err).splitlines()[0]}. To fix: pass the "
                              "head's GCS address (HOST:6379) of a running cluster") from None
        planned = {i.site for i in plan.instances}
        missing = missing_sites(spec.model_copy(update={
            "regions": [r for r in spec.regions if r.name in planned],
            "edge_sites": [e for e in spec.edge_sites if e.name in planned]}), ray.nodes())
        if missing:
            _disconnect()
            state.pop("address")
            raise DeployError(f"the cluster at {address} has no node for planned sites {missing}. To fix: start a "
                              "node per site with resources region:<site> (the Terraform modules do), or drop the "
                              "sites from the spec")
        _write_state(state_dir, state)
    http_port, grpc_port = free_port(late_bound=True), free_port(late_bound=True)   # bound by Serve, later
    endpoints = {"http": f"http://127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    state["endpoints"] = endpoints
    _write_state(state_dir, state)
    step("start the control plane (mTLS + tokens)")
    agents = [f"{e.name}-{k + 1}" for e in spec.edge_sites for k in range(max(e.count, 1))] or ["agent-1"]
    init_certs(state_dir / "certs", agents=agents, force=True)
    control = ray.remote(num_cpus=0)(_ControlPlane).options(
        name=CONTROL_PLANE_NAME, namespace=_NAMESPACE, lifetime="detached",
        resources=_HEAD if nodes else None).remote(str(state_dir / "certs"), str(state_dir / "partitions"),
                                                     "127.0.0.1", free_port(), str(state_dir / "triton.spans.jsonl"))
    endpoints["control_plane"] = ray.get(control.address.remote(), timeout=120)
    traces_url = ray.get(control.traces_url.remote(), timeout=60)
    _write_state(state_dir, state)
    step(f"start {sum(i.count for i in plan.instances)} instance(s): a node, a DeviceActor and Triton each, then "
         "Serve")
    fleet = {"models": models, "nodes": nodes.to_json() if nodes else None, "emulate": state["emulate"],
             "workdir": str(state_dir / "instances"), "trace_config": triton_trace_config(traces_url)}
    serve_options = {"http_port": http_port, "grpc_port": grpc_port, "triton_protocol": "http",
                     "tracing": {"jsonl_path": str(state_dir / "serve.spans.jsonl")}}
    optimizer = start_optimizer(spec, plan, name=state["optimizer"], resources=_HEAD if nodes else None,
                                serve_options=serve_options, ingress_resources=_HEAD if nodes else None,
                                drift_threshold=0.2, rates_interval_s=2.0, target_utilization=TARGET_UTILIZATION,
                                fleet=fleet,
                                control_plane=CONTROL_PLANE_NAME, agent_target=endpoints["grpc"])
    ray.get(optimizer.deploy.remote(), timeout=timeout_s)
    _disconnect()


# ---------------------------------------------------------------- status, down

def _replans(history: list[dict], limit: int = 10) -> list[dict]:
    out = []
    for entry in history:
        if not entry.get("replanned"):
            continue
        if entry.get("source") == "liveness":
            reason = f"liveness: lost {entry.get('lost_sites')}, back {entry.get('returned_sites')}"
        elif entry.get("over_capacity"):
            reason = f"{entry['source']}: {entry.get('key')} beyond the capacity of {entry['over_capacity']}"
        else:
            reason = f"{entry.get('source', 'report')}: {entry.get('key') or 'forced'} drifted " \
                     f"{entry.get('drift', 0.0):.0%}"
        out.append({"plan_version": entry.get("plan_version", 0), "reason": reason,
                    "at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(entry.get("at_unix", 0))),
                    "changed": bool(entry.get("changed")), "cost_per_hour": entry.get("cost_per_hour")})
    return out[-limit:]


def connect_optimizer(state_dir: str | Path = DEFAULT_STATE_DIR) -> tuple[dict[str, Any], Any]:
    """Connect this process to the deployment in `state_dir`; returns (its state, its OptimizerActor handle).
    The caller disconnects (`ray.shutdown()`) when done."""
    import ray

    state_dir = Path(state_dir).resolve()
    state = _read_state(state_dir)
    if state is None:
        raise DeployError(f"no deployment in {state_dir}. To fix: `isthmus deploy SPEC --local` first, or pass the "
                          "--state-dir it used")
    try:
        _connect(state)
        return state, ray.get_actor(state["optimizer"], namespace=_NAMESPACE)
    except Exception as err:  # noqa: BLE001 - the head is gone, or the actor is
        _disconnect()
        raise DeployError(f"the deployment in {state_dir} does not answer ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200]}). To fix: `isthmus down --state-dir {state_dir}`, "
                          "then deploy again") from None


def status(state_dir: str | Path = DEFAULT_STATE_DIR, window_s: float = 30.0) -> dict[str, Any]:
    """The running deployment: plan version and $/h, endpoints, per pool planned vs running instances, per
    service the ingress's measured rate, p50/p99 and SLO attainment over `window_s`, the last re-plans."""
    import ray

    state_dir = Path(state_dir).resolve()
    state, optimizer = connect_optimizer(state_dir)
    try:
        plan = Plan.model_validate(ray.get(optimizer.plan.remote(), timeout=60))
        fleet = ray.get(optimizer.fleet_status.remote(), timeout=60)
        history = ray.get(optimizer.history.remote(), timeout=60)
        version = ray.get(optimizer.plan_version.remote(), timeout=60)
        spec = Spec.model_validate(ray.get(optimizer.spec.remote(), timeout=60))
        watch_error = ray.get(optimizer.status.remote(), timeout=60)["watch_error"]
        try:
            stats = ray.get(optimizer.ingress_stats.remote(window_s), timeout=60)
        except Exception:  # noqa: BLE001 - no ingress yet: no numbers
            stats = {}
    finally:
        _disconnect()
    services = []
    for service in spec.services:
        row = stats.get(service.name, {})
        services.append({"name": service.name, "rate_rps": row.get("rate_rps", 0.0),
                         "latency_ms_p50": row.get("latency_ms_p50"), "latency_ms_p99": row.get("latency_ms_p99"),
                         "slo_ms": service.slo_ms, "slo_attainment": row.get("slo_attainment"),
                         "requests": row.get("requests", 0), "errors": row.get("errors", 0)})
    return {"spec": state["spec_name"], "plan_version": version, "cost_per_hour": plan.cost_per_hour,
            "endpoints": state.get("endpoints", {}), "emulated_devices": state.get("emulate", False),
            "fleet": fleet, "services": services, "replans": _replans(history), "state_dir": str(state_dir),
            "watch_error": watch_error, "last_reports": [
                {k: e.get(k) for k in ("source", "key", "drift", "replanned", "changed", "measured", "error")}
                for e in history[-5:]]}


def down(state_dir: str | Path = DEFAULT_STATE_DIR, purge: bool = False) -> dict[str, Any]:
    """Stop everything the deployment started: Serve, the DeviceActors and their Triton servers, the control
    plane and the OptimizerActor, and with `--local` every Ray process of it. Keeps `state_dir` unless `purge`.
    Returns {stopped_processes, left}."""
    from isthmus.platform.nodes import kill_processes, processes

    state_dir = Path(state_dir).resolve()
    state = _read_state(state_dir)
    if state is None:
        if purge and state_dir.is_dir():
            shutil.rmtree(state_dir)
        raise DeployError(f"no deployment in {state_dir}. To fix: pass the --state-dir the deploy used")
    if state.get("address"):
        _stop_runtime(state)
    pids: list[int] = []
    markers = [str(state_dir / "instances")] + ([state["temp_dir"]] if state.get("mode") == "local" else [])
    for marker in markers:   # Triton (its model repository is in the state dir) and, locally, every Ray process
        pids += [pid for pid, _ in processes(marker)]
    kill_processes(sorted(set(pids)))
    left = sorted({pid for marker in markers for pid, _ in processes(marker)})
    _state_path(state_dir).unlink(missing_ok=True)
    if purge:
        shutil.rmtree(state_dir, ignore_errors=True)
    if state.get("temp_dir"):
        shutil.rmtree(state["temp_dir"], ignore_errors=True)
    return {"stopped_processes": len(set(pids)), "left": left}


def _stop_runtime(state: dict[str, Any]) -> None:
    """Serve, DeviceActors, control plane and OptimizerActor, through the cluster (best effort: the cluster may
    be half up or gone)."""
    import ray

    try:
        _connect(state)
    except Exception:  # noqa: BLE001 - nothing to stop through Ray
        return
    try:
        from ray import serve

        try:
            optimizer = ray.get_actor(state["optimizer"], namespace=_NAMESPACE)
            ray.get(optimizer.stop_fleet.remote(), timeout=120)
            ray.kill(optimizer, no_restart=True)
        except Exception:  # noqa: BLE001
            pass
        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001
            pass
        try:
            control = ray.get_actor(CONTROL_PLANE_NAME, namespace=_NAMESPACE)
            ray.get(control.stop.remote(), timeout=30)
            ray.kill(control)
        except Exception:  # noqa: BLE001
            pass
    finally:
        _disconnect()
