"""DAG partitioning between a device and a server (DADS): exact min-cut via max-flow.

Input (shared/DESIGN.md "Partition input"): nodes with `device_ms`, `server_ms`, `out_bytes`,
edges producer -> consumer, and `input_bytes` (the request, produced on the device).
A partition puts a predecessor-closed device set D on the device and the rest on the server:

    latency(D) = Σ_{v∈D} device_ms(v) + Σ_{v∉D} server_ms(v)
               + Σ_{u∈D, some consumer ∉ D} 8·out_bytes(u)/bw  (+ 8·input_bytes/bw if an entry node ∉ D)

Construction (source s = device, sink t = server; S side = D):
s→v capacity server_ms(v) (cut when v ∉ D), v→t capacity device_ms(v) (cut when v ∈ D),
u→aux_u capacity 8·out_bytes(u)/bw and aux_u→w infinite for every consumer w (a tensor is cut once
however many consumers it has), w→u infinite for every edge u→w (no edge goes server→device, so D
is closed under predecessors). The input is a node pinned to s with the same aux construction.
Every s-t cut of finite capacity is a closed device set with capacity = latency(D), so a minimum
cut is an optimal partition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from isthmus.spec import SpecError, _pydantic_problems

__all__ = ["GraphNode", "PartitionGraph", "GraphError", "GraphPartition", "INPUT", "load_graph", "parse_graph",
           "partition_graph", "graph_latency_ms", "transfer_ms"]

INPUT = "<input>"
"""Name used in `cut` for the request tensor (produced on the device)."""


def transfer_ms(n_bytes: float, bandwidth_mbps: float) -> float:
    """Time to send `n_bytes` over a link: 8·bytes / (bandwidth_mbps·1e6) s = 8·bytes / (1000·bandwidth_mbps) ms."""
    return 8.0 * n_bytes / (1000.0 * bandwidth_mbps)


class GraphError(SpecError):
    """A partition graph that cannot be partitioned; `problems` holds (json_path, message) pairs."""


class GraphNode(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Unique layer name.")
    device_ms: float = Field(description="Latency of this layer on the device, ms.")
    server_ms: float = Field(description="Latency of this layer on the server, ms.")
    out_bytes: int = Field(description="Bytes of this layer's output tensor.")

    @field_validator("device_ms", "server_ms", "out_bytes")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"is {v}, must be >= 0. To fix: give a measured latency (ms) or size (bytes) >= 0")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or v == INPUT:
            raise ValueError(f"name {v!r} is reserved or empty. To fix: rename the node")
        return v


class PartitionGraph(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_bytes: int = Field(0, description="Bytes of the request sent if an entry node runs on the server.")
    nodes: list[GraphNode] = Field(min_length=1)
    edges: list[tuple[str, str]] = Field(default_factory=list, description="Producer -> consumer pairs.")

    @field_validator("input_bytes")
    @classmethod
    def _input(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"is {v}, must be >= 0. To fix: give the request size in bytes")
        return v

    def names(self) -> list[str]:
        return [n.name for n in self.nodes]


def _structure_problems(graph: PartitionGraph) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    first: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        if node.name in first:
            problems.append((f"nodes[{i}].name", f"duplicate name {node.name!r} (also nodes[{first[node.name]}]). "
                             "To fix: give every node a unique name"))
        first.setdefault(node.name, i)
    for i, (u, v) in enumerate(graph.edges):
        for end, name in (("0", u), ("1", v)):
            if name not in first:
                problems.append((f"edges[{i}][{end}]", f"unknown node {name!r}. To fix: use a name listed in "
                                 f"`nodes` (e.g. {sorted(first)[:5]}) or add the node"))
        if u == v:
            problems.append((f"edges[{i}]", f"self-loop on {u!r}. To fix: remove the edge"))
    if not problems:
        cycle = _find_cycle(list(first), graph.edges)
        if cycle:
            problems.append(("edges", "cycle " + " -> ".join(cycle + [cycle[0]]) + ". To fix: a partition graph "
                             "must be a DAG; remove one of these edges"))
    return problems


def _find_cycle(names: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """A cycle as a node list, or [] if the graph is acyclic (iterative DFS)."""
    succ: dict[str, list[str]] = {n: [] for n in names}
    for u, v in edges:
        succ[u].append(v)
    state = dict.fromkeys(names, 0)  # 0 new, 1 on stack, 2 done
    for root in names:
        if state[root]:
            continue
        stack = [(root, iter(succ[root]))]
        path = [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state[nxt] == 1:
                return path[path.index(nxt):]
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(succ[nxt])))
                path.append(nxt)
    return []


def parse_graph(data: Any, origin: str = "graph") -> PartitionGraph:
    """Validate a parsed graph JSON document; raise GraphError naming every bad field."""
    if not isinstance(data, dict):
        raise GraphError([("(top level)", f"expected an object, got {type(data).__name__}. To fix: give "
                           '{"input_bytes": N, "nodes": [...], "edges": [...]}')], origin)
    try:
        graph = PartitionGraph.model_validate(data)
    except ValidationError as err:
        raise GraphError(_pydantic_problems(err), origin) from None
    problems = _structure_problems(graph)
    if problems:
        raise GraphError(problems, origin)
    return graph


def load_graph(path: str | Path) -> PartitionGraph:
    """Read and validate a partition graph JSON file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise GraphError([("(file)", f"cannot read: {err.strerror}. To fix: check the path")], str(path)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise GraphError([(f"line {err.lineno}, column {err.colno}", f"not valid JSON: {err.msg}")],
                         str(path)) from None
    return parse_graph(data, str(path))


@dataclass(frozen=True)
class GraphPartition:
    """An optimal partition: device set, crossing tensors and the latency breakdown (ms)."""

    device_nodes: list[str]
    server_nodes: list[str]
    cut: list[str] = field(default_factory=list)  # tensors sent device -> server (node names or INPUT)
    cut_bytes: int = 0
    device_ms: float = 0.0
    transfer_ms: float = 0.0
    rtt_ms: float = 0.0
    server_ms: float = 0.0

    @property
    def latency_ms(self) -> float:
        return self.device_ms + self.transfer_ms + self.rtt_ms + self.server_ms

    def to_dict(self) -> dict[str, Any]:
        return {"device_nodes": self.device_nodes, "server_nodes": self.server_nodes, "cut": self.cut,
                "cut_bytes": self.cut_bytes, "latency_ms": self.latency_ms, "device_ms": self.device_ms,
                "transfer_ms": self.transfer_ms, "rtt_ms": self.rtt_ms, "server_ms": self.server_ms}


def _check_bandwidth(bandwidth_mbps: float, rtt_ms: float = 0.0) -> None:
    if not bandwidth_mbps > 0:
        raise ValueError(f"bandwidth_mbps is {bandwidth_mbps}, must be > 0. To fix: give the link's Mbit/s")
    if rtt_ms < 0:
        raise ValueError(f"rtt_ms is {rtt_ms}, must be >= 0. To fix: give the link's round-trip time in ms")


def _evaluate(graph: PartitionGraph, device: set[str], bandwidth_mbps: float, rtt_ms: float) -> GraphPartition:
    """Latency breakdown of a closed device set (the formula in the module docstring)."""
    nodes = {n.name: n for n in graph.nodes}
    has_pred = {v for _, v in graph.edges}
    crossing = {u for u, v in graph.edges if u in device and v not in device}
    cut = [n.name for n in graph.nodes if n.name in crossing]
    cut_bytes = sum(nodes[u].out_bytes for u in cut)
    if any(n.name not in device and n.name not in has_pred for n in graph.nodes):
        cut.insert(0, INPUT)
        cut_bytes += graph.input_bytes
    return GraphPartition(
        device_nodes=[n.name for n in graph.nodes if n.name in device],
        server_nodes=[n.name for n in graph.nodes if n.name not in device],
        cut=cut, cut_bytes=cut_bytes,
        device_ms=sum((n.device_ms for n in graph.nodes if n.name in device), 0.0),
        transfer_ms=transfer_ms(cut_bytes, bandwidth_mbps),
        rtt_ms=rtt_ms if cut else 0.0,
        server_ms=sum((n.server_ms for n in graph.nodes if n.name not in device), 0.0))


def graph_latency_ms(graph: PartitionGraph, device_nodes: set[str] | list[str], bandwidth_mbps: float,
                     rtt_ms: float = 0.0) -> float:
    """Latency of running `device_nodes` on the device; raises ValueError if the set is not predecessor-closed."""
    device = set(device_nodes)
    for u, v in graph.edges:
        if v in device and u not in device:
            raise ValueError(f"device set holds {v!r} but not its producer {u!r}. To fix: data flows only "
                             "device -> server, so add every predecessor of a device node")
    return _evaluate(graph, device, bandwidth_mbps, rtt_ms).latency_ms


_CAPACITY_UNITS = 2**29
"""Capacities are quantised to integers (scipy's max-flow is integral, int32) with the finite total
mapped to 2**29 units, so a cut's quantised cost is within (edges in the cut)·total/2**29 of its
true cost; the returned latency is always recomputed exactly from the formula."""


def _min_cut_device_set(graph: PartitionGraph, bandwidth_mbps: float) -> set[str]:
    """Device set of a minimum s-t cut of the construction in the module docstring."""
    import numpy as np
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    names = graph.names()
    index = {name: 3 + i for i, name in enumerate(names)}  # 0 = s, 1 = t, 2 = input
    index[INPUT] = 2
    consumers: dict[str, set[str]] = {INPUT: set()}
    has_pred = set()
    for u, v in graph.edges:
        consumers.setdefault(u, set()).add(v)
        has_pred.add(v)
    consumers[INPUT] = {n for n in names if n not in has_pred}
    out_bytes = {n.name: n.out_bytes for n in graph.nodes} | {INPUT: graph.input_bytes}
    rows, cols, caps, infinite = [], [], [], []
    for n in graph.nodes:
        rows += [0, index[n.name]]
        cols += [index[n.name], 1]
        caps += [n.server_ms, n.device_ms]
    aux = 3 + len(names)
    for u, cons in consumers.items():
        if not cons:
            continue
        rows.append(index[u]); cols.append(aux); caps.append(transfer_ms(out_bytes[u], bandwidth_mbps))
        infinite += [(aux, index[w]) for w in cons] + [(index[w], index[u]) for w in cons if u != INPUT]
        aux += 1
    infinite.append((0, 2))
    total = float(sum(caps))
    scale = _CAPACITY_UNITS / total if total > 0 else 1.0
    finite = np.rint(np.asarray(caps) * scale).astype(np.int64)
    inf_rows, inf_cols = zip(*infinite)
    all_rows = np.concatenate([rows, inf_rows]).astype(np.int32)
    all_cols = np.concatenate([cols, inf_cols]).astype(np.int32)
    all_caps = np.concatenate([finite, np.full(len(infinite), 2 * _CAPACITY_UNITS + len(caps))]).astype(np.int32)
    capacity = coo_array((all_caps, (all_rows, all_cols)), shape=(aux, aux)).tocsr()
    flow = maximum_flow(capacity, 0, 1).flow
    residual = (capacity - flow).tocsr()
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    reached = breadth_first_order(residual, 0, directed=True, return_predecessors=False)
    reached_set = set(reached.tolist())
    return {name for name in names if index[name] in reached_set}


def partition_graph(graph: PartitionGraph, bandwidth_mbps: float, rtt_ms: float = 0.0) -> GraphPartition:
    """Exact minimum-latency partition (DADS min-cut); `rtt_ms` is paid once if anything crosses.

    With rtt: the min-cut D* without rtt is optimal among all sets; if D* sends nothing it is the
    all-device set and optimal with rtt too, else the best is min(all-device, D* + rtt).
    """
    _check_bandwidth(bandwidth_mbps, rtt_ms)
    best = _evaluate(graph, _min_cut_device_set(graph, bandwidth_mbps), bandwidth_mbps, 0.0)
    if rtt_ms > 0 and best.cut:
        all_device = _evaluate(graph, set(graph.names()), bandwidth_mbps, 0.0)
        with_rtt = _evaluate(graph, set(best.device_nodes), bandwidth_mbps, rtt_ms)
        best = all_device if all_device.latency_ms <= with_rtt.latency_ms else with_rtt
    return best
