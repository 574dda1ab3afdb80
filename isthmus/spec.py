"""Spec v1 (YAML in) and Plan (JSON out): the contracts documented in docs/spec.md.

`load_spec(path)` parses and validates a spec; every problem comes back in one `SpecError`
whose lines name the YAML path of the bad field and say how to fix it. `dump_spec` writes one back.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from isthmus.platform.triton import _DTYPES  # the input dtypes Triton serves (stdlib + pydantic import only)

__all__ = [
    "Device", "InstanceType", "Region", "EdgeSite", "Link", "DataVersion", "Source", "SplitPoint",
    "Artifact", "ModelVersion", "Model", "Service", "Spec", "SpecError", "load_spec", "parse_spec", "dump_spec",
    "PlanRoute", "PlanInstance", "PlanService", "SolverInfo", "Plan", "load_plan",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def _non_negative(value: float, fix: str) -> float:
    if value < 0:
        raise ValueError(f"is {value}, must be >= 0. To fix: {fix}")
    return value


def _one_of(allowed: Iterable[str], what: str) -> AfterValidator:
    """A field validator: the value must be one of `allowed`; the error quotes it and lists them."""
    names = list(allowed)

    def check(value: str) -> str:
        if value not in names:
            raise ValueError(f"is {value!r}, not a supported {what}. To fix: use one of {names}")
        return value
    return AfterValidator(check)


class Device(_Strict):
    kind: Literal["cpu", "gpu"] = Field(description="Processor class of this device kind.")
    tflops: float = Field(gt=0, description="Peak dense FP32 TFLOPS (declared).")
    mem_gb: float = Field(gt=0, description="Device memory in GB.")
    mem_bw_gbps: float | None = Field(None, gt=0, description="Memory bandwidth in GB/s (roofline scaling).")


class InstanceType(_Strict):
    name: str = Field(description="Provider's instance type name, e.g. g4dn.xlarge.")
    device: str = Field(description="Device kind (a key of `devices`) this instance runs models on.")
    price_per_hour: float = Field(description="On-demand price in $/h.")
    max_count: int = Field(ge=0, description="Quota: most instances of this type in this region.")
    devices_per_instance: int = Field(1, ge=1, description="Devices of that kind in one instance.")

    @field_validator("price_per_hour")
    @classmethod
    def _price(cls, v: float) -> float:
        return _non_negative(v, "give the on-demand $/h price (0 for owned hardware)")


class Region(_Strict):
    name: str = Field(description="Isthmus's name for this cloud site.")
    cloud_region: str | None = Field(None, description="Provider region name, for Terraform.")
    instance_types: list[InstanceType] = Field(default_factory=list)


class EdgeSite(_Strict):
    name: str = Field(description="Name of the edge site (a place for links and sources).")
    device: str = Field(description="Device kind of the site's devices.")
    count: int = Field(1, ge=0, description="Number of devices at the site.")


class Link(_Strict):
    src: str = Field(description="A place: region, edge site or source location.")
    dst: str = Field(description="The other place (links are undirected).")
    rtt_ms: float = Field(description="Round-trip time in ms.")
    bandwidth_mbps: float = Field(description="Bandwidth in Mbit/s.")
    egress_per_gb: float = Field(0.0, description="$ per GB sent over this link.")

    @field_validator("rtt_ms", "egress_per_gb")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        return _non_negative(v, "use a value >= 0")

    @field_validator("bandwidth_mbps")
    @classmethod
    def _positive_bw(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"is {v}, must be > 0. To fix: give the link's bandwidth in Mbit/s, or remove the link")
        return v


class DataVersion(_Strict):
    name: str
    bytes: int = Field(description="Bytes of one request in this encoding.")
    accuracy_delta: float = Field(0.0, le=0.0, description="Accuracy change this encoding causes (<= 0).")

    @field_validator("bytes")
    @classmethod
    def _bytes(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"is {v}, must be > 0. To fix: give the encoded size of one request in bytes")
        return v


class Source(_Strict):
    name: str
    location: str = Field(description="A region or an edge site where requests originate.")
    rate_rps: float = Field(description="Mean request rate in requests/s.")
    data_versions: list[DataVersion] = Field(min_length=1)

    @field_validator("rate_rps")
    @classmethod
    def _rate(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"is {v}, must be > 0. To fix: give the source's request rate, or remove the source")
        return v


class SplitPoint(_Strict):
    """An edge/cloud split of a model version (filled by the partitioner for zoo models).

    Layers <= `split` (and exit branch `exit`, if any) run on the source's edge device; the rest
    runs at a cloud site. A split with no `tail_ms` is a device-only route (the exit ends there).
    """

    split: int = Field(ge=0, description="Index of the last layer run on the edge device.")
    exit: int | None = Field(None, ge=0, description="Early exit taken (None: the final classifier).")
    head_ms: dict[str, float] = Field(description="Head latency per edge device kind, ms.")
    activation_bytes: int = Field(ge=0, description="Bytes sent from device to cloud at this split.")
    tail_ms: dict[str, float] = Field(default_factory=dict, description="Tail latency per cloud device kind, ms.")
    accuracy: float | None = Field(None, ge=0, le=1, description="Accuracy at this exit (default: the version's).")


class Artifact(_Strict):
    """A TorchScript file of a model version: what Triton serves and `isthmus fill-latencies` measures."""

    path: str = Field(description="TorchScript file (torch.jit.save), relative to the spec file's folder or "
                                  "absolute; `load_spec` stores it absolute.")
    input_shape: list[int] = Field(description="Shape of one sample, without the batch dimension, e.g. [3, 224, 224].")
    dtype: Annotated[str, _one_of(_DTYPES, "input dtype")] = Field(
        "float32", description=f"Input dtype, one of {list(_DTYPES)}.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is empty. To fix: give the TorchScript file, e.g. path: model.pt (relative to the spec)")
        return v

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if not v or any(d < 1 for d in v):
            raise ValueError(f"is {v}, must be a non-empty list of sizes >= 1. To fix: give the shape of one sample "
                             "without the batch dimension, e.g. [3, 224, 224]")
        return v


class ModelVersion(_Strict):
    name: str
    accuracy: float = Field(ge=0, le=1)
    latency_ms: dict[str, float] = Field(default_factory=dict, description="Per-request latency per device kind.")
    capacity_rps: dict[str, float] = Field(default_factory=dict, description="Sustained rps of one instance.")
    splits: list[SplitPoint] = Field(default_factory=list, description="Edge/cloud split candidates.")
    artifact: Artifact | None = Field(None, description="TorchScript file of this version (measured by "
                                                        "`isthmus fill-latencies`, served by Triton).")

    @field_validator("latency_ms", "capacity_rps")
    @classmethod
    def _positive_values(cls, v: dict[str, float]) -> dict[str, float]:
        for device, value in v.items():
            if value <= 0:
                raise ValueError(f"{device}: {value} must be > 0. To fix: give a positive number or drop the device")
        return v

    def capacity(self, device: str) -> float:
        """Sustained rps of one instance on `device`: given, else 1000 / latency_ms."""
        return self.capacity_rps.get(device, 1000.0 / self.latency_ms[device])


class Model(_Strict):
    name: str
    zoo: str | None = Field(None, description="Zoo model name, so profiles and partitions are measured.")
    versions: list[ModelVersion] = Field(min_length=1)


class Service(_Strict):
    name: str
    source: str
    model: str
    slo_ms: float = Field(gt=0, description="Latency SLO per request, ms.")
    min_accuracy: float = Field(0.0, ge=0, le=1, description="Request-weighted accuracy floor.")
    slo_percentile: float = Field(99.0, gt=0, le=100, description="Share of requests (%) that must finish within "
                                  "slo_ms; measured live as the service's SLO attainment.")


class Spec(_Strict):
    name: str
    regions: list[Region] = Field(default_factory=list)
    edge_sites: list[EdgeSite] = Field(default_factory=list)
    devices: dict[str, Device] = Field(default_factory=dict)
    links: list[Link] = Field(default_factory=list)
    sources: list[Source] = Field(default_factory=list)
    models: list[Model] = Field(default_factory=list)
    services: list[Service] = Field(default_factory=list)

    def site_devices(self) -> dict[tuple[str, str], str]:
        """(site, instance type) → device kind; an edge site's instance type is its device kind."""
        out = {(r.name, t.name): t.device for r in self.regions for t in r.instance_types}
        out.update({(e.name, e.device): e.device for e in self.edge_sites})
        return out

    def place_names(self) -> list[str]:
        """Every place a link may name: regions, edge sites and source locations."""
        names = [r.name for r in self.regions] + [e.name for e in self.edge_sites]
        return names + [s.location for s in self.sources if s.location not in names]

    def source(self, name: str) -> Source:
        return next(s for s in self.sources if s.name == name)

    def service_rates_rps(self) -> list[float]:
        """λ_s: each service's request rate, its source's rate_rps."""
        rate = {s.name: s.rate_rps for s in self.sources}
        return [rate[s.source] for s in self.services]

    def model(self, name: str) -> Model:
        return next(m for m in self.models if m.name == name)

    def artifact_versions(self) -> list[tuple[str, Model, ModelVersion]]:
        """Every model version with an `artifact`: (its YAML path, e.g. models[0].versions[1], model, version)."""
        return [(f"models[{i}].versions[{k}]", m, v) for i, m in enumerate(self.models)
                for k, v in enumerate(m.versions) if v.artifact is not None]


class SpecError(ValueError):
    """A spec that cannot be planned. `problems` holds (yaml_path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]], origin: str = "spec"):
        self.problems = problems
        self.origin = origin
        lines = [f"{origin}: {len(problems)} problem(s)"] + [f"  {path}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


def _yaml_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _pydantic_problems(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field. To fix: remove it or check its spelling against docs/spec.md"
        elif e["type"] == "missing":
            msg = "required field is missing. To fix: add it"
        elif "input" in e and "is " not in msg:
            msg = f"{msg} (got {e['input']!r})"
        problems.append((_yaml_path(e["loc"]), msg))
    return problems


def _duplicates(items: list[Any], path: str) -> list[tuple[str, str]]:
    seen: dict[str, int] = {}
    problems = []
    for i, item in enumerate(items):
        if item.name in seen:
            problems.append((f"{path}[{i}].name", f"duplicate name {item.name!r} (also at {path}[{seen[item.name]}]). "
                             "To fix: give every entry a unique name"))
        seen.setdefault(item.name, i)
    return problems


def _unknown(kind: str, value: str, known: list[str]) -> str:
    return f"unknown {kind} {value!r}. To fix: use one of {sorted(set(known))}"


def _reference_problems(spec: Spec, allow_unmeasured: bool = False) -> list[tuple[str, str]]:
    """Cross-reference checks pydantic cannot do field by field (`allow_unmeasured`: an artifact version
    may lack latency_ms, as `fill-latencies` reads it before measuring)."""
    p: list[tuple[str, str]] = []
    for path, items in [("regions", spec.regions), ("edge_sites", spec.edge_sites), ("sources", spec.sources),
                        ("models", spec.models), ("services", spec.services)]:
        p += _duplicates(items, path)
    sites = [r.name for r in spec.regions] + [e.name for e in spec.edge_sites]
    for name in set(r.name for r in spec.regions) & set(e.name for e in spec.edge_sites):
        p.append(("edge_sites", f"{name!r} names both a region and an edge site. To fix: rename one"))
    devices = list(spec.devices)
    for i, region in enumerate(spec.regions):
        p += _duplicates(region.instance_types, f"regions[{i}].instance_types")
        for k, it in enumerate(region.instance_types):
            if it.device not in spec.devices:
                p.append((f"regions[{i}].instance_types[{k}].device", _unknown("device kind", it.device, devices)
                          + " or declare it under `devices`"))
    for i, site in enumerate(spec.edge_sites):
        if site.device not in spec.devices:
            p.append((f"edge_sites[{i}].device", _unknown("device kind", site.device, devices)
                      + " or declare it under `devices`"))
    places = spec.place_names()
    for i, link in enumerate(spec.links):
        for end in ("src", "dst"):
            if getattr(link, end) not in places:
                p.append((f"links[{i}].{end}", _unknown("place", getattr(link, end), places)))
        if link.src == link.dst:
            p.append((f"links[{i}]", f"links {link.src!r} to itself. To fix: remove it (a place reaches itself "
                      "with 0 ms and unlimited bandwidth)"))
    for i, source in enumerate(spec.sources):
        p += _duplicates(source.data_versions, f"sources[{i}].data_versions")
        if source.location not in sites and not any(source.location in (l.src, l.dst) for l in spec.links):
            p.append((f"sources[{i}].location", f"{source.location!r} is neither a region, an edge site nor the end "
                      f"of any link. To fix: use one of {sorted(sites)} or add a link from it"))
    for i, model in enumerate(spec.models):
        p += _duplicates(model.versions, f"models[{i}].versions")
        for k, version in enumerate(model.versions):
            path = f"models[{i}].versions[{k}]"
            if not version.latency_ms and not model.zoo and version.artifact is None:
                p.append((f"{path}.latency_ms", "no latency for any device, so this version cannot run anywhere. "
                          "To fix: add latency_ms: {<device kind>: <ms>} or set the model's `zoo` to profile it"))
            elif not version.latency_ms and not model.zoo and not allow_unmeasured:
                p.append((f"{path}.latency_ms", "no latency for any device, so this version cannot run anywhere "
                          "yet. To fix: run `isthmus fill-latencies SPEC -o filled.yaml` to measure it"))
            for field in ("latency_ms", "capacity_rps"):
                for device in getattr(version, field):
                    if device not in spec.devices:
                        p.append((f"{path}.{field}.{device}", _unknown("device kind", device, devices)))
            for device in version.capacity_rps:
                if device not in version.latency_ms:
                    p.append((f"{path}.capacity_rps.{device}", f"capacity without latency_ms for {device!r}. "
                              "To fix: add latency_ms for it too"))
    source_names = [s.name for s in spec.sources]
    model_names = [m.name for m in spec.models]
    for i, service in enumerate(spec.services):
        if service.source not in source_names:
            p.append((f"services[{i}].source", _unknown("source", service.source, source_names)))
        if service.model not in model_names:
            p.append((f"services[{i}].model", _unknown("model", service.model, model_names)))
    return p


def parse_spec(data: Any, origin: str = "spec", *, base_dir: str | Path | None = None,
               allow_unmeasured: bool = False) -> Spec:
    """Validate a parsed YAML/JSON document as a Spec; raise SpecError listing every problem.

    `base_dir`: folder that relative artifact paths are resolved against (stored absolute); None leaves
    them as given. `allow_unmeasured`: accept artifact versions with no latency_ms yet (to measure them)."""
    if not isinstance(data, dict):
        raise SpecError([("(top level)", f"expected a mapping, got {type(data).__name__}. "
                          "To fix: start from examples/geo-3-regions.yaml")], origin)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_pydantic_problems(err), origin) from None
    problems = _reference_problems(spec, allow_unmeasured)
    if problems:
        raise SpecError(problems, origin)
    if base_dir is not None:
        for _, _, version in spec.artifact_versions():
            version.artifact.path = os.path.normpath(os.path.join(os.path.abspath(base_dir), version.artifact.path))
    return spec


def load_spec(path: str | Path, *, allow_unmeasured: bool = False) -> Spec:
    """Read and validate a spec YAML file; relative artifact paths are resolved against its folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError([("(file)", f"cannot read: {err.strerror}. To fix: check the path")], str(path)) from None
    except UnicodeDecodeError as err:  # found by fuzzing (tests/e2e/test_fuzz.py)
        raise SpecError([("(file)", f"not UTF-8 text (byte {err.start}). To fix: save the file as UTF-8")],
                        str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise SpecError([(where, f"not valid YAML: {getattr(err, 'problem', err)}")], str(path)) from None
    except (ValueError, TypeError, AttributeError, RecursionError) as err:  # a bad !!tag / date / huge int / nesting
        raise SpecError([("(file)", f"not valid YAML: {type(err).__name__}: {str(err)[:120]}. "
                          "To fix: quote the value, remove the tag or flatten the nesting")], str(path)) from None
    return parse_spec(data, str(path), base_dir=path.parent, allow_unmeasured=allow_unmeasured)


def dump_spec(spec: Spec, base_dir: str | Path | None = None) -> str:
    """The spec as YAML; with `base_dir` (the folder the YAML is written to) artifact paths are written
    relative to it where possible, so `load_spec` reads the file back from any working directory."""
    out = spec.model_copy(deep=True)
    if base_dir is not None:
        for _, _, version in out.artifact_versions():
            try:
                version.artifact.path = os.path.relpath(version.artifact.path, os.path.abspath(base_dir))
            except ValueError:  # on another drive (Windows): keep it absolute
                version.artifact.path = os.path.abspath(version.artifact.path)
    return yaml.safe_dump(out.model_dump(exclude_none=True), sort_keys=False)


# ---------------------------------------------------------------- Plan

class PlanRoute(_Strict):
    service: str
    fraction: float
    data_version: str
    model_version: str
    site: str
    instance_type: str | None
    split: int | None = None
    exit: int | None = None
    latency_ms: float
    accuracy: float


class PlanInstance(_Strict):
    site: str
    instance_type: str
    model_version: str = Field(description="`<model>/<version>`")
    count: int


class PlanService(_Strict):
    name: str
    latency_ms_max: float
    accuracy: float


class SolverInfo(_Strict):
    method: str
    status: str
    seconds: float
    build_s: float | None = None
    compile_s: float | None = None
    solve_s: float | None = None
    routes: int | None = None


class Plan(_Strict):
    spec: str
    feasible: bool
    cost_per_hour: float
    compute_cost_per_hour: float
    egress_cost_per_hour: float
    lower_bound_per_hour: float
    solver: SolverInfo
    routes: list[PlanRoute]
    instances: list[PlanInstance]
    services: list[PlanService]


_SPEC_KEYS = {"regions", "edge_sites", "devices", "links", "sources", "models", "services"}


def load_plan(path: str | Path) -> Plan:
    """Read a Plan JSON file (as written by `isthmus plan SPEC --json`). A spec given instead (YAML, or a
    mapping with a spec's sections and no routes) is named as such, with the command that makes its plan."""
    import json

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SpecError([("(file)", f"cannot read: {err.strerror}. To fix: check the path")], str(path)) from None
    try:
        data = json.loads(raw)
        error = None
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError
        data, error = _yaml_or_none(raw), err
    if isinstance(data, dict) and "routes" not in data and _SPEC_KEYS & data.keys():
        raise SpecError([("(file)", "this looks like a spec, not a plan. To fix: isthmus plan "
                          f"{path} --json > plan.json, then pass plan.json (isthmus serve-config plan.json --spec "
                          f"{path})")], str(path))
    if error is not None:
        where = f"line {error.lineno}: {error.msg}" if isinstance(error, json.JSONDecodeError) else type(error).__name__
        raise SpecError([("(file)", f"not JSON ({where}). To fix: pass the plan JSON that `isthmus plan SPEC --json "
                          "> plan.json` writes")], str(path))
    try:
        return Plan.model_validate(data)
    except ValidationError as err:
        raise SpecError(_pydantic_problems(err), str(path)) from None


def _yaml_or_none(raw: bytes) -> Any:
    try:
        return yaml.safe_load(raw)
    except Exception:  # noqa: BLE001 - not YAML either (or a YAML bomb of tags): only used to recognise a spec
        return None
