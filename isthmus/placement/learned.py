"""Learned placement: a graph policy trained with REINFORCE against the simulator (Mirhoseini et al. / AutoDeep).

Policy: op features x_i (log work, FLOPs, bytes, rank, depth, degree; in "moves" mode also the op's
current device) → h⁰_i = MLP(x_i); K rounds of message passing
h^{k+1}_i = relu(A h^k_i + B·mean_{p ∈ pred(i)} h^k_p + C·mean_{s ∈ succ(i)} h^k_s); per-op device
logits z_i = W h^K_i.

- mode "moves" (Placeto's MDP, the default): state = current placement, action = move a unit u (one op
  or a chain of ops) to device d with π(u, d) ∝ exp(mean_{i ∈ u} z_{i,d}); a step samples `batch`
  distinct actions, reward R = (makespan_now - makespan_after) / makespan_ref, baseline = the batch
  mean; the state moves to the best sampled action when it improves. Starting from a heuristic's
  placement is "starting from the best heuristic".
- mode "full" (Mirhoseini et al.): placement ~ Π_i softmax(z_i), R = -makespan / makespan_ref,
  baseline = an exponential moving average of R; memory-infeasible samples get R = -3.

Both: ∇J ≈ mean_batch[(R - b) · ∇ log π] + β ∇H(π), Adam. The result is the best placement seen
(the start included), so it never loses to its start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from isthmus.placement.devices import DeviceSet
from isthmus.placement.graph import OpGraph
from isthmus.placement.simulator import simulate, upward_rank

__all__ = ["LearnResult", "learn_placement"]


@dataclass
class LearnResult:
    placement: np.ndarray
    makespan_ms: float
    seed_makespan_ms: float
    episodes: int
    search_s: float
    history: list[float] = field(default_factory=list)  # best makespan after each episode


def _features(graph: OpGraph, devices: DeviceSet, costs: np.ndarray) -> np.ndarray:
    rank = upward_rank(graph, costs, devices)
    depth = np.zeros(graph.n)
    for i in range(graph.n):
        depth[i] = max((depth[p] + 1 for p in graph.preds[i]), default=0.0)
    cols = [np.log(costs.mean(axis=1) + 1e-6), np.log1p(graph.flops), np.log1p(graph.out_bytes),
            np.log1p(graph.param_bytes), rank / max(rank.max(), 1e-12), depth / max(depth.max(), 1.0),
            np.array([len(p) for p in graph.preds], float), np.array([len(s) for s in graph.succs], float)]
    x = np.stack(cols, axis=1)
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)


def _mean_adjacency(n: int, neighbours: list[list[int]]):  # -> torch.Tensor
    import torch

    a = torch.zeros(n, n)
    for i, ns in enumerate(neighbours):
        for j in ns:
            a[i, j] = 1.0 / len(ns)
    return a


def _policy(n_features: int, n_devices: int, hidden: int, rounds: int):  # -> torch.nn.Module
    import torch
    from torch import nn

    class _GraphPolicy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
            self.rounds = nn.ModuleList(nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(3)])
                                        for _ in range(rounds))
            self.head = nn.Linear(hidden, n_devices)

        def forward(self, x: torch.Tensor, pred: torch.Tensor, succ: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.embed(x))
            for own, up, down in self.rounds:
                h = torch.relu(own(h) + up(pred @ h) + down(succ @ h))
            return self.head(h)

    return _GraphPolicy()


def _units(graph: OpGraph) -> list[list[int]]:
    """Move units: every op alone, plus every maximal chain (single-producer / single-consumer links) of 2+ ops."""
    head = list(range(graph.n))
    for i in range(graph.n):
        p = graph.preds[i]
        if len(p) == 1 and len(graph.succs[p[0]]) == 1:
            head[i] = head[p[0]]
    chains: dict[int, list[int]] = {}
    for i in range(graph.n):
        chains.setdefault(head[i], []).append(i)
    return [[i] for i in range(graph.n)] + [c for c in chains.values() if len(c) > 1]


class _Evaluator:
    """Makespan of a placement from the simulator, memoised (policies resample the same placements)."""

    def __init__(self, graph: OpGraph, devices: DeviceSet, costs: np.ndarray):
        self.graph, self.devices, self.costs = graph, devices, costs
        self.priority = upward_rank(graph, costs, devices)
        self.seen: dict[bytes, float] = {}

    def __call__(self, placement: np.ndarray) -> float:
        key = placement.astype(np.int16).tobytes()
        if key not in self.seen:
            self.seen[key] = simulate(self.graph, self.devices, placement, costs=self.costs,
                                      priority=self.priority).makespan_ms
        return self.seen[key]


def learn_placement(graph: OpGraph, devices: DeviceSet, costs: np.ndarray | None = None,
                    init: np.ndarray | None = None, mode: str = "moves", episodes: int = 200, batch: int = 8,
                    lr: float = 0.01, entropy: float = 0.01, hidden: int = 32, rounds: int = 2, seed: int = 0,
                    time_budget_s: float | None = None) -> LearnResult:
    """Train the policy for `episodes` REINFORCE steps of `batch` samples each (or until `time_budget_s`).

    mode "moves" (Placeto's MDP): state = the current placement (an input feature), action = move one
    unit (an op, or a chain of ops) to a device, reward = makespan decrease / makespan_ref; the state
    advances to the best sampled action when it improves. mode "full" (Mirhoseini et al.): each sample
    is a whole placement, reward = -makespan / makespan_ref. `init` (default: all on device 0) is the
    starting placement; the result is the best placement seen, so never worse than `init`."""
    import torch

    if episodes < 0 or batch < 1:
        raise ValueError(f"episodes={episodes}, batch={batch}: need episodes >= 0 and batch >= 1. "
                         "To fix: pass positive numbers")
    if mode not in ("moves", "full"):
        raise ValueError(f"mode={mode!r}. To fix: use 'moves' or 'full'")
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        costs = graph.cost_ms(devices) if costs is None else costs
        evaluate = _Evaluator(graph, devices, costs)
        current = np.zeros(graph.n, dtype=int) if init is None else np.asarray(init, dtype=int).copy()
        current_ms = seed_ms = evaluate(current)
        ref = seed_ms if np.isfinite(seed_ms) else float(costs.min(axis=1).sum())
        static = torch.tensor(_features(graph, devices, costs), dtype=torch.float32)
        pred, succ = _mean_adjacency(graph.n, graph.preds), _mean_adjacency(graph.n, graph.succs)
        n_in = static.shape[1] + (devices.n if mode == "moves" else 0)
        policy = _policy(n_in, devices.n, hidden, rounds)
        opt = torch.optim.Adam(policy.parameters(), lr=lr)
        units = _units(graph)
        member = torch.zeros(len(units), graph.n)
        for u, ops in enumerate(units):
            member[u, ops] = 1.0 / len(ops)
        baseline = 0.0
        history: list[float] = []
        done = 0
        while done < episodes and devices.n > 1:
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                break
            done += 1
            if mode == "moves":
                x = torch.cat([static, torch.nn.functional.one_hot(torch.tensor(current), devices.n).float()], 1)
                logits = member @ policy(x, pred, succ)  # [units, devices]
                here = torch.tensor([[bool((current[ops] == d).all()) for d in range(devices.n)] for ops in units])
                flat = torch.log_softmax(logits.masked_fill(here, -1e9).flatten(), 0)
                k = min(batch, int((~here).sum()))
                if k == 0:
                    break
                actions = torch.multinomial(flat.exp(), k, replacement=False)
                candidates = []
                for a in actions.tolist():
                    p = current.copy()
                    p[units[a // devices.n]] = a % devices.n
                    candidates.append(p)
                spans = np.array([evaluate(p) for p in candidates])
                rewards = np.where(np.isfinite(spans), (current_ms - spans) / ref, -1.0)
                logp = flat[actions]
                ent = -(flat.exp() * flat).sum()
                adv = torch.tensor(rewards - rewards.mean(), dtype=torch.float32)
            else:
                dist = torch.distributions.Categorical(logits=policy(static, pred, succ))
                samples = dist.sample((batch,))
                candidates = list(samples.numpy().astype(int))
                spans = np.array([evaluate(p) for p in candidates])
                rewards = np.where(np.isfinite(spans), -spans / ref, -3.0)
                logp = dist.log_prob(samples).sum(dim=1)
                ent = dist.entropy().mean()
                baseline = 0.9 * baseline + 0.1 * float(rewards.mean()) if done > 1 else float(rewards.mean())
                adv = torch.tensor(rewards - baseline, dtype=torch.float32)
            adv = adv / (adv.std() + 1e-6) if len(candidates) > 1 else adv
            loss = -(adv * logp).mean() - entropy * ent
            opt.zero_grad()
            loss.backward()
            opt.step()
            i = int(np.argmin(spans))
            if spans[i] < current_ms:
                current, current_ms = candidates[i].copy(), float(spans[i])
            history.append(current_ms)
    finally:
        torch.set_num_threads(threads)
    return LearnResult(current, current_ms, seed_ms, done, time.perf_counter() - t0, history)
