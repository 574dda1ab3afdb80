"""Op graphs: the DAG a placement places, from torch.fx (zoo models) or generated (synthetic tests).

Each op i carries FLOPs `flops[i]`, parameter bytes, bytes read (`in_bytes`) and written
(`out_bytes`), and `host_ms[i]`, its latency measured on this machine's CPU. Its latency on a
device kind k is the roofline scaling of the measurement:

    t_k(i) = max(F_i / (P_k · e_i), B_i / W_k) / util_k + launch_k,   e_i = clip(F_i / P_h / host_ms(i), 0.05, 1)

with F_i FLOPs, B_i = in + out + param bytes, P peak FLOP/s, W memory bandwidth, h the host CPU.
The op's measured compute efficiency e_i on the host carries over to the compute term (small or
oddly shaped convolutions are inefficient everywhere; the clip keeps a measurement spoiled by a busy
machine from inflating GPU times); memory traffic streams at util · W on any device. (Scaling the
memory term by e_i too, as session 1 did, charged a GPU for the host's slow NCHW max-pool kernel:
a V100 max-pool over a 3 MB tensor cost 0.3 ms, ~25x its streaming time, and serialised the stem.)
An op graph is measured at one batch size (`batch`); FLOPs and activation bytes are per batch.
Ops are timed in place, during whole forward passes, with one thread by default.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from isthmus.placement.devices import DeviceKind, DeviceSet, cpu_clock, host_kind
from isthmus.profiler.core import _nbytes as _tensor_bytes  # tensor / tuple sizes, shared with the profiler
from isthmus.profiler.core import _numel

__all__ = ["OpGraph", "synthetic_graph", "from_module", "from_zoo", "coarsen"]

# Ops without parameters whose work is about one FLOP per output element; fused into their producer.
_CHEAP_KINDS = {"relu", "relu_", "ReLU", "BatchNorm2d", "BatchNorm1d", "Dropout", "flatten", "Flatten", "view",
                "reshape", "getitem", "dropout", "Identity", "sigmoid", "tanh", "Sigmoid", "Tanh", "contiguous",
                "size", "squeeze", "unsqueeze", "permute", "transpose"}


@dataclass
class OpGraph:
    """A DAG of ops in topological order (`edges` are (producer, consumer) index pairs, producer < consumer)."""

    name: str
    ops: list[str]
    kinds: list[str]
    flops: np.ndarray
    param_bytes: np.ndarray
    in_bytes: np.ndarray
    out_bytes: np.ndarray
    host_ms: np.ndarray
    edges: list[tuple[int, int]]
    input_bytes: int
    host: DeviceKind
    measured_ms: float | None = None  # whole-model latency measured on the host (same threads)
    threads: int | None = None
    batch: int = 1  # requests per forward pass the ops were measured at
    preds: list[list[int]] = field(init=False, repr=False)
    succs: list[list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("flops", "param_bytes", "in_bytes", "out_bytes", "host_ms"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=float))
        n = len(self.ops)
        self.preds = [[] for _ in range(n)]
        self.succs = [[] for _ in range(n)]
        for a, b in self.edges:
            if not 0 <= a < b < n:
                raise ValueError(f"edge ({a}, {b}) of graph {self.name!r} is not forward in topological order. "
                                 "To fix: number ops topologically (producer before consumer)")
            if b not in self.succs[a]:
                self.succs[a].append(b)
                self.preds[b].append(a)
        self.edges = [(a, b) for a in range(n) for b in self.succs[a]]

    @property
    def n(self) -> int:
        return len(self.ops)

    def cost_ms(self, devices: DeviceSet) -> np.ndarray:
        """[n_ops, n_devices] latency of each op on each device (roofline scaling of `host_ms`, see module doc)."""
        out = np.empty((self.n, devices.n))
        cache: dict[str, np.ndarray] = {}
        for d, kind in enumerate(devices.kinds):
            if kind.name not in cache:
                cache[kind.name] = self.kind_cost_ms(kind)
            out[:, d] = cache[kind.name]
        return out

    def kind_cost_ms(self, kind: DeviceKind) -> np.ndarray:
        """Latency of every op on one device kind (ms)."""
        if kind.name == self.host.name:
            return self.host_ms.copy()
        moved = self.in_bytes + self.out_bytes + self.param_bytes
        host_compute_ms = self.flops / (self.host.tflops * 1e9)
        efficiency = np.clip(host_compute_ms / np.maximum(self.host_ms, 1e-9), 0.05, 1.0)
        compute_ms = self.flops / (kind.tflops * 1e9 * efficiency)
        return np.maximum(compute_ms, moved / (kind.mem_bw_gbps * 1e6)) / kind.util + kind.launch_ms

    def span_ms(self, weights: np.ndarray) -> float:
        """T∞: the longest path through the DAG with op i weighing `weights[i]` (free communication)."""
        finish = np.zeros(self.n)
        for i in range(self.n):
            finish[i] = weights[i] + max((finish[p] for p in self.preds[i]), default=0.0)
        return float(finish.max(initial=0.0))

    def parallelism(self, weights: np.ndarray | None = None) -> float:
        """Work over span, T1 / T∞ (default weights: the measured host latencies). No placement on any number
        of devices beats the single device by more than this (Brent: makespan ≥ T∞; single = T1)."""
        w = self.host_ms if weights is None else np.asarray(weights, dtype=float)
        return float(w.sum()) / max(self.span_ms(w), 1e-12)

    def branch_width(self, min_share: float = 0.02, weights: np.ndarray | None = None) -> int:
        """Width of the DAG in compute-heavy ops: the largest set of ops, each with ≥ `min_share` of the work,
        no two of which depend on each other (max antichain = heavy ops - max matching of the reachability
        bipartite graph, Dilworth / Fulkerson)."""
        w = self.host_ms if weights is None else np.asarray(weights, dtype=float)
        heavy = [i for i in range(self.n) if w[i] >= min_share * w.sum()]
        reach = self.reachability()
        match: dict[int, int] = {}

        def augment(u: int, seen: set[int]) -> bool:
            for v in heavy:
                if reach[u, v] and v not in seen:
                    seen.add(v)
                    if v not in match or augment(match[v], seen):
                        match[v] = u
                        return True
            return False

        return len(heavy) - sum(augment(u, set()) for u in heavy)

    def has_parallel_branches(self, min_parallelism: float = 1.25) -> bool:
        """True when the DAG has parallel compute branches: T1 / T∞ ≥ `min_parallelism` on the measured host
        latencies (by default at least 20% of the work lies off the critical path). A residual block's identity
        or 1x1 shortcut does not count: it is off the path but carries almost no work."""
        return self.parallelism() >= min_parallelism

    def reachability(self) -> np.ndarray:
        """reach[i, j]: a path i -> ... -> j exists (ops are in topological order)."""
        reach = np.zeros((self.n, self.n), dtype=bool)
        for i in reversed(range(self.n)):
            for j in self.succs[i]:
                reach[i, j] = True
                reach[i] |= reach[j]
        return reach

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k not in ("preds", "succs")}
        for k, v in data.items():
            if isinstance(v, np.ndarray):
                data[k] = v.tolist()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "OpGraph":
        data = json.loads(text)
        data["host"] = DeviceKind(**data["host"])
        data["edges"] = [tuple(e) for e in data["edges"]]
        return cls(**data)


def coarsen(graph: OpGraph) -> OpGraph:
    """Fuse each cheap parameter-free op (ReLU, BN, views, ...) into its producer when it is that producer's
    only consumer and has no other input: the fused op sums FLOPs, bytes and latency, keeps the last output."""
    group = list(range(graph.n))
    for v in range(graph.n):
        p = graph.preds[v]
        if graph.kinds[v] in _CHEAP_KINDS and len(p) == 1 and len(graph.succs[p[0]]) == 1:
            group[v] = group[p[0]]
    roots = sorted(set(group))
    index = {r: i for i, r in enumerate(roots)}
    members: dict[int, list[int]] = {r: [] for r in roots}
    for v in range(graph.n):
        members[group[v]].append(v)
    last = {r: members[r][-1] for r in roots}

    def total(arr: np.ndarray) -> list[float]:
        return [float(arr[members[r]].sum()) for r in roots]

    edges = {(index[group[a]], index[group[b]]) for a, b in graph.edges if group[a] != group[b]}
    return OpGraph(
        name=graph.name, ops=[graph.ops[r] for r in roots], kinds=[graph.kinds[r] for r in roots],
        flops=total(graph.flops), param_bytes=total(graph.param_bytes),
        in_bytes=[float(graph.in_bytes[r]) for r in roots], out_bytes=[float(graph.out_bytes[last[r]]) for r in roots],
        host_ms=total(graph.host_ms), edges=sorted(edges), input_bytes=graph.input_bytes, host=graph.host,
        measured_ms=graph.measured_ms, threads=graph.threads, batch=graph.batch)


# A fixed, made-up host for synthetic graphs, so they need no measurement.
_SYNTHETIC_HOST = DeviceKind("synthetic-cpu", 0.05, 20.0, 64.0, launch_ms=0.0, util=1.0)


def synthetic_graph(n_ops: int = 40, width: int = 4, seed: int = 0, name: str | None = None) -> OpGraph:
    """A random layered DAG: layers of 1..`width` ops, each op fed by 1-2 ops of the previous layer;
    log-normal FLOPs and activation sizes; `host_ms` = roofline time on a made-up 50 GFLOPS host."""
    if n_ops < 1 or width < 1:
        raise ValueError(f"n_ops={n_ops}, width={width} must both be >= 1. To fix: pass positive sizes")
    rng = np.random.default_rng(seed)
    layers: list[list[int]] = []
    count = 0
    while count < n_ops:
        w = int(min(rng.integers(1, width + 1), n_ops - count))
        layers.append(list(range(count, count + w)))
        count += w
    edges = set()
    for prev, cur in zip(layers, layers[1:]):
        for v in cur:
            for u in rng.choice(prev, size=min(len(prev), int(rng.integers(1, 3))), replace=False):
                edges.add((int(u), v))
        for u in prev:  # every op feeds something
            if not any(e[0] == u for e in edges):
                edges.add((u, int(rng.choice(cur))))
    flops = rng.lognormal(np.log(2e8), 1.0, n_ops)
    out_bytes = rng.lognormal(np.log(4e5), 1.0, n_ops)
    param_bytes = rng.lognormal(np.log(1e6), 1.5, n_ops)
    in_bytes = np.zeros(n_ops)
    for u, v in edges:
        in_bytes[v] += out_bytes[u]
    moved = in_bytes + out_bytes + param_bytes
    host_ms = np.maximum(flops / (_SYNTHETIC_HOST.tflops * 1e9), moved / (_SYNTHETIC_HOST.mem_bw_gbps * 1e6))
    return OpGraph(name or f"synthetic-{n_ops}-{width}-{seed}", [f"op{i}" for i in range(n_ops)], ["synthetic"] * n_ops,
                   flops, param_bytes, in_bytes, out_bytes, host_ms, sorted(edges), int(4 * 3 * 224 * 224),
                   _SYNTHETIC_HOST)


# ------------------------------------------------------------------ torch.fx op graphs

def _flops(target: Any, args: tuple, out: Any) -> float:
    """FLOPs of one op from its module / function and concrete tensors (multiply-add = 2 FLOPs)."""
    import torch
    from torch import nn

    out_n = _numel(out)
    in_n = _numel(args)
    if isinstance(target, nn.Conv2d):
        kh, kw = target.kernel_size
        return 2.0 * out_n * (target.in_channels // target.groups) * kh * kw
    if isinstance(target, nn.Linear):
        return 2.0 * out_n * target.in_features
    if isinstance(target, (nn.LSTM, nn.GRU, nn.RNN)):
        gates = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[type(target)]
        x = args[0]
        steps = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
        h, i = target.hidden_size, target.input_size
        dirs = 2 if target.bidirectional else 1
        per_layer = [2.0 * gates * h * (i + h)] + [2.0 * gates * h * (h * dirs + h)] * (target.num_layers - 1)
        return steps * dirs * sum(per_layer)
    if isinstance(target, (nn.MaxPool2d, nn.AvgPool2d)):
        k = target.kernel_size if isinstance(target.kernel_size, tuple) else (target.kernel_size,) * 2
        return float(out_n * k[0] * k[1])
    if target in (torch.matmul, torch.bmm, torch.mm, torch.nn.functional.linear) or target in ("matmul", "bmm", "mm"):
        a = args[0]
        return 2.0 * out_n * (a.shape[-1] if isinstance(a, torch.Tensor) else 1)
    return float(max(out_n, in_n))


def _kind_name(node: Any, gm: Any) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    return getattr(node.target, "__name__", str(node.target))


_MARKS: list[float] = []
_CLOCK: list[Callable[[], float]] = [time.perf_counter]  # set by `from_module` (see `cpu_clock`)


def _mark() -> None:
    _MARKS.append(_CLOCK[0]())


def _mark_cost_ms() -> float:
    """Time one `_mark()` call adds to the interval it closes (median of a burst), subtracted from per-op times."""
    _MARKS.clear()
    for _ in range(200):
        _mark()
    cost = float(np.median(np.diff(_MARKS))) * 1e3
    _MARKS.clear()
    return cost


def _with_marks(gm: Any) -> Any:
    """A copy of `gm` that calls `_mark()` after every call node: op i's in-place latency is
    mark_i - mark_{i-1} minus one mark's cost (~0.1-3 µs per op, unlike an fx Interpreter's ~20 µs)."""
    import copy

    from torch.fx import GraphModule

    graph = copy.deepcopy(gm.graph)
    for node in list(graph.nodes):
        if node.op in ("call_module", "call_function", "call_method"):
            with graph.inserting_after(node):
                graph.call_function(_mark, ())
    return GraphModule(gm, graph)


def _fx_graph(module: Any, example: Any, name: str, repeats: int, host: DeviceKind) -> OpGraph:
    import torch
    from torch.fx import Interpreter, symbolic_trace

    gm = symbolic_trace(module)
    env: dict[str, Any] = {}

    class _Record(Interpreter):
        def run_node(self, n):  # noqa: ANN001 - torch.fx signature
            env[n.name] = super().run_node(n)
            return env[n.name]

    with torch.no_grad():
        _Record(gm).run(example)
    nodes = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    index = {n.name: i for i, n in enumerate(nodes)}
    ops, kinds, flops, params, ins, outs, edges = [], [], [], [], [], [], []
    for i, n in enumerate(nodes):
        args = torch.fx.node.map_arg(n.args, lambda a: env[a.name])
        p_bytes = 0
        target = n.target
        if n.op == "call_module":
            target = gm.get_submodule(n.target)
            p_bytes = sum(_tensor_bytes(t) for t in list(target.parameters()) + list(target.buffers()))
        for a in n.all_input_nodes:
            if a.op == "get_attr":
                p_bytes += _tensor_bytes(env[a.name])
            elif a.name in index:
                edges.append((index[a.name], i))
        ops.append(n.name)
        kinds.append(_kind_name(n, gm))
        flops.append(_flops(target, args, env[n.name]))
        params.append(p_bytes)
        ins.append(sum(_tensor_bytes(env[a.name]) for a in n.all_input_nodes if a.op != "get_attr"))
        outs.append(_tensor_bytes(env[n.name]))

    timed = _with_marks(gm)
    overhead_ms = _mark_cost_ms()

    def timed_pass() -> list[float]:
        _MARKS.clear()
        _mark()
        timed(example)
        return (np.diff(_MARKS) * 1e3 - overhead_ms).tolist()

    host_ms, measured = _time_ops(timed_pass, lambda: gm(example), repeats)
    return OpGraph(name, ops, kinds, flops, params, ins, outs, host_ms, edges, _tensor_bytes(example), host,
                   measured_ms=measured, threads=torch.get_num_threads(), batch=_batch_of(example))


def _batch_of(example: Any) -> int:
    shape = getattr(example, "shape", None)
    return int(shape[0]) if shape else 1


def _chain_graph(module: Any, example: Any, name: str, repeats: int, host: DeviceKind) -> OpGraph:
    """A chain model (`module.layers` run in order) as a chain of ops; a tuple output passes on its first item."""
    import torch

    ops, kinds, flops, params, ins, outs = [], [], [], [], [], []
    x = example
    with torch.no_grad():
        for i, layer in enumerate(module.layers):
            y = layer(x)
            ops.append(f"layers.{i}")
            kinds.append(type(layer).__name__)
            flops.append(_flops(layer, (x,), y))
            params.append(sum(_tensor_bytes(t) for t in list(layer.parameters()) + list(layer.buffers())))
            ins.append(_tensor_bytes(x))
            outs.append(_tensor_bytes(y))
            x = y[0] if isinstance(y, tuple) else y

    clock = _CLOCK[0]

    def timed_pass() -> list[float]:
        times, h = [], example
        for layer in module.layers:
            t0 = clock()
            h = layer(h)
            times.append((clock() - t0) * 1e3)
            h = h[0] if isinstance(h, tuple) else h
        return times

    host_ms, measured = _time_ops(timed_pass, lambda: module(example), repeats)
    edges = [(i, i + 1) for i in range(len(ops) - 1)]
    return OpGraph(name, ops, kinds, flops, params, ins, outs, host_ms, edges, _tensor_bytes(example), host,
                   measured_ms=measured, threads=torch.get_num_threads(), batch=_batch_of(example))


def _time_ops(timed_pass: Callable[[], list[float]], whole: Callable[[], Any],
              repeats: int) -> tuple[list[float], float]:
    """Per-op latency (each op timed in place during a full pass) and whole-model latency, in interleaved
    rounds so both see the same load, on `_CLOCK` (single-threaded: CPU time, blind to preemption). The
    remaining noise is right-skewed (caches shared with other processes), so both are best-of-rounds: the
    whole model's fastest run, and per-op medians rescaled to sum to the fastest instrumented pass."""
    import torch

    clock = _CLOCK[0]
    with torch.no_grad():
        whole()
        per_op, totals = [], []
        for _ in range(repeats):
            t0 = clock()
            whole()
            totals.append((clock() - t0) * 1e3)
            per_op.append(timed_pass())
    passes = np.array(per_op)
    medians = np.maximum(np.median(passes, axis=0), 0.0)  # an op cheaper than a mark can come out negative
    scale = float(passes.sum(axis=1).min()) / max(float(medians.sum()), 1e-12)
    return (medians * scale).tolist(), min(totals)


def from_module(module: Any, example: Any, name: str = "model", repeats: int = 5, threads: int = 1) -> OpGraph:
    """Op graph of a torch module: torch.fx when it traces, else its `layers` chain; ops and the whole model
    timed on this CPU with `threads` torch threads (one thread: on its CPU-time clock, see `cpu_clock`)."""
    import torch

    module.eval()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    _CLOCK[0] = cpu_clock(threads)
    try:
        host = host_kind(threads)
        try:
            return _fx_graph(module, example, name, repeats, host)
        except Exception as err:  # torch.fx cannot trace data-dependent control flow, tuples of LSTM state, ...
            if not hasattr(module, "layers"):
                raise ValueError(f"model {name!r}: torch.fx cannot trace it ({err}) and it has no `layers` chain. "
                                 "To fix: make it fx-traceable or expose `layers` run in order") from None
            return _chain_graph(module, example, name, repeats, host)
    finally:
        torch.set_num_threads(before)
        _CLOCK[0] = time.perf_counter


_CACHE_FORMAT = 2  # 2: CPU-clock timings with mark overhead removed (older caches are re-measured)


def _cache_dir() -> Path:
    return Path(os.environ.get("ISTHMUS_CACHE", Path.home() / ".cache" / "isthmus")) / "placement"


def from_zoo(name: str, size: str = "full", repeats: int = 5, cache: bool = True, fuse: bool = True,
             threads: int = 1, batch: int = 1) -> OpGraph:
    """Op graph of a zoo model (`isthmus.models.build`) on an input of `batch` requests, measured once per
    (model, size, threads, batch) and cached under $ISTHMUS_CACHE/placement; `fuse` applies `coarsen`."""
    from isthmus.models import ZOO_NAMES, build, example_input

    if name not in ZOO_NAMES:
        raise ValueError(f"model: unknown zoo model {name!r}. To fix: use one of {list(ZOO_NAMES)}")
    if size not in ("full", "small"):
        raise ValueError(f"size: {size!r}. To fix: use 'full' or 'small'")
    if not 1 <= batch <= 1024:
        raise ValueError(f"batch size: {batch} must be 1..1024. To fix: pass a serving batch such as 8")
    import hashlib

    import isthmus.models.zoo as zoo

    code = hashlib.sha256(Path(zoo.__file__).read_bytes()).hexdigest()[:10]  # a changed zoo is re-measured
    path = _cache_dir() / f"{name}-{size}-t{threads}-b{batch}-{code}-f{_CACHE_FORMAT}.json"
    if cache and path.exists():
        graph = OpGraph.from_json(path.read_text())
    else:
        graph = from_module(build(name, size), example_input(name, size, batch=batch), name=name, repeats=repeats,
                            threads=threads)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(graph.to_json())
    return coarsen(graph) if fuse else graph
