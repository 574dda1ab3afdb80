"""CLI of the zoo and the profiler: JSON output, and bad input gives exit code 2 with a "To fix" message."""

import json

import pytest
from typer.testing import CliRunner

from isthmus.cli import app
from isthmus.profiler import ModelProfile

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ISTHMUS_CACHE", str(tmp_path))


@pytest.mark.parametrize("args", [
    ["profile", "lenet"],
    ["profile", "vgg", "--size", "huge"],
    ["profile", "vgg", "--device", "potato"],
    ["profile", "vgg", "--version", "fp64"],
    ["models", "versions", "lenet"],
    ["models", "export", "vgg", "--version", "fp33"],
    ["models", "export", "vgg", "--size", "medium"],
])
def test_bad_input_exits_2_with_a_fix(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "To fix" in result.output
    assert "Traceback" not in result.output


def test_profile_json_scaled_to_a_device(tmp_path):
    local = runner.invoke(app, ["profile", "vgg", "--size", "small", "--repeats", "1", "--json"])
    assert local.exit_code == 0, local.output
    prof = ModelProfile.from_json(local.output)
    assert prof.model == "vgg" and prof.device == "local-cpu" and len(prof.layers) == 29
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndevices:\n  slowpi: {kind: cpu, tflops: 0.001, mem_gb: 1}\n")
    slow = runner.invoke(app, ["profile", "vgg", "--size", "small", "--device", "slowpi", "--spec", str(spec),
                               "--json"])
    assert slow.exit_code == 0, slow.output
    scaled = json.loads(slow.output)
    assert scaled["device"] == "slowpi"
    ratio = scaled["layers"][0]["latency_ms"] / prof.layers[0].latency_ms
    from isthmus.profiler import local_gflops

    assert ratio == pytest.approx(local_gflops() / 1.0)  # 1 GFLOPS declared: latency x local GFLOPS


def test_export_writes_a_loadable_torchscript(tmp_path):
    import torch

    result = runner.invoke(app, ["models", "export", "rnnlm", "--version", "int8", "--size", "full",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = tmp_path / "rnnlm_int8_full.pt"
    assert path.exists()
    tokens = torch.randint(0, 10000, (2, 35))
    assert torch.jit.load(str(path))(tokens).shape == (2, 35, 10000)
