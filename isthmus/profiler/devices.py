"""The device kinds every command knows, and scaling profiles to device kinds (roofline on compute).

`DEVICE_KINDS` is the one registry of kinds usable without a spec: `isthmus place --devices 4xv100`,
`isthmus profile --device rpi3`, `isthmus partition --device rpi3 --site-device t4` all accept its names
(each entry is a spec `devices:` entry), plus `HOST_KINDS`, this machine's CPU as measured.

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

__all__ = ["DEVICE_KINDS", "HOST_KINDS", "local_gflops", "speed_factor"]

DEVICE_KINDS: dict[str, dict[str, float | str]] = {
    # GPUs, public datasheet numbers (FP32 at boost clock, memory bandwidth GB/s); K80 is one of its two GK210 dies
    "v100": {"kind": "gpu", "tflops": 15.7, "mem_gb": 16, "mem_bw_gbps": 900},
    "p100": {"kind": "gpu", "tflops": 9.3, "mem_gb": 16, "mem_bw_gbps": 732},
    "k80": {"kind": "gpu", "tflops": 4.37, "mem_gb": 12, "mem_bw_gbps": 240},
    "1080": {"kind": "gpu", "tflops": 8.87, "mem_gb": 8, "mem_bw_gbps": 320},
    "980ti": {"kind": "gpu", "tflops": 6.06, "mem_gb": 6, "mem_bw_gbps": 336},
    "t4": {"kind": "gpu", "tflops": 8.1, "mem_gb": 16, "mem_bw_gbps": 320},
    "a10g": {"kind": "gpu", "tflops": 31.2, "mem_gb": 24, "mem_bw_gbps": 600},
    # edge devices and CPU servers
    "jetson-nano": {"kind": "gpu", "tflops": 0.236, "mem_gb": 4, "mem_bw_gbps": 25.6},
    "rpi3": {"kind": "cpu", "tflops": 0.004, "mem_gb": 1, "mem_bw_gbps": 3.6},  # Raspberry Pi 3B (Edgent's device)
    "desktop": {"kind": "cpu", "tflops": 0.2, "mem_gb": 8, "mem_bw_gbps": 25.6},  # quad-core 3.4 GHz (Edgent's server)
    "xeon8": {"kind": "cpu", "tflops": 0.6, "mem_gb": 16, "mem_bw_gbps": 50},
}

HOST_KINDS = ("cpu", "local-cpu")
"""Names of this machine's CPU, as measured (no scaling), in every command that runs on it."""

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
