"""Ray Serve application from a Plan: an ingress that routes by the plan's fractions to pinned site deployments.

Layout (one Serve *application* per box, so a re-plan adds or retires a site without touching the rest):

    isthmus-ingress  (route "/", HTTP JSON and Serve gRPC `isthmus.v1.Inference/Infer`)
        └─ picks a route per request: smooth weighted round-robin over the service's routes with
           weights = plan fractions, so after n requests each route r has served n·x_r ± 1
           (retries go to the next route of the service when a site fails or does not answer within
           the attempt timeout max(attempt_timeout_s, 4·L_r): a lost node is noticed in seconds, not
           after Ray's ~15 s node health check)
    isthmus-site-<site>-<model>-<version>   one per (site, model version) of the plan
        └─ SiteModel, pinned with ray_actor_options={"resources": {"region:<site>": 0.01}}
           (edge sites: "edge:<site>"), calls its node's Triton over gRPC (tritonclient.grpc.aio), or
           over HTTP (tritonclient.http.aio, binary tensors) with triton_protocol="http": Triton's HTTP
           endpoint keeps every request's W3C trace context, its gRPC one loses some (the traceparent
           metadata is read as a C string past its end; see tests/e2e/test_triton_trace_context.py)

The routing table lives in the ingress's `user_config`, so new weights apply in place
(`reconfigure`, no restart). `serve_config(plan, ...)` returns the Serve deploy config (the YAML of
`isthmus serve-config`), `apply_serve_config` deploys it on the connected cluster, and `rollout`
moves a running app from one plan to the next without dropping requests: start new site apps,
switch weights, then retire old site apps.

HTTP request (POST /): `{"service": "detect", "input": [[...]]}` or, from an edge agent,
`{"service": "detect", "activation": [[...]], "split": 3, "exit": null}`; `traceparent` header
optional. Reply: `{"output", "prediction", "site", "model_version", "node_id", "attempts", "trace_id"}`.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from typing import Any, Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from isthmus.spec import Plan, Spec

__all__ = [
    "INGRESS_APP", "RouteEntry", "RoutingTable", "WeightedRouter", "route_groups", "routing_table", "site_app_name",
    "pool_resource", "triton_model_name", "site_resource", "serve_config", "apply_serve_config", "rollout",
    "ingress_app", "site_app", "ServiceStats", "add_InferenceServicer_to_server", "device_actor_name",
    "start_site_device", "DEVICE_NAMESPACE", "GRPC_SERVICER",
]

INGRESS_APP = "isthmus-ingress"
DEVICE_NAMESPACE = "isthmus"
_SITE_PREFIX = "isthmus-site-"
_ATTEMPT_TIMEOUT_S = 3.0
_PROTOCOLS = ("grpc", "http")
# `grpc_servicer_functions` entry for Serve's gRPC ingress: isthmus.v1.Inference with requests passed on as bytes
GRPC_SERVICER = "isthmus.platform.serve_app.add_InferenceServicer_to_server"


class RouteEntry(BaseModel):
    """One weighted target of a service: a site app and the Triton model it runs for this route."""

    model_config = ConfigDict(extra="forbid")
    app: str = Field(description="Serve application of the (site, model version) deployment.")
    site: str
    model: str
    version: str
    fraction: float = Field(ge=0, description="Plan fraction x_{s,r} of the service's requests.")
    split: int | None = None
    exit: int | None = None
    triton_model: str = Field(description="Triton model name run for this route.")
    latency_ms: float = Field(description="Plan's predicted route latency L_r, ms.")


class RoutingTable(BaseModel):
    """The ingress's `user_config`: routes per service and the plan version they come from."""

    model_config = ConfigDict(extra="forbid")
    plan_version: int = 0
    services: dict[str, list[RouteEntry]] = Field(default_factory=dict)
    slo_ms: dict[str, float] = Field(default_factory=dict, description="Each service's SLO, for attainment.")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def site_app_name(site: str, model: str, version: str) -> str:
    """Serve application name of the (site, model version) deployment."""
    return f"{_SITE_PREFIX}{_slug(site)}-{_slug(model)}-{_slug(version)}"


def triton_model_name(model: str, version: str, split: int | None = None, exit: int | None = None) -> str:
    """Triton model name of a route: `<model>_<version>`, plus `_s<k>` for a split tail, `_e<e>` for an exit."""
    name = f"{_slug(model)}_{_slug(version)}"
    if split is not None:
        name += f"_s{split}"
    if exit is not None:
        name += f"_e{exit}"
    return name


def device_actor_name(site: str, node_id: str | None = None) -> str:
    """Name (in namespace DEVICE_NAMESPACE) under which a site's DeviceActor is registered: one per site, or, in
    a deployment with one DeviceActor per planned instance, one per (site, node)."""
    return f"isthmus-device:{site}" + (f"@{node_id}" if node_id else "")


def pool_resource(site: str, model: str, version: str) -> str:
    """Custom resource of the nodes that host instances of (model, version) at `site` (one unit per node): a
    deployment's Serve replicas ask for 0.01 of it, at most one per node, so each lands beside its own Triton."""
    return f"pool:{_slug(site)}:{_slug(model)}:{_slug(version)}"


def site_resource(site: str, spec: Spec | None = None, edge: bool | None = None) -> str:
    """`region:<site>` or `edge:<site>`: the custom resource of the site's Ray node."""
    if spec is not None:
        edge = site in {e.name for e in spec.edge_sites}
        if not edge and site not in {r.name for r in spec.regions}:
            raise ValueError(f"site {site!r} is neither a region nor an edge site of spec {spec.name!r}. "
                             "To fix: plan with the same spec you deploy")
    return f"{'edge' if edge else 'region'}:{site}"


def start_site_device(site: str, device: str, models: list, spec: Spec, **actor_kwargs: Any) -> Any:
    """Create the site's DeviceActor where the Serve app and the OptimizerActor look it up: named
    `device_actor_name(site)` in DEVICE_NAMESPACE, pinned to the site's node by `site_resource(site, spec)`.
    `actor_kwargs` go to `DeviceActor(site, device, models, ...)`; call `.start.remote()` on the handle."""
    from isthmus.actors.device import DeviceActor

    return DeviceActor.options(name=device_actor_name(site), namespace=DEVICE_NAMESPACE,
                               resources={site_resource(site, spec): 0.01}).remote(site, device, models, **actor_kwargs)


def _model_of(spec: Spec | None, service: str) -> str:
    if spec is None:
        return ""
    model = next((s.model for s in spec.services if s.name == service), None)
    if model is None:
        raise ValueError(f"plan service {service!r} is not in spec {spec.name!r}. To fix: pass the spec the plan "
                         "was made from")
    return model


def routing_table(plan: Plan, spec: Spec | None = None, plan_version: int = 0) -> RoutingTable:
    """The ingress's routes from a plan: per service, its routes with weight = fraction (zero-weight routes dropped).

    The model of a route is the service's model in `spec`; without a spec it is read from the
    plan's instances (`<model>/<version>` at that site).
    """
    services: dict[str, list[RouteEntry]] = {}
    for route in plan.routes:
        if route.fraction <= 0:
            continue
        model = _model_of(spec, route.service) or _model_from_instances(plan, route.site, route.model_version)
        services.setdefault(route.service, []).append(RouteEntry(
            app=site_app_name(route.site, model, route.model_version), site=route.site, model=model,
            version=route.model_version, fraction=route.fraction, split=route.split, exit=route.exit,
            triton_model=triton_model_name(model, route.model_version, route.split, route.exit),
            latency_ms=route.latency_ms))
    slo = {s.name: s.slo_ms for s in spec.services} if spec is not None else {}
    return RoutingTable(plan_version=plan_version, services=services,
                        slo_ms={name: slo[name] for name in services if name in slo})


def _model_from_instances(plan: Plan, site: str, version: str) -> str:
    models = sorted({i.model_version.split("/", 1)[0] for i in plan.instances
                     if i.site == site and i.model_version.split("/", 1)[-1] == version})
    if len(models) != 1:
        raise ValueError(f"cannot tell which model version {version!r} at site {site!r} belongs to (plan instances "
                         f"give {models or 'none'}). To fix: pass the spec (--spec SPEC)")
    return models[0]


def route_groups(table: RoutingTable) -> dict[tuple, list[RouteEntry]]:
    """Routes a request can take, keyed by (service, split, exit): a raw input (split None) may take any
    unsplit route of its service, an edge activation only the routes with its split and exit."""
    groups: dict[tuple, list[RouteEntry]] = {}
    for service, entries in table.services.items():
        for entry in entries:
            key = (service, entry.split, entry.exit if entry.split is not None else None)
            groups.setdefault(key, []).append(entry)
    return groups


class WeightedRouter:
    """Smooth weighted round-robin (nginx): after n picks, target i was picked n·w_i/Σw ± 1 times.

    Each pick adds w_i to every current score, takes the largest and subtracts Σw from it.
    `pick(exclude)` skips excluded targets (a retry) without disturbing the schedule.
    """

    def __init__(self, weights: Iterable[float]):
        self.weights = [float(w) for w in weights]
        if not self.weights or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"weights {self.weights} must be >= 0 with a positive sum. To fix: check the plan's "
                             "fractions")
        self._score = [0.0] * len(self.weights)
        self._total = sum(self.weights)

    def pick(self, exclude: Iterable[int] = ()) -> int:
        excluded = set(exclude)
        if excluded:
            left = [i for i in range(len(self.weights)) if i not in excluded]
            if not left:
                raise LookupError("every target is excluded")
            return max(left, key=lambda i: (self.weights[i], -i))
        for i, w in enumerate(self.weights):
            self._score[i] += w
        best = max(range(len(self._score)), key=lambda i: (self._score[i], -i))
        self._score[best] -= self._total
        return best


# ---------------------------------------------------------------- Serve config

def serve_config(plan: Plan, spec: Spec | None = None, *, triton_urls: dict[str, str] | None = None,
                 http_port: int = 8000, grpc_port: int = 9000, tracing: dict[str, Any] | None = None,
                 plan_version: int = 0, keep_apps: Iterable[dict] = (), ingress_replicas: int = 1,
                 edge_sites: Iterable[str] = (), ingress_resources: dict[str, float] | None = None,
                 attempt_timeout_s: float = _ATTEMPT_TIMEOUT_S, triton_protocol: str = "grpc",
                 per_instance: dict[tuple[str, str, str], tuple[int, str]] | None = None) -> dict:
    """The Serve deploy config (a `ServeDeploySchema` dict) that runs `plan`.

    Site apps are pinned by resource `region:<site>` / `edge:<site>` (0.01 of the node's unit, num_cpus 0).
    `triton_urls` maps site → Triton address (gRPC, or HTTP with `triton_protocol="http"`); a missing site
    resolves at start-up through its DeviceActor (`device_actor_name(site)`). `keep_apps` are extra site app configs to keep running.
    Without `spec`, sites in `edge_sites` are pinned as `edge:<site>`, all others as `region:<site>`.
    `ingress_resources` pins the ingress (e.g. `{"isthmus:head": 0.01}`, so losing a region cannot take it
    along); `attempt_timeout_s` is the ingress's floor of the per-attempt timeout max(attempt_timeout_s, 4·L_r).
    `per_instance` (what `isthmus deploy` runs) maps (site, model, version) → (replicas, resource): that app gets
    `num_replicas` = replicas (the instances that run, one per node) pinned by `resource` (`pool_resource` of
    the instances' nodes, or `region:<site>` on a cluster whose nodes carry no pool resource).
    """
    _check_protocol(triton_protocol)
    if attempt_timeout_s <= 0:
        raise ValueError(f"attempt_timeout_s is {attempt_timeout_s}. To fix: give a positive number of seconds, "
                         f"e.g. {_ATTEMPT_TIMEOUT_S}")
    from isthmus.platform.tracing import TracingConfig

    table = routing_table(plan, spec, plan_version)
    urls = dict(triton_urls or {})
    tracing = TracingConfig.model_validate(tracing).model_dump(exclude_none=True) if tracing else None
    site_apps: dict[str, dict] = {}
    for entries in table.services.values():
        for entry in entries:
            if entry.app in site_apps:
                continue
            resource = site_resource(entry.site, spec, entry.site in set(edge_sites))
            deployment = {"name": "SiteModel", "num_replicas": 1, "max_ongoing_requests": 64,
                          "ray_actor_options": {"num_cpus": 0, "resources": {resource: 0.01}}}
            if per_instance is not None:
                replicas, pin = per_instance.get((entry.site, entry.model, entry.version), (1, resource))
                deployment.update(num_replicas=max(1, replicas), max_replicas_per_node=1,
                                  ray_actor_options={"num_cpus": 0, "resources": {pin: 0.01}})
            site_apps[entry.app] = {
                "name": entry.app, "route_prefix": None,
                "import_path": "isthmus.platform.serve_app:site_app",
                "args": {"site": entry.site, "model": entry.model, "version": entry.version,
                         "triton_url": urls.get(entry.site), "tracing": tracing or {},
                         **({"triton_protocol": triton_protocol} if triton_protocol != "grpc" else {})},
                "deployments": [deployment],
            }
    for app in keep_apps:
        site_apps.setdefault(app["name"], app)
    ingress = {
        "name": INGRESS_APP, "route_prefix": "/",
        "import_path": "isthmus.platform.serve_app:ingress_app",
        "args": {"tracing": tracing or {}, "attempt_timeout_s": attempt_timeout_s},
        "deployments": [{"name": "Ingress", "num_replicas": ingress_replicas, "max_ongoing_requests": 256,
                         "user_config": table.model_dump(mode="json"),
                         "ray_actor_options": {"num_cpus": 0, **({"resources": dict(ingress_resources)}
                                                                  if ingress_resources else {})}}],
    }
    return {"proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": http_port},
            "grpc_options": {"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
            "applications": [ingress, *sorted(site_apps.values(), key=lambda a: a["name"])]}


def _statuses() -> dict[str, Any]:
    from ray import serve

    return dict(serve.status().applications)


def apply_serve_config(config: dict, timeout_s: float = 180.0, wait_for: Iterable[str] | None = None) -> None:
    """Deploy a Serve config on the connected Ray cluster (starting Serve with its HTTP/gRPC options).

    Waits until every application of the config is RUNNING (or those in `wait_for`) and every
    application not in the config is gone; raises TimeoutError naming the stragglers.
    """
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    serve.start(proxy_location=config.get("proxy_location", "HeadOnly"),
                http_options=HTTPOptions(**config.get("http_options", {})),
                grpc_options=gRPCOptions(**config.get("grpc_options", {})))
    _get_global_client().deploy_apps(schema)
    names = {a["name"] for a in config["applications"]}
    wanted = set(wait_for) if wait_for is not None else names
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = _statuses()
        failed = {n: s.message for n, s in statuses.items() if n in names and str(s.status).endswith("DEPLOY_FAILED")}
        if failed:
            raise RuntimeError(f"Serve applications failed to deploy: {failed}. To fix: read the messages above")
        pending = sorted(n for n in wanted if n not in statuses or not str(statuses[n].status).endswith("RUNNING"))
        leftover = sorted(n for n in statuses if n not in names)
        if not pending and not leftover:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout_s:.0f} s: not running {pending}, not yet deleted {leftover}. "
                               "To fix: check that every site of the plan has a node (isthmus up) and its Triton "
                               "is reachable")
        time.sleep(0.25)


def _ingress_plan_version() -> int:
    from ray import serve

    return serve.get_deployment_handle("Ingress", INGRESS_APP).plan_version.remote().result(timeout_s=30)


def rollout(old_config: dict | None, new_config: dict, timeout_s: float = 180.0, retire: bool = True
            ) -> dict[str, float]:
    """Move the running app from `old_config` to `new_config` without dropping a request.

    1. start the new site apps next to the old ones (ingress still on the old weights);
    2. switch the ingress's weights in place (`user_config` → `reconfigure`) and wait until it serves them;
    3. retire the site apps the new plan no longer uses (Serve drains their in-flight requests) — with
       `retire=False` the caller does it later (`apply_serve_config(new_config)`), e.g. once edge agents that
       still send to the old routes have switched.
    Returns seconds per step.
    """
    seconds: dict[str, float] = {}
    new_sites = [a for a in new_config["applications"] if a["name"] != INGRESS_APP]
    if old_config is None:
        start = time.monotonic()
        apply_serve_config(new_config, timeout_s)
        return {"deploy_s": time.monotonic() - start}
    old_ingress = next(a for a in old_config["applications"] if a["name"] == INGRESS_APP)
    old_sites = [a for a in old_config["applications"] if a["name"] != INGRESS_APP]
    union = {a["name"]: a for a in old_sites}
    union.update({a["name"]: a for a in new_sites})
    step = dict(new_config, applications=[old_ingress, *union.values()])
    start = time.monotonic()
    apply_serve_config(step, timeout_s)
    seconds["start_new_s"] = time.monotonic() - start
    new_ingress = next(a for a in new_config["applications"] if a["name"] == INGRESS_APP)
    version = new_ingress["deployments"][0]["user_config"]["plan_version"]
    start = time.monotonic()
    apply_serve_config(dict(new_config, applications=[new_ingress, *union.values()]), timeout_s,
                       wait_for=[a["name"] for a in new_sites])
    deadline = time.monotonic() + timeout_s
    while _ingress_plan_version() != version:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the ingress did not take plan version {version} within {timeout_s:.0f} s")
        time.sleep(0.1)
    seconds["switch_weights_s"] = time.monotonic() - start
    if not retire:
        return seconds
    start = time.monotonic()
    apply_serve_config(new_config, timeout_s)
    seconds["retire_old_s"] = time.monotonic() - start
    return seconds


# ---------------------------------------------------------------- gRPC servicer for Serve's ingress

def add_InferenceServicer_to_server(servicer: Any, server: Any) -> None:  # noqa: N802 - grpc naming
    """`isthmus.v1.Inference` (Infer, Probe) for Serve's gRPC ingress, passing requests on as raw bytes.

    Serve's ingress (the ingress replica's own gRPC server behind HAProxy in Isthmus's Serve mode, or Serve's
    Python proxy) may pickle the deserialized request to hand it to a replica, and the generated message
    classes carry a module name (`isthmus.v1.inference_pb2`) that does not import; bytes pickle, and
    the ingress parses them. Replies are messages (Serve's replica serializes them).
    """
    import grpc

    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name)) for name in ("Infer", "Probe")}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("isthmus.v1.Inference", handlers),))


# ---------------------------------------------------------------- deployments

_LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
_BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]


class _Metrics:
    """Prometheus metrics of one deployment through ray.util.metrics (exported by every node's Ray agent).

    isthmus_requests_total, isthmus_errors_total (counters), isthmus_latency_ms and
    isthmus_batch_size (histograms); tags: deployment, site, model_version, service. The ingress also counts
    isthmus_slo_met_total{service}: requests answered within the service's slo_ms, so
    isthmus_slo_met_total / isthmus_requests_total{deployment="isthmus-ingress"} is its SLO attainment.
    """

    def __init__(self, deployment: str):
        from ray.util import metrics

        tags = ("deployment", "site", "model_version", "service")
        self.deployment = deployment
        self.requests = metrics.Counter("isthmus_requests_total", "Requests handled.", tag_keys=tags)
        self.errors = metrics.Counter("isthmus_errors_total", "Requests that failed.", tag_keys=tags)
        self.latency = metrics.Histogram("isthmus_latency_ms", "Request latency in ms.",
                                         boundaries=_LATENCY_BOUNDARIES_MS, tag_keys=tags)
        self.batch = metrics.Histogram("isthmus_batch_size", "Rows per request sent on.",
                                       boundaries=_BATCH_BOUNDARIES, tag_keys=tags)
        self.slo_met = metrics.Counter("isthmus_slo_met_total", "Requests answered within their service's SLO.",
                                       tag_keys=("service",))

    def observe(self, site: str, version: str, latency_ms: float, batch: int, ok: bool, service: str = "") -> None:
        tags = {"deployment": self.deployment, "site": site, "model_version": version, "service": service}
        self.requests.inc(1, tags=tags)
        if not ok:
            self.errors.inc(1, tags=tags)
        self.latency.observe(latency_ms, tags=tags)
        self.batch.observe(batch, tags=tags)

    def observe_slo(self, service: str, met: bool) -> None:
        if met:
            self.slo_met.inc(1, tags={"service": service})


def _span(name: str, context: Any = None, kind: str = "INTERNAL", attributes: dict | None = None):
    """A span context manager from this process's tracer, or a no-op one when tracing is off."""
    import contextlib

    from isthmus.platform.tracing import get_tracer

    tracer = get_tracer()
    if tracer is None:
        return contextlib.nullcontext(None)
    from opentelemetry.trace import SpanKind

    return tracer.start_as_current_span(name, context=context, kind=getattr(SpanKind, kind),
                                        attributes=attributes or {})


def _check_protocol(protocol: str) -> None:
    if protocol not in _PROTOCOLS:
        raise ValueError(f"triton_protocol {protocol!r} is not one of {list(_PROTOCOLS)}. To fix: use 'grpc' or 'http'")


def _exclusive_grpc_ports() -> None:
    """Make Serve's direct-ingress gRPC servers in this process bind their port exclusively.

    Ray Serve 2.60 passes the channel option ("grpc.so_reuseport", "0") as a string, which gRPC ignores, so
    SO_REUSEPORT stays on: a replica's gRPC server then shares a port another process already listens on
    (another Serve node on the same host, a Triton server) and the kernel hands it some of that port's
    requests. With the int 0 the bind fails and Serve retries the next free port, as it does for HTTP."""
    from ray.serve._private import grpc_util

    server = grpc_util.gRPCGenericServer
    if getattr(server, "_isthmus_exclusive_port", False):
        return
    init = server.__init__

    def exclusive_init(self: Any, service_handler_factory: Any, *, extra_options: list | None = None) -> None:
        options = [(k, int(v)) if k == "grpc.so_reuseport" else (k, v) for k, v in extra_options or []]
        init(self, service_handler_factory, extra_options=options)

    server.__init__, server._isthmus_exclusive_port = exclusive_init, True


class _SiteModel:
    """Runs a (site, model version)'s Triton models on this node: one async call per request, through a
    tritonclient aio client (gRPC or HTTP) made once per replica."""

    def __init__(self, site: str, model: str, version: str, triton_url: str | None = None,
                 tracing: dict | None = None, triton_protocol: str = "grpc"):
        from isthmus.platform.tracing import setup_tracing

        _exclusive_grpc_ports()  # this replica is its app's ingress: Serve starts a gRPC server in it
        _check_protocol(triton_protocol)
        self.site, self.model, self.version, self.protocol = site, model, version, triton_protocol
        self.triton_url = triton_url or _device_url(site, triton_protocol)
        setup_tracing(tracing, f"site:{site}")
        self._metrics = _Metrics(site_app_name(site, model, version))
        self._client: Any = None

    async def _infer(self, triton_model: str, array: np.ndarray, headers: dict) -> np.ndarray:
        from tritonclient.utils import np_to_triton_dtype

        from isthmus.platform.triton import INPUT_NAME, OUTPUT_NAME

        dtype = np_to_triton_dtype(array.dtype)
        if self.protocol == "http":
            import tritonclient.http as http
            import tritonclient.http.aio as http_aio

            if self._client is None:  # made inside the replica's event loop (aiohttp)
                self._client = http_aio.InferenceServerClient(self.triton_url)
            tensor = http.InferInput(INPUT_NAME, list(array.shape), dtype)
            tensor.set_data_from_numpy(array, binary_data=True)
            result = await self._client.infer(triton_model, [tensor], headers=headers, timeout=30,
                                              outputs=[http.InferRequestedOutput(OUTPUT_NAME, binary_data=True)])
        else:
            import tritonclient.grpc as grpc
            import tritonclient.grpc.aio as grpc_aio

            if self._client is None:
                self._client = grpc_aio.InferenceServerClient(self.triton_url)
            tensor = grpc.InferInput(INPUT_NAME, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            result = await self._client.infer(triton_model, [tensor], headers=headers, client_timeout=30.0)
        return result.as_numpy(OUTPUT_NAME)

    async def __call__(self, payload: dict) -> dict:
        """payload: {"array": np.ndarray, "triton_model": str, "carrier": {traceparent}} → output and where."""
        import ray

        from isthmus.platform.tracing import extract_context, inject_traceparent

        start = time.perf_counter()
        array = np.ascontiguousarray(payload["array"])
        ok = False
        try:
            with _span("deployment", extract_context(payload.get("carrier")),
                       "SERVER", {"isthmus.site": self.site, "isthmus.model_version": self.version}):
                with _span("triton.infer", kind="CLIENT", attributes={"rpc.system": self.protocol,
                                                                      "isthmus.triton_model": payload["triton_model"],
                                                                      "net.peer": self.triton_url}):
                    triton_start = time.perf_counter()
                    output = await self._infer(payload["triton_model"], array, inject_traceparent())
                    triton_ms = (time.perf_counter() - triton_start) * 1000
            ok = True
        finally:
            self._metrics.observe(self.site, self.version, (time.perf_counter() - start) * 1000,
                                  int(array.shape[0]) if array.ndim else 1, ok, payload.get("service", ""))
        return {"output": output, "site": self.site, "model_version": self.version,
                "node_id": ray.get_runtime_context().get_node_id(), "triton_ms": triton_ms}


def _device_url(site: str, protocol: str = "grpc") -> str:
    """The Triton address (gRPC or HTTP) of the DeviceActor on this replica's node, else of the site's one."""
    import ray

    names = [device_actor_name(site, ray.get_runtime_context().get_node_id()), device_actor_name(site)]
    for name in names:
        try:
            actor = ray.get_actor(name, namespace=DEVICE_NAMESPACE)
        except ValueError:
            continue
        return ray.get((actor.http_url if protocol == "http" else actor.grpc_url).remote(), timeout=30)
    raise ValueError(f"site {site!r} has no triton_url and no DeviceActor named {names[0]!r} or {names[1]!r} "
                     f"in namespace {DEVICE_NAMESPACE!r}. To fix: start the site's DeviceActor with that name, "
                     "or pass triton_urls")


class ServiceStats:
    """What the ingress served, per service, in a sliding window (the measured rates the OptimizerActor polls).

    rate_rps = n / max(t_now − t_first, 1 s) over the n requests that *arrived* in the window (arrivals, not
    completions: an overloaded service completes only what its instances can serve), so a load that began 2 s
    ago is not diluted over the whole window; latencies and slo_attainment (share of the window's completed
    requests that succeeded within the service's SLO; failures count as misses) are over completions.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self._rows: collections.deque[tuple[float, str, float, bool]] = collections.deque(maxlen=limit)
        self._arrivals: collections.deque[tuple[float, str]] = collections.deque(maxlen=limit)

    def arrive(self, service: str) -> None:
        self._arrivals.append((time.monotonic(), service))

    def add(self, service: str, latency_ms: float, ok: bool) -> None:
        self._rows.append((time.monotonic(), service, latency_ms, ok))

    def summary(self, window_s: float, slo_ms: dict[str, float], now: float | None = None) -> dict[str, dict]:
        now = time.monotonic() if now is None else now
        by_service: dict[str, list[tuple[float, float, bool]]] = {}
        for t, service, latency_ms, ok in list(self._rows):
            if t >= now - window_s:
                by_service.setdefault(service, []).append((t, latency_ms, ok))
        arrived: dict[str, list[float]] = {}
        for t, service in list(self._arrivals):
            if t >= now - window_s:
                arrived.setdefault(service, []).append(t)
        out = {}
        for service, rows in by_service.items():
            t, latency, ok = (np.array(col) for col in zip(*rows))
            times = arrived.get(service, [now])
            slo = slo_ms.get(service)
            out[service] = {
                "requests": int(len(rows)), "errors": int((~ok).sum()),
                "rate_rps": float(len(arrived.get(service, [])) / max(now - min(times), 1.0)),
                "latency_ms_p50": float(np.percentile(latency[ok], 50)) if ok.any() else None,
                "latency_ms_p99": float(np.percentile(latency[ok], 99)) if ok.any() else None,
                "slo_ms": slo,
                "slo_attainment": float((ok & (latency <= slo)).mean()) if slo else None}
        return out


class _BadRequest(ValueError):
    """A request the ingress rejects (HTTP 400 / gRPC INVALID_ARGUMENT)."""


class _Ingress:
    """Routes each request to a site deployment by the plan's fractions; retries another site on failure."""

    def __init__(self, tracing: dict | None = None, attempt_timeout_s: float = _ATTEMPT_TIMEOUT_S):
        from isthmus.platform.tracing import setup_tracing

        _exclusive_grpc_ports()
        setup_tracing(tracing, "ingress")
        self._attempt_timeout_s = float(attempt_timeout_s)
        self._table = RoutingTable()
        self._groups: dict[tuple, tuple[list[RouteEntry], WeightedRouter]] = {}
        self._handles: dict[str, Any] = {}
        self._metrics = _Metrics(INGRESS_APP)
        self._served = ServiceStats()

    def reconfigure(self, config: dict) -> None:
        """New routing table (Serve calls this in place when `user_config` changes)."""
        table = RoutingTable.model_validate(config)
        groups = route_groups(table)
        fresh = {key: (entries, WeightedRouter(e.fraction for e in entries)) for key, entries in groups.items()}
        # (service, split, exit) groups only the previous plan had keep serving: edge agents switch their split
        # after the ingress does, and their in-between requests must still find a route
        stale = {key: group for key, group in self._groups.items() if key[0] in table.services and key not in fresh}
        self._groups = {**stale, **fresh}
        self._table = table

    def plan_version(self) -> int:
        return self._table.plan_version

    def stats(self, window_s: float = 10.0) -> dict[str, dict]:
        """Per service over the last `window_s`: rate, errors, p50/p99 and SLO attainment (`ServiceStats`)."""
        return self._served.summary(window_s, self._table.slo_ms)

    def routes(self) -> dict:
        return self._table.model_dump(mode="json")

    def _handle(self, app: str):
        if app not in self._handles:
            from ray import serve

            self._handles[app] = serve.get_deployment_handle("SiteModel", app)
        return self._handles[app]

    async def _route(self, service: str, array: np.ndarray, split: int | None, exit: int | None,
                     carrier: dict | None) -> dict:
        from isthmus.platform.tracing import extract_context, inject_traceparent

        table, groups = self._table, self._groups
        if service not in table.services:
            raise _BadRequest(f"unknown service {service!r}. To fix: use one of {sorted(table.services)}")
        key = (service, split, exit if split is not None else None)
        if key not in groups:
            offered = sorted({k[1:] for k in groups if k[0] == service}, key=str)
            raise _BadRequest(f"service {service!r} has no route with split={split}, exit={exit}. "
                              f"To fix: send one of (split, exit) {offered} (None = the raw input)")
        entries, router = groups[key]
        self._served.arrive(service)
        excluded: set[int] = set()
        attempts, errors = 0, []
        start = time.perf_counter()
        with _span("ingress", extract_context(carrier), "SERVER", {"isthmus.service": service}) as span:
            index = router.pick()
            while True:
                entry = entries[index]
                attempts += 1
                if span is not None:
                    span.set_attributes({"isthmus.site": entry.site, "isthmus.model_version": entry.version,
                                         "isthmus.predicted_latency_ms": entry.latency_ms,
                                         "isthmus.attempts": attempts})
                response = None
                try:
                    response = self._handle(entry.app).remote(
                        {"array": array, "triton_model": entry.triton_model, "carrier": inject_traceparent(),
                         "service": service})
                    reply = await asyncio.wait_for(_awaited(response),
                                                   max(self._attempt_timeout_s, 4 * entry.latency_ms / 1000))
                    break
                except Exception as err:  # noqa: BLE001 - a failed or silent site: try the next route of the service
                    if isinstance(err, asyncio.TimeoutError) and response is not None:
                        response.cancel()
                    errors.append(f"{entry.site}: {type(err).__name__}: {str(err)[:200]}")
                    self._metrics.observe(entry.site, entry.version, (time.perf_counter() - start) * 1000,
                                          int(array.shape[0]), False, service)
                    excluded.add(index)
                    if len(excluded) == len(entries):
                        self._served.add(service, (time.perf_counter() - start) * 1000, False)
                        raise RuntimeError(f"every route of service {service!r} failed: {errors}") from None
                    index = router.pick(excluded)
            trace_id = f"{span.get_span_context().trace_id:032x}" if span is not None else None
        latency_ms = (time.perf_counter() - start) * 1000
        self._metrics.observe(entry.site, entry.version, latency_ms, int(array.shape[0]), True, service)
        slo = table.slo_ms.get(service)
        self._metrics.observe_slo(service, slo is not None and latency_ms <= slo)
        self._served.add(service, latency_ms, True)
        return dict(reply, attempts=attempts, trace_id=trace_id, service=service, plan_version=table.plan_version)

    async def __call__(self, request: Any) -> Any:
        """HTTP JSON: see the module docstring. 400 with a "To fix" message on bad input."""
        from starlette.responses import JSONResponse

        try:
            body = await request.json()
            service, array, split, exit = _parse_json_request(body)
        except _BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except ValueError as err:
            return JSONResponse({"error": f"body is not JSON ({err}). To fix: POST a JSON object"}, status_code=400)
        try:
            reply = await self._route(service, array, split, exit, dict(request.headers))
        except _BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except RuntimeError as err:
            return JSONResponse({"error": str(err)}, status_code=503)
        output = reply.pop("output")
        reply["output"] = output.tolist()
        reply["prediction"] = output.reshape(output.shape[0], -1).argmax(axis=1).tolist()
        return JSONResponse(reply)

    async def Infer(self, request: bytes, grpc_context: Any = None) -> Any:  # noqa: N802 - gRPC method name
        """Serve gRPC `isthmus.v1.Inference/Infer`: `model` names the service; split 0 = the raw input."""
        from isthmus import _proto

        pb = _proto.load("inference_pb2")
        carrier = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
        start = time.perf_counter()
        try:
            message = pb.InferRequest.FromString(request)
            array = _proto.decode_tensor(message.tensor)
            split = message.split or None
            exit = message.exit if split and message.exit >= 0 else None  # -1 on the wire = the final exit
            reply = await self._route(message.model, array, split, exit, carrier)
        except (_BadRequest, _proto.TensorDecodeError, _proto_decode_error()) as err:
            return _grpc_error(grpc_context, "INVALID_ARGUMENT", str(err), pb.InferReply())
        except RuntimeError as err:
            return _grpc_error(grpc_context, "UNAVAILABLE", str(err), pb.InferReply())
        output = reply["output"]
        return pb.InferReply(output=_proto.encode_tensor(output.astype(np.float32)),
                             prediction=output.reshape(output.shape[0], -1).argmax(axis=1).tolist(),
                             served_by=f"{reply['site']}@{reply['node_id']}",
                             server_ms=(time.perf_counter() - start) * 1000)

    async def Probe(self, request: bytes, grpc_context: Any = None) -> Any:  # noqa: N802 - gRPC method name
        """Bandwidth probe: reply at once with the number of payload bytes received."""
        from isthmus import _proto

        pb = _proto.load("inference_pb2")
        return pb.ProbeReply(received_bytes=len(pb.ProbeRequest.FromString(request).payload))


async def _awaited(response: Any) -> Any:
    """A DeploymentResponse as a coroutine (for asyncio.wait_for)."""
    return await response


def _proto_decode_error() -> type:
    from google.protobuf.message import DecodeError

    return DecodeError


def _grpc_error(grpc_context: Any, code: str, details: str, empty: Any) -> Any:
    import grpc

    if grpc_context is not None:
        grpc_context.set_code(getattr(grpc.StatusCode, code))
        grpc_context.set_details(details[:2000])
    return empty


def _parse_json_request(body: Any) -> tuple[str, np.ndarray, int | None, int | None]:
    if not isinstance(body, dict):
        raise _BadRequest("body must be a JSON object. To fix: POST {\"service\": ..., \"input\": [[...]]}")
    service = body.get("service")
    if not isinstance(service, str):
        raise _BadRequest(f"field 'service' is {service!r}. To fix: name a service of the plan")
    has_input, has_activation = "input" in body, "activation" in body
    if has_input == has_activation:
        raise _BadRequest("give exactly one of 'input' or 'activation' (with 'split'). To fix: send the raw input, "
                          "or the edge activation and its split")
    split = body.get("split") if has_activation else None
    if has_activation and not isinstance(split, int):
        raise _BadRequest(f"field 'split' is {split!r}; an activation needs its split index. To fix: add "
                          "\"split\": <k>")
    exit = body.get("exit")
    if exit is not None and not isinstance(exit, int):
        raise _BadRequest(f"field 'exit' is {exit!r}. To fix: give an integer exit index or null")
    dtype = body.get("dtype", "float32")
    try:
        array = np.asarray(body["activation" if has_activation else "input"], dtype=np.dtype(dtype))
    except (TypeError, ValueError) as err:
        raise _BadRequest(f"tensor does not parse as a rectangular {dtype} array ({err}). To fix: send a nested "
                          "list of numbers with a leading batch dimension") from None
    if array.ndim < 1 or array.shape[0] < 1:
        raise _BadRequest(f"tensor has shape {list(array.shape)}. To fix: send a batch (leading dimension >= 1)")
    return service, array, split, exit


def _deployments():
    from ray import serve

    ingress = serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0})(_Ingress)
    site = serve.deployment(name="SiteModel", ray_actor_options={"num_cpus": 0})(_SiteModel)
    return ingress, site


def ingress_app(args: dict):
    """Serve application builder of the ingress (import path `isthmus.platform.serve_app:ingress_app`)."""
    ingress, _ = _deployments()
    return ingress.bind(tracing=args.get("tracing") or None,
                        attempt_timeout_s=float(args.get("attempt_timeout_s") or _ATTEMPT_TIMEOUT_S))


def site_app(args: dict):
    """Serve application builder of one (site, model version) deployment."""
    missing = [k for k in ("site", "model", "version") if not args.get(k)]
    if missing:
        raise ValueError(f"site app args miss {missing}. To fix: build the config with isthmus serve-config")
    _, site = _deployments()
    return site.bind(site=args["site"], model=args["model"], version=args["version"],
                     triton_url=args.get("triton_url"), tracing=args.get("tracing") or None,
                     triton_protocol=args.get("triton_protocol") or "grpc")
