"""Runtime helpers shared by training, compression and profiling: the cache directory and torch threads."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["cache_dir", "default_threads", "torch_threads", "median_ms", "quiet_torch"]

# What torch says about the int8 path (torch.ao eager quantisation) on every run: deprecations we know of.
_KNOWN_TORCH_WARNINGS = (
    r"Please use quant_min and quant_max to specify the range for observers",
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation functions",
    r"torch\.ao\.quantization is deprecated",
)


def cache_dir(*parts: str) -> Path:
    """`$ISTHMUS_CACHE/<parts...>` (created), default root `~/.cache/isthmus`."""
    path = Path(os.environ.get("ISTHMUS_CACHE") or "~/.cache/isthmus").expanduser().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_threads() -> int:
    """Torch intra-op threads for measurements: `$ISTHMUS_THREADS`, default 1 (stable on a shared box)."""
    value = os.environ.get("ISTHMUS_THREADS", "1")
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"ISTHMUS_THREADS={value!r} is not a positive integer. To fix: export ISTHMUS_THREADS=1")
    return threads


@contextlib.contextmanager
def torch_threads(threads: int | None = None) -> Iterator[int]:
    """Run the block with `threads` torch intra-op threads (default `default_threads()`), then restore."""
    import torch

    threads = threads or default_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of `repeats` calls of `fn` in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Run the block without torch's known deprecation warnings about the int8 API (`_KNOWN_TORCH_WARNINGS`);
    every other warning still shows."""
    with warnings.catch_warnings():
        for message in _KNOWN_TORCH_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield
