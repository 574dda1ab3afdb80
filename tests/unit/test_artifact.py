"""Model versions from TorchScript files (`artifact:`): validation, `isthmus fill-latencies` and planning."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from isthmus.cli import app
from isthmus.spec import SpecError, load_spec, parse_spec

TFLOPS = {"xeon8": 0.6, "t4": 8.1}


class _Tiny(torch.nn.Module):
    """A non-zoo model on one 1×12×12 sample: Conv2d + Linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 12 * 12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _spec(artifact: dict) -> dict:
    """Two regions (a CPU kind and a GPU kind), one source, one service on a model named by `artifact`."""
    return {
        "name": "tiny-artifact",
        "regions": [
            {"name": "r1", "instance_types": [{"name": "c6i", "device": "xeon8", "price_per_hour": 0.34,
                                               "max_count": 4}]},
            {"name": "r2", "instance_types": [{"name": "g4dn", "device": "t4", "price_per_hour": 0.526,
                                               "max_count": 4}]},
        ],
        "devices": {k: {"kind": "cpu" if k == "xeon8" else "gpu", "tflops": v, "mem_gb": 16}
                    for k, v in TFLOPS.items()},
        "links": [{"src": "r1", "dst": "r2", "rtt_ms": 40, "bandwidth_mbps": 1000, "egress_per_gb": 0.02}],
        "sources": [{"name": "cams", "location": "r1", "rate_rps": 200,
                     "data_versions": [{"name": "raw", "bytes": 576}]}],
        "models": [{"name": "digits", "versions": [{"name": "fp32", "accuracy": 0.9, "artifact": artifact}]}],
        "services": [{"name": "classify", "source": "cams", "model": "digits", "slo_ms": 100,
                      "min_accuracy": 0.8}],
    }


@pytest.fixture()
def spec_dir(tmp_path, monkeypatch):
    """tmp_path/spec/ with model.pt (the scripted tiny model) and spec.yaml naming it by a relative path."""
    monkeypatch.setenv("ISTHMUS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "spec"
    folder.mkdir()
    torch.jit.save(torch.jit.script(_Tiny().eval()), str(folder / "model.pt"))
    (folder / "spec.yaml").write_text(yaml.safe_dump(_spec({"path": "model.pt", "input_shape": [1, 12, 12]})))
    return folder


def test_artifact_field_validation_and_paths(spec_dir):
    spec = load_spec(spec_dir / "spec.yaml", allow_unmeasured=True)
    artifact = spec.models[0].versions[0].artifact
    assert artifact.path == str(spec_dir / "model.pt") and artifact.dtype == "float32"
    data = _spec({"path": "model.pt", "input_shape": [1, 12, 12]})
    assert parse_spec(data, allow_unmeasured=True).models[0].versions[0].artifact.path == "model.pt"
    for bad, field in [({"path": "m.pt", "input_shape": []}, "input_shape"),
                       ({"path": "m.pt", "input_shape": [0, 3]}, "input_shape"),
                       ({"path": "m.pt", "input_shape": [3], "dtype": "bfloat16"}, "dtype"),
                       ({"path": "m.pt", "input_shape": [3], "size": 1}, "size")]:
        with pytest.raises(SpecError) as info:
            parse_spec(_spec(bad), allow_unmeasured=True)
        assert info.value.problems[0][0] == f"models[0].versions[0].artifact.{field}" and "To fix" in str(info.value)


def test_validate_fill_latencies_and_plan(spec_dir, tmp_path, monkeypatch):
    from isthmus.profiler.devices import local_gflops

    runner = CliRunner()
    result = runner.invoke(app, ["validate", str(spec_dir / "spec.yaml")])
    assert result.exit_code == 2
    assert "models[0].versions[0].latency_ms" in result.output
    assert "isthmus fill-latencies SPEC -o filled.yaml" in result.output

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.chdir(spec_dir)  # a relative spec path, written to another folder
    result = runner.invoke(app, ["fill-latencies", "spec.yaml", "-o", str(out_dir / "filled.yaml")])
    assert result.exit_code == 0, result.output
    assert "digits/fp32" in result.output  # the progress line
    written = yaml.safe_load((out_dir / "filled.yaml").read_text())
    assert written["models"][0]["versions"][0]["artifact"]["path"] == "../spec/model.pt"

    monkeypatch.chdir(tmp_path)  # loads from another working directory
    version = load_spec(out_dir / "filled.yaml").models[0].versions[0]
    assert set(version.latency_ms) == set(version.capacity_rps) == set(TFLOPS)
    ratio = version.latency_ms["xeon8"] / version.latency_ms["t4"]
    assert ratio == pytest.approx(TFLOPS["t4"] / TFLOPS["xeon8"], rel=1e-6)
    assert version.capacity_rps["t4"] / version.capacity_rps["xeon8"] == pytest.approx(ratio, rel=1e-6)
    # capacity is at least the batch-1 rate; latency is the local one over 1000·tflops / local GFLOPS
    assert version.capacity_rps["t4"] >= 1000.0 / version.latency_ms["t4"] * (1 - 1e-9)
    local_ms = version.latency_ms["t4"] * 1000.0 * TFLOPS["t4"] / local_gflops()
    assert 0 < local_ms < 1000

    assert runner.invoke(app, ["validate", "out/filled.yaml"]).exit_code == 0
    result = runner.invoke(app, ["plan", "out/filled.yaml", "--json"])
    assert result.exit_code == 0, result.output
    plan = yaml.safe_load(result.stdout[result.stdout.index("{"):])
    assert plan["feasible"] and plan["routes"][0]["model_version"] == "fp32"


def test_given_values_are_kept(spec_dir):
    from isthmus.models.artifact import fill_artifact_latencies

    spec = load_spec(spec_dir / "spec.yaml", allow_unmeasured=True)
    spec.models[0].versions[0].latency_ms = {"t4": 7.0}
    spec.models[0].versions[0].capacity_rps = {"t4": 3.0}
    version = fill_artifact_latencies(spec).models[0].versions[0]
    assert version.latency_ms["t4"] == 7.0 and version.capacity_rps["t4"] == 3.0
    assert set(version.latency_ms) == set(TFLOPS)
    assert "xeon8" not in spec.models[0].versions[0].latency_ms  # the input spec is unchanged


def _bad_text(folder):
    (folder / "model.pt").write_text("not a model\n")
    return {"path": "model.pt", "input_shape": [1, 12, 12]}


def _bad_state_dict(folder):
    torch.save(_Tiny().state_dict(), str(folder / "model.pt"))
    return {"path": "model.pt", "input_shape": [1, 12, 12]}


@pytest.mark.parametrize("make, words", [
    (lambda folder: {"path": "missing.pt", "input_shape": [1, 12, 12]}, "does not exist"),
    (_bad_text, "not a TorchScript file"),
    (_bad_state_dict, "not a TorchScript file"),
    (lambda folder: {"path": "model.pt", "input_shape": [12, 12]}, "rejects a zeros batch of shape [2, 12, 12]"),
], ids=["missing", "text", "state-dict", "input-shape"])
def test_validate_names_bad_artifacts(spec_dir, make, words):
    (spec_dir / "spec.yaml").write_text(yaml.safe_dump(_spec(make(spec_dir))))
    result = CliRunner().invoke(app, ["validate", str(spec_dir / "spec.yaml")])
    assert result.exit_code == 2
    line = next(line for line in result.output.splitlines() if words in line)
    assert "models[0].versions[0].artifact.path" in line and "To fix" in line, line
    assert len(line) < 700 and "Traceback" not in result.output  # torch's first line, not its traceback
    if "TorchScript" in words:
        assert "torch.jit.save(torch.jit.script(model), path)" in line
    fill = CliRunner().invoke(app, ["fill-latencies", str(spec_dir / "spec.yaml")])
    assert fill.exit_code == 2 and "models[0].versions[0].artifact" in fill.output


def test_fill_latencies_needs_zoo_or_artifact(tmp_path):
    data = _spec({"path": "model.pt", "input_shape": [1]})
    del data["models"][0]["versions"][0]["artifact"]
    data["models"][0]["versions"][0]["latency_ms"] = {"t4": 1.0}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["fill-latencies", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 2 and "nothing to measure" in result.output and "To fix" in result.output
