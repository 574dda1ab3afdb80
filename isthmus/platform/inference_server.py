"""A plain gRPC `Inference` server that runs TorchScript tails: the cloud side of a split model.

`Infer(model, split, exit, tensor)` looks up the tail registered for `(model, split, exit)`, runs
it on the decoded activation and returns the logits and `argmax` per row. `Probe` answers a
bandwidth probe with the byte count. The runtime later puts Serve/Triton behind the same proto.
Optional TLS / mTLS with the certificates of `isthmus certs init`; with `tokens_file` (needs mTLS)
every call must also carry the agent's bearer token (`TokenAuth`, the control plane's check).
Requests above `max_request_bytes` get RESOURCE_EXHAUSTED; a tensor whose shape needs more than
that gets INVALID_ARGUMENT before anything is allocated.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import grpc

from isthmus import _proto
from isthmus.platform._grpc import ServerTLS, TokenAuth, build_server

__all__ = ["InferenceServer"]

_log = logging.getLogger("isthmus.inference_server")
_SERVICE = "isthmus.v1.Inference"
TailKey = tuple[str, int, int]


def _as_module(tail: Any) -> Any:
    import torch

    if isinstance(tail, (bytes, bytearray)):
        try:
            return torch.jit.load(io.BytesIO(bytes(tail)), map_location="cpu")
        except (RuntimeError, ValueError) as err:  # ValueError: e.g. a name that is not UTF-8 (found by fuzzing)
            raise ValueError(f"tail of {len(tail)} bytes is not a TorchScript archive "
                             f"({str(err).splitlines()[0][:120]}). To fix: save it with torch.jit.save.") from None
    if isinstance(tail, torch.nn.Module):
        return tail.eval()
    raise TypeError(f"tail of type {type(tail).__name__} is not a module. To fix: pass TorchScript bytes "
                    "or a torch.nn.Module.")


class _Servicer:
    def __init__(self, server: "InferenceServer") -> None:
        self._server = server

    def Infer(self, request: Any, context: grpc.ServicerContext) -> Any:
        import torch

        pb = _proto.load("inference_pb2")
        self._server.authenticate(context)
        key = (request.model, request.split, request.exit)
        tail = self._server.tail(key)
        if tail is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no tail for model={request.model[:64]!r} split={request.split} exit={request.exit}. "
                          "To fix: follow the current plan's split/exit (or register that tail).")
        try:
            arrays = [_proto.decode_tensor(t, max_bytes=self._server.max_request_bytes)
                      for t in (request.tensor, *request.extra_tensors)]
        except _proto.TensorDecodeError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        start = time.perf_counter()
        try:
            with torch.no_grad():
                out = tail(*(torch.from_numpy(a.copy()) for a in arrays))
        except RuntimeError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"tail {key} cannot run on tensors of shape {[list(a.shape) for a in arrays]}: "
                          f"{str(err)[:200]}. To fix: send the activation the head partition produces.")
        server_ms = (time.perf_counter() - start) * 1e3
        prediction = out.reshape(out.shape[0], -1).argmax(dim=1).tolist() if out.dim() else [int(out)]
        return pb.InferReply(output=_proto.encode_tensor(out), prediction=prediction,
                             served_by=self._server.name, server_ms=server_ms)

    def Probe(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._server.authenticate(context)
        return _proto.load("inference_pb2").ProbeReply(received_bytes=len(request.payload))


class InferenceServer:
    """gRPC Inference endpoint over `{(model, split, exit): TorchScript bytes or nn.Module}`."""

    def __init__(self, tails: Mapping[TailKey, Any] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 tls: ServerTLS | None = None, max_request_bytes: int = 64 * 1024 * 1024,
                 name: str = "cloud", max_workers: int = 16, tokens_file: str | Path | None = None) -> None:
        if tokens_file is not None and (tls is None or tls.ca is None or not tls.require_client_auth):
            raise ValueError("tokens_file needs mTLS (the token must match the client certificate's CN). "
                             "To fix: pass tls=ServerTLS.from_certs_dir(DIR) as well.")
        self._auth = TokenAuth(tokens_file) if tokens_file is not None else None
        self.name = name
        self.host = host
        self.max_request_bytes = max_request_bytes
        self._lock = threading.Lock()
        self._tails: dict[TailKey, Any] = {}
        for key, tail in (tails or {}).items():
            self.set_tail(key, tail)
        self._server, self.port, _ = build_server(host=host, port=port, tls=tls, service_names=[_SERVICE],
                                                  max_request_bytes=max_request_bytes, max_workers=max_workers)
        _proto.load("inference_pb2_grpc").add_InferenceServicer_to_server(_Servicer(self), self._server)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set_tail(self, key: TailKey, tail: Any) -> None:
        """Register (or replace) the tail run for `(model, split, exit)`."""
        model, split, exit_index = key
        module = _as_module(tail)
        with self._lock:
            self._tails[(str(model), int(split), int(exit_index))] = module

    def authenticate(self, context: grpc.ServicerContext) -> str:
        """The caller's agent id when tokens are required (aborts UNAUTHENTICATED otherwise), else ""."""
        return self._auth.authenticate(context) if self._auth is not None else ""

    def tail(self, key: TailKey) -> Any:
        with self._lock:
            return self._tails.get(key)

    def start(self) -> "InferenceServer":
        self._server.start()
        _log.info("inference server %s on %s with %d tails", self.name, self.address, len(self._tails))
        return self

    def stop(self, grace_s: float | None = 0.2) -> None:
        self._server.stop(grace_s).wait()

    def __enter__(self) -> "InferenceServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
