"""isthmus.models: the model zoo, digits training, compression (model versions) and TorchScript export.

Names are imported lazily so `import isthmus.models.commands` (the CLI) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ZOO_NAMES", "build", "example_input", "make_versions", "to_torchscript", "train_small"]

_WHERE = {"ZOO_NAMES": "zoo", "build": "zoo", "example_input": "zoo", "make_versions": "versions",
          "to_torchscript": "export", "train_small": "train"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"isthmus.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'isthmus.models' has no attribute {name!r}")
