"""From measured per-layer profiles (isthmus.profiler) to partition inputs.

A zoo model profiled on this machine's CPU is scaled to the edge device and to the server with
`isthmus.profiler.speed_factor` (latency / factor); the output bytes are the same on both.
Chain profiles (edges i -> i+1) become a ChainTable with one path per exit: main layers
0..after, then the exit branch's layers (the final classifier: all main layers). DAG profiles
become a PartitionGraph for the DADS min-cut, and, as the Neurosurgeon baseline on a DAG, a
ChainTable over prefixes of the topological order (split k sends every tensor of layers ≤ k
that a later layer reads, and the request if an entry layer is later).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isthmus.partition.chain import ChainPath, ChainTable
from isthmus.partition.graph import PartitionGraph, parse_graph
from isthmus.profiler.devices import DEVICE_KINDS

if TYPE_CHECKING:
    from isthmus.profiler import ModelProfile
    from isthmus.spec import Device

__all__ = ["DEFAULT_DEVICES", "is_chain", "chain_table", "dag_graph", "topological_table", "device_profiles"]

DEFAULT_DEVICES = DEVICE_KINDS
"""Device kinds usable without a spec (`isthmus partition MODEL --device rpi3 --site-device t4`): the registry."""


def is_chain(profile: ModelProfile) -> bool:
    """True if the profile's edges are exactly layer i -> layer i+1."""
    names = [layer.name for layer in profile.layers]
    return [tuple(e) for e in profile.edges] == list(zip(names, names[1:]))


def _check_pair(device: ModelProfile, server: ModelProfile) -> None:
    if [x.name for x in device.layers] != [x.name for x in server.layers]:
        raise ValueError(f"device and server profiles of {device.model!r} have different layers. To fix: scale "
                         "one local profile to both devices with ModelProfile.scaled")


def chain_table(device: ModelProfile, server: ModelProfile) -> ChainTable:
    """One ChainPath per exit of a chain profile (exit = int(after); the final classifier: None)."""
    _check_pair(device, server)
    if not device.layers:
        raise ValueError(f"profile of {device.model!r} has no layers. To fix: re-profile the model")
    final_key = device.layers[-1].name
    exits = {e.after: (e, s) for e, s in zip(device.exits, server.exits)}
    final_acc = exits[final_key][0].accuracy if final_key in exits else None
    paths = [ChainPath(None, [x.name for x in device.layers], [x.latency_ms for x in device.layers],
                       [x.latency_ms for x in server.layers], [x.out_bytes for x in device.layers], final_acc)]
    index = {x.name: i for i, x in enumerate(device.layers)}
    for after, (dev_exit, srv_exit) in exits.items():
        if after == final_key or not dev_exit.layers:
            continue
        k = index[after] + 1
        dev_layers, srv_layers = device.layers[:k] + dev_exit.layers, server.layers[:k] + srv_exit.layers
        paths.append(ChainPath(index[after], [x.name for x in dev_layers], [x.latency_ms for x in dev_layers],
                               [x.latency_ms for x in srv_layers], [x.out_bytes for x in dev_layers],
                               dev_exit.accuracy))
    return ChainTable(paths, device.input_bytes)


def dag_graph(device: ModelProfile, server: ModelProfile) -> PartitionGraph:
    """The DADS partition graph of a profile: one node per layer."""
    _check_pair(device, server)
    nodes = [{"name": d.name, "device_ms": d.latency_ms, "server_ms": s.latency_ms, "out_bytes": d.out_bytes}
             for d, s in zip(device.layers, server.layers)]
    return parse_graph({"input_bytes": device.input_bytes, "nodes": nodes,
                        "edges": [list(e) for e in device.edges]}, origin=f"profile of {device.model}")


def topological_table(device: ModelProfile, server: ModelProfile) -> ChainTable:
    """Neurosurgeon on a DAG: splits only at prefixes of the profile's topological order."""
    _check_pair(device, server)
    pos = {x.name: i for i, x in enumerate(device.layers)}
    n = len(pos)
    last_use = [-1] * n
    has_pred = [False] * n
    for u, v in device.edges:
        last_use[pos[u]] = max(last_use[pos[u]], pos[v])
        has_pred[pos[v]] = True
    last_entry = max(i for i in range(n) if not has_pred[i])
    sent = []
    for k in range(n):
        live = sum(device.layers[u].out_bytes for u in range(k + 1) if last_use[u] > k)
        sent.append(live + (device.input_bytes if k < last_entry else 0))
    path = ChainPath(None, [x.name for x in device.layers], [x.latency_ms for x in device.layers],
                     [x.latency_ms for x in server.layers], sent, None)
    return ChainTable([path], device.input_bytes)


def device_profiles(local: ModelProfile, device: Device, server: Device,
                    device_name: str = "device", server_name: str = "server") -> tuple[ModelProfile, ModelProfile]:
    """The local profile scaled to the edge device and to the server (latency / speed_factor)."""
    from isthmus.profiler import speed_factor

    return (local.scaled(speed_factor(device), device=device_name),
            local.scaled(speed_factor(server), device=server_name))
