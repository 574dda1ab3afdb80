"""The agent's local HTTP endpoint (stdlib only) for callers on the device.

    POST /infer          JSON {"input": nested list, "dtype": "float32"}  or
                         application/octet-stream body with headers X-Shape: 1,1,8,8 and X-Dtype: float32
                         -> {"prediction", "logits", "source": "cloud" | "local_exit", "degraded", "split",
                             "exit", "latency_ms", ...}; a W3C `traceparent` header is continued.
    GET  /healthz        {"ok": true, "loaded": bool}
    GET  /status         connection, loaded partition, counters
    POST /admin/uplink   {"uplink_mbps": x}  change the emulated uplink (demo: halve the bandwidth)

Bodies above `max_request_bytes` get 413; malformed input gets 400 with a message; never a traceback.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

__all__ = ["serve_http"]

_log = logging.getLogger("isthmus.edge_agent.http")
_DTYPES = ("float32", "float64", "float16", "int64", "int32", "uint8", "int8")


class _BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _decode_input(handler: BaseHTTPRequestHandler, body: bytes) -> np.ndarray:
    ctype = handler.headers.get("Content-Type", "application/json").split(";")[0].strip()
    dtype = handler.headers.get("X-Dtype", "float32")
    if ctype == "application/octet-stream":
        if dtype not in _DTYPES:
            raise _BadRequest(f"X-Dtype {dtype[:20]!r} is not supported. To fix: use one of {_DTYPES}.")
        try:
            shape = [int(d) for d in handler.headers.get("X-Shape", "").split(",")]
        except ValueError:
            raise _BadRequest("X-Shape must list integers, e.g. '1,1,8,8'.") from None
        if any(d < 0 for d in shape) or int(np.prod(shape)) * np.dtype(dtype).itemsize != len(body):
            raise _BadRequest(f"body has {len(body)} bytes, X-Shape {shape} of {dtype} needs "
                              f"{int(np.prod(shape)) * np.dtype(dtype).itemsize}. To fix: send matching bytes.")
        return np.frombuffer(body, dtype=dtype).reshape(shape)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise _BadRequest(f"body is not JSON ({str(err)[:80]}). To fix: send {{\"input\": [[...]]}}.") from None
    if not isinstance(payload, dict) or "input" not in payload:
        raise _BadRequest("JSON body needs an \"input\" key holding a nested list. To fix: {\"input\": [[...]]}.")
    dtype = payload.get("dtype", "float32")
    if dtype not in _DTYPES:
        raise _BadRequest(f"dtype {str(dtype)[:20]!r} is not supported. To fix: use one of {_DTYPES}.")
    try:
        array = np.asarray(payload["input"], dtype=dtype)
    except (ValueError, TypeError) as err:
        raise _BadRequest(f"input is not a rectangular numeric array ({str(err)[:80]}).") from None
    if array.ndim == 0:
        raise _BadRequest("input must be an array with a batch dimension, e.g. [[...]].")
    return array


def _drain(stream: Any, length: int, limit: int = 1 << 20) -> None:
    """Read and drop up to `limit` bytes of a rejected body."""
    left = min(max(length, 0), limit)
    while left > 0:
        chunk = stream.read(min(left, 65536))
        if not chunk:
            break
        left -= len(chunk)


def _make_handler(agent: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "isthmus-edge-agent"

        def log_message(self, fmt: str, *args: Any) -> None:  # access log at debug level only
            _log.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                raise _BadRequest("Content-Length is required. To fix: send the body with its length.",
                                  411) from None
            if length < 0 or length > agent.config.max_request_bytes:
                self.close_connection = True
                _drain(self.rfile, length)  # so the client reads our 413 instead of a reset
                raise _BadRequest(f"body of {length} bytes exceeds max_request_bytes="
                                  f"{agent.config.max_request_bytes}. To fix: send a smaller input.", 413)
            return self.rfile.read(length)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"ok": True, "loaded": agent.status()["loaded"] is not None})
            elif self.path == "/status":
                self._send(200, agent.status())
            else:
                self._send(404, {"error": f"no route {self.path[:60]!r}; try POST /infer, GET /status"})

        def do_POST(self) -> None:
            from isthmus.edge_agent.agent import AgentError

            try:
                body = self._body()
                if self.path == "/infer":
                    array = _decode_input(self, body)
                    self._send(200, agent.infer(array, traceparent=self.headers.get("traceparent", "")))
                elif self.path == "/admin/uplink":
                    if self.client_address[0] not in ("127.0.0.1", "::1"):
                        raise _BadRequest("/admin/* answers only callers on this device (loopback).", 403)
                    try:
                        mbps = float(json.loads(body)["uplink_mbps"])
                        agent.uplink.set_rate(mbps)
                    except (ValueError, KeyError, TypeError) as err:
                        raise _BadRequest(f"expected {{\"uplink_mbps\": number >= 0}} ({str(err)[:60]}).") from None
                    self._send(200, {"uplink_mbps": agent.uplink.uplink_mbps})
                else:
                    self._send(404, {"error": f"no route {self.path[:60]!r}; try POST /infer"})
            except _BadRequest as err:
                self._send(err.status, {"error": str(err)})
            except AgentError as err:
                self._send(err.http_status, {"error": str(err)})

    return Handler


def serve_http(agent: Any) -> ThreadingHTTPServer:
    """Start the endpoint on `agent.config.listen` in a daemon thread; returns the server."""
    host, port = agent.config.listen_host_port()
    server = ThreadingHTTPServer((host, port), _make_handler(agent))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="edge-agent-http", daemon=True).start()
    return server
