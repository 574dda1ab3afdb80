"""Runtime pieces that need no Ray cluster: routing, Serve config, drift, tracing files, CLI errors."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from concurrent import futures
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from isthmus.cli import app
from isthmus.optimizer.actor import _merge, _OptimizerActor, telemetry_drift
from isthmus.platform import serve_app
from isthmus.platform.cluster import missing_sites, node_sites
from isthmus.platform.tracing import (OtlpHttpReceiver, load_spans, setup_tracing, shutdown_tracing, summarize)
from isthmus.spec import Plan, parse_spec

# Two regions (us-east cheaper) and an edge camera; capacity forces fractions 0.4 / 0.4 / 0.2.
SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "runtime-local.yaml").read_text())


def _plan(fractions: dict[str, float]) -> Plan:
    routes = [{"service": "detect", "fraction": f, "data_version": "raw", "model_version": "fp32", "site": site,
               "instance_type": "rpi" if site == "cam-1" else "c.small", "latency_ms": 10.0 + i, "accuracy": 0.9}
              for i, (site, f) in enumerate(fractions.items())]
    return Plan.model_validate({
        "spec": "rt", "feasible": True, "cost_per_hour": 1.0, "compute_cost_per_hour": 1.0,
        "egress_cost_per_hour": 0.0, "lower_bound_per_hour": 1.0,
        "solver": {"method": "milp", "status": "optimal", "seconds": 0.1}, "routes": routes,
        "instances": [{"site": s, "instance_type": "c.small", "model_version": "mlp/fp32", "count": 1} for s in fractions],
        "services": [{"name": "detect", "latency_ms_max": 12.0, "accuracy": 0.9}]})


# ---------------------------------------------------------------- routing

@pytest.mark.parametrize("weights", [[0.4, 0.4, 0.2], [0.7, 0.3], [1.0], [0.05, 0.9, 0.05]])
def test_weighted_router_is_exact_within_one_request(weights: list[float]) -> None:
    for n in (1, 7, 100, 2000):
        router = serve_app.WeightedRouter(weights)
        counts = Counter(router.pick() for _ in range(n))
        for i, w in enumerate(weights):
            assert abs(counts[i] - n * w) <= 1.0, (n, counts, weights)
    if len(weights) > 1:
        assert serve_app.WeightedRouter(weights).pick(exclude={0}) != 0


def test_weighted_router_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="To fix"):
        serve_app.WeightedRouter([0.0, 0.0])
    with pytest.raises(LookupError):
        serve_app.WeightedRouter([1.0, 1.0]).pick(exclude={0, 1})


def test_routing_table_and_serve_config_pin_sites_by_resource() -> None:
    from ray.serve.schema import ServeDeploySchema

    spec = parse_spec(SPEC)
    plan = _plan({"us-east": 0.4, "eu-west": 0.0, "cam-1": 0.6})
    table = serve_app.routing_table(plan, spec, plan_version=3)
    entries = table.services["detect"]
    assert [e.site for e in entries] == ["us-east", "cam-1"] and table.plan_version == 3
    assert entries[0].triton_model == "mlp_fp32" and entries[0].app == "isthmus-site-us-east-mlp-fp32"
    config = serve_app.serve_config(plan, spec, triton_urls={"us-east": "10.0.0.5:8001"}, http_port=8123)
    ServeDeploySchema.model_validate(config)
    apps = {a["name"]: a for a in config["applications"]}
    assert set(apps) == {serve_app.INGRESS_APP, "isthmus-site-us-east-mlp-fp32", "isthmus-site-cam-1-mlp-fp32"}
    assert apps["isthmus-site-us-east-mlp-fp32"]["deployments"][0]["ray_actor_options"]["resources"] == {
        "region:us-east": 0.01}
    assert apps["isthmus-site-cam-1-mlp-fp32"]["deployments"][0]["ray_actor_options"]["resources"] == {
        "edge:cam-1": 0.01}
    assert apps["isthmus-site-us-east-mlp-fp32"]["args"]["triton_url"] == "10.0.0.5:8001"
    assert apps["isthmus-site-cam-1-mlp-fp32"]["args"]["triton_url"] is None
    routes = apps[serve_app.INGRESS_APP]["deployments"][0]["user_config"]["services"]["detect"]
    assert [r["fraction"] for r in routes] == [0.4, 0.6]
    assert apps[serve_app.INGRESS_APP]["deployments"][0]["user_config"]["slo_ms"] == {"detect": 200.0}
    no_spec = serve_app.serve_config(plan, edge_sites=["cam-1"])
    apps[serve_app.INGRESS_APP]["deployments"][0]["user_config"]["slo_ms"] = {}   # the SLO comes from the spec
    assert no_spec["applications"] == config["applications"][:1] + [
        dict(a, args=dict(a["args"], triton_url=None)) for a in config["applications"][1:]]
    pool = serve_app.pool_resource("us-east", "mlp", "fp32")
    per_instance = serve_app.serve_config(plan, spec, per_instance={("us-east", "mlp", "fp32"): (3, pool)})
    ServeDeploySchema.model_validate(per_instance)
    site = next(a for a in per_instance["applications"] if a["name"] == "isthmus-site-us-east-mlp-fp32")["deployments"][0]
    assert (site["num_replicas"], site["max_replicas_per_node"]) == (3, 1)
    assert site["ray_actor_options"]["resources"] == {serve_app.pool_resource("us-east", "mlp", "fp32"): 0.01}


def test_service_stats_rate_from_arrivals_and_attainment_from_completions() -> None:
    stats = serve_app.ServiceStats()
    for _ in range(10):
        stats.arrive("a")
    for latency_ms in (10, 20, 30, 200):
        stats.add("a", latency_ms, True)
    stats.add("a", 5, False)
    row = stats.summary(10.0, {"a": 50.0}, now=time.monotonic() + 2.0)["a"]
    assert row["requests"] == 5 and row["errors"] == 1
    assert 4.5 < row["rate_rps"] <= 5.0          # 10 arrivals over ~2 s
    assert row["slo_attainment"] == 3 / 5        # the failure and the 200 ms one miss the 50 ms SLO
    assert row["latency_ms_p50"] == 25.0
    assert stats.summary(1.0, {}, now=time.monotonic() + 5.0) == {}


def test_route_groups_keep_split_routes_apart() -> None:
    plan = _plan({"us-east": 0.3, "cam-1": 0.2, "eu-west": 0.5})
    plan.routes[2].split, plan.routes[2].exit = 3, 1
    groups = serve_app.route_groups(serve_app.routing_table(plan, parse_spec(SPEC)))
    assert {k: [e.site for e in v] for k, v in groups.items()} == {
        ("detect", None, None): ["us-east", "cam-1"], ("detect", 3, 1): ["eu-west"]}
    assert groups[("detect", 3, 1)][0].triton_model == "mlp_fp32_s3_e1"


def test_json_request_parsing_names_the_bad_field() -> None:
    parse = serve_app._parse_json_request
    service, array, split, exit = parse({"service": "detect", "activation": [[1, 2]], "split": 3})
    assert (service, array.shape, split, exit) == ("detect", (1, 2), 3, None)
    for body, word in [([], "object"), ({"input": [[1]]}, "service"), ({"service": "s"}, "exactly one"),
                       ({"service": "s", "activation": [[1]]}, "split"), ({"service": "s", "input": [[1], [1, 2]]},
                                                                           "rectangular"),
                       ({"service": "s", "input": 3}, "batch")]:
        with pytest.raises(serve_app._BadRequest, match=word):
            parse(body)


# ---------------------------------------------------------------- cluster checks and drift

def test_missing_sites_names_sites_without_a_live_node() -> None:
    spec = parse_spec(SPEC)
    nodes = [{"NodeID": "a", "Alive": True, "Resources": {"CPU": 1.0, "region:us-east": 1.0}},
             {"NodeID": "b", "Alive": False, "Resources": {"edge:cam-1": 1.0}},
             {"NodeID": "c", "Alive": True, "Resources": {"region:eu-west": 1.0}}]
    assert missing_sites(spec, nodes) == ["cam-1"]
    assert node_sites(nodes) == {"region:us-east": ["a"], "region:eu-west": ["c"]}


def test_telemetry_drift_is_the_largest_relative_change() -> None:
    spec = parse_spec(SPEC)
    drift, key = telemetry_drift(spec, {"rates_rps": {"cams": 300.0}, "bandwidth_mbps": {("us-east", "cam-1"): 90.0}})
    assert drift == pytest.approx(0.2) and key.startswith("rates_rps")
    assert telemetry_drift(spec, {"latency_ms": {("mlp", "fp32", "gpu"): 1.0}})[0] == float("inf")
    assert telemetry_drift(spec, {"price_per_hour": {("eu-west", "c.small"): 0.66}})[0] == pytest.approx(0.1)
    pending: dict = {}
    _merge(pending, {"bandwidth_mbps": {("cam-1", "us-east"): 50}})
    assert pending == {"bandwidth_mbps": {("cam-1", "us-east"): 50.0}}
    with pytest.raises(ValueError, match="To fix"):
        _merge(pending, {"rate": {"cams": 1}})


def test_optimizer_replans_only_past_the_threshold() -> None:
    optimizer = _OptimizerActor(SPEC, drift_threshold=0.2, time_limit_s=20)
    sites = {r["site"] for r in optimizer.plan()["routes"] if r["fraction"] > 0}
    assert sites == {"us-east", "eu-west", "cam-1"}
    small = optimizer.report({"rates_rps": {"cams": 270.0}})
    assert not small["replanned"] and optimizer.plan_version() == 0
    big = optimizer.report({"rates_rps": {"cams": 80.0}})
    assert big["replanned"] and big["changed"] and big["plan_version"] == 1 and big["replan_s"] < 10
    assert {r["site"] for r in optimizer.plan()["routes"] if r["fraction"] > 0} == {"cam-1"}
    assert optimizer.spec()["sources"][0]["rate_rps"] == 80.0
    assert len(optimizer.history()) == 2
    with pytest.raises(ValueError, match="unknown source 'nope'"):
        optimizer.report({"rates_rps": {"nope": 1.0}}, force=True)
    assert optimizer.report({"rates_rps": {"cams": 81.0}})["drift"] == pytest.approx(1 / 80)  # not poisoned


# ---------------------------------------------------------------- tracing

def test_jsonl_spans_and_summary(tmp_path) -> None:
    from opentelemetry.trace import SpanKind

    from isthmus.platform.tracing import PREDICTED_ATTR, extract_context, inject_traceparent

    path = tmp_path / "spans.jsonl"
    tracer = setup_tracing({"jsonl_path": str(path)}, "test")
    try:
        for i in range(5):
            with tracer.start_as_current_span("ingress", kind=SpanKind.SERVER,
                                              attributes={PREDICTED_ATTR: 10.0, "isthmus.site": "us-east",
                                                          "isthmus.model_version": "fp32"}):
                carrier = inject_traceparent()
                with tracer.start_as_current_span("deployment", context=extract_context(carrier)):
                    pass
    finally:
        shutdown_tracing()
    spans = load_spans(path)
    assert len(spans) == 10 and len({s["trace_id"] for s in spans}) == 5
    summary = summarize(spans)
    assert [h["hop"] for h in summary["hops"]] == ["ingress", "deployment"]
    assert summary["max_spans_per_trace"] == 2
    assert summary["routes"][0]["n"] == 5 and summary["routes"][0]["predicted_ms"] == 10.0
    result = CliRunner().invoke(app, ["trace", "summary", str(path), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["traces"] == 5
    result = CliRunner().invoke(app, ["trace", "summary", str(path)])
    assert result.exit_code == 0 and "predicted" in result.output
    (tmp_path / "bad.jsonl").write_text('{"trace_id": "1"}\nnot json\n')
    result = CliRunner().invoke(app, ["trace", "summary", str(tmp_path / "bad.jsonl")])
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output and "To fix" in result.output


def _trace(i: int, site: str, predicted_ms: float, ingress_ms: float) -> list[dict]:
    """One request's ingress span (service classify-us, routed to `site`, version int8) and its deployment span."""
    trace, root = f"{i:032x}", f"{2 * i + 1:016x}"
    attrs = {"isthmus.service": "classify-us", "isthmus.site": site, "isthmus.model_version": "int8",
             "isthmus.predicted_latency_ms": predicted_ms}
    return [{"trace_id": trace, "span_id": root, "parent_id": None, "name": "ingress", "service": "ingress",
             "duration_ms": ingress_ms, "attributes": attrs},
            {"trace_id": trace, "span_id": f"{2 * i + 2:016x}", "parent_id": root, "name": "deployment",
             "service": f"site:{site}", "duration_ms": ingress_ms - 0.5, "attributes": {}}]


def test_summary_has_a_row_per_hop_and_site_and_compares_the_ingress_with_compute(tmp_path) -> None:
    """Deployments at two sites are two rows with their own counts (not all under the first site seen); the
    ingress p50 is set beside the plan's L_r (network included) and, with the spec, beside L_r's compute part."""
    from isthmus.spec import load_spec

    root = Path(__file__).resolve().parents[2]
    # classify-us from us-east: at eu-west L_r = 75 ms rtt + 1.2 ms transfer + 2.6 ms int8 on a t4; at home 2.6 ms
    spans = [s for i in range(5) for s in _trace(i, "eu-west", 78.8, 3.0)]
    spans += [s for i in range(5, 13) for s in _trace(i, "us-east", 2.6, 3.1)]
    summary = summarize(spans, load_spec(root / "examples" / "geo-3-regions.yaml"))
    deployments = {h["service"]: h["n"] for h in summary["hops"] if h["hop"] == "deployment"}
    assert deployments == {"site:eu-west": 5, "site:us-east": 8}
    routes = {r["site"]: r for r in summary["routes"]}
    assert routes["eu-west"]["predicted_ms"] == 78.8 and routes["eu-west"]["measured_p50_ms"] == 3.0
    assert routes["eu-west"]["predicted_compute_ms"] == pytest.approx(2.6)
    assert routes["us-east"]["predicted_compute_ms"] == pytest.approx(2.6) and routes["us-east"]["n"] == 8
    assert summarize(spans)["routes"][0]["predicted_compute_ms"] is None  # no spec, no compute part
    path = tmp_path / "spans.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in spans))
    result = CliRunner().invoke(app, ["trace", "summary", str(path), "--spec",
                                      str(root / "examples" / "geo-3-regions.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["routes"][0]["predicted_compute_ms"] == pytest.approx(2.6)
    text = " ".join(CliRunner().invoke(app, ["trace", "summary", "--help"]).output.replace("│", " ").split())
    assert "incl. network" in text and "ingress p50 / predicted compute" in text


def test_otlp_grpc_exporter_sends_spans_over_the_wire() -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[str] = []

    class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802
            received.extend(s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        tracer = setup_tracing({"otlp_endpoint": f"127.0.0.1:{port}"}, "test")
        with tracer.start_as_current_span("over-the-wire"):
            pass
        shutdown_tracing()  # flushes the batch processor
        assert received == ["over-the-wire"]
    finally:
        server.stop(0)


def test_otlp_http_receiver_takes_protobuf_and_json(tmp_path) -> None:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.name, span.trace_id, span.span_id = "compute", bytes.fromhex("ab" * 16), bytes.fromhex("cd" * 8)
    span.start_time_unix_nano, span.end_time_unix_nano = 1_000_000, 3_000_000
    as_json = json_format.MessageToDict(request)
    for s in as_json["resourceSpans"][0]["scopeSpans"][0]["spans"]:  # OTLP/JSON ids are hex
        s["traceId"], s["spanId"] = "ab" * 16, "cd" * 8
    receiver = OtlpHttpReceiver(str(tmp_path / "t.jsonl")).start()
    try:
        for body, ctype in [(request.SerializeToString(), "application/x-protobuf"),
                            (json.dumps(as_json).encode(), "application/json")]:
            post = urllib.request.Request(receiver.url, data=body, headers={"Content-Type": ctype})
            assert urllib.request.urlopen(post, timeout=10).status == 200  # noqa: S310 - 127.0.0.1
        bad = urllib.request.Request(receiver.url, data=b"\xff\x00junk", headers={"Content-Type": "x"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(bad, timeout=10)  # noqa: S310
    finally:
        receiver.stop()
    spans = load_spans(tmp_path / "t.jsonl")
    assert [(s["trace_id"], s["span_id"], s["duration_ms"]) for s in spans] == [("ab" * 16, "cd" * 8, 2.0)] * 2


# ---------------------------------------------------------------- CLI

def test_serve_config_cli_writes_a_valid_serve_config(tmp_path) -> None:
    from ray.serve.schema import ServeDeploySchema

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    (tmp_path / "plan.json").write_text(_plan({"us-east": 0.5, "cam-1": 0.5}).model_dump_json())
    result = CliRunner().invoke(app, ["serve-config", str(tmp_path / "plan.json"), "--spec", str(tmp_path / "spec.yaml"),
                                      "--triton-url", "us-east=127.0.0.1:8001", "--otlp-endpoint", "127.0.0.1:4317"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(result.stdout)
    ServeDeploySchema.model_validate(config)
    assert config["applications"][0]["args"]["tracing"]["otlp_endpoint"] == "127.0.0.1:4317"
    for args, word in [(["serve-config", str(tmp_path / "nope.json")], "To fix"),
                       (["serve-config", str(tmp_path / "plan.json"), "--triton-url", "x"], "SITE=HOST:PORT"),
                       (["up", str(tmp_path / "spec.yaml")], "exactly one of --local or --address"),
                       (["up", str(tmp_path / "nope.yaml"), "--local"], "cannot read")]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and word in result.output, (args, result.output)


def test_serve_config_given_the_spec_says_to_plan_it_first(tmp_path) -> None:
    """The spec YAML instead of the plan JSON: one problem naming it a spec, with the commands that make the plan,
    not a pydantic "Invalid JSON" error quoting the whole YAML."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))   # a spec written as JSON is a spec too
    for path in (spec, tmp_path / "spec.json"):
        result = CliRunner().invoke(app, ["serve-config", str(path), "--spec", str(spec)])
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and "looks like a spec" in text, result.output
        assert f"To fix: isthmus plan {path} --json > plan.json" in text and "serve-config plan.json --spec" in text
        assert "Invalid JSON" not in text and "regions" not in text
    (tmp_path / "notes.txt").write_text("just some notes\n")
    result = CliRunner().invoke(app, ["serve-config", str(tmp_path / "notes.txt")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "not JSON" in text and "To fix" in text and "Invalid JSON" not in text
