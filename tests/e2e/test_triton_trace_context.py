"""Does Triton continue the W3C trace context it is sent? A minimal reproduction, straight to a real tritonserver.

N requests, each with a fresh known `traceparent`, go to one Triton (OpenTelemetry trace mode, spans received by
`OtlpHttpReceiver`); a request's context was continued when Triton's root span (`InferRequest`) has the sent trace
id and the sent span id as its parent; an orphan is a Triton trace with an id nobody sent.

Finding (nvidia-pytriton 0.7's tritonserver): over HTTP every context is continued; over gRPC a few percent are
lost. Cause: `triton::server::grpc::GrpcServerCarrier::Get` returns the metadata value as `string_ref::data()`
read up to the first NUL byte (`strlen`), but a gRPC string_ref is not NUL-terminated; when the byte after the
55-character value is not zero, opentelemetry-cpp's W3C parser sees a longer value, rejects it (it requires exactly
55) and Triton starts a fresh trace. Same bug as open-telemetry/opentelemetry-cpp#3304 (its gRPC example, which
Triton's carrier follows). No gRPC client can avoid it (a metadata value cannot carry the NUL); the HTTP endpoint
has no such bug, so the runtime sends traced Triton calls over HTTP.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.timeout(300)]

_N_HTTP = 120           # per client kind (sync and asyncio), both must continue every context
_N_GRPC = 400           # at the ~3-6 % loss measured here, P(no loss in 400) < 1e-5


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, tritonserver: str):
    import torch

    from isthmus.platform.tracing import OtlpHttpReceiver, triton_trace_config
    from isthmus.platform.triton import TritonModel, TritonServer, write_model_repository

    work = tmp_path_factory.mktemp("triton-trace")
    torch.jit.script(torch.nn.Linear(8, 4)).save(str(work / "m.pt"))
    repo = write_model_repository(work / "repo", [
        TritonModel(name="plain", torchscript_path=work / "m.pt", input_shape=(8,), dynamic_batching=False),
        TritonModel(name="batched", torchscript_path=work / "m.pt", input_shape=(8,), max_queue_delay_us=2000)])
    spans = work / "triton.spans.jsonl"
    receiver = OtlpHttpReceiver(str(spans)).start()
    server = TritonServer(repo, trace_config=triton_trace_config(receiver.url), log_dir=work / "logs")
    server.start(timeout_s=180)
    try:
        yield {"server": server, "spans": spans}
    finally:
        server.stop()
        receiver.stop()


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def _continued(spans_path: Path, sent: dict[str, str], timeout_s: float = 20.0) -> tuple[int, int]:
    """(requests whose context Triton continued, Triton traces with an unknown id), once Triton exported a root
    span for every request (or timeout_s passed)."""
    from isthmus.platform.tracing import load_spans

    deadline = time.monotonic() + timeout_s
    while True:
        roots = [s for s in (load_spans(spans_path) if spans_path.exists() else [])
                 if s["service"] == "triton" and s["name"] == "InferRequest"]
        mine = [s for s in roots if s["trace_id"] in sent or s.get("parent_id") is None]
        if len(mine) >= len(sent) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    continued = sum(1 for s in roots if sent.get(s["trace_id"]) == s.get("parent_id"))
    orphans = sum(1 for s in roots if s["trace_id"] not in sent and s.get("parent_id") is None)
    return continued, orphans


def _clear(path: Path) -> None:
    path.unlink(missing_ok=True)


def test_triton_continues_every_trace_context_sent_over_http(triton) -> None:
    """Sync and asyncio HTTP clients, with and without dynamic batching: no context is lost."""
    import tritonclient.http as http
    import tritonclient.http.aio as http_aio

    _clear(triton["spans"])
    sent: dict[str, str] = {}
    x = np.random.default_rng(0).random((1, 8), dtype=np.float32)

    def tensor():
        t = http.InferInput("INPUT0", [1, 8], "FP32")
        t.set_data_from_numpy(x, binary_data=True)
        return t

    client = http.InferenceServerClient(triton["server"].http_url)
    for _ in range(_N_HTTP):
        trace_id, span_id, header = _traceparent()
        sent[trace_id] = span_id
        client.infer("plain", [tensor()], headers={"traceparent": header})
    client.close()

    async def concurrent() -> None:
        aclient = http_aio.InferenceServerClient(triton["server"].http_url)

        async def one() -> None:
            trace_id, span_id, header = _traceparent()
            sent[trace_id] = span_id
            await aclient.infer("batched", [tensor()], headers={"traceparent": header})

        for _ in range(_N_HTTP // 4):
            await asyncio.gather(*(one() for _ in range(4)))
        await aclient.close()

    asyncio.run(concurrent())
    continued, orphans = _continued(triton["spans"], sent)
    assert (continued, orphans) == (len(sent), 0), f"{len(sent) - continued} of {len(sent)} contexts lost over HTTP"


@pytest.mark.xfail(strict=True, reason="Triton bug: GrpcServerCarrier::Get reads the traceparent gRPC metadata "
                   "value with strlen() past the end of its non-NUL-terminated grpc::string_ref; a few percent of "
                   "contexts are rejected as malformed (module docstring). XPASS means the bundled Triton is fixed.")
def test_triton_continues_every_trace_context_sent_over_grpc(triton) -> None:
    import tritonclient.grpc as grpc

    _clear(triton["spans"])
    sent: dict[str, str] = {}
    x = np.random.default_rng(0).random((1, 8), dtype=np.float32)
    client = grpc.InferenceServerClient(triton["server"].grpc_url)
    for _ in range(_N_GRPC):
        trace_id, span_id, header = _traceparent()
        sent[trace_id] = span_id
        tensor = grpc.InferInput("INPUT0", [1, 8], "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("plain", [tensor], headers={"traceparent": header})
    client.close()
    continued, orphans = _continued(triton["spans"], sent)
    print(f"gRPC: {len(sent) - continued} of {len(sent)} trace contexts lost ({orphans} orphan Triton traces)")
    assert (continued, orphans) == (len(sent), 0), f"{len(sent) - continued} of {len(sent)} contexts lost over gRPC"
