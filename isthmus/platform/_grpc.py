"""gRPC server plumbing shared by the control plane and the inference server.

TLS: `tls_credentials` loads PEM files; with `ca` and `require_client_auth=True` the server runs
mTLS (the handshake rejects clients without a certificate signed by that CA, or with an expired
one). Every server built here has gRPC health checking and reflection, `SO_REUSEPORT` off (a port
clash fails loudly) and a request size limit (`max_request_bytes`, RESOURCE_EXHAUSTED beyond it).

`TokenAuth` is the per-call bearer-token check both servers share: the `authorization: Bearer <t>`
metadata must satisfy `sha256(t) == tokens.json[CN]` (compared in constant time) for the CN of the
client certificate. Tokens and keys are never logged; rejections log the CN and the reason only.
"""

from __future__ import annotations

import hmac
import logging
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc

from isthmus.platform.certs import CertError, hash_token, load_token_hashes

__all__ = ["ServerTLS", "TokenAuth", "build_server", "free_port"]

_log = logging.getLogger("isthmus.grpc_auth")


@dataclass(frozen=True)
class ServerTLS:
    """PEM paths of a server certificate, its key and (for mTLS) the CA that signs clients."""

    cert: Path
    key: Path
    ca: Path | None = None
    require_client_auth: bool = True

    @classmethod
    def from_certs_dir(cls, directory: str | Path, *, require_client_auth: bool = True) -> "ServerTLS":
        """The server files written by `isthmus certs init DIR`."""
        d = Path(directory)
        return cls(cert=d / "server.pem", key=d / "server.key", ca=d / "ca.pem",
                   require_client_auth=require_client_auth)

    def credentials(self) -> grpc.ServerCredentials:
        try:
            pair = [(self.key.read_bytes(), self.cert.read_bytes())]
            ca = self.ca.read_bytes() if self.ca else None
        except FileNotFoundError as err:
            raise FileNotFoundError(f"TLS file {err.filename} is missing. To fix: run "
                                    "`isthmus certs init DIR` and pass that DIR.") from None
        return grpc.ssl_server_credentials(pair, root_certificates=ca,
                                           require_client_auth=bool(ca) and self.require_client_auth)


class TokenAuth:
    """Per-agent bearer tokens from a tokens.json of `isthmus certs` (`{agent id: "sha256:<hex>"}`),
    re-read when its mtime changes; a missing or broken file rejects everyone (fail closed)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        load_token_hashes(self.path)  # fail now, with a clear message, on a bad tokens file
        self._mtime = -1.0
        self._hashes: dict[str, str] = {}
        self._lock = threading.Lock()

    def matches(self, agent_id: str, token: str) -> bool:
        """`sha256(token) == hashes[agent_id]`, in constant time."""
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
                if mtime != self._mtime:
                    self._hashes, self._mtime = load_token_hashes(self.path), mtime
            except (OSError, CertError) as err:
                _log.error("tokens file unusable, rejecting every agent: %s", err)
                self._hashes, self._mtime = {}, -1.0
            expected = self._hashes.get(agent_id)
        return expected is not None and hmac.compare_digest(expected, hash_token(token))

    def authenticate(self, context: grpc.ServicerContext) -> str:
        """The agent id (certificate CN) of an authenticated call; aborts with UNAUTHENTICATED otherwise."""
        names = context.auth_context().get("x509_common_name") or [b""]
        agent_id = names[0].decode(errors="replace")
        header = dict(context.invocation_metadata()).get("authorization", "")
        if not agent_id:
            _log.warning("rejected call without a client certificate CN")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate has no CN. To fix: use a "
                                                           "certificate from `isthmus certs add-agent`.")
        if not isinstance(header, str) or not header.startswith("Bearer ") or len(header) > 512:
            _log.warning("rejected agent %s: missing bearer token", agent_id)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token. To fix: send metadata "
                                                           "'authorization: Bearer <token>' (the agent's token file).")
        if not self.matches(agent_id, header[len("Bearer "):]):
            _log.warning("rejected agent %s: bearer token does not match", agent_id)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"bearer token is not valid for agent {agent_id!r}. "
                                                           "To fix: use the token issued with this agent's certificate.")
        return agent_id


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read, close)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def build_server(*, host: str, port: int, tls: ServerTLS | None, service_names: Sequence[str],
                 max_request_bytes: int, max_workers: int = 32,
                 max_send_bytes: int = 64 * 1024 * 1024) -> tuple[grpc.Server, int, object]:
    """A started-later gRPC server bound to host:port: `(server, bound_port, health_servicer)`.

    The caller adds its servicers, then calls `server.start()`; health reports SERVING for
    "" and every name in `service_names`, reflection lists them.
    """
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    options = [("grpc.max_receive_message_length", int(max_request_bytes)),
               ("grpc.max_send_message_length", int(max_send_bytes)),
               ("grpc.so_reuseport", 0),
               # agents send keepalive pings every 20 s to notice a vanished peer
               ("grpc.keepalive_permit_without_calls", 1),
               ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options,
                         maximum_concurrent_rpcs=max_workers * 4)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {address}. To fix: pick a free port (or 0 for any).")
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, bound, health_servicer
