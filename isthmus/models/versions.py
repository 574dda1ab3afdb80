"""Model versions (the A2 / model-serving "model versions"), each with measured accuracy and latency.

| version   | what                                                                 | stated accuracy drop |
|-----------|----------------------------------------------------------------------|----------------------|
| fp32      | the trained model                                                    | 0 (reference)        |
| int8      | torch.ao int8 (static for CNNs, dynamic for the LSTM)                | ≤ `MAX_DROP["int8"]` |
| lowrank   | SVD / Tucker-2, rank by energy (`LOWRANK_ENERGY`), short fine-tune   | ≤ `MAX_DROP["lowrank"]` |
| distilled | half-width student trained on the fp32 teacher's soft labels         | measured, not bounded |
| exit<i>   | alexnet_exits only: layers 0..i then exit branch i (BranchyNet)      | measured per exit    |

Accuracy is top-1 on the digits test split (small size); latency is the median forward time
of the full-size version on this machine's CPU (`latency_ms["cpu"]`). Full-size low-rank
models take the rank fractions chosen on the trained small model (random weights have no
low-rank structure to measure).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_DROP", "LOWRANK_ENERGY", "STUDENT_WIDTH", "version_names", "small_version", "build_version",
           "version_table", "make_versions"]

MAX_DROP = {"int8": 0.02, "lowrank": 0.03}
LOWRANK_ENERGY = 0.8
LOWRANK_FINETUNE_EPOCHS = 2
STUDENT_WIDTH = 0.5
_BASE = ("fp32", "int8", "lowrank", "distilled")
_FORMAT = 1


def version_names(name: str) -> list[str]:
    """Versions of zoo model `name`: fp32, int8, lowrank, distilled (+ exit<i> for alexnet_exits)."""
    from isthmus.models.zoo import ZOO_NAMES, build

    if name not in ZOO_NAMES:
        raise ValueError(f"unknown zoo model {name!r}. To fix: use one of {list(ZOO_NAMES)}")
    exits = sorted(getattr(build(name, "small"), "exits", {}), key=int)
    return list(_BASE) + [f"exit{k}" for k in exits]


def _check_version(name: str, version: str) -> None:
    names = version_names(name)
    if version not in names:
        raise ValueError(f"unknown version {version!r} of {name!r}. To fix: use one of {names}")


def _exit_chain(model: Any, after: str) -> Any:
    """The chain that stops at exit `after`: main layers 0..after, then the exit branch's layers."""
    from isthmus.models.zoo import ChainNet

    return ChainNet(list(model.layers[: int(after) + 1]) + list(model.exits[after])).eval()


def _cached_module(key: str, make: Any) -> Any:
    """A trained module pickled under `$ISTHMUS_CACHE/versions/` (built by `make()` on a miss)."""
    import torch

    from isthmus.models.runtime import cache_dir

    path = cache_dir("versions") / f"{key}-f{_FORMAT}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=False).eval()
        except Exception:  # noqa: BLE001 - a stale or truncated cache entry is rebuilt
            path.unlink()
    module = make()
    torch.save(module, path)
    return module.eval()


def _lowrank_small(name: str, teacher: Any) -> Any:
    from isthmus.models.compress import low_rank
    from isthmus.models.train import fit

    model, fractions = low_rank(teacher, LOWRANK_ENERGY)
    model.rank_fraction = fractions
    return fit(model, name, LOWRANK_FINETUNE_EPOCHS, lr=5e-4)


def small_version(name: str, version: str = "fp32") -> Any:
    """Version `version` of the digits-trained small model (trained, compressed and cached on first use)."""
    from isthmus.models.compress import quantize_int8
    from isthmus.models.train import digits, fit, train_small
    from isthmus.models.zoo import build

    _check_version(name, version)
    teacher = train_small(name)[0]
    if version == "fp32":
        return teacher
    if version == "int8":
        return quantize_int8(teacher, digits(name, "train")[0][:512])
    if version == "lowrank":
        return _cached_module(f"{name}-lowrank", lambda: _lowrank_small(name, teacher))
    if version == "distilled":
        from isthmus.models.train import DEFAULT_EPOCHS

        return _cached_module(f"{name}-distilled", lambda: fit(
            build(name, "small", width=STUDENT_WIDTH), name, DEFAULT_EPOCHS.get(name, 20), teacher=teacher))
    return _exit_chain(teacher, version.removeprefix("exit"))


def build_version(name: str, version: str = "fp32", size: str = "full", trained: bool | None = None
                  ) -> tuple[Any, Any]:
    """(module in eval mode, example input) of a version.

    `small` with `trained` (default for int8 / lowrank / distilled, whose structure depends on the
    trained weights): the digits-trained version; untrained small fp32 / exit versions otherwise
    (same structure, for profiling). `full`: the full-size architecture of that version with random
    weights (for latency), int8 calibrated on random inputs, low rank with the small model's rank
    fractions."""
    from isthmus.models.compress import low_rank, quantize_int8
    from isthmus.models.zoo import build, example_input

    _check_version(name, version)
    x = example_input(name, size)
    if size == "small" and (trained or (trained is None and version in ("int8", "lowrank", "distilled"))):
        return small_version(name, version), x
    if version == "distilled":
        return build(name, size, width=STUDENT_WIDTH), x
    model = build(name, size)
    if version == "int8":
        return quantize_int8(model, example_input(name, size, batch=2)), x
    if version == "lowrank":
        fractions = getattr(small_version(name, "lowrank"), "rank_fraction", {})
        return low_rank(model, rank_fraction=fractions)[0], x
    if version.startswith("exit"):
        return _exit_chain(model, version.removeprefix("exit")), x
    return model, x


def _params_and_bytes(model: Any) -> tuple[int, int]:
    state = model.state_dict()
    tensors = [v for v in state.values() if hasattr(v, "element_size")]
    packed = [v for v in state.values() if isinstance(v, tuple)]  # dynamic-quantised packed params
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    for item in packed:
        nbytes += sum(t.numel() * t.element_size() for t in item if hasattr(t, "element_size"))
    return sum(p.numel() for p in model.parameters()), nbytes


def version_table(name: str, repeats: int = 10, refresh: bool = False, latency_size: str = "full",
                  progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Per version: accuracy (digits), accuracy drop vs fp32, CPU latency at `latency_size` (median
    of `repeats`), its ratio to fp32, and the small model's parameter bytes. Cached per thread count.
    `progress(row)` is called as each version is measured (not for a cached table)."""
    import torch

    from isthmus.models.runtime import cache_dir, default_threads, median_ms, torch_threads
    from isthmus.models.train import accuracy, train_small

    threads = default_threads()
    path = cache_dir("versions") / f"{name}-table-{latency_size}-t{threads}-f{_FORMAT}.json"
    if path.exists() and not refresh:
        return json.loads(path.read_text())
    exit_acc = train_small(name)[1]["exit_accuracy"]
    rows = []
    for version in version_names(name):
        small = small_version(name, version)
        acc = exit_acc[version.removeprefix("exit")] if version.startswith("exit") else accuracy(small, name)
        model, x = build_version(name, version, latency_size)
        with torch_threads(threads), torch.inference_mode():
            latency = median_ms(lambda: model(x), repeats, warmup=1)
        rows.append({"name": version, "accuracy": round(acc, 4), "latency_ms": {"cpu": round(latency, 3)},
                     "small_bytes": _params_and_bytes(small)[1], "threads": threads})
        if progress is not None:
            progress(rows[-1])
    base = rows[0]
    for row in rows:
        row["accuracy_drop"] = round(base["accuracy"] - row["accuracy"], 4)
        row["speedup"] = round(base["latency_ms"]["cpu"] / row["latency_ms"]["cpu"], 3)
    path.write_text(json.dumps(rows, indent=1))
    return rows


def make_versions(name: str, repeats: int = 10, latency_size: str = "full") -> list[dict[str, Any]]:
    """Spec v1 `models[].versions[]` entries from measurements:
    `[{"name", "accuracy", "latency_ms": {"cpu": ms}}, ...]` (accuracy on digits, latency at
    `latency_size`, default the full-size model)."""
    return [{"name": r["name"], "accuracy": r["accuracy"], "latency_ms": dict(r["latency_ms"])}
            for r in version_table(name, repeats, latency_size=latency_size)]
