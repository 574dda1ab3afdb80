"""gRPC server plumbing shared by the control plane and the inference server.

TLS: `tls_credentials` loads PEM files; with `ca` and `require_client_auth=True` the server runs
mTLS (the handshake rejects clients without a certificate signed by that CA, or with an expired
one). Every server built here has gRPC health checking and reflection, `SO_REUSEPORT` off (a port
clash fails loudly) and a request size limit (`max_request_bytes`, RESOURCE_EXHAUSTED beyond it).
"""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc

__all__ = ["ServerTLS", "build_server", "free_port"]


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
