"""isthmus.profiler: per-layer latency profiles, Edgent-style per-layer-type regression, device scaling."""

from isthmus.profiler.core import ExitProfile, LayerProfile, ModelProfile, profile_model, profile_module
from isthmus.profiler.devices import local_gflops, speed_factor

__all__ = ["ExitProfile", "LayerProfile", "ModelProfile", "local_gflops", "profile_model", "profile_module",
           "speed_factor"]
