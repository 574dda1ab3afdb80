"""Device kinds, the devices of one node (or a few nodes) and the links between them.

A `DeviceSet` is what a placement places onto: `n` devices with compute speed, memory, and a
link per ordered pair (latency_ms, bandwidth_gbps). A tensor of `b` bytes crosses a link in
`latency_ms + b / (bandwidth_gbps · 1e6)` ms (GB/s = 1e6 bytes/ms).

GPU op latencies are the host CPU's measured ones scaled by the roofline (see `graph`), divided
by `util`: a GPU op reaches about 30% of a GPU's roofline (kept at every batch size: optimistic
for transfers at large batches) but about all of a CPU's.

`KINDS` holds every kind of the registry `isthmus.profiler.devices.DEVICE_KINDS` (FP32 TFLOPS, memory
bandwidth, memory: the same names `profile` and `partition` accept) with the hourly price per GPU
AutoDeep's table gives; "cpu" (or "local-cpu") is this machine, measured once per process.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from isthmus.profiler.devices import DEVICE_KINDS, HOST_KINDS
from isthmus.spec import Device

__all__ = ["DeviceKind", "KINDS", "LINKS", "DeviceSet", "parse_devices", "host_kind", "kind_from_spec", "cpu_clock"]


@dataclass(frozen=True)
class DeviceKind:
    """One device kind: peak FP32 `tflops`, memory bandwidth `mem_bw_gbps` (GB/s), memory `mem_gb`."""

    name: str
    tflops: float
    mem_bw_gbps: float
    mem_gb: float
    launch_ms: float = 0.010  # per-op kernel launch overhead (0 on the host CPU: it is in the measurement)
    util: float = 0.3  # fraction of the roofline a batch-1 op reaches, relative to the measured host CPU
    price_per_hour: float = 0.0
    intra_link: str = "pcie"  # how devices of this kind talk inside one instance


_PRICES = {"v100": 3.06, "p100": 2.07, "k80": 0.90, "1080": 0.70, "980ti": 0.56, "t4": 0.526, "a10g": 1.006}
_INTRA_LINKS = {"v100": "nvlink"}  # the link between two devices of a kind in one instance (default pcie)

# (latency_ms, bandwidth_gbps): PCIe 3.0 x16 effective, NVLink 2 (one brick, one direction), 10 GbE.
LINKS: dict[str, tuple[float, float]] = {
    "pcie": (0.010, 12.0),
    "nvlink": (0.005, 25.0),
    "network": (0.050, 1.25),
    "local": (0.0, float("inf")),
}


def cpu_clock(threads: int) -> Callable[[], float]:
    """The clock host measurements use: with one torch thread, this thread's CPU time (`time.thread_time`), so the
    time other processes take from a shared machine's cores is not counted; with more threads, wall time."""
    return time.thread_time if threads == 1 else time.perf_counter


def _measure_gflops(threads: int) -> float:
    import torch

    clock = cpu_clock(threads)
    torch.set_num_threads(threads)
    a = torch.randn(384, 384)
    b = torch.randn(384, 384)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(7):
        t0 = clock()
        for _ in range(4):
            a @ b
        best = min(best, (clock() - t0) / 4)
    return 2 * 384**3 / best / 1e9


def _measure_mem_bw_gbps(threads: int) -> float:
    import torch

    clock = cpu_clock(threads)
    torch.set_num_threads(threads)
    x = torch.randn(8 * 1024 * 1024)  # 32 MB, well past the last-level cache
    y = torch.empty_like(x)
    y.copy_(x)
    best = float("inf")
    for _ in range(5):
        t0 = clock()
        y.copy_(x)
        best = min(best, clock() - t0)
    return 2 * x.numel() * 4 / best / 1e9


@functools.lru_cache(maxsize=4)
def host_kind(threads: int | None = None) -> DeviceKind:
    """This machine's CPU as a device kind: measured matmul GFLOPS and copy bandwidth (best of a few runs)."""
    import torch

    threads = threads or torch.get_num_threads()
    before = torch.get_num_threads()
    try:
        gflops, bw = _measure_gflops(threads), _measure_mem_bw_gbps(threads)
    finally:
        torch.set_num_threads(before)
    return DeviceKind("cpu", gflops / 1000.0, bw, 24.0, launch_ms=0.0, util=1.0)


def kind_from_spec(name: str, device: Device) -> DeviceKind:
    """A spec `devices:` entry as a DeviceKind (memory bandwidth from the registry or ~40 B/FLOP·TFLOPS if absent)."""
    bw = device.mem_bw_gbps or DEVICE_KINDS.get(name, {}).get("mem_bw_gbps") or 40.0 * device.tflops
    cpu = device.kind == "cpu"
    return DeviceKind(name, device.tflops, float(bw), device.mem_gb, launch_ms=0.0 if cpu else 0.010,
                      util=1.0 if cpu else 0.3, price_per_hour=_PRICES.get(name, 0.0),
                      intra_link=_INTRA_LINKS.get(name, "pcie"))


KINDS: dict[str, DeviceKind] = {name: kind_from_spec(name, Device(**d)) for name, d in DEVICE_KINDS.items()}


@dataclass
class DeviceSet:
    """`kinds[i]` is device i's kind; `link_latency_ms[i, j]`, `link_bw_gbps[i, j]` the link i -> j."""

    kinds: list[DeviceKind]
    link_latency_ms: np.ndarray
    link_bw_gbps: np.ndarray
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [f"{k.name}:{i}" for i, k in enumerate(self.kinds)]

    @property
    def n(self) -> int:
        return len(self.kinds)

    @property
    def mem_bytes(self) -> np.ndarray:
        return np.array([k.mem_gb * 1e9 for k in self.kinds])

    def transfer_ms(self, src: int, dst: int, nbytes: float) -> float:
        """Time to move `nbytes` from device src to dst: 0 on the same device, else latency + bytes / bandwidth."""
        if src == dst:
            return 0.0
        return float(self.link_latency_ms[src, dst] + nbytes / (self.link_bw_gbps[src, dst] * 1e6))

    @classmethod
    def homogeneous(cls, kind: DeviceKind, per_instance: int, instances: int = 1,
                    link: str | None = None) -> "DeviceSet":
        """`instances` nodes of `per_instance` devices each: intra-node links of the kind, network between nodes."""
        n = per_instance * instances
        lat = np.zeros((n, n))
        bw = np.full((n, n), np.inf)
        intra = LINKS[link or kind.intra_link]
        for i in range(n):
            for j in range(n):
                if i != j:
                    lat[i, j], bw[i, j] = intra if i // per_instance == j // per_instance else LINKS["network"]
        return cls([kind] * n, lat, bw)


_DEVICES_RE = re.compile(r"^\s*(?:(\d+)\s*[xX]\s*)?([A-Za-z0-9_.-]+)\s*$")


def parse_devices(text: str, link: str | None = None) -> DeviceSet:
    """Parse `4xv100`, `2xv100+2xk80` or `cpu` into a DeviceSet (one node; `link` overrides pcie/nvlink)."""
    kinds: list[DeviceKind] = []
    for part in text.split("+"):
        m = _DEVICES_RE.match(part)
        if not m:
            raise ValueError(f"devices: cannot parse {part!r}. To fix: write COUNTxKIND joined by '+', "
                             f"e.g. 4xv100 or 2xv100+2xk80")
        count, name = int(m.group(1) or 1), m.group(2).lower()
        if name not in HOST_KINDS and name not in KINDS:
            raise ValueError(f"devices: unknown device kind {name!r}. To fix: use one of "
                             f"{sorted(KINDS) + list(HOST_KINDS)}")
        if not 1 <= count <= 64:
            raise ValueError(f"devices: count {count} in {part!r} must be 1..64. To fix: use a count in that range")
        kinds += [host_kind() if name in HOST_KINDS else KINDS[name]] * count
    if link is not None and link not in LINKS:
        raise ValueError(f"link: unknown link {link!r}. To fix: use one of {sorted(LINKS)}")
    n = len(kinds)
    lat = np.zeros((n, n))
    bw = np.full((n, n), np.inf)
    for i in range(n):
        for j in range(n):
            if i != j:
                same = kinds[i].name == kinds[j].name
                lat[i, j], bw[i, j] = LINKS[link or (kinds[i].intra_link if same else "pcie")]
    return DeviceSet(kinds, lat, bw)
