"""The pure parts of `isthmus deploy`'s control loop: pools from a plan, measured rates held over the downscale
delay, the agents' bandwidth and assignments, the deployment's processes (no Ray)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from isthmus.optimizer.actor import held_rates_rps, measured_rates_rps, over_capacity
from isthmus.platform.assignments import agent_assignments, measured_bandwidth_mbps
from isthmus.platform.instances import planned_pools
from isthmus.platform.nodes import kill_processes, processes
from isthmus.spec import Plan, PlanInstance, PlanRoute, SolverInfo, parse_spec

SPEC = {
    "name": "t",
    "regions": [{"name": r, "instance_types": [{"name": "c", "device": "cpu", "price_per_hour": 1, "max_count": 4}]}
                for r in ("us-east", "eu-west")],
    "edge_sites": [{"name": "cam-1", "device": "cpu", "count": 4}],
    "devices": {"cpu": {"kind": "cpu", "tflops": 1, "mem_gb": 1}},
    "links": [{"src": "cam-1", "dst": "us-east", "rtt_ms": 5, "bandwidth_mbps": 10},
              {"src": "cam-1", "dst": "eu-west", "rtt_ms": 5, "bandwidth_mbps": 10}],
    "sources": [{"name": "cams", "location": "cam-1", "rate_rps": 10, "data_versions": [{"name": "raw", "bytes": 10}]},
                {"name": "web", "location": "us-east", "rate_rps": 5, "data_versions": [{"name": "raw", "bytes": 10}]}],
    "models": [{"name": "m", "versions": [{"name": "v", "accuracy": 0.9, "latency_ms": {"cpu": 1}}]}],
    "services": [{"name": "see", "source": "cams", "model": "m", "slo_ms": 100},
                 {"name": "also", "source": "cams", "model": "m", "slo_ms": 100},
                 {"name": "read", "source": "web", "model": "m", "slo_ms": 100}],
}


def _route(site: str, fraction: float, split: int | None = None) -> PlanRoute:
    return PlanRoute(service="see", fraction=fraction, data_version="raw", model_version="v", site=site,
                     instance_type="c", split=split, latency_ms=10, accuracy=0.9)


def _plan(routes: list[PlanRoute], instances: list[PlanInstance] = ()) -> Plan:
    return Plan(spec="t", feasible=True, cost_per_hour=1, compute_cost_per_hour=1, egress_cost_per_hour=0,
                lower_bound_per_hour=1, solver=SolverInfo(method="milp", status="optimal", seconds=0),
                routes=routes, instances=list(instances), services=[])


def test_planned_pools_sum_per_site_type_and_version() -> None:
    plan = _plan([], [PlanInstance(site="us-east", instance_type="c", model_version="m/v", count=2),
                      PlanInstance(site="us-east", instance_type="c", model_version="m/v", count=1),
                      PlanInstance(site="eu-west", instance_type="c", model_version="m/v", count=0)])
    assert planned_pools(plan) == {("us-east", "c", "m", "v"): 3}


def test_rates_are_the_largest_service_rate_of_a_source_and_a_fall_waits_for_the_delay() -> None:
    spec = parse_spec(SPEC)
    stats = {"see": {"requests": 50, "rate_rps": 12.0}, "also": {"requests": 40, "rate_rps": 9.0},
             "read": {"requests": 5, "rate_rps": 1.0}}                   # too few requests to say anything
    assert measured_rates_rps(spec, stats, min_requests=20) == {"cams": 12.0}
    assert held_rates_rps([{"cams": 20.0}, {"cams": 8.0}, {}]) == {"cams": 20.0}


def test_bandwidth_is_the_median_of_each_agents_latest_probe_on_every_link_of_its_site() -> None:
    spec = parse_spec(SPEC)
    agents = {"a": {"site": "cam-1"}, "b": {"site": "cam-1"}, "c": {"site": "cam-1"}, "x": {"site": "elsewhere"}}
    reports = [{"agent_id": "a", "uplink_mbps": 9.0}, {"agent_id": "a", "uplink_mbps": 1.0},
               {"agent_id": "b", "uplink_mbps": 2.0}, {"agent_id": "c", "uplink_mbps": 30.0},
               {"agent_id": "c", "uplink_mbps": 0.0}, {"agent_id": "x", "uplink_mbps": 5.0}]
    assert measured_bandwidth_mbps(spec, agents, reports) == {("cam-1", "us-east"): 2.0, ("cam-1", "eu-west"): 2.0}


def test_agents_are_spread_over_routes_by_fraction_and_late_agents_get_the_sites_entry() -> None:
    spec = parse_spec(SPEC)
    plan = _plan([_route("us-east", 0.75), _route("eu-west", 0.25, split=3)])
    agents = {f"cam-1-{k}": {"site": "cam-1"} for k in range(1, 5)}
    out = agent_assignments(plan, spec, agents, {("v", 3, None): b"head"}, "127.0.0.1:9")
    assert [out[a]["split"] for a in sorted(agents)] == [-1, -1, -1, 3]
    assert out["cam-1-4"]["head"] == b"head" and out["cam-1"]["split"] == -1 and out["cam-1"]["model"] == "see"
    with pytest.raises(ValueError, match="To fix"):   # a split route whose head was never exported
        agent_assignments(plan, spec, agents, {}, "127.0.0.1:9")


def test_processes_finds_renamed_descendants_and_kill_stops_them(tmp_path) -> None:
    marker = str(tmp_path / "marker-dir")
    child = "import setproctitle, time; setproctitle.setproctitle('ray::IDLE'); time.sleep(60)" \
        if _has_setproctitle() else "import time; time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, "
                               f"'-c', {child!r}]); time.sleep(60)", marker])
    try:
        deadline = time.monotonic() + 10
        while len(processes(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        found = processes(marker)
        assert len(found) == 2 and parent.pid in {pid for pid, _ in found}, found
        kill_processes([pid for pid, _ in found], timeout_s=5)
        assert processes(marker) == []
    finally:
        parent.kill()
        parent.wait(timeout=10)


def _has_setproctitle() -> bool:
    import importlib.util

    return importlib.util.find_spec("setproctitle") is not None


def test_a_rate_beyond_a_pools_capacity_is_named_even_below_the_drift_threshold() -> None:
    spec = parse_spec(dict(SPEC, models=[{"name": "m", "versions": [
        {"name": "v", "accuracy": 0.9, "latency_ms": {"cpu": 100}, "capacity_rps": {"cpu": 10}}]}]))
    plan = _plan([_route("us-east", 1.0)], [PlanInstance(site="us-east", instance_type="c", model_version="m/v",
                                                         count=2)])
    assert over_capacity(plan, spec, {"cams": 19.9}) == []
    assert over_capacity(plan, spec, {"cams": 20.5}) == ["us-east/c/m/v"]
    assert over_capacity(plan, spec, {}) == []            # the spec's own 10 rps


def test_slo_percentile_defaults_to_99_and_must_be_a_share() -> None:
    from isthmus.spec import SpecError

    assert parse_spec(SPEC).services[0].slo_percentile == 99.0
    bad = dict(SPEC, services=[dict(SPEC["services"][0], slo_percentile=0)])
    with pytest.raises(SpecError, match=r"services\[0\]\.slo_percentile"):
        parse_spec(bad)
