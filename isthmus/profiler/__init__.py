"""isthmus.profiler: per-layer latency profiles, Edgent-style per-layer-type regression, device scaling."""

from isthmus.profiler.core import ExitProfile, LayerProfile, ModelProfile, profile_model, profile_module

__all__ = ["ExitProfile", "LayerProfile", "ModelProfile", "profile_model", "profile_module"]
