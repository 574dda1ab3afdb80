"""A small certificate authority for the control plane: CA, server and agent certificates, tokens.

`init_certs(DIR)` writes

    DIR/ca.pem, DIR/ca.key                 the CA (ECDSA P-256, self-signed)
    DIR/server.pem, DIR/server.key         server certificate (SAN: the given hosts)
    DIR/agents/<id>/agent.pem, agent.key   client certificate per agent (CN = agent id)
    DIR/agents/<id>/token                  the agent's bearer token (32 random bytes, urlsafe base64)
    DIR/tokens.json                        {agent id: "sha256:<hex of the token>"} for the server

Private keys and tokens are written with mode 0600. The server stores only token hashes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = [
    "CertError",
    "CertPaths",
    "add_agent",
    "create_ca",
    "hash_token",
    "init_certs",
    "issue_cert",
    "load_ca",
    "load_token_hashes",
    "write_pair",
]

_AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class CertError(ValueError):
    """Bad input to the certificate tools (the message says how to fix it)."""


@dataclass(frozen=True)
class CertPaths:
    """Where `init_certs` wrote everything."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    tokens: Path
    agents: dict[str, Path]


def hash_token(token: str) -> str:
    """`sha256:<hex>` of a bearer token (what the server stores)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def create_ca(common_name: str = "Isthmus CA", *, days: int = 3650):
    """A new self-signed CA: `(private_key, certificate)`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now() - _dt.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue_cert(ca_key, ca_cert, common_name: str, *, hosts: Sequence[str] = (), server: bool = False,
               days: int = 365, not_before: _dt.datetime | None = None):
    """A leaf certificate signed by the CA: `(private_key, certificate)`.

    `server=True` makes a TLS server certificate whose SAN lists `hosts` (DNS names or IPs);
    otherwise a client certificate with CN = `common_name` (the agent id). Validity runs from
    `not_before` (default: 5 minutes ago) for `days` days; a past window gives an expired cert.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if days <= 0:
        raise CertError(f"days={days} must be positive. To fix: pass --days 1 or more.")
    key = _key()
    start = not_before or (_now() - _dt.timedelta(minutes=5))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + _dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server:
        names = [_san(h) for h in hosts]
        if not names:
            raise CertError("a server certificate needs at least one host. To fix: pass --host localhost.")
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _san(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.*-]{0,252})", host):
            raise CertError(f"host {host!r} is neither an IP address nor a DNS name. "
                            "To fix: pass e.g. --host localhost or --host 10.0.0.5.") from None
        return x509.DNSName(host)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_pair(key, cert) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization

    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def write_pair(key, cert, cert_path: Path, key_path: Path) -> None:
    """Write a PEM certificate (0644) and its private key (0600)."""
    key_pem, cert_pem = _pem_pair(key, cert)
    _write(cert_path, cert_pem)
    _write(key_path, key_pem, private=True)


def load_ca(directory: str | Path):
    """`(private_key, certificate)` of the CA in `directory` written by `init_certs`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    d = Path(directory)
    try:
        key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    except FileNotFoundError as err:
        raise CertError(f"no CA in {d} ({err.filename} is missing). To fix: run `isthmus certs init {d}`.") \
            from None
    return key, cert


def _check_agent_id(agent_id: str) -> None:
    if not _AGENT_ID.fullmatch(agent_id):
        raise CertError(f"agent id {agent_id!r} is invalid. To fix: use 1-63 letters, digits, '.', '_' "
                        "or '-', starting with a letter or digit.")


def load_token_hashes(path: str | Path) -> dict[str, str]:
    """`{agent id: "sha256:<hex>"}` from a tokens.json file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise CertError(f"token file {p} does not exist. To fix: run `isthmus certs init DIR`.") from None
    except json.JSONDecodeError as err:
        raise CertError(f"token file {p} is not JSON ({err.msg}). To fix: regenerate it with "
                        "`isthmus certs init`.") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.startswith("sha256:") for k, v in data.items()):
        raise CertError(f"token file {p} must map agent ids to 'sha256:<hex>' strings. "
                        "To fix: regenerate it with `isthmus certs add-agent`.")
    return data


def add_agent(directory: str | Path, agent_id: str, *, days: int = 365, force: bool = False) -> Path:
    """Issue a client certificate and a new bearer token for `agent_id`; returns its directory.

    An agent that already has them keeps them unless `force` (rotating locks the deployed agent out
    until it gets the new files)."""
    _check_agent_id(agent_id)
    d = Path(directory)
    ca_key, ca_cert = load_ca(d)
    tokens_path = d / "tokens.json"
    hashes = load_token_hashes(tokens_path) if tokens_path.exists() else {}
    agent_dir = d / "agents" / agent_id
    if not force and (agent_id in hashes or (agent_dir / "agent.pem").exists()):
        raise CertError(f"agent {agent_id!r} already has a certificate and token in {agent_dir}. To fix: pass "
                        "--force to rotate its certificate and token (the deployed agent then needs the new files)")
    key, cert = issue_cert(ca_key, ca_cert, agent_id, days=days)
    write_pair(key, cert, agent_dir / "agent.pem", agent_dir / "agent.key")
    token = secrets.token_urlsafe(32)
    _write(agent_dir / "token", token.encode(), private=True)
    hashes[agent_id] = hash_token(token)
    _write(tokens_path, json.dumps(hashes, indent=2, sort_keys=True).encode(), private=True)
    return agent_dir


def init_certs(directory: str | Path, *, agents: Sequence[str] = ("agent-1",),
               hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 365,
               force: bool = False) -> CertPaths:
    """Create a CA, a server certificate for `hosts` and one client certificate + token per agent."""
    d = Path(directory)
    if (d / "ca.pem").exists() and not force:
        raise CertError(f"{d} already holds a CA. To fix: add agents with `isthmus certs add-agent {d} ID`, "
                        "or pass --force to replace everything (all agents then need new certificates).")
    for agent_id in agents:
        _check_agent_id(agent_id)
    if force and (d / "tokens.json").exists():
        (d / "tokens.json").unlink()
    ca_key, ca_cert = create_ca(days=max(days, 3650))
    write_pair(ca_key, ca_cert, d / "ca.pem", d / "ca.key")
    key, cert = issue_cert(ca_key, ca_cert, "isthmus-control-plane", hosts=hosts, server=True, days=days)
    write_pair(key, cert, d / "server.pem", d / "server.key")
    _write(d / "tokens.json", b"{}", private=True)
    agent_dirs = {a: add_agent(d, a, days=days, force=True) for a in agents}   # a new CA: every agent's files are new
    return CertPaths(directory=d, ca_cert=d / "ca.pem", ca_key=d / "ca.key", server_cert=d / "server.pem",
                     server_key=d / "server.key", tokens=d / "tokens.json", agents=agent_dirs)
