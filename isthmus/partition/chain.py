"""Chain models with early exits: Edgent (most accurate exit that meets the SLO) and Neurosurgeon
(fastest split), served from precomputed tables.

A chain model has exit paths p (one per early exit, plus the final classifier): the layers run in
order to reach that exit, `n_p` of them. Split k ∈ {-1, 0, …, n_p − 1} runs layers ≤ k on the
device and the rest on the server (k = −1: cloud-only, the request itself is sent; k = n_p − 1:
device-only, nothing is sent):

    L_p(k) = head_p(k) + [k < n_p − 1]·(rtt + 8·bytes_p(k)/bw) + tail_p(k)
    head_p(k) = Σ_{i≤k} device_ms_i,   tail_p(k) = Σ_{i>k} server_ms_i,   bytes_p(−1) = input_bytes

For a fixed path every sending split is a line in x = 8/(1000·bw) (ms per byte):
a_k + rtt + bytes_k·x. The table keeps the lower envelope of these lines, so the best split
for any bandwidth is a binary search (O(log n)), compared with the device-only split.
Edgent: among exits by accuracy (highest first; unknown accuracy: deeper first) take the first
whose best split meets the SLO (ties in accuracy go to the faster); if none does, the fastest
exit and split, flagged `met_slo=False`.
Neurosurgeon: the final exit's fastest split.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import asdict, dataclass
from itertools import accumulate
from typing import Any, Sequence

from isthmus.partition.graph import transfer_ms

__all__ = ["ChainPath", "ChainDecision", "ChainTable"]


@dataclass(frozen=True)
class ChainPath:
    """The layers that lead to one exit, with per-layer device / server latency and output bytes."""

    exit: int | None  # main-layer index the exit branch follows; None = the final classifier
    names: Sequence[str]
    device_ms: Sequence[float]
    server_ms: Sequence[float]
    out_bytes: Sequence[int]
    accuracy: float | None = None

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0:
            raise ValueError(f"exit {self.exit}: empty path. To fix: give at least one layer")
        for field in ("device_ms", "server_ms", "out_bytes"):
            values = getattr(self, field)
            if len(values) != n:
                raise ValueError(f"exit {self.exit}: {field} has {len(values)} entries for {n} layers. "
                                 "To fix: give one value per layer")
            bad = [v for v in values if v < 0]
            if bad:
                raise ValueError(f"exit {self.exit}: {field} has negative value {bad[0]}. To fix: use values >= 0")


@dataclass(frozen=True)
class ChainDecision:
    """One (exit, split) choice and its latency breakdown (ms)."""

    exit: int | None
    split: int  # last layer (index on the exit path) on the device; -1 cloud-only
    n_layers: int
    head_ms: float
    activation_bytes: int
    transfer_ms: float
    rtt_ms: float
    tail_ms: float
    accuracy: float | None
    met_slo: bool | None = None

    @property
    def latency_ms(self) -> float:
        return self.head_ms + self.transfer_ms + self.rtt_ms + self.tail_ms

    @property
    def placement(self) -> str:
        if self.split < 0:
            return "cloud-only"
        return "device-only" if self.split == self.n_layers - 1 else "split"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"latency_ms": self.latency_ms, "placement": self.placement}


class _Envelope:
    """Lower envelope of lines a + b·x (x ≥ 0), queried by binary search."""

    def __init__(self, lines: list[tuple[float, float, int]]):  # (b, a, label)
        hull: list[tuple[float, float, int]] = []
        for b, a, label in sorted(lines, key=lambda line: (-line[0], line[1])):
            if hull and hull[-1][0] == b:
                continue  # same slope, larger intercept
            while len(hull) >= 2 and self._cross(hull[-2], (b, a, label)) <= self._cross(hull[-2], hull[-1]):
                hull.pop()
            hull.append((b, a, label))
        self.hull = hull
        self.breaks = [self._cross(hull[i], hull[i + 1]) for i in range(len(hull) - 1)]

    @staticmethod
    def _cross(l1: tuple[float, float, int], l2: tuple[float, float, int]) -> float:
        return (l2[1] - l1[1]) / (l1[0] - l2[0])

    def argmin(self, x: float) -> int:
        return self.hull[bisect_left(self.breaks, x)][2]

    def labels_for_positive_x(self) -> list[int]:
        """Labels of lines that are the minimum somewhere on x > 0."""
        ends = self.breaks + [float("inf")]
        return [line[2] for line, end in zip(self.hull, ends) if end > 0]


class _PathTable:
    def __init__(self, path: ChainPath, input_bytes: int):
        n = len(path.names)
        self.path, self.n = path, n
        self.head = [0.0] + list(accumulate(path.device_ms))  # head[k + 1] = Σ_{i≤k} device_ms
        suffix = list(accumulate(reversed(path.server_ms)))[::-1] + [0.0]
        self.tail = suffix  # tail[k + 1] = Σ_{i>k} server_ms
        self.sent = [input_bytes] + list(path.out_bytes)  # sent[k + 1]
        self.envelope = _Envelope([(float(self.sent[k + 1]), self.head[k + 1] + self.tail[k + 1], k)
                                   for k in range(-1, n - 1)])

    def latency_ms(self, split: int, bandwidth_mbps: float, rtt_ms: float) -> float:
        k = split + 1
        if split == self.n - 1:
            return self.head[k]
        return self.head[k] + rtt_ms + transfer_ms(self.sent[k], bandwidth_mbps) + self.tail[k]

    def best_split(self, bandwidth_mbps: float, rtt_ms: float) -> tuple[int, float]:
        sending = self.envelope.argmin(transfer_ms(1.0, bandwidth_mbps))
        local = self.n - 1
        options = [(self.latency_ms(sending, bandwidth_mbps, rtt_ms), sending),
                   (self.latency_ms(local, bandwidth_mbps, rtt_ms), local)]
        latency, split = min(options)
        return split, latency

    def decision(self, split: int, bandwidth_mbps: float, rtt_ms: float, slo_ms: float | None) -> ChainDecision:
        k = split + 1
        sends = split < self.n - 1
        d = ChainDecision(exit=self.path.exit, split=split, n_layers=self.n, head_ms=self.head[k],
                          activation_bytes=self.sent[k] if sends else 0,
                          transfer_ms=transfer_ms(self.sent[k], bandwidth_mbps) if sends else 0.0,
                          rtt_ms=rtt_ms if sends else 0.0, tail_ms=self.tail[k], accuracy=self.path.accuracy)
        if slo_ms is None:
            return d
        return ChainDecision(**{**asdict(d), "met_slo": d.latency_ms <= slo_ms})


class ChainTable:
    """Precomputed prefix sums and split envelopes for every exit path of a chain model."""

    def __init__(self, paths: Sequence[ChainPath], input_bytes: int):
        if not paths:
            raise ValueError("no exit paths. To fix: give at least the final classifier's path")
        finals = [p for p in paths if p.exit is None]
        if len(finals) != 1:
            raise ValueError(f"{len(finals)} paths have exit=None. To fix: mark exactly the final classifier "
                             "path with exit=None")
        if input_bytes < 0:
            raise ValueError(f"input_bytes is {input_bytes}, must be >= 0. To fix: give the request size")
        self.input_bytes = input_bytes
        self.tables = [_PathTable(p, input_bytes) for p in paths]
        self.final = next(t for t in self.tables if t.path.exit is None)
        self._by_accuracy = sorted(self.tables, key=self._rank, reverse=True)

    @staticmethod
    def _rank(t: _PathTable) -> tuple[float, int]:
        """Edgent's preference: higher accuracy; unknown accuracy ranks below known, deeper exits first."""
        return (t.path.accuracy, 0) if t.path.accuracy is not None else (-1.0, t.n)

    @property
    def paths(self) -> list[ChainPath]:
        return [t.path for t in self.tables]

    def _table(self, exit: int | None) -> _PathTable:
        for t in self.tables:
            if t.path.exit == exit:
                return t
        raise ValueError(f"unknown exit {exit!r}. To fix: use one of {[t.path.exit for t in self.tables]}")

    def latency_ms(self, exit: int | None, split: int, bandwidth_mbps: float, rtt_ms: float = 0.0) -> float:
        """L_p(k) of the module docstring, directly from the tables."""
        t = self._table(exit)
        if not -1 <= split < t.n:
            raise ValueError(f"split {split} outside -1..{t.n - 1} for exit {exit}. To fix: pick a layer index "
                             "on the exit path (-1 = cloud-only)")
        return t.latency_ms(split, bandwidth_mbps, rtt_ms)

    def decide(self, exit: int | None, split: int, bandwidth_mbps: float, rtt_ms: float = 0.0,
               slo_ms: float | None = None) -> ChainDecision:
        """The breakdown of a given (exit, split)."""
        self.latency_ms(exit, split, bandwidth_mbps, rtt_ms)  # validates
        return self._table(exit).decision(split, bandwidth_mbps, rtt_ms, slo_ms)

    def neurosurgeon(self, bandwidth_mbps: float, rtt_ms: float = 0.0) -> ChainDecision:
        """Fastest split of the full model (final exit)."""
        split, _ = self.final.best_split(bandwidth_mbps, rtt_ms)
        return self.final.decision(split, bandwidth_mbps, rtt_ms, None)

    def edgent(self, bandwidth_mbps: float, slo_ms: float, rtt_ms: float = 0.0) -> ChainDecision:
        """Most accurate exit whose fastest split meets `slo_ms`; else the fastest (exit, split)."""
        best: tuple[float, int, _PathTable] | None = None
        fastest: tuple[float, int, _PathTable] | None = None
        for t in self._by_accuracy:
            if best is not None and self._rank(t) != self._rank(best[2]):
                break
            split, latency = t.best_split(bandwidth_mbps, rtt_ms)
            if latency <= slo_ms and (best is None or latency < best[0]):
                best = (latency, split, t)
            if fastest is None or latency < fastest[0]:
                fastest = (latency, split, t)
        _, split, t = best or fastest  # type: ignore[misc]
        return t.decision(split, bandwidth_mbps, rtt_ms, slo_ms)

    def device_only(self) -> ChainDecision:
        return self.final.decision(self.final.n - 1, 1.0, 0.0, None)

    def cloud_only(self, bandwidth_mbps: float, rtt_ms: float = 0.0) -> ChainDecision:
        return self.final.decision(-1, bandwidth_mbps, rtt_ms, None)
