"""One model, one (edge device, server) pair: every strategy's decision for a link, from prebuilt tables.

Strategies: `device_only`, `cloud_only` (send the request), `neurosurgeon` (fastest split of the
full model; on a DAG, splits at prefixes of the topological order), `edgent` (chain models, with
an SLO: most accurate exit that meets it), `dads` (DAGs: exact min-cut over every closed device set).
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

from isthmus.partition.chain import ChainDecision
from isthmus.partition.graph import GraphPartition, partition_graph
from isthmus.partition.profiles import chain_table, dag_graph, device_profiles, is_chain, topological_table

if TYPE_CHECKING:
    from isthmus.profiler import ModelProfile
    from isthmus.spec import Device

__all__ = ["ModelPartitioner", "compare_strategies"]


def _row(decision: ChainDecision | GraphPartition) -> dict[str, Any]:
    if isinstance(decision, ChainDecision):
        return decision.to_dict()
    placement = ("device-only" if not decision.server_nodes else
                 "cloud-only" if not decision.device_nodes else "split")
    return {"exit": None, "split": len(decision.device_nodes) - 1, "placement": placement,
            "activation_bytes": decision.cut_bytes, "latency_ms": decision.latency_ms,
            "head_ms": decision.device_ms, "transfer_ms": decision.transfer_ms, "rtt_ms": decision.rtt_ms,
            "tail_ms": decision.server_ms, "accuracy": None, "met_slo": None}


class ModelPartitioner:
    """Tables of one profiled model on an (edge, server) pair; each method is one decision."""

    def __init__(self, local: ModelProfile, edge: Device, server: Device):
        self.device_profile, self.server_profile = device_profiles(local, edge, server)
        self.chain = is_chain(local)
        if self.chain:
            self.table = chain_table(self.device_profile, self.server_profile)
            self.graph = None
        else:
            self.table = topological_table(self.device_profile, self.server_profile)
            self.graph = dag_graph(self.device_profile, self.server_profile)
        self.has_exits = len(self.table.paths) > 1

    def decide(self, strategy: str, bandwidth_mbps: float, rtt_ms: float = 0.0,
               slo_ms: float | None = None) -> ChainDecision | GraphPartition:
        if strategy == "device_only":
            return self.table.device_only()
        if strategy == "cloud_only":
            return self.table.cloud_only(bandwidth_mbps, rtt_ms)
        if strategy == "neurosurgeon":
            return self.table.neurosurgeon(bandwidth_mbps, rtt_ms)
        if strategy == "edgent" and self.chain and slo_ms is not None:
            return self.table.edgent(bandwidth_mbps, slo_ms, rtt_ms)
        if strategy == "dads" and self.graph is not None:
            return partition_graph(self.graph, bandwidth_mbps, rtt_ms)
        raise ValueError(f"strategy {strategy!r} does not apply here. To fix: use one of {self.strategies(slo_ms)}")

    def strategies(self, slo_ms: float | None = None) -> list[str]:
        names = ["device_only", "cloud_only", "neurosurgeon"]
        if self.chain and slo_ms is not None:
            names.append("edgent")
        if self.graph is not None:
            names.append("dads")
        return names

    def chosen(self, slo_ms: float | None) -> str:
        """Isthmus's pick: Edgent for chains given an SLO, DADS for DAGs, else Neurosurgeon."""
        return "dads" if self.graph is not None else ("edgent" if slo_ms is not None else "neurosurgeon")

    def decision_ms(self, strategy: str, bandwidth_mbps: float, rtt_ms: float, slo_ms: float | None,
                    repeats: int = 50) -> float:
        """Median wall time of one decision (tables prebuilt), ms; the median resists a shared CPU's spikes."""
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.decide(strategy, bandwidth_mbps, rtt_ms, slo_ms)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3


def compare_strategies(local: ModelProfile, edge: Device, server: Device, bandwidth_mbps: float,
                       rtt_ms: float = 0.0, slo_ms: float | None = None) -> dict[str, Any]:
    """Every applicable strategy's decision plus the chosen one (JSON-ready)."""
    p = ModelPartitioner(local, edge, server)
    rows = {}
    for name in p.strategies(slo_ms):
        row = _row(p.decide(name, bandwidth_mbps, rtt_ms, slo_ms))
        if slo_ms is not None:
            row["met_slo"] = row["latency_ms"] <= slo_ms
        rows[name] = row
    chosen = p.chosen(slo_ms)
    out: dict[str, Any] = {"chosen": chosen, "latency_ms": rows[chosen]["latency_ms"],
                           "exit": rows[chosen]["exit"], "split": rows[chosen]["split"],
                           "accuracy": rows[chosen]["accuracy"], "met_slo": rows[chosen]["met_slo"],
                           "decision_ms": p.decision_ms(chosen, bandwidth_mbps, rtt_ms, slo_ms),
                           "strategies": rows}
    if p.graph is not None:
        best = partition_graph(p.graph, bandwidth_mbps, rtt_ms)
        out |= {"device_nodes": best.device_nodes, "cut": best.cut}
    return out
