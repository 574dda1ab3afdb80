"""Placement baselines: single device, expert pipeline split, HEFT, and Baechi's m-ETF / m-SCT.

Every function takes (graph, devices, costs) with `costs[i, d]` the latency of op i on device d
and returns a placement (int array, op -> device) that respects the simulator's memory rule
(Σ param + out bytes per device ≤ its memory).

- single: every op on the one device with the least total work.
- expert: the layer-wise model-parallel split a person writes: cut the topological order into
  `n` contiguous stages of about Σ w / n work each (Mirhoseini et al.'s "human expert" for
  layered models); the pipeline's period, not one request's latency, is what it improves.
- heft: Topcuoglu et al.: ops by decreasing upward rank, each to the device giving the earliest
  finish time, with insertion into idle gaps; transfer = latency + bytes / bandwidth.
- m-ETF (Baechi): repeatedly start the (ready op, device) pair with the earliest start time.
- m-SCT (Baechi): m-ETF plus favourite children: an op's favourite child is its successor with the
  largest upward rank (Baechi picks it with an LP relaxation; this is its greedy rule); the parent's
  device is held for that child until the parent's output could have reached another device.
"""

from __future__ import annotations

import bisect
from typing import Callable

import numpy as np

from isthmus.placement.devices import DeviceSet
from isthmus.placement.graph import OpGraph
from isthmus.placement.simulator import _mean_comm_ms, upward_rank

__all__ = ["single", "expert", "heft", "m_etf", "m_sct", "HEURISTICS"]


class _Memory:
    """Bytes left per device under the simulator's rule."""

    def __init__(self, graph: OpGraph, devices: DeviceSet):
        self.need = graph.param_bytes + graph.out_bytes
        self.left = devices.mem_bytes.astype(float).copy()
        self.graph = graph

    def fits(self, op: int, d: int) -> bool:
        return self.need[op] <= self.left[d]

    def take(self, op: int, d: int) -> None:
        self.left[d] -= self.need[op]

    def no_room(self, op: int) -> ValueError:
        return ValueError(f"op {self.graph.ops[op]!r} of {self.graph.name!r} ({self.need[op] / 1e9:.2f} GB) fits on "
                          "no device with the memory left. To fix: add devices or use a kind with more memory")


def single(graph: OpGraph, devices: DeviceSet, costs: np.ndarray) -> np.ndarray:
    """All ops on the device with the least total work that holds the whole model."""
    need = float((graph.param_bytes + graph.out_bytes).sum())
    fitting = [d for d in range(devices.n) if need <= devices.mem_bytes[d]]
    if not fitting:
        raise ValueError(f"{graph.name!r} needs {need / 1e9:.2f} GB, more than any one device holds. "
                         "To fix: use a placement over several devices (heft, msct) or a larger device")
    best = min(fitting, key=lambda d: costs[:, d].sum())
    return np.full(graph.n, best, dtype=int)


def expert(graph: OpGraph, devices: DeviceSet, costs: np.ndarray) -> np.ndarray:
    """Contiguous stages of the topological order, about Σ w / n work each, stage k on device k."""
    mem = _Memory(graph, devices)
    work = costs.mean(axis=1)
    bound = np.cumsum(work) / max(work.sum(), 1e-12) * devices.n
    placement = np.zeros(graph.n, dtype=int)
    d = 0
    for i in range(graph.n):
        stage = min(int(bound[i] - 1e-9), devices.n - 1)
        d = max(d, stage)
        while d < devices.n and not mem.fits(i, d):
            d += 1
        if d == devices.n:
            raise mem.no_room(i)
        placement[i] = d
        mem.take(i, d)
    return placement


def _ready_ms(graph: OpGraph, devices: DeviceSet, v: int, d: int, placement: np.ndarray, finish: np.ndarray) -> float:
    """When all of op v's inputs can be on device d (its input tensor starts on device 0)."""
    if not graph.preds[v]:
        return devices.transfer_ms(0, d, graph.input_bytes)
    return max(finish[p] + devices.transfer_ms(placement[p], d, graph.out_bytes[p]) for p in graph.preds[v])


def heft(graph: OpGraph, devices: DeviceSet, costs: np.ndarray) -> np.ndarray:
    """HEFT with insertion: by decreasing rank_u, each op to the device with the earliest finish time."""
    rank = upward_rank(graph, costs, devices)
    order = sorted(range(graph.n), key=lambda i: (-rank[i], i))
    mem = _Memory(graph, devices)
    placement = np.full(graph.n, -1, dtype=int)
    finish = np.zeros(graph.n)
    slots: list[list[tuple[float, float]]] = [[] for _ in range(devices.n)]  # busy intervals, sorted
    for v in order:
        best = (float("inf"), -1, 0.0)
        for d in range(devices.n):
            if not mem.fits(v, d):
                continue
            start = _earliest_gap(slots[d], _ready_ms(graph, devices, v, d, placement, finish), costs[v, d])
            if start + costs[v, d] < best[0]:
                best = (start + costs[v, d], d, start)
        eft, d, start = best
        if d < 0:
            raise mem.no_room(v)
        placement[v], finish[v] = d, eft
        bisect.insort(slots[d], (start, eft))
        mem.take(v, d)
    return placement


def _earliest_gap(busy: list[tuple[float, float]], ready: float, length: float) -> float:
    """First start >= ready where [start, start + length) overlaps no busy interval."""
    start = ready
    for s, e in busy:
        if start + length <= s:
            return start
        start = max(start, e)
    return start


def _etf(graph: OpGraph, devices: DeviceSet, costs: np.ndarray, favourite: bool) -> np.ndarray:
    rank = upward_rank(graph, costs, devices)
    comm = _mean_comm_ms(graph, devices)
    fav = [max(s, key=lambda j: rank[j]) if s and favourite else -1 for s in graph.succs]
    mem = _Memory(graph, devices)
    placement = np.full(graph.n, -1, dtype=int)
    finish = np.zeros(graph.n)
    free = np.zeros(devices.n)
    held_for = [-1] * devices.n
    held_until = np.zeros(devices.n)
    waiting = [len(p) for p in graph.preds]
    ready = {v for v in range(graph.n) if waiting[v] == 0}
    while ready:
        best = (float("inf"), 0.0, -1, -1)
        for v in ready:
            for d in range(devices.n):
                if not mem.fits(v, d):
                    continue
                est = max(free[d], _ready_ms(graph, devices, v, d, placement, finish))
                if held_for[d] not in (-1, v):
                    est = max(est, held_until[d])
                if (est, -rank[v]) < best[:2]:
                    best = (est, -rank[v], v, d)
        est, _, v, d = best
        if v < 0:
            raise mem.no_room(min(ready))
        ready.remove(v)
        placement[v], finish[v] = d, est + costs[v, d]
        free[d] = finish[v]
        mem.take(v, d)
        for e in range(devices.n):
            if held_for[e] == v:
                held_for[e] = -1
        if fav[v] >= 0:
            held_for[d], held_until[d] = fav[v], finish[v] + comm[v]
        for j in graph.succs[v]:
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.add(j)
    return placement


def m_etf(graph: OpGraph, devices: DeviceSet, costs: np.ndarray) -> np.ndarray:
    """Memory-constrained earliest task first (Baechi m-ETF)."""
    return _etf(graph, devices, costs, favourite=False)


def m_sct(graph: OpGraph, devices: DeviceSet, costs: np.ndarray) -> np.ndarray:
    """Memory-constrained small communication time (Baechi m-SCT, greedy favourite children)."""
    return _etf(graph, devices, costs, favourite=True)


HEURISTICS: dict[str, Callable[[OpGraph, DeviceSet, np.ndarray], np.ndarray]] = {
    "single": single, "expert": expert, "heft": heft, "metf": m_etf, "msct": m_sct,
}
