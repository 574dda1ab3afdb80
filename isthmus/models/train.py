"""Tiny training of the small zoo models on scikit-learn's bundled digits (8x8, 10 classes).

Fixed split: 75 % train / 25 % test, stratified, `random_state=0` (1347 / 450 images).
Images are scaled to [0, 1] as 1x8x8 tensors; rnnlm reads the 64 pixel intensities (0..16)
as a token sequence. `alexnet_exits` trains all exits jointly (BranchyNet: the sum of every
exit's cross-entropy). Trained weights and accuracies are cached under `$ISTHMUS_CACHE/train/`.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DEFAULT_EPOCHS", "digits", "train_small", "cached_accuracy", "accuracy", "exit_accuracy", "fit"]

DEFAULT_EPOCHS = {"alexnet_exits": 20, "vgg": 12, "resnet": 10, "inception": 10, "rnnlm": 30}
_LR = {"alexnet_exits": 5e-3, "vgg": 3e-3, "resnet": 3e-3, "inception": 3e-3, "rnnlm": 1e-2}
_BATCH = 64


def digits(name: str, split: str = "train") -> tuple[Any, Any]:
    """(inputs, labels) of the fixed digits split in the input format of zoo model `name`."""
    import numpy as np
    import torch

    from isthmus.models.runtime import cache_dir

    if split not in ("train", "test"):
        raise ValueError(f"split {split!r} is not 'train' or 'test'. To fix: pass split='train' or 'test'")
    path = cache_dir("data") / "digits_split_rs0.npz"
    if not path.exists():
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        xtr, xte, ytr, yte = train_test_split(data.images, data.target, test_size=0.25, random_state=0,
                                              stratify=data.target)
        np.savez_compressed(path, xtr=xtr, xte=xte, ytr=ytr, yte=yte)
    arrays = np.load(path)
    images, labels = (arrays["xtr"], arrays["ytr"]) if split == "train" else (arrays["xte"], arrays["yte"])
    y = torch.as_tensor(labels, dtype=torch.long)
    if name == "rnnlm":
        return torch.as_tensor(images.reshape(len(images), 64), dtype=torch.long), y
    return torch.as_tensor(images / 16.0, dtype=torch.float32).unsqueeze(1), y


def _logits_per_exit(model: Any, x: Any) -> dict[str, Any]:
    from isthmus.models.zoo import exit_logits

    return exit_logits(model, x) if hasattr(model, "exits") else {"final": model(x)}


def exit_accuracy(model: Any, name: str, split: str = "test") -> dict[str, float]:
    """Top-1 accuracy of every exit on the digits split (chain models with exits), keyed as `exit_logits`."""
    import torch

    x, y = digits(name, split)
    model.eval()
    with torch.inference_mode():
        logits = _logits_per_exit(model, x)
    return {k: float((v.argmax(-1) == y).float().mean()) for k, v in logits.items()}


def accuracy(model: Any, name: str, split: str = "test") -> float:
    """Top-1 accuracy of the model's output (the final classifier) on the digits split."""
    import torch

    x, y = digits(name, split)
    model.eval()
    with torch.inference_mode():
        return float((model(x).argmax(-1) == y).float().mean())


def fit(model: Any, name: str, epochs: int, seed: int = 0, teacher: Any = None, temperature: float = 4.0,
        alpha: float = 0.7, lr: float | None = None) -> Any:
    """Train `model` on the digits train split with Adam; returns it in eval mode.

    Loss = Σ_exits CE(exit logits, y) (one term without exits). With a `teacher` (distillation,
    Hinton et al.): loss = α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1-α)·CE(z_s, y).
    """
    from isthmus.models.runtime import torch_threads

    with torch_threads():
        return _fit(model, name, epochs, seed, teacher, temperature, alpha, lr)


def _fit(model: Any, name: str, epochs: int, seed: int, teacher: Any, temperature: float, alpha: float,
         lr: float | None) -> Any:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    x, y = digits(name, "train")
    if teacher is not None:
        teacher.eval()
        with torch.inference_mode():
            soft = F.softmax(teacher(x) / temperature, -1)
    opt = torch.optim.Adam(model.parameters(), lr=lr or _LR.get(name, 2e-3))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), _BATCH):
            idx = order[start:start + _BATCH]
            logits = _logits_per_exit(model, x[idx])
            loss = sum(F.cross_entropy(z, y[idx]) for z in logits.values())
            if teacher is not None:
                final = list(logits.values())[-1]  # the final classifier comes last
                kd = F.kl_div(F.log_softmax(final / temperature, -1), soft[idx], reduction="batchmean")
                loss = alpha * temperature ** 2 * kd + (1 - alpha) * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def _paths(name: str, epochs: int, seed: int) -> tuple[Any, Any]:
    from isthmus.models.runtime import cache_dir

    stem = cache_dir("train") / f"{name}-small-e{epochs}-s{seed}"
    return stem.with_suffix(".pt"), stem.with_suffix(".json")


def train_small(name: str, epochs: int | None = None, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Train (or load from cache) the small zoo model on digits.

    Returns (model in eval mode, {"accuracy": test accuracy, "exit_accuracy": {exit: acc}}); exit
    keys are str(index of the main layer the exit follows); the final classifier is
    str(len(layers) - 1). Models without exits report {} there.
    """
    import torch

    from isthmus.models.zoo import build

    epochs = epochs or DEFAULT_EPOCHS.get(name, 20)
    model = build(name, "small")
    weights, meta = _paths(name, epochs, seed)
    if weights.exists() and meta.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
        return model.eval(), json.loads(meta.read_text())
    fit(model, name, epochs, seed)
    exits = exit_accuracy(model, name) if hasattr(model, "exits") else {}
    result = {"accuracy": accuracy(model, name), "exit_accuracy": exits}
    torch.save(model.state_dict(), weights)
    meta.write_text(json.dumps(result))
    return model, result


def cached_accuracy(name: str, epochs: int | None = None, seed: int = 0) -> dict[str, Any] | None:
    """The accuracies `train_small` recorded, if the model is already trained and cached (else None)."""
    meta = _paths(name, epochs or DEFAULT_EPOCHS.get(name, 20), seed)[1]
    return json.loads(meta.read_text()) if meta.exists() else None
