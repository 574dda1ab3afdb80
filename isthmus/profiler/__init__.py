"""isthmus.profiler: per-layer latency profiles, Edgent-style per-layer-type regression, device scaling.

Names are imported lazily so `import isthmus.profiler.commands` (the CLI) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ExitProfile", "LayerProfile", "ModelProfile", "LayerRegression", "local_gflops", "profile_model",
           "profile_module", "speed_factor"]

_WHERE = {"ExitProfile": "core", "LayerProfile": "core", "ModelProfile": "core", "profile_model": "core",
          "profile_module": "core", "LayerRegression": "regression", "local_gflops": "devices",
          "speed_factor": "devices"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"isthmus.profiler.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'isthmus.profiler' has no attribute {name!r}")
