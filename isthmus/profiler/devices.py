"""Scaling profiles to declared device kinds (roofline on compute).

speed_factor(d) = declared peak of d / measured peak of this machine's CPU
                = 1000 · d.tflops / local_gflops(),
where local_gflops is the median achieved GFLOPS of a 512x512 fp32 matmul (2·n³ FLOPs) with the
profiler's thread count. A layer's latency on d is its local latency / speed_factor(d).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from isthmus.spec import Device

__all__ = ["local_gflops", "speed_factor"]

_N = 512


def local_gflops(threads: int | None = None, refresh: bool = False) -> float:
    """Measured fp32 GFLOPS of this machine's CPU (matmul, median of 15), cached per thread count."""
    import torch

    from isthmus.models.runtime import cache_dir, default_threads, median_ms, torch_threads

    threads = threads or default_threads()
    path = cache_dir() / f"local_cpu_t{threads}.json"
    if path.exists() and not refresh:
        try:
            return float(json.loads(path.read_text())["gflops"])
        except (ValueError, KeyError, TypeError):
            pass
    a, b = torch.rand(_N, _N), torch.rand(_N, _N)
    with torch_threads(threads), torch.inference_mode():
        ms = median_ms(lambda: a @ b, repeats=15, warmup=3)
    gflops = 2 * _N ** 3 / (ms / 1000.0) / 1e9
    path.write_text(json.dumps({"gflops": gflops, "threads": threads, "matmul_n": _N}))
    return gflops


def speed_factor(device: Device) -> float:
    """How many times faster than this machine's CPU a declared device kind is (1000·tflops / local GFLOPS)."""
    tflops = getattr(device, "tflops", None)
    if tflops is None or tflops <= 0:
        raise ValueError(f"device {device!r} has no positive `tflops`. To fix: declare its peak TFLOPS, e.g. "
                         "{kind: cpu, tflops: 0.004, mem_gb: 1}")
    return 1000.0 * tflops / local_gflops()
