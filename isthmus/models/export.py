"""TorchScript export of model versions (the format the serving side and the edge agent load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["to_torchscript", "export_version"]


def to_torchscript(module: Any, example: Any, path: str | Path) -> Path:
    """Trace `module` on `example` (eval mode, no grad), check it reproduces the eager output, save to `path`."""
    import warnings

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python values are expected for fixed shapes
        traced = torch.jit.trace(module, example, check_trace=False)
        expected, got = module(example), traced(example)
    if isinstance(expected, torch.Tensor) and not torch.allclose(expected.float(), got.float(), atol=1e-4, rtol=1e-3):
        raise RuntimeError(f"traced {type(module).__name__} differs from eager by "
                           f"{(expected.float() - got.float()).abs().max():.3g}. To fix: check the module "
                           "for data-dependent control flow")
    traced.save(str(path))
    return path


def export_version(name: str, version: str, size: str, out_dir: str | Path) -> Path:
    """Write `<out_dir>/<name>_<version>_<size>.pt` (TorchScript) for a zoo model version
    (small: the digits-trained weights; full: random weights)."""
    from isthmus.models.versions import build_version

    model, x = build_version(name, version, size, trained=size == "small")
    return to_torchscript(model, x, Path(out_dir) / f"{name}_{version}_{size}.pt")
