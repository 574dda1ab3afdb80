"""Spec validation: every bad-spec case names the YAML path of the bad field and says how to fix it."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from isthmus.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "geo-3-regions.yaml"


@pytest.fixture(scope="module")
def good() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def _problems(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert "To fix" in str(info.value)
    return info.value.problems


def _edit(good: dict, fn) -> dict:
    data = copy.deepcopy(good)
    fn(data)
    return data


def test_examples_are_valid():
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        spec = load_spec(path)
        assert spec.services, path


@pytest.mark.parametrize("edit, path, words", [
    (lambda d: d["services"][1].update(source="cams-mars"), "services[1].source", "unknown source 'cams-mars'"),
    (lambda d: d["services"][0].update(model="gpt9"), "services[0].model", "unknown model 'gpt9'"),
    (lambda d: d["links"][2].update(dst="moon-1"), "links[2].dst", "unknown place 'moon-1'"),
    (lambda d: d["models"][1]["versions"][2].update(latency_ms={}), "models[1].versions[2].latency_ms",
     "cannot run anywhere"),
    (lambda d: d["regions"][2].update(name="us-east"), "regions[2].name", "duplicate name 'us-east'"),
    (lambda d: d["models"][0]["versions"][1].update(name="fp32"), "models[0].versions[1].name", "duplicate name"),
    (lambda d: d["sources"][0].update(rate_rps=-5), "sources[0].rate_rps", "-5"),
    (lambda d: d["regions"][0]["instance_types"][1].update(price_per_hour=-1.0),
     "regions[0].instance_types[1].price_per_hour", "-1.0"),
    (lambda d: d["regions"][1]["instance_types"][0].update(device="h100"), "regions[1].instance_types[0].device",
     "unknown device kind 'h100'"),
    (lambda d: d["links"][0].update(bandwidth_mbps=0), "links[0].bandwidth_mbps", "must be > 0"),
    (lambda d: d["services"][2].update(slo_msec=100), "services[2].slo_msec", "unknown field"),
    (lambda d: d["services"][3].pop("slo_ms"), "services[3].slo_ms", "missing"),
    (lambda d: d["models"][0]["versions"][0]["latency_ms"].update(v100=-2.0), "models[0].versions[0].latency_ms",
     "must be > 0"),
])
def test_bad_spec_names_the_field(good, edit, path, words):
    problems = _problems(_edit(good, edit))
    assert any(p == path and words in msg for p, msg in problems), problems


def test_all_problems_reported_at_once(good):
    def two(d):
        d["services"][0]["source"] = "nope"
        d["sources"][1]["rate_rps"] = 0

    paths = [p for p, _ in _problems(_edit(good, two))]
    assert paths == ["sources[1].rate_rps"]  # field errors first; references are checked on a well-typed spec
    paths = [p for p, _ in _problems(_edit(good, lambda d: (d["services"][0].update(source="x"),
                                                            d["services"][1].update(model="y"))))]
    assert paths == ["services[0].source", "services[1].model"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isthmus.cli", *args], capture_output=True, text=True, timeout=120)


def test_validate_cli_exit_codes(tmp_path, good):
    ok = _cli("validate", str(EXAMPLE))
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_edit(good, lambda d: d["services"][0].update(source="nowhere"))))
    out = _cli("validate", str(bad))
    assert out.returncode == 2
    assert "services[0].source" in out.stderr and "Traceback" not in out.stderr + out.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nregions: [\n")
    out = _cli("validate", str(broken))
    assert out.returncode == 2 and "not valid YAML" in out.stderr and "line" in out.stderr
    out = _cli("validate", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "cannot read" in out.stderr
