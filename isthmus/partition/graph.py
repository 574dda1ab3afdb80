"""DAG partitioning between a device and a server (DADS): exact min-cut via max-flow.

Input (docs/spec.md "Partition input"): nodes with `device_ms`, `server_ms`, `out_bytes`,
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

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

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
    """The partition input; build it with `parse_graph` / `load_graph` (they check the structure)
    and do not mutate it afterwards (its flow network is cached on first use)."""

    model_config = ConfigDict(extra="forbid")
    input_bytes: int = Field(0, description="Bytes of the request sent if an entry node runs on the server.")
    nodes: list[GraphNode] = Field(min_length=1)
    edges: list[tuple[str, str]] = Field(default_factory=list, description="Producer -> consumer pairs.")
    _network: Any = PrivateAttr(default=None)  # bandwidth-independent arrays, built on first partition

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
    except UnicodeDecodeError as err:
        raise GraphError([("(file)", f"not UTF-8 text (byte {err.start}). To fix: save the file as UTF-8")],
                         str(path)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise GraphError([(f"line {err.lineno}, column {err.colno}", f"not valid JSON: {err.msg}")],
                         str(path)) from None
    except RecursionError:
        raise GraphError([("(file)", "nested too deeply to read. To fix: a partition graph is a flat list of "
                           "nodes; flatten the nesting")], str(path)) from None
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


class _Network:
    """Bandwidth-independent arrays of a graph: the flow network (CSR layout) and the formula's terms."""

    def __init__(self, graph: PartitionGraph):
        import numpy as np

        self.names = graph.names()
        n = len(self.names)
        index = {name: i for i, name in enumerate(self.names)}
        edges = sorted({(index[u], index[v]) for u, v in graph.edges})
        self.eu = np.array([u for u, _ in edges], dtype=np.int64)
        self.ev = np.array([v for _, v in edges], dtype=np.int64)
        self.device_ms = np.array([x.device_ms for x in graph.nodes], dtype=float)
        self.server_ms = np.array([x.server_ms for x in graph.nodes], dtype=float)
        self.out_bytes = np.array([x.out_bytes for x in graph.nodes], dtype=np.int64)
        self.input_bytes = graph.input_bytes
        self.entry = np.ones(n, dtype=bool)
        self.entry[self.ev] = False
        # flow network: 0 = s (device), 1 = t (server), 2 = request, 3.. nodes, then one aux per producer
        consumers: dict[int, set[int]] = {2: {3 + i for i in np.flatnonzero(self.entry)}}
        for u, v in edges:
            consumers.setdefault(3 + u, set()).add(3 + v)
        node = 3 + np.arange(n)
        rows = [np.zeros(n, np.int64), node]
        cols = [node, np.ones(n, np.int64)]
        base = [self.server_ms, self.device_ms]  # s->v cut when v is on the server; v->t when on the device
        tx_rows, tx_cols, tx_bytes, inf_rows, inf_cols = [], [], [], [0], [2]
        aux = 3 + n
        for u, cons in consumers.items():
            if not cons:
                continue
            tx_rows.append(u)
            tx_cols.append(aux)
            tx_bytes.append(self.input_bytes if u == 2 else int(self.out_bytes[u - 3]))
            for w in sorted(cons):
                inf_rows += [aux] + ([w] if u != 2 else [])
                inf_cols += [w] + ([u] if u != 2 else [])
            aux += 1
        self.size = aux
        rows += [np.array(tx_rows, np.int64), np.array(inf_rows, np.int64)]
        cols += [np.array(tx_cols, np.int64), np.array(inf_cols, np.int64)]
        all_rows, all_cols = np.concatenate(rows), np.concatenate(cols)
        n_finite = 2 * n
        self.base = np.concatenate(base + [np.zeros(len(tx_rows))])
        self.tx_bytes = np.concatenate([np.zeros(n_finite), np.array(tx_bytes, dtype=float)])
        self.n_finite = len(self.base)
        self.order = np.lexsort((all_cols, all_rows))  # (row, col) pairs are distinct
        self.indices = all_cols[self.order].astype(np.int32)
        self.indptr = np.searchsorted(all_rows[self.order], np.arange(aux + 1)).astype(np.int32)
        self.n_edges = len(all_rows)

    def min_cut(self, bandwidth_mbps: float) -> Any:
        """Boolean mask (per node) of the device side of a minimum cut."""
        import numpy as np
        from scipy.sparse import csr_array
        from scipy.sparse.csgraph import breadth_first_order, maximum_flow

        caps = self.base + self.tx_bytes * transfer_ms(1.0, bandwidth_mbps)
        total = float(caps.sum())
        scale = _CAPACITY_UNITS / total if total > 0 else 1.0
        data = np.full(self.n_edges, 2 * _CAPACITY_UNITS + self.n_finite, dtype=np.int64)
        data[: self.n_finite] = np.rint(caps * scale)
        capacity = csr_array((data[self.order].astype(np.int32), self.indices, self.indptr),
                             shape=(self.size, self.size))
        flow = maximum_flow(capacity, 0, 1).flow
        residual = (capacity - flow).tocsr()
        residual.data[residual.data < 0] = 0
        residual.eliminate_zeros()
        reached = breadth_first_order(residual, 0, directed=True, return_predecessors=False)
        mask = np.zeros(self.size, dtype=bool)
        mask[reached] = True
        return mask[3: 3 + len(self.names)]

    def evaluate(self, on_device: Any, bandwidth_mbps: float, rtt_ms: float) -> GraphPartition:
        """Latency breakdown of a closed device set (the formula in the module docstring)."""
        import numpy as np

        sent = np.zeros(len(self.names), dtype=bool)
        sent[self.eu[on_device[self.eu] & ~on_device[self.ev]]] = True
        cut = [self.names[i] for i in np.flatnonzero(sent)]
        cut_bytes = int(self.out_bytes[sent].sum())
        if (self.entry & ~on_device).any():
            cut.insert(0, INPUT)
            cut_bytes += self.input_bytes
        return GraphPartition(
            device_nodes=[self.names[i] for i in np.flatnonzero(on_device)],
            server_nodes=[self.names[i] for i in np.flatnonzero(~on_device)],
            cut=cut, cut_bytes=cut_bytes, device_ms=float(self.device_ms[on_device].sum()),
            transfer_ms=transfer_ms(cut_bytes, bandwidth_mbps), rtt_ms=rtt_ms if cut else 0.0,
            server_ms=float(self.server_ms[~on_device].sum()))


def _network(graph: PartitionGraph) -> _Network:
    if graph._network is None:
        graph._network = _Network(graph)
    return graph._network


def graph_latency_ms(graph: PartitionGraph, device_nodes: set[str] | list[str], bandwidth_mbps: float,
                     rtt_ms: float = 0.0) -> float:
    """Latency of running `device_nodes` on the device; raises ValueError if the set is not predecessor-closed."""
    import numpy as np

    device = set(device_nodes)
    for u, v in graph.edges:
        if v in device and u not in device:
            raise ValueError(f"device set holds {v!r} but not its producer {u!r}. To fix: data flows only "
                             "device -> server, so add every predecessor of a device node")
    net = _network(graph)
    return net.evaluate(np.array([n in device for n in net.names], dtype=bool), bandwidth_mbps, rtt_ms).latency_ms


_CAPACITY_UNITS = 2**29
"""Capacities are quantised to integers (scipy's max-flow is integral, int32) with the finite total
mapped to 2**29 units, so a cut's quantised cost is within (edges in the cut)·total/2**29 of its
true cost; the returned latency is always recomputed exactly from the formula."""


def partition_graph(graph: PartitionGraph, bandwidth_mbps: float, rtt_ms: float = 0.0) -> GraphPartition:
    """Exact minimum-latency partition (DADS min-cut); `rtt_ms` is paid once if anything crosses.

    With rtt: the min-cut D* without rtt is optimal among all sets; if D* sends nothing it is the
    all-device set and optimal with rtt too, else the best is min(all-device, D* + rtt).
    """
    import numpy as np

    _check_bandwidth(bandwidth_mbps, rtt_ms)
    net = _network(graph)
    best = net.evaluate(net.min_cut(bandwidth_mbps), bandwidth_mbps, rtt_ms)
    if rtt_ms > 0 and best.cut:
        all_device = net.evaluate(np.ones(len(net.names), dtype=bool), bandwidth_mbps, 0.0)
        if all_device.latency_ms <= best.latency_ms:
            best = all_device
    return best
