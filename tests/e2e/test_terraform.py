"""terraform/examples/multi-region applied for real against moto_server on 127.0.0.1.

Flow: a Plan over two regions -> `isthmus fleet tfvars` -> `terraform init -plugin-dir` + `apply` with
`aws_endpoint_url` -> boto3 against the same endpoint -> `isthmus fleet from-terraform` -> `destroy`.

What moto checks, honestly: it serves the EC2, Auto Scaling, IAM, SSM, STS and CloudWatch Logs APIs
and keeps their state, so the test sees the VPCs, subnets, security-group rules, route tables, the
cross-region peering (requested in one region, accepted in the other), IAM role policies, launch
templates (with their user data) and the instances each autoscaling group launched. It does not
enforce security groups or route packets, boot instances or run user data, or evaluate IAM policies;
those are checked here only as the API state that AWS would enforce.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from isthmus.spec import Plan, PlanInstance, SolverInfo

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = Path("/usr/local/bin/terraform")
PLUGINS = Path("/opt/tf-plugins")
BIN = Path(sys.executable).parent
MOTO = BIN / "moto_server"

pytestmark = [
    pytest.mark.skipif(not TERRAFORM.exists(), reason=f"terraform binary not installed at {TERRAFORM}"),
    pytest.mark.skipif(not PLUGINS.is_dir(), reason=f"offline provider mirror {PLUGINS} absent (terraform init "
                       "-plugin-dir needs hashicorp/aws there)"),
    pytest.mark.skipif(not MOTO.exists(), reason=f"moto_server not installed in {BIN} (pip install 'moto[server]')"),
]

CLUSTER = "isthmus-e2e"
# (site, instance type, model version, count): two versions share g4dn.xlarge in us-east, so the
# fleet must sum them; eu-west runs one type.
INSTANCES = [("us-east", "g4dn.xlarge", "resnet/fp32", 1), ("us-east", "g4dn.xlarge", "resnet/int8", 1),
             ("us-east", "c6i.2xlarge", "resnet/int8", 1), ("eu-west", "g4dn.xlarge", "resnet/int8", 1)]
EXPECTED = {"us-east": {"g4dn.xlarge": 2, "c6i.2xlarge": 1}, "eu-west": {"g4dn.xlarge": 1}}
CLOUD = {"us-east": "us-east-1", "eu-west": "eu-west-1"}
CIDR = {"us-east-1": "10.10.0.0/16", "eu-west-1": "10.20.0.0/16"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not listen on 127.0.0.1:{port}: see {log.name}")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory, endpoint):
    rc = tmp_path_factory.mktemp("tfrc") / "terraformrc"
    rc.write_text("")  # no user CLI config: the plugin dir is passed explicitly
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, "TF_CLI_CONFIG_FILE": str(rc), "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of terraform/ so no .terraform or state lands in the repository."""
    dest = tmp_path_factory.mktemp("tf") / "terraform"
    shutil.copytree(ROOT / "terraform", dest,
                    ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "terraform.tfstate*", "*.tfvars*"))
    return dest


def _tf(env, directory: Path, *args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(TERRAFORM), f"-chdir={directory}", *args, "-no-color"], env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    if check:
        assert proc.returncode == 0, f"terraform {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _init(env, directory: Path) -> None:
    _tf(env, directory, "init", "-input=false", "-backend=false", f"-plugin-dir={PLUGINS}", timeout_s=180)


def _isthmus(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "isthmus"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"isthmus {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc


def _aws(endpoint: str, service: str, region: str):
    import boto3

    return boto3.client(service, region_name=region, endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _tagged(endpoint: str, region: str, call: str, key: str, **kwargs) -> list[dict]:
    ec2 = _aws(endpoint, "ec2", region)
    filters = [{"Name": "tag:isthmus:cluster", "Values": [CLUSTER]}] + kwargs.pop("Filters", [])
    return getattr(ec2, call)(Filters=filters, **kwargs)[key]


@pytest.fixture(scope="module")
def example(env, tree):
    """The copied example, initialised offline from the plugin mirror."""
    directory = tree / "examples" / "multi-region"
    _init(env, directory)
    return directory


def test_validate_module_and_example(env, tree, example):
    module = tree / "modules" / "ray-region"
    _init(env, module)
    for directory in (module, example):
        assert "The configuration is valid" in _tf(env, directory, "validate").stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_apply_plan_fleet_check_read_back_destroy(env, example, endpoint, tmp_path):
    plan = Plan(spec=CLUSTER, feasible=True, cost_per_hour=2.0, compute_cost_per_hour=2.0, egress_cost_per_hour=0.0,
                lower_bound_per_hour=2.0, solver=SolverInfo(method="milp", status="optimal", seconds=0.1),
                routes=[], services=[],
                instances=[PlanInstance(site=s, instance_type=t, model_version=m, count=n) for s, t, m, n in INSTANCES])
    (tmp_path / "plan.json").write_text(plan.model_dump_json())
    tfvars = example / "plan.auto.tfvars.json"
    _isthmus("fleet", "tfvars", str(tmp_path / "plan.json"), "--cloud-region", "us-east=us-east-1",
             "--cloud-region", "eu-west=eu-west-1", "--out", str(tfvars))
    assert json.loads(tfvars.read_text())["head_site"] == "us-east"

    try:
        _tf(env, example, "apply", "-auto-approve", "-input=false", f"-var=aws_endpoint_url={endpoint}", timeout_s=420)
        _check_aws(endpoint)
        fleet = json.loads(_isthmus("fleet", "from-terraform", str(example), "--json").stdout)
        got = {r["name"]: {t["name"]: t["max_count"] for t in r["instance_types"]} for r in fleet["regions"]}
        assert got == EXPECTED
        prices = {(r["name"], t["name"]): t["price_per_hour"] for r in fleet["regions"] for t in r["instance_types"]}
        assert prices[("us-east", "g4dn.xlarge")] == 0.526 and prices[("eu-west", "g4dn.xlarge")] == 0.587
        assert {r["name"]: r["cloud_region"] for r in fleet["regions"]} == CLOUD
    finally:
        destroyed = _tf(env, example, "destroy", "-auto-approve", "-input=false", "-refresh=false",
                        f"-var=aws_endpoint_url={endpoint}", timeout_s=420, check=False)
    assert destroyed.returncode == 0, destroyed.stderr[-3000:]
    for region in CLOUD.values():
        assert _tagged(endpoint, region, "describe_vpcs", "Vpcs") == []
        assert _aws(endpoint, "autoscaling", region).describe_auto_scaling_groups()["AutoScalingGroups"] == []
        running = _tagged(endpoint, region, "describe_instances", "Reservations",
                          Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
        assert running == []


def _check_aws(endpoint: str) -> None:
    """The API state of the applied fleet matches the plan, region by region."""
    vpc_ids = {}
    for site, region in CLOUD.items():
        vpcs = _tagged(endpoint, region, "describe_vpcs", "Vpcs")
        assert [(v["CidrBlock"], _tag(v, "isthmus:region")) for v in vpcs] == [(CIDR[region], site)]
        vpc_ids[region] = vpcs[0]["VpcId"]

        groups = _tagged(endpoint, region, "describe_security_groups", "SecurityGroups")
        assert len(groups) == 1 and groups[0]["VpcId"] == vpc_ids[region]
        for rule in groups[0]["IpPermissions"]:
            assert {r["CidrIp"] for r in rule["IpRanges"]} == set(CIDR.values()), rule  # the cluster only
        ports = {(r["FromPort"], r["ToPort"]) for r in groups[0]["IpPermissions"]}
        assert {(6379, 6384), (10002, 10999), (8000, 8000), (9000, 9000), (50051, 50051)} <= ports

        asgs = _aws(endpoint, "autoscaling", region).describe_auto_scaling_groups()["AutoScalingGroups"]
        by_type = {_tag(g, "isthmus:instance-type"): g for g in asgs}
        assert {t: g["DesiredCapacity"] for t, g in by_type.items()} == EXPECTED[site]
        assert {t: len(g["Instances"]) for t, g in by_type.items()} == EXPECTED[site]

        instances = [i for r in _tagged(endpoint, region, "describe_instances", "Reservations",
                                        Filters=[{"Name": "instance-state-name", "Values": ["running"]}])
                     for i in r["Instances"]]
        workers: dict[str, int] = {}
        for inst in instances:
            if _tag(inst, "isthmus:role") == "worker":
                workers[inst["InstanceType"]] = workers.get(inst["InstanceType"], 0) + 1
                assert _tag(inst, "isthmus:region") == site
        assert workers == EXPECTED[site]
        heads = [i for i in instances if _tag(i, "isthmus:role") == "head"]
        assert [(h["PrivateIpAddress"], h["InstanceType"]) for h in heads] == \
            ([("10.10.0.10", "m5.large")] if site == "us-east" else [])

        ec2 = _aws(endpoint, "ec2", region)
        for g in asgs:
            spec = g["LaunchTemplate"]
            data = ec2.describe_launch_template_versions(LaunchTemplateId=spec["LaunchTemplateId"])
            user_data = base64.b64decode(data["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]).decode()
            assert f'"region:{site}":1' in user_data and "--address=10.10.0.10:6379" in user_data

        role = f"{CLUSTER}-{site}-nodes"
        policy = _aws(endpoint, "iam", region).get_role_policy(RoleName=role, PolicyName="isthmus-node")
        statements = policy["PolicyDocument"]["Statement"]
        assert [sorted(s["Action"]) for s in statements] == [["logs:CreateLogStream", "logs:PutLogEvents"]]
        assert statements[0]["Resource"].endswith(f":log-group:/isthmus/{CLUSTER}/{site}:*")

    assert _tagged(endpoint, "ap-southeast-1", "describe_vpcs", "Vpcs") == []  # no site there, nothing created

    peerings = _aws(endpoint, "ec2", "eu-west-1").describe_vpc_peering_connections()["VpcPeeringConnections"]
    assert len(peerings) == 1 and peerings[0]["Status"]["Code"] == "active"
    assert (peerings[0]["RequesterVpcInfo"]["VpcId"], peerings[0]["AccepterVpcInfo"]["VpcId"]) == \
        (vpc_ids["us-east-1"], vpc_ids["eu-west-1"])
    for region, other in (("us-east-1", "eu-west-1"), ("eu-west-1", "us-east-1")):
        tables = _tagged(endpoint, region, "describe_route_tables", "RouteTables")
        routes = {(r.get("DestinationCidrBlock"), r.get("VpcPeeringConnectionId")) for t in tables for r in t["Routes"]}
        assert (CIDR[other], peerings[0]["VpcPeeringConnectionId"]) in routes


def _tag(resource: dict, key: str) -> str | None:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), None)
