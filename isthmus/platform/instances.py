"""The plan's instances as running things: one Ray node and one DeviceActor (owning one Triton) per instance.

A pool is (site j, instance type t, model m, version v) with the plan's count y_{j,t,m,v}. With a node provider
(`isthmus deploy --local`) every instance gets its own node, started with the resources

    region:<j> (or edge:<j>)   instance:<t>   pool:<j>:<m>:<v>   isthmus-node:<name>     (1 unit each)

and a DeviceActor named `device_actor_name(j, node_id)`, pinned to that node, serving v's Triton models. The
(j, m, v) Serve app runs one replica per such node (`serve_config(per_instance=True)`): a replica finds its
Triton through its own node id. Without a provider (`--address`), the pools take the nodes the cluster has:
a site's nodes are handed to its pools in order, each node's DeviceActor serves every version planned at the
site (its replicas are pinned by `region:<j>` only), and planned instances beyond the nodes stay unplaced
(`status` shows planned > running).

`scale_out(plan)` starts what the plan needs before the Serve rollout; `scale_in(plan)` removes the rest after
it (a node still running a Serve replica of its pool is kept until the rollout retired that replica).
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from isthmus.platform.cluster import site_resources
from isthmus.platform.nodes import NODE_PREFIX, LocalNodes
from isthmus.platform.serve_app import (DEVICE_NAMESPACE, device_actor_name, pool_resource, site_app_name,
                                        site_resource)
from isthmus.spec import Plan, Spec

__all__ = ["Pool", "planned_pools", "InstanceFleet"]

_log = logging.getLogger("isthmus.instances")
Pool = tuple[str, str, str, str]   # (site, instance type, model, version)


def planned_pools(plan: Plan) -> dict[Pool, int]:
    """Pool → the plan's instance count (pools with count 0 left out)."""
    out: dict[Pool, int] = {}
    for inst in plan.instances:
        if inst.count > 0:
            model, _, version = inst.model_version.partition("/")
            key = (inst.site, inst.instance_type, model, version)
            out[key] = out.get(key, 0) + inst.count
    return out


class InstanceFleet:
    """Nodes and DeviceActors of a deployment (module docstring).

    `models` maps "model/version" → the TritonModel dicts that version serves (its full model, split tails);
    with `emulate`, each gets the version's declared latency and capacity on the instance's device kind.
    """

    def __init__(self, spec: Spec, models: dict[str, list[dict]], *, nodes: LocalNodes | None = None,
                 emulate: bool = False, workdir: str = "/tmp/isthmus-instances", trace_config: dict | None = None,
                 start_timeout_s: float = 300.0) -> None:
        self.spec, self.models, self.nodes, self.emulate = spec, models, nodes, emulate
        self.workdir, self.trace_config, self.start_timeout_s = Path(workdir), trace_config, start_timeout_s

    # ------------------------------------------------------------ what exists
    def _pool_of(self, resources: dict[str, float]) -> Pool | None:
        sites = {resource: site for site, resource in site_resources(self.spec).items()}
        site = next((sites[r] for r in resources if r in sites), None)
        itype = next((r.split(":", 1)[1] for r in resources if r.startswith("instance:")), None)
        if site is None or itype is None:
            return None
        for model in self.spec.models:
            for version in model.versions:
                if pool_resource(site, model.name, version.name) in resources:
                    return (site, itype, model.name, version.name)
        return None

    def inventory(self, plan: Plan) -> dict[Pool, list[tuple[str, str]]]:
        """Pool → [(node name, node id)] of the alive nodes that host it (module docstring)."""
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        out: dict[Pool, list[tuple[str, str]]] = {}
        if self.nodes is not None:
            for node in nodes:
                name = next((r[len(NODE_PREFIX):] for r in node["Resources"] if r.startswith(NODE_PREFIX)), None)
                pool = self._pool_of(node["Resources"])
                if name and pool:
                    out.setdefault(pool, []).append((name, node["NodeID"]))
            return out
        pools = planned_pools(plan)
        for site in sorted({p[0] for p in pools}):
            resource = site_resource(site, self.spec)
            free = sorted(n["NodeID"] for n in nodes if resource in n.get("Resources", {}))
            for pool in sorted(p for p in pools if p[0] == site):
                taken, free = free[:pools[pool]], free[pools[pool]:]
                out[pool] = [(node_id[:12], node_id) for node_id in taken]
        return out

    def serve_replicas(self, plan: Plan) -> dict[tuple[str, str, str], tuple[int, str]]:
        """`serve_config`'s per_instance: (site, model, version) → (Serve replicas, resource pinning them). With a
        provider, the planned instances on their pool's nodes; without, the instances that got a node, pinned by
        `region:<site>` (a replica with no node to go to would keep the app from ever running)."""
        out: dict[tuple[str, str, str], tuple[int, str]] = {}
        counts = planned_pools(plan) if self.nodes is not None else {
            pool: len(nodes) for pool, nodes in self.inventory(plan).items()}
        for (site, _, model, version), count in counts.items():
            pin = pool_resource(site, model, version) if self.nodes is not None else site_resource(site, self.spec)
            before = out.get((site, model, version), (0, pin))[0]
            out[(site, model, version)] = (before + count, pin)
        return out

    def _models_for(self, plan: Plan, pool: Pool) -> list[dict]:
        site, itype, model, version = pool
        versions = [(model, version)] if self.nodes is not None else sorted(
            {(p[2], p[3]) for p in planned_pools(plan) if p[0] == site})
        out = []
        for m, v in versions:
            for triton in self.models[f"{m}/{v}"]:
                out.append(dict(triton, **self._emulation(site, itype, m, v, triton)) if self.emulate else triton)
        return out

    def _emulation(self, site: str, itype: str, model: str, version: str, triton: dict) -> dict[str, float]:
        """emulate_latency_ms / emulate_ms_per_row of one Triton model on the pool's device kind: the version's
        latency_ms and 1000/capacity_rps, or for a split tail (its dict's `split`/`exit`) that split's tail_ms."""
        device = self.spec.site_devices().get((site, itype), itype)
        spec_version = next(v for v in self.spec.model(model).versions if v.name == version)
        latency = spec_version.latency_ms.get(device, 0.0)
        per_row = 1000.0 / spec_version.capacity(device) if latency else 0.0
        split = triton.get("split")
        if split is not None:
            point = next((p for p in spec_version.splits if p.split == split and p.exit == triton.get("exit")), None)
            tail = point.tail_ms.get(device, 0.0) if point else 0.0
            latency, per_row = tail, tail
        return {"emulate_latency_ms": latency, "emulate_ms_per_row": per_row}

    def devices(self, plan: Plan) -> dict[Pool, list[tuple[str, Any]]]:
        """Pool → [(node id, DeviceActor handle)] of the DeviceActors that exist."""
        import ray

        out: dict[Pool, list[tuple[str, Any]]] = {}
        for pool, nodes in self.inventory(plan).items():
            for _, node_id in nodes:
                try:
                    actor = ray.get_actor(device_actor_name(pool[0], node_id), namespace=DEVICE_NAMESPACE)
                except ValueError:
                    continue
                out.setdefault(pool, []).append((node_id, actor))
        return out

    def running(self, plan: Plan, timeout_s: float = 5.0) -> dict[Pool, int]:
        """Pool → instances whose DeviceActor answers and whose Triton is up (health().alive)."""
        import ray

        refs = {(pool, node_id): actor.health.remote() for pool, pairs in self.devices(plan).items()
                for node_id, actor in pairs}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
        out: dict[Pool, int] = {}
        for (pool, _), ref in refs.items():
            try:
                alive = ref in ready and ray.get(ref, timeout=0).get("alive")
            except Exception:  # noqa: BLE001 - a dead actor counts as not running
                alive = False
            out[pool] = out.get(pool, 0) + int(bool(alive))
        return out

    # ------------------------------------------------------------ changes
    def scale_out(self, plan: Plan) -> dict[str, Any]:
        """Start a node per planned instance that has none (with a provider), then a DeviceActor + Triton on every
        node of a planned pool that has none; returns {added_nodes, started_devices, seconds} once all serve."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from isthmus.actors.device import DeviceActor

        start = time.monotonic()
        pools = planned_pools(plan)
        added = []
        if self.nodes is not None:
            have = self.inventory(plan)
            for pool, count in sorted(pools.items()):
                for _ in range(count - len(have.get(pool, []))):
                    name = f"{pool[0]}-{uuid.uuid4().hex[:8]}"
                    resources = {site_resource(pool[0], self.spec): 1.0, f"instance:{pool[1]}": 1.0,
                                 pool_resource(pool[0], pool[2], pool[3]): 1.0}
                    _log.info("starting node %s for %s", name, "/".join(pool))
                    self.nodes.add(name, resources)
                    added.append(name)
        starting = []
        existing = {node_id for pairs in self.devices(plan).values() for node_id, _ in pairs}
        for pool, nodes in self.inventory(plan).items():
            if pool not in pools:
                continue
            for name, node_id in nodes:
                if node_id in existing:
                    continue
                device = DeviceActor.options(
                    name=device_actor_name(pool[0], node_id), namespace=DEVICE_NAMESPACE, lifetime="detached",
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                ).remote(pool[0], self.spec.site_devices().get(pool[:2], pool[1]), self._models_for(plan, pool),
                         workdir=str(self.workdir / name), trace_config=self.trace_config,
                         start_timeout_s=self.start_timeout_s)
                starting.append(device.start.remote())
        ray.get(starting, timeout=self.start_timeout_s + 60)
        return {"added_nodes": added, "started_devices": len(starting), "seconds": time.monotonic() - start}

    def scale_in(self, plan: Plan) -> dict[str, Any]:
        """Stop the instances the plan no longer has: per pool, the surplus nodes (those without a live Serve
        replica of the pool's app first) lose their DeviceActor and, with a provider, the node itself."""
        import ray

        start = time.monotonic()
        pools = planned_pools(plan)
        with_replica = _replica_nodes()
        removed = []
        devices = {node_id: actor for pairs in self.devices(plan).values() for node_id, actor in pairs}
        for pool, nodes in self.inventory(plan).items():
            surplus = len(nodes) - pools.get(pool, 0)
            if surplus <= 0:
                continue
            app = site_app_name(pool[0], pool[2], pool[3])
            ordered = sorted(nodes, key=lambda n: (n[1] in with_replica.get(app, set()), n[0]))
            for name, node_id in ordered[:surplus]:
                actor = devices.get(node_id)
                if actor is not None:
                    try:
                        ray.get(actor.stop.remote(), timeout=60)
                    except Exception:  # noqa: BLE001 - it goes either way
                        pass
                    ray.kill(actor)
                if self.nodes is not None:
                    self.nodes.remove(name)
                removed.append(name)
        return {"removed_nodes": removed, "seconds": time.monotonic() - start}

    def stop_all(self, plan: Plan) -> None:
        """Stop every DeviceActor (and its Triton) of the deployment."""
        import ray

        for pairs in self.devices(plan).values():
            for _, actor in pairs:
                try:
                    ray.get(actor.stop.remote(), timeout=60)
                except Exception:  # noqa: BLE001 - best effort on the way down
                    pass
                ray.kill(actor)


def _replica_nodes() -> dict[str, set[str]]:
    """Serve app name → node ids that run a live replica of its SiteModel deployment (Ray's actor table)."""
    from ray._private import state

    out: dict[str, set[str]] = {}
    for info in state.actors(actor_state_name="ALIVE").values():
        name = info.get("ActorClassName", "")
        if name.startswith("ServeReplica:"):
            app = name.split(":")[1]
            out.setdefault(app, set()).add(info["Address"]["NodeID"])
    return out

