"""Plan ⇄ Terraform: tfvars from a Plan, and the applied fleet back into a Spec's regions.

`tfvars_from_plan` turns a Plan into the variables of `terraform/examples/multi-region`:
for each cloud site j and instance type t, `count_{j,t} = Σ_m y_{j,t,m}` (the plan's instances summed
over model versions), plus the site's provider region and the head site (default: the site with the
largest Σ_t count_{j,t}, ties by name). Edge sites are not Terraform-managed and are left out.

`regions_from_output` reads the `isthmus_fleet` output of `terraform output -json` back into Spec
regions: one instance type per applied (site, type) with `max_count = count_{j,t}` and
`price_per_hour` from a price table keyed by (instance type, provider region).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from isthmus.spec import Device, InstanceType, Plan, Region, Spec

__all__ = [
    "FleetError", "PriceTable", "FleetSite", "Fleet", "plan_counts", "cloud_regions_from_spec",
    "tfvars_from_plan", "load_prices", "terraform_output", "fleet_from_output", "regions_from_output",
    "merge_regions",
]

_DEFAULT_PRICES = Path(__file__).with_name("prices.json")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
_TERRAFORM_FALLBACK = Path("/usr/local/bin/terraform")


class FleetError(ValueError):
    """Bad input for `isthmus fleet`; the message names the field and says how to fix it."""


# ---------------------------------------------------------------- Plan -> tfvars

def plan_counts(plan: Plan) -> dict[str, dict[str, int]]:
    """`count_{j,t} = Σ_m y_{j,t,m}` for every site j and instance type t with a positive sum."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for i, inst in enumerate(plan.instances):
        if inst.count < 0:
            raise FleetError(f"instances[{i}].count is {inst.count}, must be >= 0. To fix: regenerate the plan "
                             "with `isthmus plan SPEC --json`")
        if inst.count:
            counts[inst.site][inst.instance_type] += inst.count
    return {site: dict(sorted(types.items())) for site, types in sorted(counts.items())}


def cloud_regions_from_spec(spec: Spec) -> dict[str, str]:
    """Site name -> provider region for every Spec region that names its `cloud_region`."""
    return {r.name: r.cloud_region for r in spec.regions if r.cloud_region}


def _cluster_name(name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"isthmus-{slug}".rstrip("-")
    return slug[:24].rstrip("-")


def tfvars_from_plan(plan: Plan, cloud_regions: dict[str, str], *, edge_sites: set[str] | frozenset[str] = frozenset(),
                     head_site: str | None = None, cluster_name: str | None = None) -> dict[str, Any]:
    """Variables of `terraform/examples/multi-region` for `plan`.

    `cloud_regions` maps every cloud site of the plan to its provider region; sites in `edge_sites`
    are skipped (edge devices are not Terraform-managed).
    """
    if not plan.feasible:
        raise FleetError(f"plan of spec {plan.spec!r} is infeasible, so there is no fleet to provision. "
                         "To fix: relax the spec until `isthmus plan SPEC` finds a feasible plan")
    counts = {site: types for site, types in plan_counts(plan).items() if site not in edge_sites}
    if not counts:
        raise FleetError(f"plan of spec {plan.spec!r} has no cloud instances. To fix: nothing to provision; "
                         "check `instances` in the plan")
    missing = sorted(site for site in counts if site not in cloud_regions)
    if missing:
        raise FleetError(f"site(s) {missing} have no provider region. To fix: pass --spec SPEC whose regions set "
                         f"`cloud_region`, or --cloud-region {missing[0]}=<aws region>")
    bad = sorted(site for site in counts if not _NAME.match(site))
    if bad:
        raise FleetError(f"site name(s) {bad} cannot name Terraform resources. To fix: use 1-24 characters of "
                         "a-z, 0-9 and '-' starting with a letter in the spec's region names")
    by_region: dict[str, str] = {}
    for site in counts:
        other = by_region.setdefault(cloud_regions[site], site)
        if other != site:
            raise FleetError(f"sites {other!r} and {site!r} both map to provider region {cloud_regions[site]!r}. "
                             "To fix: give each site its own cloud_region")
    if head_site is None:
        head_site = min(counts, key=lambda s: (-sum(counts[s].values()), s))
    elif head_site not in counts:
        raise FleetError(f"--head-site {head_site!r} is not a cloud site of the plan. To fix: use one of "
                         f"{sorted(counts)}")
    name = cluster_name if cluster_name is not None else _cluster_name(plan.spec)
    if not _NAME.match(name):
        raise FleetError(f"cluster name {name!r} is not 1-24 characters of a-z, 0-9 and '-' starting with a letter. "
                         "To fix: pass e.g. --cluster-name isthmus-demo")
    return {
        "cluster_name": name,
        "head_site": head_site,
        "sites": {site: {"cloud_region": cloud_regions[site], "instance_counts": types}
                  for site, types in counts.items()},
    }


# ---------------------------------------------------------------- prices

class _InstancePrice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str = Field(description="Device kind (a key of the table's `devices`).")
    devices_per_instance: int = Field(1, ge=1)
    price_per_hour: dict[str, float] = Field(description="On-demand $/h per provider region.")


class PriceTable(BaseModel):
    """Instance types -> device kind and $/h per provider region, plus the device kinds' specs."""

    model_config = ConfigDict(extra="forbid")
    source: str = ""
    devices: dict[str, Device]
    instance_types: dict[str, _InstancePrice]

    def instance_type(self, name: str, cloud_region: str, count: int) -> InstanceType:
        """Spec instance type `name` in `cloud_region` with `max_count = count`."""
        entry = self.instance_types.get(name)
        if entry is None:
            raise FleetError(f"instance type {name!r} is not in the price table. To fix: add it to a --prices FILE "
                             f"(known: {sorted(self.instance_types)})")
        if cloud_region not in entry.price_per_hour:
            raise FleetError(f"instance type {name!r} has no price in {cloud_region!r}. To fix: add "
                             f"price_per_hour.{cloud_region} for it to a --prices FILE")
        return InstanceType(name=name, device=entry.device, price_per_hour=entry.price_per_hour[cloud_region],
                            max_count=count, devices_per_instance=entry.devices_per_instance)


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The package's price table (isthmus/platform/prices.json), or the one at `path`."""
    path = Path(path) if path is not None else _DEFAULT_PRICES
    try:
        table = PriceTable.model_validate_json(path.read_text())
    except OSError as err:
        raise FleetError(f"{path}: cannot read: {err.strerror}. To fix: check the --prices path") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FleetError(f"{path}: {where}: {first['msg']}. To fix: follow the layout of "
                         f"{_DEFAULT_PRICES.name} (devices, instance_types.<type>.device/price_per_hour)") from None
    for name, entry in table.instance_types.items():
        if entry.device not in table.devices:
            raise FleetError(f"{path}: instance_types.{name}.device {entry.device!r} is not under `devices`. "
                             "To fix: declare that device kind")
    return table


# ---------------------------------------------------------------- Terraform output -> Spec regions

class FleetSite(BaseModel):
    model_config = ConfigDict(extra="allow")
    cloud_region: str
    instance_counts: dict[str, int] = Field(default_factory=dict)


class Fleet(BaseModel):
    """The `isthmus_fleet` output of terraform/examples/multi-region."""

    model_config = ConfigDict(extra="allow")
    cluster_name: str
    head_site: str
    head_address: str | None = None
    sites: dict[str, FleetSite]


def _terraform() -> str:
    found = shutil.which("terraform") or (str(_TERRAFORM_FALLBACK) if _TERRAFORM_FALLBACK.exists() else None)
    if found is None:
        raise FleetError("terraform not found on PATH. To fix: install Terraform >= 1.9, or pass a file holding "
                         "the JSON of `terraform output -json` instead of the directory")
    return found


def terraform_output(path: str | Path, timeout_s: float = 120.0) -> dict[str, Any]:
    """`terraform output -json` of the applied directory `path`, or that JSON read from the file `path`."""
    path = Path(path)
    if path.is_file():
        text = path.read_text()
    elif path.is_dir():
        try:
            proc = subprocess.run([_terraform(), f"-chdir={path}", "output", "-json", "-no-color"],
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise FleetError(f"`terraform output -json` in {path} took over {timeout_s:.0f} s. To fix: check that "
                             "its state backend is reachable") from None
        if proc.returncode != 0:
            raise FleetError(f"`terraform output -json` in {path} failed: {proc.stderr.strip()[-400:]}. "
                             "To fix: run `terraform init` and `terraform apply` there first")
        text = proc.stdout
    else:
        raise FleetError(f"{path} does not exist. To fix: give the directory you applied "
                         "terraform/examples/multi-region in, or a file with its `terraform output -json`")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise FleetError(f"{path}: not JSON ({err.msg} at line {err.lineno}). To fix: save "
                         "`terraform output -json` unchanged") from None
    if not isinstance(data, dict):
        raise FleetError(f"{path}: expected the object printed by `terraform output -json`, "
                         f"got {type(data).__name__}")
    return data


def fleet_from_output(output: dict[str, Any]) -> Fleet:
    """The `isthmus_fleet` value of a `terraform output -json` document."""
    entry = output.get("isthmus_fleet")
    if not isinstance(entry, dict) or "value" not in entry:
        raise FleetError(f"no `isthmus_fleet` output (outputs: {sorted(output)}). To fix: apply "
                         "terraform/examples/multi-region, or add an `isthmus_fleet` output of the same shape")
    try:
        return Fleet.model_validate(entry["value"])
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FleetError(f"isthmus_fleet.{where}: {first['msg']}. To fix: keep the output's shape as in "
                         "terraform/examples/multi-region/outputs.tf") from None


def regions_from_output(output: dict[str, Any], prices: PriceTable) -> tuple[list[Region], dict[str, Device]]:
    """Spec regions of the applied fleet (sorted by site) and the device kinds their instance types use."""
    fleet = fleet_from_output(output)
    regions, devices = [], {}
    for site, info in sorted(fleet.sites.items()):
        types = [prices.instance_type(t, info.cloud_region, n) for t, n in sorted(info.instance_counts.items()) if n > 0]
        devices.update({t.device: prices.devices[t.device] for t in types})
        regions.append(Region(name=site, cloud_region=info.cloud_region, instance_types=types))
    return regions, dict(sorted(devices.items()))


def merge_regions(spec: Spec, regions: list[Region], devices: dict[str, Device]) -> Spec:
    """`spec` with the fleet's regions: a fleet site replaces the region of that name, a spec region the
    fleet lacks keeps its name and cloud_region but no instance types (nothing is provisioned there),
    and device kinds the spec lacks are added from the price table."""
    fleet = {r.name: r for r in regions}
    merged = [fleet.pop(r.name, Region(name=r.name, cloud_region=r.cloud_region)) for r in spec.regions]
    return spec.model_copy(update={"regions": merged + list(fleet.values()),
                                   "devices": {**devices, **spec.devices}})
