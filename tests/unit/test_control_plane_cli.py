"""`isthmus control-plane` / `isthmus inference-server`: bad input exits 2 with a message, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from isthmus.cli import app
from isthmus.platform.certs import init_certs
from isthmus.platform.control_plane_commands import load_assignments, parse_tail_spec


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("content, needle", [
    ("{not json", "is not JSON (line 1"),
    ("[1, 2]", "must map agent ids or sites"),
    (json.dumps({"cam-1": 3}), "assignments['cam-1'] must be an object"),
    (json.dumps({"cam-1": {"head": "missing.pt"}}), "assignments['cam-1'].head = 'missing.pt'"),
    (json.dumps({"cam-1": {"local_exits": {"x": "h.pt"}}}), "local_exits keys must be exit numbers"),
])
def test_bad_assignments_exit_2(tmp_path: Path, content: str, needle: str) -> None:
    init_certs(tmp_path / "certs", agents=[])
    (tmp_path / "h.pt").write_bytes(b"x")
    (tmp_path / "a.json").write_text(content)
    code, out = _run("control-plane", "--certs", str(tmp_path / "certs"), "--assignments", str(tmp_path / "a.json"),
                     "--port", "0")
    assert code == 2 and needle in " ".join(out.split()) and "Traceback" not in out


def test_assignment_that_fails_validation_exits_2(tmp_path: Path) -> None:
    init_certs(tmp_path / "certs", agents=[])
    (tmp_path / "a.json").write_text(json.dumps({"cam-1": {"model": "m", "split": 1, "exit": -1,
                                                           "inference_target": "nohost"}}))
    code, out = _run("control-plane", "--certs", str(tmp_path / "certs"), "--assignments", str(tmp_path / "a.json"))
    assert code == 2 and "not host:port" in " ".join(out.split())


def test_missing_certs_exit_2(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    code, out = _run("control-plane", "--certs", str(tmp_path / "nope"), "--assignments", str(tmp_path / "a.json"))
    assert code == 2 and "To fix" in out


def test_load_assignments_reads_partitions_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "h.pt").write_bytes(b"head")
    (tmp_path / "p" / "e.pt").write_bytes(b"exit")
    (tmp_path / "a.json").write_text(json.dumps({"cam-1": {"model": "m", "split": 3, "exit": -1, "head": "p/h.pt",
                                                           "local_exits": {"3": "p/e.pt"}}}))
    entry = load_assignments(tmp_path / "a.json")["cam-1"]
    assert entry["head"] == b"head" and entry["local_exits"] == {3: b"exit"}


@pytest.mark.parametrize("spec", ["bad", "m:1=x.pt", ":1:2=x.pt", "m:a:2=x.pt", "m:1:2"])
def test_bad_tail_spec(spec: str) -> None:
    code, out = _run("inference-server", "--tail", spec, "--port", "0")
    assert code == 2 and "MODEL:SPLIT:EXIT=PATH" in out and "Traceback" not in out


def test_tail_spec_parses_model_names_with_colons() -> None:
    assert parse_tail_spec("a:b:0:-1=t.pt") == (("a:b", 0, -1), Path("t.pt"))


@pytest.mark.parametrize("command", ["control-plane", "inference-server"])
def test_sigterm_stops_the_server_with_exit_0_and_frees_its_port(tmp_path: Path, command: str) -> None:
    """`kill -TERM` (systemd, a container runtime) runs the Ctrl-C path: the server stops, the port closes."""
    import signal
    import socket
    import subprocess
    import sys

    from isthmus.platform.triton import free_port

    port = free_port()
    if command == "control-plane":
        init_certs(tmp_path / "certs", agents=[])
        (tmp_path / "a.json").write_text("{}")
        args = ["--certs", str(tmp_path / "certs"), "--assignments", str(tmp_path / "a.json")]
    else:
        torch = pytest.importorskip("torch")
        torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), str(tmp_path / "tail.pt"))
        args = ["--tail", f"m:1:-1={tmp_path / 'tail.pt'}"]
    proc = subprocess.Popen([sys.executable, "-c", "from isthmus.cli import main; main()", command, *args,
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline()]
        while lines[-1] and not lines[-1].startswith(("control plane on", "inference server")):
            lines.append(proc.stdout.readline())  # log lines come first
        assert f":{port}" in lines[-1], "".join(lines) + proc.stdout.read()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, proc.stdout.read()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
