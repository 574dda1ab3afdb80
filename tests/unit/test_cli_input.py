"""Bad input refused with a fix, and no noise: plan's time limit and solver banner, torch's warnings,
certs add-agent on an existing agent, progress of `models versions`, `up --address` that nobody answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from isthmus.cli import app

_ROOT = Path(__file__).resolve().parents[2]
_GEO = str(_ROOT / "examples" / "geo-3-regions.yaml")
_ISTHMUS = [sys.executable, "-m", "isthmus.cli"]


def _oneline(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_plan_refuses_a_time_limit_that_is_not_positive(limit: str) -> None:
    result = CliRunner().invoke(app, ["plan", _GEO, "--time-limit-s", limit])
    assert result.exit_code == 2, result.output
    assert f"--time-limit-s is {limit}, must be > 0. To fix:" in _oneline(result.stderr)


def test_plan_prints_no_solver_banner() -> None:
    out = subprocess.run([*_ISTHMUS, "plan", _GEO, "--json"], capture_output=True, text=True, timeout=120, cwd=_ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["feasible"]
    for stream in (out.stdout, out.stderr):
        assert "HiGHS" not in stream and "third-party software" not in stream, stream


def test_models_export_prints_no_torch_deprecation_warnings(tmp_path: Path) -> None:
    out = subprocess.run([*_ISTHMUS, "models", "export", "inception", "--version", "int8", "--size", "full",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env=os.environ | {"ISTHMUS_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_file()
    assert "Warning" not in out.stderr, out.stderr


def test_quiet_torch_keeps_other_warnings() -> None:
    from isthmus.models.runtime import quiet_torch

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_torch():
            warnings.warn("Please use quant_min and quant_max to specify the range for observers.", UserWarning)
            warnings.warn("something of ours", UserWarning)
        warnings.warn("Please use quant_min and quant_max to specify the range for observers.", UserWarning)
    assert [str(w.message)[:18] for w in seen] == ["something of ours", "Please use quant_m"]


def test_certs_add_agent_refuses_to_rotate_an_existing_agent_without_force(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["certs", "init", str(tmp_path), "--agent", "cam-1"]).exit_code == 0
    token = tmp_path / "agents" / "cam-1" / "token"
    before = (token.read_text(), (tmp_path / "agents" / "cam-1" / "agent.pem").read_bytes(),
              (tmp_path / "tokens.json").read_text())
    result = runner.invoke(app, ["certs", "add-agent", str(tmp_path), "cam-1"])
    assert result.exit_code == 2, result.output
    assert ("To fix: pass --force to rotate its certificate and token (the deployed agent then needs the new files)"
            in _oneline(result.stderr))
    assert before == (token.read_text(), (tmp_path / "agents" / "cam-1" / "agent.pem").read_bytes(),
                      (tmp_path / "tokens.json").read_text())
    assert runner.invoke(app, ["certs", "add-agent", str(tmp_path), "cam-2"]).exit_code == 0
    result = runner.invoke(app, ["certs", "add-agent", str(tmp_path), "cam-1", "--force"])
    assert result.exit_code == 0, result.output
    assert token.read_text() != before[0]
    assert sorted(json.loads((tmp_path / "tokens.json").read_text())) == ["cam-1", "cam-2"]


def test_models_versions_reports_each_version_as_it_is_measured(tmp_path: Path, monkeypatch) -> None:
    import torch

    from isthmus.models import train, versions

    tiny = torch.nn.Linear(4, 2)   # the training and compression themselves are other tests' business
    monkeypatch.setenv("ISTHMUS_CACHE", str(tmp_path))
    monkeypatch.setattr(train, "train_small", lambda name: (tiny, {"exit_accuracy": {}}))
    monkeypatch.setattr(train, "accuracy", lambda model, name: 0.9)
    monkeypatch.setattr(versions, "small_version", lambda name, version="fp32": tiny)
    monkeypatch.setattr(versions, "build_version", lambda name, version="fp32", size="full", trained=None:
                        (tiny, torch.zeros(1, 4)))
    names = versions.version_names("resnet")
    result = CliRunner().invoke(app, ["models", "versions", "resnet", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)] == names
    for i, name in enumerate(names, 1):
        assert f"resnet {name}: accuracy 0.900" in result.stderr and f"({i}/{len(names)})" in result.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def test_connect_fails_at_once_when_no_gcs_answers() -> None:
    from isthmus.platform.cluster import ClusterError, connect
    from isthmus.spec import load_spec

    t0 = time.monotonic()
    with pytest.raises(ClusterError, match="no Ray cluster answers at .* To fix: start the cluster"):
        connect(load_spec(_GEO), f"127.0.0.1:{_closed_port()}")
    assert time.monotonic() - t0 < 10
    with pytest.raises(ClusterError, match="is not host:port"):
        connect(load_spec(_GEO), "head-without-port")


def test_up_with_an_address_nobody_answers_exits_2_within_a_minute() -> None:
    t0 = time.monotonic()
    out = subprocess.run([*_ISTHMUS, "up", _GEO, "--address", "127.0.0.1:1"], capture_output=True, text=True,
                         timeout=90, cwd=_ROOT)
    assert out.returncode == 2, out.stderr
    assert time.monotonic() - t0 < 60
    assert "To fix" in out.stderr and "127.0.0.1:1" in out.stderr
