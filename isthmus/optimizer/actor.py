"""OptimizerActor: the central, named, detached Ray actor that holds the Spec and the Plan and re-plans on drift.

Telemetry (measured source rates, link bandwidths, version latencies, prices) accumulates until
its drift from the numbers the current plan was made with passes `drift_threshold`:

    drift = max over reported keys k of |v_k − v_k⁰| / v_k⁰      (v⁰: the current spec's value;
                                                                  a key the spec lacks counts as ∞)

Then `GeoPlanner.replan` re-solves its parameterised problem with every pending value, and
`serve_app.rollout` moves the running Serve app to the new plan without dropping requests
(new site apps first, then the ingress's weights in place, then old site apps retire).

Besides pushed telemetry (`report`) the actor, when it runs in Ray, keeps a watch thread:

- liveness, every `watch_interval_s`: a site is *lost* when its node (resource `region:<site>` /
  `edge:<site>`) was alive and is no longer in `ray.nodes()`, or when its DeviceActor dies or
  misses `suspect_after` probes in a row (each `probe_timeout_s`: Ray itself notices an
  ungracefully lost node only after its ~15 s health check). A lost site's quota becomes 0
  (max_count of its instance types, count of an edge site) and the planner re-solves through its
  parameters (no rebuild); if no plan fits without it, the plan degrades to the surviving routes with
  their fractions renormalised. Its apps leave the Serve config with the ingress switched first. A
  site whose node and DeviceActor answer again gets its quota back.
- pull, every `poll_interval_s` (off by default; `poll_once()` does one): each planned site's
  DeviceActor reports Triton's measured p50 request latency and queue; the latency of version m on
  device kind d is the median over sites of that p50 (Triton's own window) and goes in as
  `latency_ms` telemetry, so the usual drift threshold decides whether to re-plan.

State (spec as last re-planned, plan, plan version, Serve config, lost sites, pending telemetry and
the report history) is written to Ray's internal KV after every change. The actor is created with
`max_restarts=-1`: when Ray restarts it (its worker died or `ray.kill(..., no_restart=False)`), it
comes back from that state instead of from its constructor arguments; handles held by callers
stay valid, and the running Serve app stays attached (the next re-plan rolls out onto it).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
from typing import Any

from isthmus.spec import Plan, SolverInfo, Spec

__all__ = ["OPTIMIZER_NAME", "OPTIMIZER_NAMESPACE", "OptimizerActor", "start_optimizer", "telemetry_drift",
           "measured_latency_ms", "measured_rates_rps", "held_rates_rps", "over_capacity", "with_lost_sites",
           "degraded_plan"]

OPTIMIZER_NAME = "isthmus-optimizer"
OPTIMIZER_NAMESPACE = "isthmus"
_KINDS = ("rates_rps", "bandwidth_mbps", "latency_ms", "price_per_hour")
_KV_NAMESPACE = "isthmus"
_HISTORY_LIMIT = 500


def _relative(new: float, old: float | None) -> float:
    if old is None:
        return float("inf")
    return abs(float(new) - old) / old if old > 0 else (0.0 if new == old else float("inf"))


def telemetry_drift(spec: Spec, telemetry: dict[str, dict]) -> tuple[float, str]:
    """Largest relative change of `telemetry` against `spec`, and the key that has it ("" when none)."""
    links = {frozenset((l.src, l.dst)): l.bandwidth_mbps for l in spec.links}
    versions = {(m.name, v.name): v for m in spec.models for v in m.versions}
    prices = {(r.name, t.name): t.price_per_hour for r in spec.regions for t in r.instance_types}
    rates = {s.name: s.rate_rps for s in spec.sources}
    worst, where = 0.0, ""
    for kind in _KINDS:
        for key, value in (telemetry.get(kind) or {}).items():
            if kind == "rates_rps":
                old = rates.get(key)
            elif kind == "bandwidth_mbps":
                old = links.get(frozenset(key))
            elif kind == "latency_ms":
                version = versions.get(tuple(key[:2]))
                old = version.latency_ms.get(key[2]) if version is not None else None
            else:
                old = prices.get(tuple(key))
            drift = _relative(value, old)
            if drift > worst or not where:
                worst, where = max(worst, drift), f"{kind}[{key}]"
    return worst, where


def _merge(pending: dict[str, dict], telemetry: dict[str, Any]) -> None:
    unknown = sorted(set(telemetry) - set(_KINDS))
    if unknown:
        raise ValueError(f"unknown telemetry kinds {unknown}. To fix: use {list(_KINDS)}")
    for kind, values in telemetry.items():
        for key, value in (values or {}).items():
            pending.setdefault(kind, {})[tuple(key) if isinstance(key, list) else key] = float(value)


def _routing_signature(plan: Plan) -> list[tuple]:
    """What a rollout must change when it differs: routes with their fractions, and the instances per pool."""
    routes = sorted((r.service, r.site, r.model_version, r.split, r.exit, round(r.fraction, 6))
                    for r in plan.routes if r.fraction > 0)
    return routes + sorted(("instances", i.site, i.instance_type, i.model_version, i.count)
                           for i in plan.instances if i.count > 0)


def over_capacity(plan: Plan, spec: Spec, rates_rps: dict[str, float]) -> list[str]:
    """Pools (site/instance type/model version) whose planned instances cannot carry `rates_rps`:
    Σ_r λ_s·x_{s,r} > y_{j,t,m}·capacity_rps(m, dev(t)) over the pool's unsplit routes (λ_s: the rate of s's
    source, from `rates_rps` where given). A rate that crosses a pool's capacity must re-plan even when it
    drifted less than the threshold from the rate of the last re-plan."""
    source = {s.name: s.source for s in spec.services}
    rate = {s.name: rates_rps.get(s.name, s.rate_rps) for s in spec.sources}
    devices = spec.site_devices()
    versions = {f"{m.name}/{v.name}": v for m in spec.models for v in m.versions}
    model = {s.name: s.model for s in spec.services}
    load: dict[tuple, float] = {}
    for r in plan.routes:
        if r.fraction > 0 and r.split is None:
            key = (r.site, r.instance_type, f"{model[r.service]}/{r.model_version}")
            load[key] = load.get(key, 0.0) + rate[source[r.service]] * r.fraction
    over = []
    for inst in plan.instances:
        key = (inst.site, inst.instance_type, inst.model_version)
        device = devices.get((inst.site, inst.instance_type))
        version = versions.get(inst.model_version)
        if key in load and device and version and device in version.latency_ms and \
                load[key] > inst.count * version.capacity(device) * (1 + 1e-9):
            over.append("/".join(key))
    return over


def held_rates_rps(samples: list[dict[str, float]]) -> dict[str, float]:
    """Per source, the largest of the measured rates in `samples` (those of the last `downscale_delay_s`): a rise
    acts at once, a fall only once it has lasted the whole delay, so a lull or a burst of the load generator
    cannot scale the fleet in and out again (SkyServe's downscale delay)."""
    out: dict[str, float] = {}
    for sample in samples:
        for source, rate in sample.items():
            out[source] = max(out.get(source, 0.0), rate)
    return out


def measured_rates_rps(spec: Spec, stats: dict[str, dict], min_requests: int) -> dict[str, float]:
    """`rates_rps` telemetry from the ingress's per-service stats: a source's rate is the largest measured rate of
    its services (each service sees every request of its source), over services with >= `min_requests` requests
    in the window (fewer say too little; none is no reason to plan for zero)."""
    out: dict[str, float] = {}
    for service in spec.services:
        row = stats.get(service.name)
        if row and row.get("requests", 0) >= min_requests and row.get("rate_rps", 0) > 0:
            out[service.source] = max(out.get(service.source, 0.0), float(row["rate_rps"]))
    return out


def measured_latency_ms(plan: Plan, spec: Spec, health: dict[str, dict]) -> dict[tuple[str, str, str], float]:
    """`latency_ms` telemetry from DeviceActor health reports ({site: DeviceActor.health()}).

    For each unsplit route (model m, version v) at site j on device kind d, Triton's p50 request
    latency of model `triton_model_name(m, v)` at j is a sample of latency_ms(m, v, d); the value is
    the median over the sites that served it (models with no request in Triton's window are skipped).
    """
    from isthmus.platform.serve_app import triton_model_name

    models = {s.name: s.model for s in spec.services}
    devices = spec.site_devices()
    samples: dict[tuple[str, str, str], dict[str, float]] = {}
    for route in plan.routes:
        report = health.get(route.site)
        device = devices.get((route.site, route.instance_type))
        if route.split is not None or route.fraction <= 0 or not report or device is None:
            continue
        model = models.get(route.service, "")
        metrics = (report.get("models") or {}).get(triton_model_name(model, route.model_version)) or {}
        if metrics.get("requests", 0) > 0 and metrics.get("latency_ms_p50", 0) > 0:
            samples.setdefault((model, route.model_version, device), {})[route.site] = metrics["latency_ms_p50"]
    return {key: float(statistics.median(by_site.values())) for key, by_site in samples.items()}


def _quotas(spec: Spec) -> dict[str, dict[str, int]]:
    """site → {instance type: max_count} (an edge site: {device: count})."""
    out = {r.name: {t.name: t.max_count for t in r.instance_types} for r in spec.regions}
    out.update({e.name: {e.device: e.count} for e in spec.edge_sites})
    return out


def with_lost_sites(spec: Spec, quotas: dict[str, dict[str, int]], lost: set[str]) -> Spec:
    """A copy of `spec` whose lost sites have quota 0 and every other site its quota in `quotas`."""
    data = spec.model_dump()
    for region in data["regions"]:
        for itype in region["instance_types"]:
            itype["max_count"] = 0 if region["name"] in lost else quotas[region["name"]][itype["name"]]
    for edge in data["edge_sites"]:
        edge["count"] = 0 if edge["name"] in lost else quotas[edge["name"]][edge["device"]]
    return Spec.model_validate(data)


def degraded_plan(plan: Plan, lost: set[str]) -> Plan:
    """`plan` without the routes and instances at `lost` sites, each service's fractions renormalised to 1.

    The fallback when no plan meets every constraint without those sites: keep serving on what is left.
    Raises ValueError when a service has no surviving route.
    """
    kept = [r for r in plan.routes if r.site not in lost and r.fraction > 0]
    totals: dict[str, float] = {}
    for route in kept:
        totals[route.service] = totals.get(route.service, 0.0) + route.fraction
    orphaned = sorted({r.service for r in plan.routes} - set(totals))
    if orphaned:
        raise ValueError(f"services {orphaned} have no route left after losing sites {sorted(lost)}. To fix: bring a "
                         "site back or add capacity elsewhere")
    routes = [r.model_copy(update={"fraction": r.fraction / totals[r.service]}) for r in kept]
    solver = SolverInfo(method=plan.solver.method, status="degraded", seconds=0.0)
    return plan.model_copy(update={"routes": routes, "solver": solver,
                                   "instances": [i for i in plan.instances if i.site not in lost]})


@contextlib.contextmanager
def _plain_errors():
    """Re-raise SpecError (InfeasibleSpec) as ValueError with the same text: Ray cannot rebuild SpecError's
    (problems, origin) constructor on the caller's side and would hide the message."""
    from isthmus.spec import SpecError

    try:
        yield
    except SpecError as err:
        raise ValueError(str(err)) from None


def _as_persisted(config: dict) -> dict:
    """A Serve config as it reads back from the persisted state (JSON: tuples become lists)."""
    return json.loads(json.dumps(config))


def _pending_to_json(pending: dict[str, dict]) -> list[list]:
    return [[kind, list(key) if isinstance(key, tuple) else key, value]
            for kind, values in pending.items() for key, value in values.items()]


def _pending_from_json(rows: list[list]) -> dict[str, dict]:
    pending: dict[str, dict] = {}
    for kind, key, value in rows:
        pending.setdefault(kind, {})[tuple(key) if isinstance(key, list) else key] = float(value)
    return pending


class _OptimizerActor:
    """Holds Spec and Plan, takes telemetry, watches site liveness, re-plans and rolls the plan out.

    `serve_options` go to `serve_config` (ports, tracing); `ingress_resources` pins the ingress;
    `watch_interval_s` / `probe_timeout_s` / `suspect_after` set the liveness watch and `poll_interval_s`
    the telemetry pull (None = off); both run only in a named Ray actor (its state key). `restore=True`
    makes a freshly created actor adopt the persisted state of its name (a restart by Ray always does).
    """

    def __init__(self, spec: dict, plan: dict | None = None, *, serve_options: dict | None = None,
                 drift_threshold: float = 0.2, method: str = "auto", time_limit_s: float = 30.0,
                 ingress_resources: dict[str, float] | None = None, watch_interval_s: float | None = 1.0,
                 probe_timeout_s: float = 2.0, suspect_after: int = 2, poll_interval_s: float | None = None,
                 rates_interval_s: float | None = None, rates_window_s: float = 10.0, rates_min_requests: int = 20,
                 downscale_delay_s: float = 30.0, target_utilization: float = 1.0,
                 fleet: dict | None = None, control_plane: str | None = None, agent_target: str = "",
                 restore: bool = False):
        from isthmus.optimizer import GeoPlanner
        from isthmus.spec import parse_spec

        if drift_threshold < 0:
            raise ValueError(f"drift_threshold is {drift_threshold}. To fix: give a relative change >= 0, e.g. 0.2")
        for name, value in (("watch_interval_s", watch_interval_s), ("poll_interval_s", poll_interval_s),
                            ("rates_interval_s", rates_interval_s)):
            if value is not None and not 0.1 <= value <= 3600:
                raise ValueError(f"{name} is {value}. To fix: give seconds in [0.1, 3600], or None to turn it off")
        if not 0 < probe_timeout_s <= 60:
            raise ValueError(f"probe_timeout_s is {probe_timeout_s}. To fix: give seconds in (0, 60], e.g. 2.0")
        self._serve_options = dict(serve_options or {})
        self._ingress_resources = dict(ingress_resources or {})
        self._threshold = drift_threshold
        self._probe_timeout_s, self._suspect_after = probe_timeout_s, max(int(suspect_after), 1)
        self._watch_interval_s, self._poll_interval_s = watch_interval_s, poll_interval_s
        self._rates_interval_s, self._rates_window_s = rates_interval_s, rates_window_s
        self._rates_min_requests, self._downscale_delay_s = rates_min_requests, downscale_delay_s
        if not 0.1 <= target_utilization <= 1.0:
            raise ValueError(f"target_utilization is {target_utilization}. To fix: give the share of an instance's "
                             "capacity the fleet may use, in [0.1, 1], e.g. 0.8")
        self._target_utilization = target_utilization
        self._rate_samples: list[tuple[float, dict[str, float]]] = []
        self._fleet_options = dict(fleet) if fleet else None
        self._control_plane, self._agent_target = control_plane, agent_target
        self._heads: dict[tuple, bytes] | None = None
        self._agents_seen: dict[str, dict] = {}        # registered agents at the last publish
        self._bandwidth_seen: dict[tuple, float] = {}  # bandwidth telemetry last reported
        self._published: dict[str, Any] = {}           # {version, splits: {agent: split}, at_unix}
        self._lock = threading.Lock()
        self._seen: set[str] = set()          # sites whose node was alive once: only these can be lost
        self._devices: dict[str, Any] = {}    # site → DeviceActor handle found by name
        self._misses: dict[str, int] = {}     # site → probes missed in a row
        self._watch_error = ""
        self._key = self._state_key()
        state = self._load() if self._key and (restore or self._reconstructed()) else None
        self.restored = state is not None
        with _plain_errors():
            if state is not None:
                self._planner = GeoPlanner(Spec.model_validate(state["spec"]), method=method,
                                           time_limit_s=time_limit_s)
                self._plan = Plan.model_validate(state["plan"])
            else:
                self._planner = GeoPlanner(parse_spec(spec), method=method, time_limit_s=time_limit_s)
                self._plan = Plan.model_validate(plan) if plan is not None else self._planner.solve()
        if state is not None:
            self._quotas = {site: dict(q) for site, q in state["quotas"].items()}
            self._version, self._config = state["version"], state["config"]
            self._pending, self._history = _pending_from_json(state["pending"]), state["history"]
            self._lost, self._seen = set(state["lost"]), set(state["seen"])
        else:
            self._quotas = _quotas(self._planner.spec)
            self._version, self._config, self._pending, self._history = 0, None, {}, []
            self._lost = set()
        self._fleet = self._make_fleet() if fleet else None
        self._persist()
        self._stop = threading.Event()
        if self._key and (watch_interval_s or poll_interval_s or rates_interval_s):
            threading.Thread(target=self._watch_loop, name="optimizer-watch", daemon=True).start()

    # ---------------------------------------------------------------- persistence
    @staticmethod
    def _state_key() -> str:
        """KV key of this actor's state ("" outside a named Ray actor: nothing is persisted)."""
        try:
            import ray

            if not ray.is_initialized():
                return ""
            context = ray.get_runtime_context()
            name = context.get_actor_name()
            return f"optimizer-state:{context.namespace}:{name}" if name else ""
        except Exception:  # noqa: BLE001 - not in an actor
            return ""

    @staticmethod
    def _reconstructed() -> bool:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)

    def _load(self) -> dict | None:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(self._key, namespace=_KV_NAMESPACE)
        return json.loads(raw) if raw else None

    def _persist(self) -> None:
        if not self._key:
            return
        from ray.experimental import internal_kv

        state = {"spec": self._planner.spec.model_dump(mode="json"), "plan": self.plan(), "version": self._version,
                 "config": self._config, "pending": _pending_to_json(self._pending),
                 "history": self._history[-_HISTORY_LIMIT:], "lost": sorted(self._lost), "seen": sorted(self._seen),
                 "quotas": self._quotas}
        internal_kv._internal_kv_put(self._key, json.dumps(state), overwrite=True, namespace=_KV_NAMESPACE)

    # ---------------------------------------------------------------- state
    def plan(self) -> dict:
        return self._plan.model_dump(mode="json")

    def spec(self) -> dict:
        return self._planner.spec.model_dump(mode="json")

    def plan_version(self) -> int:
        return self._version

    def serve_config(self) -> dict | None:
        """The Serve config last deployed (None before `deploy`)."""
        return self._config

    def history(self) -> list[dict]:
        """One entry per report, poll or liveness change: what came in, drift, whether it re-planned, seconds."""
        return list(self._history)

    def status(self) -> dict[str, Any]:
        """{restored (came back from persisted state), lost_sites, plan_version, watch_error, pid}."""
        import os

        return {"restored": self.restored, "lost_sites": sorted(self._lost), "plan_version": self._version,
                "watch_error": self._watch_error, "pid": os.getpid()}

    def _make_fleet(self) -> Any:
        """The deployment's InstanceFleet (one node + DeviceActor per planned instance) from `fleet` options:
        {models: {"model/version": [TritonModel dicts]}, nodes: LocalNodes JSON or None, emulate, workdir,
        trace_config}."""
        from isthmus.platform.instances import InstanceFleet
        from isthmus.platform.nodes import LocalNodes

        options = dict(self._fleet_options)
        nodes = options.pop("nodes", None)
        return InstanceFleet(self._planner.spec, nodes=LocalNodes.from_json(nodes) if nodes else None, **options)

    def fleet_status(self) -> list[dict]:
        """Per pool (site, instance type, model version): planned and running instances (running: DeviceActor and
        Triton up) and planned instances with no node to run on (`without_node`: on a cluster Isthmus does not
        scale, `--address`). Without a fleet (DeviceActors started by hand): []."""
        if self._fleet is None:
            return []
        from isthmus.platform.instances import planned_pools

        planned = planned_pools(self._plan)
        running = self._fleet.running(self._plan)
        nodes = {pool: len(n) for pool, n in self._fleet.inventory(self._plan).items()}
        return [{"site": p[0], "instance_type": p[1], "model_version": f"{p[2]}/{p[3]}",
                 "planned": planned.get(p, 0), "running": running.get(p, 0),
                 "without_node": max(0, planned.get(p, 0) - nodes.get(p, 0))}
                for p in sorted(set(planned) | set(running))]

    def adopt_nodes(self) -> dict[str, Any] | None:
        """On a cluster Isthmus does not scale (`--address`): when nodes for planned instances appeared or left,
        start DeviceActors on the new ones and redeploy Serve with one replica per node. None when nothing
        changed."""
        if self._fleet is None or self._fleet.nodes is not None or self._config is None:
            return None
        from isthmus.platform.serve_app import rollout

        with self._lock:
            config = self._build_config()
            if _as_persisted(config) == self._config:
                return None
            out = {"fleet": self._fleet.scale_out(self._plan), "rollout": rollout(self._config, config)}
            self._config = _as_persisted(config)
            self._persist()
            return out

    def stop_fleet(self) -> None:
        """Stop watching and stop every instance's DeviceActor and Triton (`isthmus down`)."""
        self._stop.set()
        if self._fleet is not None:
            self._fleet.stop_all(self._plan)

    def ingress_stats(self, window_s: float | None = None) -> dict[str, dict]:
        """The ingress's per-service stats over `window_s` (default: the rates window): `ServiceStats.summary`."""
        from ray import serve

        from isthmus.platform.serve_app import INGRESS_APP

        handle = serve.get_deployment_handle("Ingress", INGRESS_APP)
        return handle.stats.remote(window_s or self._rates_window_s).result(timeout_s=10)

    def poll_rates(self) -> dict[str, Any] | None:
        """One pull of the ingress's measured request rates (`measured_rates_rps`), held over the downscale delay
        (`held_rates_rps`) and divided by `target_utilization`, reported as `rates_rps` telemetry: past the
        drift threshold, or past what a pool's planned instances carry (`over_capacity`), the planner re-solves
        for that rate — so the instances run at most at target_utilization of their capacity — and the fleet
        and Serve follow. None when no service had enough requests in the window."""
        now = time.monotonic()
        measured = measured_rates_rps(self._planner.spec, self.ingress_stats(), self._rates_min_requests)
        self._rate_samples = [(t, r) for t, r in self._rate_samples if t >= now - self._downscale_delay_s]
        self._rate_samples.append((now, measured))
        rates = {k: v / self._target_utilization for k, v in held_rates_rps([r for _, r in self._rate_samples]).items()}
        if not measured:
            return None
        over = over_capacity(self._plan, self._planner.spec, rates)
        return self._update({"rates_rps": rates}, source="rates", force=bool(over),
                            extra={"measured": {k: round(v, 3) for k, v in measured.items()}, "over_capacity": over})

    # ---------------------------------------------------------------- edge agents, through the control plane
    def _control(self) -> Any:
        import ray

        if not self._control_plane:
            return None
        try:
            return ray.get_actor(self._control_plane, namespace=OPTIMIZER_NAMESPACE)
        except ValueError:
            return None

    def _head_bytes(self) -> dict[tuple, bytes]:
        """(version, split, exit) → head TorchScript bytes of the split tails the fleet serves."""
        if self._heads is None:
            from pathlib import Path

            self._heads = {}
            for key, models in ((self._fleet_options or {}).get("models") or {}).items():
                for triton in models:
                    if triton.get("head_path"):
                        version = key.split("/", 1)[1]
                        self._heads[(version, triton["split"], triton.get("exit"))] = Path(
                            triton["head_path"]).read_bytes()
        return self._heads

    def publish_agents(self) -> dict[str, Any]:
        """Publish every edge agent's assignment for the current plan (`agent_assignments`) through the control
        plane; returns {version, splits} ({} without a control plane). Agents acknowledge by reporting telemetry
        from the new version with the new split (`agents_status`)."""
        import ray

        from isthmus.platform.assignments import agent_assignments

        control = self._control()
        if control is None:
            return {}
        agents = ray.get(control.agents.remote(), timeout=30)
        assignments = agent_assignments(self._plan, self._planner.spec, agents, self._head_bytes(),
                                        self._agent_target)
        if not assignments:
            return {}
        version = ray.get(control.publish.remote(assignments), timeout=60)
        self._agents_seen = agents
        self._published = {"version": version, "at_unix": time.time(), "plan_version": self._version,
                           "splits": {a: v["split"] for a, v in assignments.items() if a in agents}}
        return dict(self._published)

    def _await_agents(self, timeout_s: float = 60.0) -> float | None:
        """Seconds until every agent of the last publish acknowledged it (`agents_status`), None on timeout or
        when nothing was published to a registered agent."""
        if not self._published.get("splits"):
            return None
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            agents = self.agents_status()["agents"]
            if all(agents.get(a, {}).get("acked") for a in self._published["splits"]):
                return time.monotonic() - start
            time.sleep(0.2)
        return None

    def agents_status(self) -> dict[str, Any]:
        """The last publish and, per registered agent, its latest telemetry's split and whether it runs the
        published one (`acked`)."""
        import ray

        control = self._control()
        if control is None:
            return {"published": {}, "agents": {}}
        latest: dict[str, dict] = {}
        for report in ray.get(control.telemetry.remote(time.time() - 120), timeout=30):
            latest[report["agent_id"]] = report
        splits = self._published.get("splits", {})
        agents = {a: {"split": r.get("split"), "plan_version": r.get("plan_version"),
                      "uplink_mbps": r.get("uplink_mbps"),
                      "acked": a in splits and r.get("plan_version", 0) >= self._published["version"]
                      and r.get("split") == splits[a]} for a, r in latest.items()}
        return {"published": dict(self._published), "agents": agents}

    def poll_agents(self) -> dict[str, Any] | None:
        """One pull from the control plane: a change in the registered agents re-publishes; the agents' bandwidth
        probes (`measured_bandwidth_mbps`) go in as `bandwidth_mbps` telemetry when they changed. Returns the
        history entry of that report, or None."""
        import ray

        from isthmus.platform.assignments import measured_bandwidth_mbps

        control = self._control()
        if control is None:
            return None
        agents = ray.get(control.agents.remote(), timeout=30)
        if {a: i.get("site") for a, i in agents.items()} != {a: i.get("site") for a, i in self._agents_seen.items()}:
            with self._lock:
                self.publish_agents()
        reports = ray.get(control.telemetry.remote(time.time() - 60), timeout=30)
        bandwidth = measured_bandwidth_mbps(self._planner.spec, agents, reports)
        if not bandwidth or bandwidth == self._bandwidth_seen:
            return None
        self._bandwidth_seen = bandwidth
        return self._update({"bandwidth_mbps": bandwidth}, source="agents",
                            extra={"measured": {"/".join(k): round(v, 4) for k, v in bandwidth.items()}})

    def update_spec(self, spec: dict) -> dict[str, Any]:
        """Take a new spec (e.g. re-measured numbers): plan it from scratch and roll the plan out (fleet, Serve,
        agents) like a re-plan. Returns the history entry."""
        from isthmus.optimizer import GeoPlanner
        from isthmus.spec import parse_spec

        with self._lock:
            with _plain_errors():
                planner = GeoPlanner(parse_spec(spec), method=self._planner.method,
                                     time_limit_s=self._planner.time_limit_s)
                plan = planner.solve()
            self._planner, self._quotas = planner, _quotas(planner.spec)
            if self._fleet is not None:
                self._fleet.spec = planner.spec
        return self._update({}, force=False, source="spec", replacement=plan)

    # ---------------------------------------------------------------- actions
    def _build_config(self) -> dict:
        from isthmus.platform.serve_app import serve_config

        # ingress_resources pins the ingress (e.g. to the head) so that losing a region cannot take it along
        return serve_config(self._plan, self._planner.spec, plan_version=self._version,
                            ingress_resources=self._ingress_resources or None,
                            per_instance=self._fleet.serve_replicas(self._plan) if self._fleet is not None else None,
                            **self._serve_options)

    def deploy(self) -> dict[str, float]:
        """Deploy the current plan as the Serve app (first time) or re-apply it; with a fleet, its instances
        (nodes, DeviceActors, Triton) start first."""
        from isthmus.platform.serve_app import rollout

        with self._lock:
            if self._fleet is not None:
                self._fleet.scale_out(self._plan)
            config = self._build_config()
            seconds = rollout(self._config, config)
            self.publish_agents()
            self._config = _as_persisted(config)   # as persisted, so a restored actor returns the same
            self._persist()
            return seconds

    def _rollout(self, config: dict, retire: bool = True) -> dict[str, float]:
        """Roll out `config`; apps of lost sites leave at once with the new ingress (they can never become
        RUNNING again, so `rollout` must not wait for them), the other steps as in `serve_app.rollout`."""
        from isthmus.platform.serve_app import INGRESS_APP, rollout

        old = self._config
        lost_apps = {a["name"] for a in old["applications"]
                     if a["name"] != INGRESS_APP and (a.get("args") or {}).get("site") in self._lost}
        if lost_apps:
            ingress = next(a for a in config["applications"] if a["name"] == INGRESS_APP)
            old = dict(old, applications=[ingress, *(a for a in old["applications"]
                                                      if a["name"] not in lost_apps and a["name"] != INGRESS_APP)])
        return rollout(old, config, retire=retire)

    def report(self, telemetry: dict[str, Any], force: bool = False) -> dict[str, Any]:
        """Take telemetry ({kind: {key: value}}, kinds as in GeoPlanner.replan); re-plan and roll out on drift.

        Returns {drift, key, replanned, changed, plan_version, replan_s, rollout: {step: s}}.
        """
        return self._update(telemetry, force=force, source="report")

    def _update(self, telemetry: dict[str, Any], *, force: bool = False, lost: set[str] | None = None,
                source: str = "report", extra: dict | None = None, replacement: Plan | None = None) -> dict[str, Any]:
        """Merge telemetry (and a new set of lost sites); re-plan on drift, force or a liveness change."""
        from isthmus.platform.serve_app import apply_serve_config

        with self._lock:
            start = time.monotonic()
            incoming: dict[str, dict] = {}
            _merge(incoming, telemetry)
            pending = {kind: dict(values) for kind, values in self._pending.items()}
            for kind, values in incoming.items():
                pending.setdefault(kind, {}).update(values)
            drift, key = telemetry_drift(self._planner.spec, pending)
            entry: dict[str, Any] = {
                "source": source, "at_unix": time.time(), "telemetry": _pending_to_json(incoming), "drift": drift, "key": key, "replanned": False, "changed": False,
                "plan_version": self._version, "replan_s": 0.0, "rollout": {}, **(extra or {})}
            self._pending = pending
            liveness = lost is not None and lost != self._lost
            if liveness:
                entry.update(lost_sites=sorted(lost), returned_sites=sorted(self._lost - lost))
                self._lost = set(lost)
                self._planner.spec = with_lost_sites(self._planner.spec, self._quotas, self._lost)
            if force or drift > self._threshold or liveness or replacement is not None:
                old = self._plan
                try:
                    with _plain_errors():
                        self._plan = replacement if replacement is not None else self._planner.replan(**pending)
                except ValueError as err:
                    if liveness:
                        self._plan = degraded_plan(old, self._lost)   # serve on what is left
                        entry["degraded"] = str(err)[:500]
                    elif source == "report":
                        raise
                    else:   # pulled numbers no plan fits: keep serving the current plan, say why
                        entry["error"] = str(err)[:500]
                finally:  # bad telemetry (an unknown name) must not poison the next reports
                    self._pending = {}
                entry.update(replanned="error" not in entry, replan_s=time.monotonic() - start, replanned_at_unix=time.time(),
                             resolve=getattr(self._planner, "last_resolve_kind", ""),
                             cost_per_hour=self._plan.cost_per_hour)
                if _routing_signature(old) != _routing_signature(self._plan):
                    self._version += 1
                    entry.update(changed=True, plan_version=self._version)
                    if self._config is not None:
                        if self._fleet is not None:   # new instances serve before the old ones go
                            entry["fleet"] = {"out": self._fleet.scale_out(self._plan)}
                        config = self._build_config()
                        # old site apps stay until the edge agents run the new split (their requests in between
                        # still take the old routes), then retire with the instances the plan no longer has
                        entry["rollout"] = self._rollout(config, retire=False)
                        entry["published"] = self.publish_agents()
                        entry["agents_acked_s"] = self._await_agents()
                        start_retire = time.monotonic()
                        apply_serve_config(config)
                        entry["rollout"]["retire_old_s"] = time.monotonic() - start_retire
                        self._config = _as_persisted(config)
                        if self._fleet is not None:
                            entry["fleet"]["in"] = self._fleet.scale_in(self._plan)
            entry["seconds"] = time.monotonic() - start
            self._history.append(entry)
            del self._history[:-_HISTORY_LIMIT]
            self._persist()
            return entry

    # ---------------------------------------------------------------- liveness and pulled telemetry
    def _device(self, site: str) -> Any:
        """The site's DeviceActor handle (looked up by name; None when it has none)."""
        import ray

        from isthmus.platform.serve_app import DEVICE_NAMESPACE, device_actor_name

        if site not in self._devices:
            try:
                self._devices[site] = ray.get_actor(device_actor_name(site), namespace=DEVICE_NAMESPACE)
            except ValueError:
                return None
        return self._devices[site]

    def _probe(self, sites: set[str]) -> set[str]:
        """Sites whose DeviceActor is dead, gone, or missed `suspect_after` probes in a row."""
        import ray

        refs = {}
        for site in sites:
            known = site in self._devices or site in self._lost
            device = self._device(site)
            if device is None:
                if known:   # it had one, and the name is gone: dead
                    self._misses[site] = self._suspect_after
                continue
            refs[site] = device.node_id.remote()
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self._probe_timeout_s) if refs \
            else ([], [])
        for site, ref in refs.items():
            if ref not in ready:
                self._misses[site] = self._misses.get(site, 0) + 1
                continue
            try:
                ray.get(ref, timeout=0)
                self._misses[site] = 0
            except ray.exceptions.RayActorError:
                self._misses[site] = self._suspect_after
                self._devices.pop(site, None)   # a new DeviceActor may register under the name later
        return {site for site in sites if self._misses.get(site, 0) >= self._suspect_after}

    def check_sites(self) -> dict[str, Any]:
        """One liveness check (the watch thread runs it every `watch_interval_s`); re-plans when the set of
        lost sites changes. Returns {lost_sites, entry (the history entry, or None)}."""
        import ray

        from isthmus.platform.cluster import node_sites, site_resources

        resources = site_resources(self._planner.spec)
        alive = node_sites(ray.nodes())
        seen = {site for site, resource in resources.items() if resource in alive} - self._seen
        if seen:
            with self._lock:
                self._seen |= seen
                self._persist()
        watched = self._seen
        if self._fleet is not None:   # a site the plan scaled to no instance has no node, and is not lost
            watched = self._seen & ({i.site for i in self._plan.instances if i.count > 0} | self._lost)
        lost = {site for site in watched if resources.get(site) not in alive}
        lost |= self._probe(self._seen - lost)
        entry = self._update({}, lost=lost, source="liveness") if lost != self._lost else None
        return {"lost_sites": sorted(self._lost), "entry": entry}

    def poll_once(self) -> dict[str, Any]:
        """Pull each planned site's DeviceActor `health()` (timeout `probe_timeout_s`·2); report the measured
        latencies as `latency_ms` telemetry (re-planning past the threshold). Returns the history entry with
        `measured` ({"model/version/device": ms}) and `queue` ({site: pending requests}); when no plan fits
        the measured numbers, the current plan stays and the entry's `error` says why."""
        import ray

        sites = {r.site for r in self._plan.routes if r.fraction > 0} - self._lost
        refs = {site: device.health.remote() for site in sites if (device := self._device(site)) is not None}
        health: dict[str, dict] = {}
        for site, ref in refs.items():
            try:
                health[site] = ray.get(ref, timeout=2 * self._probe_timeout_s)
            except Exception:  # noqa: BLE001 - liveness is the watch's job; skip this sample
                continue
        measured = measured_latency_ms(self._plan, self._planner.spec, health)
        extra = {"measured": {"/".join(k): round(v, 3) for k, v in measured.items()},
                 "queue": {site: h.get("queue", 0) for site, h in health.items()}}
        return self._update({"latency_ms": measured}, source="poll", extra=extra)

    def _watch_loop(self) -> None:
        """Liveness every `watch_interval_s`, pulled latencies every `poll_interval_s`, nodes, agents and rates
        every `rates_interval_s`; each task on its own, so one that fails does not starve the others
        (`status()["watch_error"]` names the last failure)."""
        next_poll = time.monotonic() + (self._poll_interval_s or 0)
        next_rates = time.monotonic() + (self._rates_interval_s or 0)
        interval = min(x for x in (self._watch_interval_s, self._poll_interval_s, self._rates_interval_s) if x)
        while not self._stop.wait(interval):
            tasks = [self.check_sites] if self._watch_interval_s else []
            if self._poll_interval_s and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self._poll_interval_s
                tasks.append(self.poll_once)
            if self._rates_interval_s and self._config is not None and time.monotonic() >= next_rates:
                next_rates = time.monotonic() + self._rates_interval_s
                tasks += [self.adopt_nodes, self.poll_agents, self.poll_rates]
            errors = []
            for task in tasks:
                try:
                    task()
                except Exception as err:  # noqa: BLE001 - keep watching; status() shows the last error
                    errors.append(f"{task.__name__}: {type(err).__name__}: {str(err)[:300]}")
            self._watch_error = "; ".join(errors)


def OptimizerActor():  # noqa: N802 - returns the Ray actor class, built lazily so importing needs no Ray
    """The Ray actor class (num_cpus 0, threaded so state reads never wait behind a rollout; restarted by Ray
    from its persisted state, calls in flight retried)."""
    import ray

    return ray.remote(num_cpus=0, max_concurrency=4, max_restarts=-1, max_task_retries=3)(_OptimizerActor)


def start_optimizer(spec: Spec, plan: Plan | None = None, *, name: str = OPTIMIZER_NAME,
                    namespace: str = OPTIMIZER_NAMESPACE, resources: dict[str, float] | None = None,
                    **kwargs: Any):
    """Create (or get, if it exists) the named, detached OptimizerActor; kwargs go to its constructor."""
    actor_class = OptimizerActor()
    return actor_class.options(name=name, namespace=namespace, lifetime="detached", get_if_exists=True,
                               resources=resources or {}).remote(
        spec.model_dump(mode="json"), plan.model_dump(mode="json") if plan is not None else None, **kwargs)
