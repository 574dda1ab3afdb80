"""`isthmus partition MODEL ...`: zoo mode with default device kinds or a spec, and its input errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from isthmus.cli import app

_SPEC = """
name: cli-test
regions:
  - name: us-east
    instance_types: [{name: g4dn.xlarge, device: t4, price_per_hour: 0.526, max_count: 4}]
edge_sites: [{name: cam-1, device: rpi3, count: 1}]
devices:
  t4: {kind: gpu, tflops: 8.1, mem_gb: 16}
  rpi3: {kind: cpu, tflops: 0.004, mem_gb: 1}
links: [{src: cam-1, dst: us-east, rtt_ms: 40, bandwidth_mbps: 8}]
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _run(args, cache):
    return CliRunner().invoke(app, ["partition", *args], env={"ISTHMUS_CACHE": cache})


def test_zoo_chain_model_with_default_devices(cache):
    out = _run(["rnnlm", "--size", "full", "--device", "rpi3", "--site-device", "t4", "--bandwidth-mbps", "10",
                "--slo-ms", "2000", "--rtt-ms", "20", "--json"], cache)
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["chosen"] == "edgent" and set(report["strategies"]) == {"device_only", "cloud_only",
                                                                          "neurosurgeon", "edgent"}
    rows = report["strategies"]
    assert report["latency_ms"] <= min(rows["device_only"]["latency_ms"], rows["cloud_only"]["latency_ms"]) + 1e-9
    assert rows["cloud_only"]["rtt_ms"] == 20 and rows["device_only"]["rtt_ms"] == 0
    assert report["decision_ms"] < 1.0


def test_zoo_model_link_from_spec(cache, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(_SPEC)
    out = _run(["rnnlm", "--size", "full", "--spec", str(spec), "--device", "cam-1", "--site", "us-east", "--json"],
               cache)
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert (report["device"], report["site_device"], report["bandwidth_mbps"], report["rtt_ms"]) == (
        "rpi3", "t4", 8.0, 40.0)
    assert report["chosen"] == "neurosurgeon"  # no SLO given


@pytest.mark.parametrize("args, words", [
    (["nosuch", "--device", "rpi3", "--site-device", "t4", "--bandwidth-mbps", "1"], "unknown zoo model 'nosuch'"),
    (["rnnlm", "--device", "pi9", "--site-device", "t4", "--bandwidth-mbps", "1"], "--device 'pi9' is not a known"),
    (["rnnlm", "--device", "rpi3", "--site", "us-east", "--bandwidth-mbps", "1"], "--site needs --spec"),
    (["rnnlm", "--device", "rpi3", "--site-device", "t4"], "--bandwidth-mbps is required"),
    (["rnnlm", "--device", "rpi3", "--site-device", "t4", "--bandwidth-mbps", "1", "--slo-ms", "-5"], "--slo-ms is -5"),
    (["--bandwidth-mbps", "1"], "give either MODEL or --graph"),
    (["rnnlm", "--size", "huge", "--device", "rpi3", "--site-device", "t4", "--bandwidth-mbps", "1"], "--size 'huge'"),
])
def test_bad_input_exits_2_with_a_fix(cache, args, words):
    out = _run(args, cache)
    assert out.exit_code == 2, out.output
    assert words in out.output and "To fix" in out.output and "Traceback" not in out.output
