"""OpenTelemetry tracing for the runtime: one trace per request, client → ingress → deployment → Triton.

Context travels as a W3C `traceparent` header (HTTP header, gRPC metadata, Serve handle argument,
tritonclient request header). Every process calls `setup_tracing(config, service)` once; spans go to a
JSONL file (default, one span per line, appended atomically) and/or over OTLP gRPC when
`otlp_endpoint` is set. Triton's own spans (`--trace-config mode=opentelemetry`) are exported by
Triton over OTLP/HTTP; `OtlpHttpReceiver` takes them in and writes them to the same JSONL file.

Triton reads `traceparent` reliably only from HTTP headers: its gRPC carrier measures the metadata value with
`strlen` although a gRPC `string_ref` is not NUL-terminated, so when a left-over heap byte follows the 55
characters the W3C parser rejects the value and Triton starts a fresh trace (a few percent of requests;
reproduced in tests/e2e/test_triton_trace_context.py). Traced calls to Triton go over its HTTP endpoint.

`summarize(spans, spec)` groups spans by trace and computes, per hop (span name and service, e.g. the
deployment at each site), the duration distribution; the latency measured at the ingress per route is set
beside the plan's prediction L_r (`isthmus.predicted_latency_ms` on the ingress span, network included) and,
given the spec, beside L_r's compute part (what the ingress can see).
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "TracingConfig", "setup_tracing", "get_tracer", "inject_traceparent", "extract_context",
    "JsonlSpanExporter", "OtlpHttpReceiver", "triton_trace_config", "load_spans", "summarize",
    "PREDICTED_ATTR",
]

PREDICTED_ATTR = "isthmus.predicted_latency_ms"
_state: dict[str, Any] = {"provider": None, "key": None}
_lock = threading.Lock()


class TracingConfig(BaseModel):
    """Where spans go. Both sinks may be set; none set means tracing is off."""

    model_config = ConfigDict(extra="forbid")
    jsonl_path: str | None = Field(None, description="Append spans, one JSON object per line, to this file.")
    otlp_endpoint: str | None = Field(None, description="OTLP gRPC collector, e.g. 127.0.0.1:4317.")
    schedule_delay_ms: int = Field(200, ge=1, description="Batch export delay for OTLP, ms.")

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and (not v or " " in v):
            raise ValueError(f"is {v!r}. To fix: give host:port of an OTLP gRPC collector, e.g. 127.0.0.1:4317")
        return v

    @property
    def enabled(self) -> bool:
        return bool(self.jsonl_path or self.otlp_endpoint)


def _span_record(trace_id: int, span_id: int, parent_id: int | None, name: str, service: str,
                 start_ns: int, end_ns: int, attributes: Mapping[str, Any], kind: str, status: str) -> dict:
    return {"trace_id": f"{trace_id:032x}", "span_id": f"{span_id:016x}",
            "parent_id": f"{parent_id:016x}" if parent_id else None, "name": name, "service": service,
            "kind": kind, "start_ns": start_ns, "end_ns": end_ns, "duration_ms": (end_ns - start_ns) / 1e6,
            "status": status, "attributes": {k: _jsonable(v) for k, v in attributes.items()}}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _append_lines(path: str, records: Iterable[dict]) -> None:
    """Append JSON lines with one O_APPEND write per line, so processes sharing the file never interleave."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for record in records:
            os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
    finally:
        os.close(fd)


def _make_jsonl_exporter_class():
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class _JsonlSpanExporter(SpanExporter):
        """Writes finished spans to a JSONL file (see `_span_record` for the fields)."""

        def __init__(self, path: str):
            self.path = path

        def export(self, spans: Sequence[Any]) -> Any:
            records = []
            for span in spans:
                ctx = span.get_span_context()
                parent = span.parent.span_id if span.parent else None
                service = span.resource.attributes.get("service.name", "unknown")
                records.append(_span_record(ctx.trace_id, ctx.span_id, parent, span.name, service,
                                            span.start_time, span.end_time, span.attributes or {},
                                            span.kind.name, span.status.status_code.name))
            _append_lines(self.path, records)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

    return _JsonlSpanExporter


def JsonlSpanExporter(path: str):  # noqa: N802 - a factory that reads like the class it returns
    """An OpenTelemetry SpanExporter appending spans to `path` as JSON lines."""
    return _make_jsonl_exporter_class()(path)


def setup_tracing(config: TracingConfig | Mapping[str, Any] | None, service: str):
    """Install this process's tracer provider once (later calls with the same config reuse it).

    Returns a tracer, or None when `config` enables no sink.
    """
    config = TracingConfig.model_validate(config or {})
    if not config.enabled:
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    key = (config.model_dump_json(), service)
    with _lock:
        if _state["provider"] is None or _state["key"] != key:
            if _state["provider"] is not None:
                _state["provider"].shutdown()
            provider = TracerProvider(resource=Resource.create({"service.name": service}))
            if config.jsonl_path:
                provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(config.jsonl_path)))
            if config.otlp_endpoint:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

                exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, insecure=True)
                provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=config.schedule_delay_ms))
            _state.update(provider=provider, key=key)
        return _state["provider"].get_tracer("isthmus")


def get_tracer():
    """The tracer installed by `setup_tracing` in this process (None if tracing is off)."""
    provider = _state["provider"]
    return provider.get_tracer("isthmus") if provider is not None else None


def shutdown_tracing() -> None:
    """Flush and drop this process's provider (tests and CLI exit)."""
    with _lock:
        if _state["provider"] is not None:
            _state["provider"].shutdown()
        _state.update(provider=None, key=None)


def inject_traceparent(context: Any = None) -> dict[str, str]:
    """The W3C carrier (`traceparent`, maybe `tracestate`) of `context` (default: the current span)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=context)
    return carrier


def extract_context(carrier: Mapping[str, str] | None):
    """An OpenTelemetry context from a carrier holding `traceparent` (case-insensitive keys)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    lowered = {str(k).lower(): str(v) for k, v in (carrier or {}).items()}
    return TraceContextTextMapPropagator().extract(lowered)


def triton_trace_config(otlp_http_url: str, rate: int = 1, service: str = "triton") -> dict[str, str]:
    """`TritonServer(trace_config=...)` for Triton's OpenTelemetry mode, exporting every `rate`-th request
    over OTLP/HTTP to `otlp_http_url`. Triton then continues the trace of a request carrying `traceparent`
    (every one over HTTP; over gRPC a few percent are lost to a Triton bug, see the module docstring)."""
    return {"mode": "opentelemetry", "rate": str(rate), "level": "TIMESTAMPS",
            "opentelemetry,url": otlp_http_url, "opentelemetry,resource": f"service.name={service}",
            "opentelemetry,bsp_schedule_delay": "200"}


def _otlp_request_records(body: bytes, content_type: str = "application/x-protobuf") -> list[dict]:
    """Decode an OTLP ExportTraceServiceRequest (binary protobuf, or OTLP/JSON) into span records."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    if "json" in content_type:
        request = _otlp_json_request(body)
    else:
        request = ExportTraceServiceRequest.FromString(body)
    records = []
    for resource_spans in request.resource_spans:
        service = next((a.value.string_value for a in resource_spans.resource.attributes
                        if a.key == "service.name"), "unknown")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = {a.key: _any_value(a.value) for a in span.attributes}
                parent = int.from_bytes(span.parent_span_id, "big") if span.parent_span_id else None
                records.append(_span_record(int.from_bytes(span.trace_id, "big"), int.from_bytes(span.span_id, "big"),
                                            parent, span.name, service, span.start_time_unix_nano,
                                            span.end_time_unix_nano, attributes, _KINDS.get(span.kind, "INTERNAL"),
                                            "ERROR" if span.status.code == 2 else "UNSET"))
    return records


def _otlp_json_request(body: bytes):
    """OTLP/JSON → ExportTraceServiceRequest. OTLP/JSON writes trace and span ids as hex, protobuf JSON as base64."""
    import base64

    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    data = json.loads(body)
    for resource_spans in data.get("resourceSpans", data.get("resource_spans", [])):
        for scope_spans in resource_spans.get("scopeSpans", resource_spans.get("scope_spans", [])):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"):
                    if span.get(key):
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(data, ExportTraceServiceRequest(), ignore_unknown_fields=True)


_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _any_value(value: Any) -> Any:
    field = value.WhichOneof("value")
    return getattr(value, field) if field in ("string_value", "int_value", "double_value", "bool_value") else str(value)


class OtlpHttpReceiver:
    """A minimal OTLP/HTTP trace receiver (POST /v1/traces, protobuf) that appends spans to a JSONL file.

    Triton exports its spans over OTLP/HTTP; run one of these next to it and pass `url` to
    `triton_trace_config`. Binds 127.0.0.1 on a free port unless `port` is given.
    """

    def __init__(self, jsonl_path: str, host: str = "127.0.0.1", port: int = 0):
        self.jsonl_path = jsonl_path
        self.received = 0
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    records = _otlp_request_records(body, self.headers.get("Content-Type", ""))
                except Exception as err:  # a malformed export: tell the sender, keep serving
                    self.send_response(400)
                    self.end_headers()
                    self.wfile.write(f"{type(err).__name__}: {err} (Content-Type "
                                     f"{self.headers.get('Content-Type')!r}, {len(body)} bytes)".encode())
                    return
                _append_lines(receiver.jsonl_path, records)
                receiver.received += len(records)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="otlp-http-receiver")

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1/traces"

    def start(self) -> "OtlpHttpReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------- reading traces

def load_spans(path: str | Path) -> list[dict]:
    """Read a JSONL span file; raise ValueError naming the first bad line."""
    spans = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err.msg}). To fix: pass a span file written by "
                             "isthmus tracing (one JSON object per line)") from None
        if not isinstance(record, dict) or not {"trace_id", "name", "duration_ms"} <= record.keys():
            raise ValueError(f"{path}:{number}: not a span (needs trace_id, name, duration_ms). To fix: pass a "
                             "span file written by isthmus tracing")
        spans.append(record)
    return spans


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]


def _depths(spans: list[dict]) -> dict[str, int]:
    by_id = {s["span_id"]: s for s in spans}
    depths: dict[str, int] = {}
    for span in spans:
        depth, cursor, seen = 0, span, set()
        while cursor.get("parent_id") in by_id and cursor["span_id"] not in seen:
            seen.add(cursor["span_id"])
            cursor = by_id[cursor["parent_id"]]
            depth += 1
        depths[span["span_id"]] = depth
    return depths


def summarize(spans: list[dict], spec: Any = None) -> dict[str, Any]:
    """Per-hop latency breakdown and predicted vs measured latency per route.

    hops: one row per (span name, service), so a hop run at two sites is two rows: n, p50/p99/mean duration
    (ms) and mean depth in its trace, ordered by depth (client first, Triton compute last). routes: for ingress
    spans carrying `isthmus.predicted_latency_ms`, per (service, site, model_version): n, the plan's predicted
    route latency L_r (`predicted_ms`: rtt + transfer from the source + compute, so it includes the network),
    the ingress's measured p50/p99 and `measured_over_predicted` = ingress p50 / L_r. The ingress measures from
    the request's arrival there to its reply, so it does not see the client's uplink that L_r includes; with
    the plan's `spec`, `predicted_compute_ms` is the part of L_r spent at the site (`RouteTable.compute_ms`),
    the prediction an ingress measurement is comparable with (None without a spec).
    """
    traces: dict[str, list[dict]] = defaultdict(list)
    for span in spans:
        traces[span["trace_id"]].append(span)
    hop_ms: dict[tuple[str, str], list[float]] = defaultdict(list)
    hop_depth: dict[tuple[str, str], list[int]] = defaultdict(list)
    routes: dict[tuple[str, str, str], dict[str, Any]] = {}
    for trace_spans in traces.values():
        depths = _depths(trace_spans)
        for span in trace_spans:
            hop = (span["name"], span.get("service", ""))
            hop_ms[hop].append(float(span["duration_ms"]))
            hop_depth[hop].append(depths[span["span_id"]])
            attrs = span.get("attributes") or {}
            if PREDICTED_ATTR in attrs:
                key = tuple(str(attrs.get(f"isthmus.{a}", "?")) for a in ("service", "site", "model_version"))
                entry = routes.setdefault(key, {"predicted": [], "measured": []})
                entry["predicted"].append(float(attrs[PREDICTED_ATTR]))
                entry["measured"].append(float(span["duration_ms"]))
    hops = []
    for (name, service), values in hop_ms.items():
        hops.append({"hop": name, "service": service, "n": len(values),
                     "depth": sum(hop_depth[name, service]) / len(values),
                     "p50_ms": _percentile(values, 50), "p99_ms": _percentile(values, 99),
                     "mean_ms": sum(values) / len(values)})
    hops.sort(key=lambda h: (h["depth"], -h["mean_ms"], h["service"]))
    route_rows = []
    for (service, site, version), entry in sorted(routes.items()):
        predicted = sum(entry["predicted"]) / len(entry["predicted"])
        p50 = _percentile(entry["measured"], 50)
        route_rows.append({"service": service, "site": site, "model_version": version, "n": len(entry["measured"]),
                           "predicted_ms": predicted, "predicted_compute_ms": None, "measured_p50_ms": p50,
                           "measured_p99_ms": _percentile(entry["measured"], 99),
                           "measured_over_predicted": p50 / predicted if predicted > 0 else float("nan")})
    if spec is not None:
        _add_predicted_compute(spec, route_rows)
    sizes = [len(v) for v in traces.values()]
    return {"traces": len(traces), "spans": len(spans), "max_spans_per_trace": max(sizes, default=0),
            "hops": hops, "routes": route_rows}


def _add_predicted_compute(spec: Any, rows: list[dict]) -> None:
    """Set each row's `predicted_compute_ms`: of the spec's routes of its (service, site, model version), the one
    whose L_r is nearest the row's prediction, split into network and compute (rows the spec lacks keep None)."""
    import math

    import numpy as np

    from isthmus.optimizer.routes import build_routes

    table = build_routes(spec, latency_headroom=math.inf)  # every route, whatever the SLO
    services = {s.name: i for i, s in enumerate(spec.services)}
    places = {p: i for i, p in enumerate(table.net.places)}
    versions = np.array([name for _, name in table.version_names] or [""])[table.version]
    for row in rows:
        if row["service"] not in services or row["site"] not in places:
            continue
        match = np.flatnonzero((table.service == services[row["service"]]) & (table.site == places[row["site"]])
                               & (versions == row["model_version"]))
        if len(match):
            r = match[np.argmin(np.abs(table.latency_ms[match] - row["predicted_ms"]))]
            row["predicted_compute_ms"] = table.compute_ms(int(r))
