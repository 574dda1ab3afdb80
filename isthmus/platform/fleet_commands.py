"""CLI: `isthmus fleet tfvars PLAN`, `isthmus fleet from-terraform DIR`."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from isthmus.platform.certs_commands import _fail  # the CLI's one error printer (exit code 2)

__all__ = ["register"]

_fleet = typer.Typer(help="Provision the plan's cloud fleet with Terraform and read it back.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(_fleet, name="fleet")


def _write(text: str, out: Optional[str]) -> None:
    if out is None:
        typer.echo(text)
        return
    try:
        with open(out, "w") as f:
            f.write(text + "\n")
    except OSError as err:
        _fail(f"--out {out}: cannot write: {err.strerror}. To fix: check the path")


def _cloud_region_options(pairs: List[str]) -> dict[str, str]:
    from isthmus.platform.fleet import FleetError

    mapping = {}
    for pair in pairs:
        site, sep, region = pair.partition("=")
        if not sep or not site or not region:
            raise FleetError(f"--cloud-region {pair!r} is not SITE=REGION. To fix: e.g. --cloud-region us-east=us-east-1")
        mapping[site] = region
    return mapping


@_fleet.command("tfvars")
def tfvars(plan: str = typer.Argument(..., help="Plan JSON (`isthmus plan SPEC --json`)."),
           spec: Optional[str] = typer.Option(None, "--spec", help="Spec of the plan: provider regions from "
                                              "`regions[].cloud_region`; its edge sites are skipped."),
           cloud_region: Optional[List[str]] = typer.Option(None, "--cloud-region", metavar="SITE=REGION",
                                                            help="Provider region of a site (repeatable; "
                                                            "overrides --spec)."),
           head_site: Optional[str] = typer.Option(None, help="Site that runs the Ray head (default: the site "
                                                   "with the most instances)."),
           cluster_name: Optional[str] = typer.Option(None, help="Cluster name (default: from the spec name)."),
           out: Optional[str] = typer.Option(None, "--out", "-o", help="Write here instead of stdout, e.g. "
                                             "plan.auto.tfvars.json.")) -> None:
    """Instance counts per site and instance type from a Plan, as Terraform variables (JSON) for
    terraform/examples/multi-region: `isthmus fleet tfvars plan.json --spec S.yaml > plan.auto.tfvars.json`."""
    from isthmus.platform.fleet import FleetError, cloud_regions_from_spec, tfvars_from_plan
    from isthmus.spec import SpecError, load_plan, load_spec

    try:
        loaded = load_plan(plan)
        regions, edge = {}, set()
        if spec is not None:
            loaded_spec = load_spec(spec)
            regions = cloud_regions_from_spec(loaded_spec)
            edge = {e.name for e in loaded_spec.edge_sites}
        regions.update(_cloud_region_options(cloud_region or []))
        variables = tfvars_from_plan(loaded, regions, edge_sites=edge, head_site=head_site,
                                     cluster_name=cluster_name)
    except (SpecError, FleetError) as err:
        _fail(str(err))
        return
    _write(json.dumps(variables, indent=2), out)


@_fleet.command("from-terraform")
def from_terraform(directory: str = typer.Argument(..., help="Directory where terraform/examples/multi-region "
                                                   "was applied, or a file with its `terraform output -json`."),
                   prices: Optional[str] = typer.Option(None, "--prices", help="Price table JSON (default: the "
                                                        "package's isthmus/platform/prices.json)."),
                   spec: Optional[str] = typer.Option(None, "--spec", help="Print this spec with its regions "
                                                      "replaced by the fleet (validated)."),
                   as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML."),
                   out: Optional[str] = typer.Option(None, "--out", "-o", help="Write here instead of stdout.")) -> None:
    """Read the applied fleet (`terraform output -json`) into a Spec's `regions` (and the `devices` they
    use): max_count = instances applied, price_per_hour from the price table."""
    import yaml

    from isthmus.platform.fleet import FleetError, load_prices, merge_regions, regions_from_output, terraform_output
    from isthmus.spec import SpecError, load_spec, parse_spec

    try:
        regions, devices = regions_from_output(terraform_output(directory), load_prices(prices))
        if spec is not None:
            merged = merge_regions(load_spec(spec), regions, devices)
            doc = parse_spec(merged.model_dump(exclude_none=True), f"{spec} with the fleet's regions")
            data = doc.model_dump(exclude_none=True)
        else:
            data = {"regions": [r.model_dump(exclude_none=True) for r in regions],
                    "devices": {k: d.model_dump(exclude_none=True) for k, d in devices.items()}}
    except (SpecError, FleetError) as err:
        _fail(str(err))
        return
    _write(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False).rstrip(), out)
