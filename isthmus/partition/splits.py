"""Split routes for the geo planner (`fill_splits`) and head/tail TorchScript files (`export_partitions`).

Split numbering (SplitPoint.split): an index on the exit path. A chain's exit path for exit e is
main layers 0..e followed by the exit branch's layers (indices e+1, e+2, …); the final
classifier's path (exit None) is all main layers. A DAG's "path" is its profile's topological
order (torch.fx node order): split k runs compute nodes 0..k on the device. Split k = n − 1 is
device-only (`tail_ms` empty, nothing sent).

For a split k of path p, with the local CPU profile and s(d) = speed_factor(d):

    head_ms[d_edge]  = head_p(k) / s(d_edge),     tail_ms[d_cloud] = tail_p(k) / s(d_cloud)
    activation_bytes = bytes sent after k (0 for device-only)
    accuracy         = version.accuracy − (acc_final − acc_e)   (digits-measured exit drop; None for the final exit)

Only Pareto-useful splits are kept. Head and tail trade off against each other along a path, so
plain dominance prunes little; a split is kept if (1) for some (edge kind, cloud kind) it is the
fastest split (≥ 0) of its exit path at some bandwidth — on the lower envelope over x = 8/bw of
head/s(edge) + bytes·x + tail/s(cloud), the device-only split always kept (rtt shifts every
sending split equally, so it does not change the envelope) — and (2) no other kept split is no
worse in every head_ms, activation_bytes, every tail_ms and accuracy, and better in one.
Splits that are never the fastest may still use less cloud time; they are dropped to keep the
planner's route count small.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isthmus.partition.chain import _Envelope
from isthmus.partition.profiles import chain_table, is_chain, topological_table

if TYPE_CHECKING:
    from isthmus.profiler import ModelProfile
    from isthmus.spec import Spec, SplitPoint

__all__ = ["fill_splits", "split_points", "export_partitions", "split_modules"]


def _pareto(points: list[tuple[tuple[float, ...], Any]]) -> list[Any]:
    """Items whose cost vectors (lower is better) no other vector dominates; first of exact duplicates."""
    keep = []
    for i, (cost, item) in enumerate(points):
        dominated = False
        for j, (other, _) in enumerate(points):
            if j == i:
                continue
            if all(o <= c for o, c in zip(other, cost)) and (other != cost or j < i):
                dominated = True
                break
        if not dominated:
            keep.append(item)
    return keep


def split_points(local: ModelProfile, version_accuracy: float, edge_factors: Mapping[str, float],
                 cloud_factors: Mapping[str, float]) -> list[SplitPoint]:
    """Pareto-useful SplitPoints of one profiled model version (module docstring).

    `edge_factors` / `cloud_factors`: speed factor per device kind (how many times faster than
    the profiled CPU).
    """
    from isthmus.spec import SplitPoint

    table = chain_table(local, local) if is_chain(local) else topological_table(local, local)
    final_acc = table.final.path.accuracy
    candidates = []
    for t in table.tables:
        acc: float | None = None
        if t.path.exit is not None:
            if t.path.accuracy is None or final_acc is None:
                continue  # an exit of unknown accuracy cannot be offered to an accuracy-constrained planner
            acc = min(1.0, max(0.0, version_accuracy - (final_acc - t.path.accuracy)))
        useful = {t.n - 1}
        for fe in edge_factors.values():
            for fc in cloud_factors.values():
                lines = [(float(t.sent[k + 1]), t.head[k + 1] / fe + t.tail[k + 1] / fc, k) for k in range(t.n - 1)]
                if lines:
                    useful.update(_Envelope(lines).labels_for_positive_x())
        for k in sorted(useful):
            local_only = k == t.n - 1
            point = SplitPoint(
                split=k, exit=t.path.exit,
                head_ms={d: t.head[k + 1] / f for d, f in edge_factors.items()},
                activation_bytes=0 if local_only else t.sent[k + 1],
                tail_ms={} if local_only else {d: t.tail[k + 1] / f for d, f in cloud_factors.items()},
                accuracy=acc)
            cost = (tuple(point.head_ms[d] for d in edge_factors) + (point.activation_bytes,)
                    + tuple(point.tail_ms.get(d, 0.0) for d in cloud_factors)
                    + (-(acc if acc is not None else version_accuracy),))
            candidates.append((cost, point))
    return _pareto(candidates)


def fill_splits(spec: Spec, *, profiles: Mapping[tuple[str, str], ModelProfile] | None = None) -> Spec:
    """A copy of `spec` whose zoo models used by services with a source at an edge site get
    `ModelVersion.splits`: head on each such edge device kind, tail on every cloud device kind.

    `profiles` maps (zoo name, version) to a local-CPU profile; missing ones are measured with
    `isthmus.profiler.profile_model` (cached). Versions that are not zoo versions are left alone.
    """
    from isthmus.profiler import profile_model, speed_factor

    out = spec.model_copy(deep=True)
    edge_sites = {e.name: e for e in out.edge_sites}
    edge_kinds: dict[str, set[str]] = {}
    for service in out.services:
        location = out.source(service.source).location
        if location in edge_sites:
            edge_kinds.setdefault(service.model, set()).add(edge_sites[location].device)
    cloud_kinds = sorted({it.device for r in out.regions for it in r.instance_types})
    factors: dict[str, float] = {}

    def factor(kind: str) -> float:
        if kind not in factors:
            factors[kind] = speed_factor(out.devices[kind])
        return factors[kind]

    for model in out.models:
        if not model.zoo or model.name not in edge_kinds:
            continue
        for version in model.versions:
            local = (profiles or {}).get((model.zoo, version.name))
            if local is None:
                try:
                    local = profile_model(model.zoo, version=version.name, progress=False)
                except ValueError:
                    continue  # not a version the zoo can build
            version.splits = split_points(local, version.accuracy,
                                          {d: factor(d) for d in sorted(edge_kinds[model.name])},
                                          {d: factor(d) for d in cloud_kinds})
    return out


# ---------------------------------------------------------------- head / tail modules

def _fx_split(gm: Any, split: int) -> tuple[Any, Any]:
    """Head and tail GraphModules of a traced model: compute nodes 0..split run in the head.

    The head returns every value a later node reads (one tensor, or a tuple in a fixed order;
    the request itself if a later node reads it); the tail takes those values positionally.
    """
    import torch.fx

    nodes = list(gm.graph.nodes)
    compute = [n for n in nodes if n.op in ("call_module", "call_function", "call_method")]
    head_set = set(compute[: split + 1])
    output = next(n for n in nodes if n.op == "output")
    placeholders = [n for n in nodes if n.op == "placeholder"]
    on_head = head_set | set(placeholders)
    boundary = [n for n in nodes if n in on_head and any(u not in on_head for u in n.users)]

    head = torch.fx.Graph()
    env: dict[Any, Any] = {}
    for n in nodes:
        if n.op in ("placeholder", "get_attr") or n in head_set:
            env[n] = head.node_copy(n, lambda a: env[a])
    head.output(env[boundary[0]] if len(boundary) == 1 else tuple(env[b] for b in boundary))

    tail = torch.fx.Graph()
    tenv: dict[Any, Any] = {b: tail.placeholder(f"in{i}") for i, b in enumerate(boundary)}
    for n in nodes:
        if n.op == "get_attr":
            tenv[n] = tail.node_copy(n, lambda a: tenv[a])
        elif n in compute and n not in head_set:
            tenv[n] = tail.node_copy(n, lambda a: tenv[a])
    tail.output(torch.fx.node.map_arg(output.args[0], lambda a: tenv[a]))
    return torch.fx.GraphModule(gm, head), torch.fx.GraphModule(gm, tail)


def split_modules(model: Any, split: int, exit: int | None = None) -> tuple[Any, Any]:
    """(head, tail) torch modules of a zoo model for a split on the exit path (module docstring).

    A DAG model may be passed already traced (a torch.fx.GraphModule) to split it many times.
    """
    from torch import nn

    if hasattr(model, "layers"):
        if exit is None:
            path = list(model.layers)
        else:
            exits = getattr(model, "exits", {})
            if str(exit) not in exits:
                raise ValueError(f"exit {exit} does not exist. To fix: use None (final) or one of "
                                 f"{[int(k) for k in exits]}")
            path = list(model.layers[: exit + 1]) + list(exits[str(exit)])
        if not -1 <= split < len(path):
            raise ValueError(f"split {split} outside -1..{len(path) - 1}. To fix: pick a layer on the exit path")
        return nn.Sequential(*path[: split + 1]).eval(), nn.Sequential(*path[split + 1:]).eval()
    import torch.fx

    if exit is not None:
        raise ValueError(f"exit {exit} given for a model without exits. To fix: pass exit=None")
    gm = model if isinstance(model, torch.fx.GraphModule) else torch.fx.symbolic_trace(model)
    n = sum(1 for x in gm.graph.nodes if x.op in ("call_module", "call_function", "call_method"))
    if not -1 <= split < n:
        raise ValueError(f"split {split} outside -1..{n - 1}. To fix: pick a node index of the profile")
    head, tail = _fx_split(gm, split)
    return head.eval(), tail.eval()


def export_partitions(model_name: str, size: str, split: int, exit: int | None, out_dir: str | Path,
                      model: Any = None) -> tuple[Path, Path]:
    """Write `<model>_<size>_s<split>_e<exit>_{head,tail}.pt` TorchScript files; returns their paths.

    The head takes the request tensor and returns the activation (a tuple when a DAG cut sends
    several tensors); the tail takes those tensors positionally and returns the logits. Weights:
    `model` if given, else the digits-trained model for size "small" and a fresh one for "full".
    """
    import torch

    from isthmus.models import build, example_input
    from isthmus.models.export import to_torchscript

    if model is None:
        if size == "small":
            from isthmus.models.train import train_small

            model, _ = train_small(model_name)
        else:
            model = build(model_name, size)
    head, tail = split_modules(model.eval(), split, exit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{model_name}_{size}_s{split}_e{'final' if exit is None else exit}"
    x = example_input(model_name, size)
    with torch.no_grad():  # not inference_mode: tracing the tail needs ordinary tensors
        activation = head(x)
    head_path = to_torchscript(head, x, out / f"{stem}_head.pt")
    tail_path = out / f"{stem}_tail.pt"
    if isinstance(activation, tuple):  # several tensors cross a DAG cut: the tail takes them positionally
        with torch.no_grad():
            torch.jit.trace(tail, activation, check_trace=False).save(str(tail_path))
    else:
        to_torchscript(tail, activation, tail_path)
    return Path(head_path), tail_path
