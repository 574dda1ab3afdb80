"""Edge agents' side of a plan: what each agent runs (its split), and the uplink bandwidth they measure.

`agent_assignments` spreads the agents of an edge site over the routes of the service whose source is at that
site, by the plan's fractions: with n agents, agent i (in id order) takes the route whose cumulative fraction
first reaches (i + ½)/n, so each route r gets ≈ n·x_r agents. Agents that register later get the site's entry
(the route with the largest fraction). `measured_bandwidth_mbps` turns the agents' probes into the planner's
`bandwidth_mbps` telemetry.
"""

from __future__ import annotations

import statistics
from typing import Any

from isthmus.spec import Plan, Spec

__all__ = ["agent_assignments", "measured_bandwidth_mbps"]


def _assignment(route: Any, service: str, heads: dict[tuple, bytes], target: str) -> dict[str, Any]:
    if route.split is None:
        return {"model": service, "split": -1, "exit": -1, "head": None, "inference_target": target,
                "inference_tls": False}
    key = (route.model_version, route.split, route.exit)
    if key not in heads:
        raise ValueError(f"route of service {service!r} splits version {route.model_version!r} at {route.split} "
                         "but no head partition was exported for it. To fix: give the model a `zoo` name so its "
                         "partitions can be exported")
    return {"model": service, "split": route.split, "exit": -1 if route.exit is None else route.exit,
            "head": heads[key], "inference_target": target, "inference_tls": False}


def agent_assignments(plan: Plan, spec: Spec, agents: dict[str, dict], heads: dict[tuple, bytes],
                      target: str) -> dict[str, dict[str, Any]]:
    """{agent id or edge site: AgentAssignment dict} (module docstring). `agents` maps registered agent ids to
    their registration ({"site": ...}); `heads` maps (version, split, exit) → head TorchScript bytes; `target` is
    the ingress's gRPC address the agents send to."""
    out: dict[str, dict[str, Any]] = {}
    for site in spec.edge_sites:
        sources = {s.name for s in spec.sources if s.location == site.name}
        service = next((s.name for s in spec.services if s.source in sources), None)
        if service is None:
            continue
        routes = sorted((r for r in plan.routes if r.service == service and r.fraction > 0),
                        key=lambda r: -r.fraction)
        if not routes:
            continue
        out[site.name] = _assignment(routes[0], service, heads, target)
        here = sorted(a for a, info in agents.items() if info.get("site") == site.name)
        for n, agent in enumerate(here):
            position, cumulative, chosen = (n + 0.5) / len(here), 0.0, routes[-1]
            for route in routes:
                cumulative += route.fraction
                if position <= cumulative:
                    chosen = route
                    break
            out[agent] = _assignment(chosen, service, heads, target)
    return out


def measured_bandwidth_mbps(spec: Spec, agents: dict[str, dict], reports: list[dict]) -> dict[tuple[str, str], float]:
    """`bandwidth_mbps` telemetry: per edge site, the median over its agents of each one's latest uplink probe,
    applied to every link between the site and a region (the agent's uplink is the bottleneck of each)."""
    latest: dict[str, float] = {}
    for report in reports:   # oldest first: the last one wins
        if report.get("uplink_mbps", 0) > 0:
            latest[report["agent_id"]] = float(report["uplink_mbps"])
    by_site: dict[str, list[float]] = {}
    for agent, mbps in latest.items():
        site = agents.get(agent, {}).get("site")
        if site:
            by_site.setdefault(site, []).append(mbps)
    regions = {r.name for r in spec.regions}
    out = {}
    for link in spec.links:
        for site, other in ((link.src, link.dst), (link.dst, link.src)):
            if site in by_site and other in regions:
                out[(link.src, link.dst)] = statistics.median(by_site[site])
    return out
