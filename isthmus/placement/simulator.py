"""Event-driven simulation of one inference request through a placed op graph.

Semantics (every policy's makespan comes from here):
- The request's input tensor starts on device 0 at t = 0.
- A device runs one op at a time, non-preemptively; among its ready ops it starts the one with the
  highest priority (default: HEFT's upward rank, the same for every policy).
- An op is ready on device d when each input tensor is on d. A tensor u produced on device a is sent
  once to every other device b that hosts a consumer, over the link a -> b, in
  `latency_ms + out_bytes_u / bandwidth`; transfers on one link are served first come, first served.
- makespan = the last op's finish time. period = the busiest device's or link's total busy time,
  the least time between requests when requests are pipelined (1000 / period = capacity in rps).
- Memory held on device d: Σ_{ops i on d} (param_bytes_i + out_bytes_i) (weights plus every activation
  kept: conservative for inference). A placement over any device's memory is infeasible.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from isthmus.placement.devices import DeviceSet
from isthmus.placement.graph import OpGraph

__all__ = ["Event", "SimResult", "simulate", "check_placement", "memory_bytes", "upward_rank", "lower_bound_ms",
           "critical_path_ms"]


@dataclass(frozen=True)
class Event:
    """One bar of the timeline: an op on a device, or a tensor on a link ("src->dst")."""

    kind: str
    name: str
    where: str
    start_ms: float
    end_ms: float


@dataclass
class SimResult:
    makespan_ms: float
    period_ms: float
    feasible: bool
    memory_bytes: np.ndarray
    violation: str | None = None
    timeline: list[Event] | None = None


def check_placement(graph: OpGraph, devices: DeviceSet, placement: object) -> np.ndarray:
    """The placement as an int array of length n_ops with values in [0, n_devices); ValueError otherwise."""
    arr = np.asarray(placement)
    if arr.shape != (graph.n,):
        raise ValueError(f"placement has shape {arr.shape}, graph {graph.name!r} has {graph.n} ops. "
                         "To fix: give one device index per op")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= devices.n):
        raise ValueError(f"placement holds {sorted(set(arr.tolist()))[:8]}, devices are 0..{devices.n - 1}. "
                         "To fix: use integer device indices in range")
    return arr.astype(int)


def memory_bytes(graph: OpGraph, devices: DeviceSet, placement: np.ndarray) -> np.ndarray:
    """Bytes held per device: Σ (param_bytes + out_bytes) of the ops placed on it."""
    return np.bincount(placement, weights=graph.param_bytes + graph.out_bytes, minlength=devices.n)


def _mean_comm_ms(graph: OpGraph, devices: DeviceSet) -> np.ndarray:
    """Expected transfer time of each op's output to a uniformly random other device, times P(different)."""
    n = devices.n
    if n == 1:
        return np.zeros(graph.n)
    off = ~np.eye(n, dtype=bool)
    lat = devices.link_latency_ms[off].mean()
    inv_bw = (1.0 / (devices.link_bw_gbps[off] * 1e6)).mean()
    return (lat + graph.out_bytes * inv_bw) * (n - 1) / n


def upward_rank(graph: OpGraph, costs: np.ndarray, devices: DeviceSet) -> np.ndarray:
    """HEFT's rank_u(i) = mean_d w(i, d) + max_{j ∈ succ(i)} (c̄(i) + rank_u(j))."""
    mean_w = costs.mean(axis=1)
    comm = _mean_comm_ms(graph, devices)
    rank = np.zeros(graph.n)
    for i in reversed(range(graph.n)):
        rank[i] = mean_w[i] + max((comm[i] + rank[j] for j in graph.succs[i]), default=0.0)
    return rank


def critical_path_ms(graph: OpGraph, costs: np.ndarray) -> float:
    """Longest path with every op at its fastest device and free communication."""
    return graph.span_ms(costs.min(axis=1))


def lower_bound_ms(graph: OpGraph, costs: np.ndarray) -> float:
    """max(critical path, Σ_i min_d w(i, d) / n_devices): no placement's makespan is below it."""
    return max(critical_path_ms(graph, costs), float(costs.min(axis=1).sum()) / costs.shape[1])


def simulate(graph: OpGraph, devices: DeviceSet, placement: object, costs: np.ndarray | None = None,
             priority: np.ndarray | None = None, timeline: bool = False) -> SimResult:
    """Run one request through `placement` (op -> device index); see the module doc for the rules."""
    place = check_placement(graph, devices, placement)
    mem = memory_bytes(graph, devices, place)
    over = np.nonzero(mem > devices.mem_bytes)[0]
    if over.size:
        d = int(over[0])
        return SimResult(float("inf"), float("inf"), False, mem,
                         f"device {devices.names[d]} needs {mem[d] / 1e9:.2f} GB > {devices.mem_bytes[d] / 1e9:.2f} GB")
    if costs is None:
        costs = graph.cost_ms(devices)
    if priority is None:
        priority = upward_rank(graph, costs, devices)
    n_ops, n_dev = graph.n, devices.n
    lat, bw = devices.link_latency_ms, devices.link_bw_gbps * 1e6
    out_bytes = graph.out_bytes
    succs = graph.succs
    entries = [v for v in range(n_ops) if not graph.preds[v]]
    pending = [len(p) for p in graph.preds]
    for v in entries:
        pending[v] = 1  # waits for the request's input tensor
    ready: list[list[tuple[float, int]]] = [[] for _ in range(n_dev)]
    idle = [True] * n_dev
    busy = np.zeros(n_dev)
    chan_free: dict[tuple[int, int], float] = {}
    chan_busy: dict[tuple[int, int], float] = {}
    sent: set[tuple[int, int]] = set()
    events: list[tuple[float, int, int, int, int]] = []  # (time, seq, type 0=op done 1=arrival, tensor/op, device)
    log: list[Event] | None = [] if timeline else None
    seq = 0
    finish_max = 0.0

    def consumers(u: int) -> list[int]:
        return entries if u < 0 else succs[u]

    def make_ready(v: int) -> None:
        pending[v] -= 1
        if pending[v] == 0:
            heapq.heappush(ready[place[v]], (-priority[v], v))

    def deliver(u: int, src: int, now: float) -> None:
        nonlocal seq
        nbytes = graph.input_bytes if u < 0 else out_bytes[u]
        for v in consumers(u):
            d = place[v]
            if d == src:
                make_ready(v)
            elif (u, d) not in sent:
                sent.add((u, d))
                start = max(now, chan_free.get((src, d), 0.0))
                dur = lat[src, d] + nbytes / bw[src, d]
                chan_free[(src, d)] = start + dur
                chan_busy[(src, d)] = chan_busy.get((src, d), 0.0) + dur
                seq += 1
                heapq.heappush(events, (start + dur, seq, 1, u, d))
                if log is not None:
                    log.append(Event("transfer", "input" if u < 0 else graph.ops[u],
                                     f"{devices.names[src]}->{devices.names[d]}", start, start + dur))

    def try_start(d: int, now: float) -> None:
        nonlocal seq
        if idle[d] and ready[d]:
            _, v = heapq.heappop(ready[d])
            idle[d] = False
            end = now + costs[v, d]
            busy[d] += costs[v, d]
            seq += 1
            heapq.heappush(events, (end, seq, 0, v, d))
            if log is not None:
                log.append(Event("op", graph.ops[v], devices.names[d], now, end))

    deliver(-1, 0, 0.0)
    for d in range(n_dev):
        try_start(d, 0.0)
    while events:
        now, _, kind, u, d = heapq.heappop(events)
        if kind == 0:
            finish_max = max(finish_max, now)
            idle[d] = True
            deliver(u, d, now)
            try_start(d, now)
        else:
            for v in consumers(u):
                if place[v] == d:
                    make_ready(v)
            try_start(d, now)
    if any(p > 0 for p in pending):  # cannot happen for a DAG; guards against a broken graph
        raise RuntimeError(f"graph {graph.name!r}: ops never became ready; it is not a DAG")
    period = max(float(busy.max(initial=0.0)), max(chan_busy.values(), default=0.0))
    return SimResult(finish_max, period, True, mem, None, log)
