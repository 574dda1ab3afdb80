"""Fixtures shared by the test tiers (pytest finds this file for every test under tests/)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tritonserver() -> str:
    """Path of the tritonserver binary nvidia-pytriton ships; the module skips, with the reason, without it."""
    from isthmus.platform.triton import find_tritonserver

    try:
        return str(find_tritonserver())
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"no tritonserver binary: {err}")


@pytest.fixture(scope="module")
def mlp_torchscript(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded 16 → 8 → 4 MLP saved as TorchScript: the model the runtime tests serve through Triton."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    path = tmp_path_factory.mktemp("mlp") / "mlp.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    return path
