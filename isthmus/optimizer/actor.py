"""OptimizerActor: the central, named, detached Ray actor that holds the Spec and the Plan and re-plans on drift.

Telemetry (measured source rates, link bandwidths, version latencies, prices) accumulates until
its drift from the numbers the current plan was made with passes `drift_threshold`:

    drift = max over reported keys k of |v_k − v_k⁰| / v_k⁰      (v⁰: the current spec's value;
                                                                  a key the spec lacks counts as ∞)

Then `GeoPlanner.replan` re-solves its parameterised problem with every pending value, and
`serve_app.rollout` moves the running Serve app to the new plan without dropping requests
(new site apps first, then the ingress's weights in place, then old site apps retire).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from isthmus.spec import Plan, Spec

__all__ = ["OPTIMIZER_NAME", "OPTIMIZER_NAMESPACE", "OptimizerActor", "start_optimizer", "telemetry_drift"]

OPTIMIZER_NAME = "isthmus-optimizer"
OPTIMIZER_NAMESPACE = "isthmus"
_KINDS = ("rates_rps", "bandwidth_mbps", "latency_ms", "price_per_hour")


def _relative(new: float, old: float | None) -> float:
    if old is None:
        return float("inf")
    return abs(float(new) - old) / old if old > 0 else (0.0 if new == old else float("inf"))


def telemetry_drift(spec: Spec, telemetry: dict[str, dict]) -> tuple[float, str]:
    """Largest relative change of `telemetry` against `spec`, and the key that has it ("" when none)."""
    links = {frozenset((l.src, l.dst)): l.bandwidth_mbps for l in spec.links}
    versions = {(m.name, v.name): v for m in spec.models for v in m.versions}
    prices = {(r.name, t.name): t.price_per_hour for r in spec.regions for t in r.instance_types}
    rates = {s.name: s.rate_rps for s in spec.sources}
    worst, where = 0.0, ""
    for kind in _KINDS:
        for key, value in (telemetry.get(kind) or {}).items():
            if kind == "rates_rps":
                old = rates.get(key)
            elif kind == "bandwidth_mbps":
                old = links.get(frozenset(key))
            elif kind == "latency_ms":
                version = versions.get(tuple(key[:2]))
                old = version.latency_ms.get(key[2]) if version is not None else None
            else:
                old = prices.get(tuple(key))
            drift = _relative(value, old)
            if drift > worst or not where:
                worst, where = max(worst, drift), f"{kind}[{key}]"
    return worst, where


def _merge(pending: dict[str, dict], telemetry: dict[str, Any]) -> None:
    unknown = sorted(set(telemetry) - set(_KINDS))
    if unknown:
        raise ValueError(f"unknown telemetry kinds {unknown}. To fix: use {list(_KINDS)}")
    for kind, values in telemetry.items():
        for key, value in (values or {}).items():
            pending.setdefault(kind, {})[tuple(key) if isinstance(key, list) else key] = float(value)


def _routing_signature(plan: Plan) -> list[tuple]:
    return sorted((r.service, r.site, r.model_version, r.split, r.exit, round(r.fraction, 6))
                  for r in plan.routes if r.fraction > 0)


@contextlib.contextmanager
def _plain_errors():
    """Re-raise SpecError (InfeasibleSpec) as ValueError with the same text: Ray cannot rebuild SpecError's
    (problems, origin) constructor on the caller's side and would hide the message."""
    from isthmus.spec import SpecError

    try:
        yield
    except SpecError as err:
        raise ValueError(str(err)) from None


class _OptimizerActor:
    """Holds Spec and Plan, takes telemetry, re-plans past a drift threshold and rolls the plan out."""

    def __init__(self, spec: dict, plan: dict | None = None, *, serve_options: dict | None = None,
                 drift_threshold: float = 0.2, method: str = "auto", time_limit_s: float = 30.0):
        from isthmus.optimizer import GeoPlanner
        from isthmus.spec import parse_spec

        if drift_threshold < 0:
            raise ValueError(f"drift_threshold is {drift_threshold}. To fix: give a relative change >= 0, e.g. 0.2")
        with _plain_errors():
            self._planner = GeoPlanner(parse_spec(spec), method=method, time_limit_s=time_limit_s)
            self._plan = Plan.model_validate(plan) if plan is not None else self._planner.solve()
        self._serve_options = dict(serve_options or {})
        self._threshold = drift_threshold
        self._pending: dict[str, dict] = {}
        self._version = 0
        self._config: dict | None = None
        self._lock = threading.Lock()
        self._history: list[dict] = []

    # ---------------------------------------------------------------- state
    def plan(self) -> dict:
        return self._plan.model_dump(mode="json")

    def spec(self) -> dict:
        return self._planner.spec.model_dump(mode="json")

    def plan_version(self) -> int:
        return self._version

    def serve_config(self) -> dict | None:
        """The Serve config last deployed (None before `deploy`)."""
        return self._config

    def history(self) -> list[dict]:
        """One entry per report: drift, whether it re-planned, seconds of re-plan and rollout steps."""
        return list(self._history)

    # ---------------------------------------------------------------- actions
    def _build_config(self) -> dict:
        from isthmus.platform.serve_app import serve_config

        return serve_config(self._plan, self._planner.spec, plan_version=self._version, **self._serve_options)

    def deploy(self) -> dict[str, float]:
        """Deploy the current plan as the Serve app (first time) or re-apply it."""
        from isthmus.platform.serve_app import rollout

        with self._lock:
            config = self._build_config()
            seconds = rollout(self._config, config)
            self._config = config
            return seconds

    def report(self, telemetry: dict[str, Any], force: bool = False) -> dict[str, Any]:
        """Take telemetry ({kind: {key: value}}, kinds as in GeoPlanner.replan); re-plan and roll out on drift.

        Returns {drift, key, replanned, changed, plan_version, replan_s, rollout: {step: s}}.
        """
        from isthmus.platform.serve_app import rollout

        with self._lock:
            start = time.monotonic()
            pending = {kind: dict(values) for kind, values in self._pending.items()}
            _merge(pending, telemetry)
            drift, key = telemetry_drift(self._planner.spec, pending)
            entry: dict[str, Any] = {"drift": drift, "key": key, "replanned": False, "changed": False,
                                     "plan_version": self._version, "replan_s": 0.0, "rollout": {}}
            self._pending = pending
            if force or drift > self._threshold:
                old = self._plan
                try:
                    with _plain_errors():
                        self._plan = self._planner.replan(**pending)
                finally:  # bad telemetry (an unknown name) must not poison the next reports
                    self._pending = {}
                entry.update(replanned=True, replan_s=time.monotonic() - start,
                             resolve=getattr(self._planner, "last_resolve_kind", ""),
                             cost_per_hour=self._plan.cost_per_hour)
                if _routing_signature(old) != _routing_signature(self._plan):
                    self._version += 1
                    entry.update(changed=True, plan_version=self._version)
                    if self._config is not None:
                        config = self._build_config()
                        entry["rollout"] = rollout(self._config, config)
                        self._config = config
            entry["seconds"] = time.monotonic() - start
            self._history.append(entry)
            return entry


def OptimizerActor():  # noqa: N802 - returns the Ray actor class, built lazily so importing needs no Ray
    """The Ray actor class (num_cpus 0, threaded so state reads never wait behind a rollout)."""
    import ray

    return ray.remote(num_cpus=0, max_concurrency=4)(_OptimizerActor)


def start_optimizer(spec: Spec, plan: Plan | None = None, *, name: str = OPTIMIZER_NAME,
                    namespace: str = OPTIMIZER_NAMESPACE, resources: dict[str, float] | None = None,
                    **kwargs: Any):
    """Create (or get, if it exists) the named, detached OptimizerActor; kwargs go to its constructor."""
    actor_class = OptimizerActor()
    return actor_class.options(name=name, namespace=namespace, lifetime="detached", get_if_exists=True,
                               resources=resources or {}).remote(
        spec.model_dump(mode="json"), plan.model_dump(mode="json") if plan is not None else None, **kwargs)
