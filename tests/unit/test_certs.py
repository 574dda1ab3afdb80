"""`isthmus certs`: a CA, a server certificate, client certificates and tokens that verify."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from isthmus.cli import app
from isthmus.platform.certs import (CertError, add_agent, hash_token, init_certs, issue_cert, load_ca,
                                    load_token_hashes)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    return cert.issuer == ca.subject


def test_init_writes_a_verifying_chain(tmp_path: Path) -> None:
    paths = init_certs(tmp_path / "c", agents=["a1", "cam-2.b"], hosts=["localhost", "10.0.0.5"])
    ca = _cert(paths.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = _cert(paths.server_cert)
    assert _signed_by(server, ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    hashes = load_token_hashes(paths.tokens)
    assert sorted(hashes) == ["a1", "cam-2.b"]
    for agent_id, agent_dir in paths.agents.items():
        cert = _cert(agent_dir / "agent.pem")
        assert _signed_by(cert, ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == agent_id
        assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        token = (agent_dir / "token").read_text()
        assert len(token) >= 40 and hashes[agent_id] == hash_token(token)
        assert token not in paths.tokens.read_text()  # the server file holds hashes only
        for secret in ("agent.key", "token"):
            assert stat.S_IMODE((agent_dir / secret).stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600


def test_add_agent_keeps_the_others_and_tokens_differ(tmp_path: Path) -> None:
    init_certs(tmp_path, agents=["a1"])
    before = load_token_hashes(tmp_path / "tokens.json")
    add_agent(tmp_path, "a2")
    after = load_token_hashes(tmp_path / "tokens.json")
    assert after["a1"] == before["a1"] and after["a2"] != after["a1"]
    assert _signed_by(_cert(tmp_path / "agents" / "a2" / "agent.pem"), _cert(tmp_path / "ca.pem"))


def test_expired_certificate_can_be_issued_for_tests(tmp_path: Path) -> None:
    init_certs(tmp_path, agents=[])
    ca_key, ca_cert = load_ca(tmp_path)
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    _, cert = issue_cert(ca_key, ca_cert, "old", not_before=start, days=1)
    assert cert.not_valid_after_utc < dt.datetime.now(dt.timezone.utc)


@pytest.mark.parametrize("call, needle", [
    (lambda d: init_certs(d, agents=["bad id"]), "agent id 'bad id' is invalid"),
    (lambda d: init_certs(d, hosts=["not a host!"]), "neither an IP address nor a DNS name"),
    (lambda d: init_certs(d, hosts=[]), "at least one host"),
    (lambda d: init_certs(d, days=0), "days=0 must be positive"),
    (lambda d: add_agent(d, "a9"), "no CA in"),
])
def test_bad_input_names_the_value_and_the_fix(tmp_path: Path, call, needle: str) -> None:
    with pytest.raises(CertError) as info:
        call(tmp_path)
    assert needle in str(info.value) and "To fix" in str(info.value)


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    init_certs(tmp_path)
    old_ca = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(CertError, match="already holds a CA"):
        init_certs(tmp_path)
    init_certs(tmp_path, force=True, agents=["b1"])
    assert (tmp_path / "ca.pem").read_bytes() != old_ca
    assert sorted(load_token_hashes(tmp_path / "tokens.json")) == ["b1"]


def test_bad_token_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").write_text(json.dumps({"a1": "plain-token"}))
    with pytest.raises(CertError, match="sha256"):
        load_token_hashes(tmp_path / "tokens.json")


def test_cli_init_and_add_agent(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["certs", "init", str(tmp_path / "c"), "--agent", "x1", "--host", "localhost"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "agents" / "x1" / "agent.pem").is_file()
    token = (tmp_path / "c" / "agents" / "x1" / "token").read_text()
    assert token not in result.output
    result = runner.invoke(app, ["certs", "add-agent", str(tmp_path / "c"), "x2"])
    assert result.exit_code == 0 and (tmp_path / "c" / "agents" / "x2" / "token").is_file()
    again = runner.invoke(app, ["certs", "init", str(tmp_path / "c")])
    assert again.exit_code == 2 and "To fix" in again.output and "Traceback" not in again.output
