"""Per-layer profiles of zoo models on the local CPU.

A layer's latency is the median of `repeats` timed calls on its real input, after warm-up
calls; `out_bytes` is the size of the tensor it emits (int8 activations count 1 byte per
element), `flops` counts a multiply-add as 2 FLOPs (conv: 2·|out|·C_in/g·k_h·k_w, linear:
2·|out|·in, LSTM: 2·4·h·(in+h) per step and layer, elementwise: |out|).

Chain models (`model.layers`) give one node per layer, named `str(i)`, with edges i -> i+1.
DAG models are traced with torch.fx: one node per call (module, function or method) with an
edge from every producer to every consumer; parameters and constants are not nodes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isthmus.models.runtime import median_ms

__all__ = ["LayerProfile", "ExitProfile", "ModelProfile", "LOCAL_DEVICE", "profile_model", "profile_module",
           "layer_kind", "measure_layer"]

LOCAL_DEVICE = "local-cpu"
_FORMAT = 1  # bump when the zoo or the measurement changes, so stale cached profiles are re-measured


@dataclass
class LayerProfile:
    name: str
    kind: str
    latency_ms: float
    out_bytes: int
    in_bytes: int
    flops: int


@dataclass
class ExitProfile:
    """An early-exit branch attached after main layer `after` (the final classifier has no branch layers)."""

    after: str
    layers: list[LayerProfile]
    accuracy: float | None = None


@dataclass
class ModelProfile:
    model: str
    version: str
    size: str
    device: str
    threads: int
    input_bytes: int
    layers: list[LayerProfile]
    edges: list[tuple[str, str]]
    exits: list[ExitProfile] = field(default_factory=list)

    @property
    def latency_ms(self) -> float:
        """Sum of the main path's layer latencies (no exit branch)."""
        return sum(layer.latency_ms for layer in self.layers)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ModelProfile:
        data = json.loads(text)
        data["layers"] = [LayerProfile(**layer) for layer in data["layers"]]
        data["edges"] = [tuple(edge) for edge in data["edges"]]
        data["exits"] = [ExitProfile(e["after"], [LayerProfile(**x) for x in e["layers"]], e.get("accuracy"))
                         for e in data.get("exits", [])]
        return cls(**data)

    def scaled(self, speed_factor: float, device: str | None = None) -> ModelProfile:
        """The profile on a device `speed_factor` times faster than this one: every latency / factor."""
        if speed_factor <= 0:
            raise ValueError(f"speed_factor {speed_factor} must be > 0. To fix: pass how many times faster "
                             "than the profiled device the target is (e.g. 0.05 for 20x slower)")

        def scale(layers: list[LayerProfile]) -> list[LayerProfile]:
            return [dataclasses.replace(x, latency_ms=x.latency_ms / speed_factor) for x in layers]

        return dataclasses.replace(
            self, device=device or f"{self.device}/{speed_factor:.4g}", layers=scale(self.layers),
            exits=[ExitProfile(e.after, scale(e.layers), e.accuracy) for e in self.exits])


# ---------------------------------------------------------------- measurement helpers

_KIND_PRIORITY = ("lstm", "conv", "fc", "embedding", "lrn", "pool", "bn", "relu", "dropout", "add", "concat",
                  "flatten", "quant", "dequant", "other")


def _module_kind(module: Any) -> str:
    name = type(module).__name__.lower()
    for needle, kind in (("lstm", "lstm"), ("conv", "conv"), ("linear", "fc"), ("embedding", "embedding"),
                         ("localresponse", "lrn"), ("pool", "pool"), ("batchnorm", "bn"), ("relu", "relu"),
                         ("dropout", "dropout"), ("flatten", "flatten"), ("dequant", "dequant"),
                         ("quant", "quant"), ("floatfunctional", "add")):
        if needle in name:
            return kind
    return "other"


def layer_kind(module: Any) -> str:
    """Edgent layer type of a module (conv, fc, pool, relu, lrn, dropout, bn, lstm, ...); a
    container gets the most significant kind among its leaves (a factorised conv is still conv)."""
    import torch

    if isinstance(module, torch.nn.Module):
        kinds = [_module_kind(m) for m in module.modules() if not list(m.children())] or ["other"]
        kinds.append(_module_kind(module))
        return min(kinds, key=_KIND_PRIORITY.index)
    name = getattr(module, "__name__", str(module)).lower()
    for needle, kind in (("add", "add"), ("cat", "concat"), ("flatten", "flatten"), ("relu", "relu"),
                         ("dequantize", "dequant"), ("quantize", "quant"), ("pool", "pool")):
        if needle in name:
            return kind
    return "other"


def _nbytes(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _numel(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (tuple, list)):
        return sum(_numel(v) for v in value)
    return 0


def _leaf_flops(module: Any, inputs: tuple, output: Any) -> int:
    out = _numel(output)
    if hasattr(module, "kernel_size") and hasattr(module, "in_channels"):
        k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
        return 2 * out * (module.in_channels // module.groups) * k[0] * k[1]
    if hasattr(module, "hidden_size") and hasattr(module, "num_layers"):  # LSTM (float or dynamic int8)
        x = inputs[0]
        steps = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
        h, flops, cin = module.hidden_size, 0, module.input_size
        for _ in range(module.num_layers):
            flops += 2 * 4 * h * (cin + h)
            cin = h
        return steps * flops
    if hasattr(module, "in_features"):
        return 2 * out * module.in_features
    if hasattr(module, "kernel_size"):  # pooling
        k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
        return out * k[0] * k[1]
    if "adaptive" in type(module).__name__.lower():
        return _numel(inputs)
    if "embedding" in type(module).__name__.lower():
        return 0
    return out


def _run_counting_flops(fn: Callable[[], Any], module: Any) -> tuple[Any, int]:
    """Call `fn` once; return its output and the FLOPs of the leaf modules it ran (elementwise if none)."""
    import torch

    total = [0]
    handles = []
    if isinstance(module, torch.nn.Module):
        for leaf in module.modules():
            if not list(leaf.children()):
                handles.append(leaf.register_forward_hook(
                    lambda m, i, o: total.__setitem__(0, total[0] + _leaf_flops(m, i, o))))
    try:
        output = fn()
    finally:
        for h in handles:
            h.remove()
    return output, (total[0] if handles else _numel(output))


def _measure(name: str, fn: Callable[[], Any], module: Any, in_bytes: int, repeats: int,
             warmup: int) -> tuple[LayerProfile, Any]:
    output, flops = _run_counting_flops(fn, module)
    latency = median_ms(fn, repeats, warmup)
    return LayerProfile(name, layer_kind(module), latency, _nbytes(output), in_bytes, int(flops)), output


def measure_layer(module: Any, x: Any, name: str = "layer", repeats: int = 20, warmup: int = 3) -> LayerProfile:
    """Profile one module on input `x` (latency median, bytes in/out, FLOPs)."""
    return _measure(name, lambda: module(x), module, _nbytes(x), repeats, warmup)[0]


class _Progress:
    """A Rich progress bar over the layers (or nothing when disabled)."""

    def __init__(self, enabled: bool, label: str):
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), transient=True)
            self._label = label

    def track(self, items: Iterable[Any], total: int) -> Iterable[Any]:
        if self._bar is None:
            yield from items
            return
        with self._bar:
            task = self._bar.add_task(self._label, total=total)
            for item in items:
                yield item
                self._bar.advance(task)


# ---------------------------------------------------------------- chain and DAG profiling

def _profile_chain(model: Any, x: Any, repeats: int, warmup: int, progress: _Progress
                   ) -> tuple[list[LayerProfile], list[tuple[str, str]], list[ExitProfile]]:
    layers, exits = [], []
    exit_modules = getattr(model, "exits", {})
    for i, layer in progress.track(enumerate(model.layers), len(model.layers)):
        prof, out = _measure(str(i), lambda layer=layer, x=x: layer(x), layer, _nbytes(x), repeats, warmup)
        layers.append(prof)
        if str(i) in exit_modules:
            branch, h, branch_layers = exit_modules[str(i)], out, []
            for j, sub in enumerate(branch):
                sub_prof, h = _measure(f"exit{i}.{j}", lambda sub=sub, h=h: sub(h), sub, _nbytes(h), repeats, warmup)
                branch_layers.append(sub_prof)
            exits.append(ExitProfile(str(i), branch_layers))
        x = out
    if exit_modules:
        exits.append(ExitProfile(str(len(layers) - 1), []))
    edges = [(str(i), str(i + 1)) for i in range(len(layers) - 1)]
    return layers, edges, exits


def _profile_graph(model: Any, x: Any, repeats: int, warmup: int, progress: _Progress
                   ) -> tuple[list[LayerProfile], list[tuple[str, str]]]:
    import torch.fx

    gm = model if isinstance(model, torch.fx.GraphModule) else torch.fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    env: dict[Any, Any] = {}
    compute = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    by_name = {n.name: n for n in compute}
    layers, edges = [], []
    placeholders = iter([x])
    for node in progress.track(list(gm.graph.nodes), len(gm.graph.nodes)):
        if node.op == "placeholder":
            env[node] = next(placeholders)
            continue
        if node.op == "get_attr":
            env[node] = gm.get_submodule(node.target) if node.target in modules else _fetch_attr(gm, node.target)
            continue
        if node.op == "output":
            continue
        args = torch.fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "call_module":
            target: Any = modules[node.target]
            fn = lambda t=target, a=args, k=kwargs: t(*a, **k)  # noqa: E731
        elif node.op == "call_function":
            target = node.target
            fn = lambda t=target, a=args, k=kwargs: t(*a, **k)  # noqa: E731
        else:
            target = getattr(type(args[0]), node.target, node.target)
            fn = lambda m=node.target, a=args, k=kwargs: getattr(a[0], m)(*a[1:], **k)  # noqa: E731
        inputs = [n for n in node.all_input_nodes if n.op != "get_attr"]
        in_bytes = sum(_nbytes(env[n]) for n in inputs)
        prof, env[node] = _measure(node.name, fn, target, in_bytes, repeats, warmup)
        layers.append(prof)
        edges += [(n.name, node.name) for n in inputs if n.name in by_name]
    return layers, edges


def _fetch_attr(gm: Any, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def profile_module(model: Any, x: Any, *, model_name: str = "custom", version: str = "fp32", size: str = "full",
                   repeats: int = 20, warmup: int = 3, progress: bool = False, threads: int | None = None
                   ) -> ModelProfile:
    """Profile any module on input `x` with `threads` torch threads (default `$ISTHMUS_THREADS` or 1):
    a chain if it has `.layers`, else its torch.fx graph."""
    import torch

    from isthmus.models.runtime import torch_threads

    bar = _Progress(progress, f"profiling {model_name}/{version}")
    with torch_threads(threads) as used, torch.inference_mode():
        if hasattr(model, "layers"):
            layers, edges, exits = _profile_chain(model, x, repeats, warmup, bar)
        else:
            (layers, edges), exits = _profile_graph(model, x, repeats, warmup, bar), []
    return ModelProfile(model_name, version, size, LOCAL_DEVICE, used, _nbytes(x), layers, edges, exits)


def _cache_path(name: str, version: str, size: str) -> Path:
    from isthmus.models.runtime import cache_dir

    return cache_dir("profiles") / f"{name}__{version}__{size}__{LOCAL_DEVICE}__f{_FORMAT}.json"


def profile_model(name: str, version: str = "fp32", size: str = "full", repeats: int = 20, progress: bool = True,
                  *, refresh: bool = False, threads: int | None = None) -> ModelProfile:
    """Per-layer profile of zoo model `name`, version `version`, on this machine's CPU.

    Cached as JSON under `$ISTHMUS_CACHE/profiles/` keyed by model, version, size and device
    (re-measured when the thread count differs or `refresh`). `threads`: torch intra-op threads
    (default `$ISTHMUS_THREADS`, else 1: single-thread medians are stable on a shared machine). Exit accuracies are filled in
    when the digits-trained model is cached (`isthmus.models.train.train_small`).
    """
    from isthmus.models.runtime import default_threads
    from isthmus.models.versions import build_version, version_names

    if version not in version_names(name):
        raise ValueError(f"unknown version {version!r} of {name!r}. To fix: use one of {version_names(name)}")
    path = _cache_path(name, version, size)
    if path.exists() and not refresh:
        try:
            cached = ModelProfile.from_json(path.read_text())
        except (ValueError, TypeError, KeyError):
            cached = None
        if cached is not None and cached.threads == (threads or default_threads()):
            return _with_exit_accuracy(cached)
    model, x = build_version(name, version, size)
    prof = profile_module(model, x, model_name=name, version=version, size=size, repeats=repeats,
                          progress=progress, threads=threads)
    path.write_text(prof.to_json())
    return _with_exit_accuracy(prof)


def _with_exit_accuracy(prof: ModelProfile) -> ModelProfile:
    from isthmus.models.train import cached_accuracy

    acc = cached_accuracy(prof.model) if prof.exits else None
    if acc:
        for e in prof.exits:
            e.accuracy = acc["exit_accuracy"].get(e.after, e.accuracy)
    return prof
