"""Exact placement reference for small op graphs: a MILP over device assignment and op start times (HiGHS).

Variables: x_{i,d} ∈ {0,1} (op i on device d), s_i ≥ 0 (start), C (makespan); δ_{ij} ∈ [0,1] per edge
(1 when i and j are on different devices); for every pair {i, j} NOT related by precedence (an antichain
pair) an order y_{ij} ∈ {0,1} and σ_{ij} ∈ [0,1] (1 when i and j share a device). With w_i = Σ_d w_{i,d} x_{i,d}:

    min C  s.t.  Σ_d x_{i,d} = 1                                   each op on one device
                 s_j ≥ s_i + w_i + c_{ij} δ_{ij},  δ_{ij} ≥ x_{i,d} - x_{j,d}  ∀d        edges i → j
                 s_i ≥ Σ_d cin_d x_{i,d}                            entry ops wait for the input (on device 0)
                 σ_{ij} ≥ x_{i,d} + x_{j,d} - 1  ∀d                 antichain pairs share a device ⇒ σ = 1, then
                 s_j ≥ s_i + w_i - M(1 - y_{ij}) - M(1 - σ_{ij}),  s_i ≥ s_j + w_j - M y_{ij} - M(1 - σ_{ij})
                 C ≥ s_i + w_i + tail_i,  C ≥ Σ_i w_{i,d} x_{i,d}  ∀d,  s_i ≥ head_i,  C ≤ UB
                 Σ_i (param_i + out_i) x_{i,d} ≤ mem_d  ∀d

c_{ij} = min over links of (latency + out_bytes_i / bandwidth), cin_d = the input's transfer 0 → d; head_i / tail_i
are the longest paths into / out of i at each op's fastest cost (valid cuts); UB = a heuristic's simulated makespan
(also the MIP start). This is the simulator's model minus link contention and with a free op order on each device:
every simulated schedule is a feasible point, so the optimum — and HiGHS's dual bound when it stops at the time
limit — is a LOWER BOUND on the simulated makespan of any placement, under any op order. Cuts that tighten the
relaxation: for u ≺ v whose window A_uv = desc(u) ∩ anc(v) holds parallel ops, s_v - s_u - w_u ≥ Σ_{i ∈ A_uv}
w_{i,d} x_{i,d} ∀d (A_uv's ops on d run one at a time in between), and the same for anc(v) and desc(u). Devices 1..n-1
of one kind with identical links are interchangeable; ordering them by their lowest-numbered op
(x_{i,d+1} ≤ Σ_{k<i} x_{k,d}) breaks the symmetry, and with all devices alike a graph's single entry op goes on 0.
`optimal_placement` splits the problem at articulation ops where it can (see its doc).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from isthmus.placement.devices import DeviceSet
from isthmus.placement.graph import OpGraph

__all__ = ["ExactResult", "optimal_placement"]


@dataclass
class ExactResult:
    """`bound_ms` ≤ every placement's simulated makespan; `value_ms` = the incumbent's MILP makespan (its order is
    free and links never contend, so `simulate(placement)` can be larger); `optimal` when the gap closed."""

    placement: np.ndarray
    value_ms: float
    bound_ms: float
    optimal: bool
    status: str
    seconds: float
    n_pairs: int
    start_ms: np.ndarray | None = None  # the incumbent's op start times (its op order on each device)


def _unrelated(reach: np.ndarray) -> np.ndarray:
    """[n, n]: ops i ≠ j neither of which reaches the other (they may run in parallel)."""
    return ~(reach | reach.T | np.eye(len(reach), dtype=bool))


def _antichain_pairs(reach: np.ndarray) -> np.ndarray:
    """[P, 2] index pairs (i < j) of ops neither of which reaches the other."""
    i, j = np.nonzero(np.triu(_unrelated(reach), 1))
    return np.stack([i, j], axis=1)


def _windows(reach: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs u ≺ v whose window A_uv = desc(u) ∩ anc(v) holds two parallel ops: ([W, 2] pairs, [W, n] masks)."""
    anti = _unrelated(reach).astype(np.int32)
    inside = reach[:, None, :] & reach.T[None, :, :]  # [u, v, i]: u -> i -> v
    parallel = np.einsum("uvi,ij,uvj->uv", inside.astype(np.int32), anti, inside.astype(np.int32), optimize=True)
    u, v = np.nonzero(parallel > 0)
    return np.stack([u, v], axis=1), inside[u, v]


def _head_tail(graph: OpGraph, fastest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    head, tail = np.zeros(graph.n), np.zeros(graph.n)
    for i in range(graph.n):
        head[i] = max((head[p] + fastest[p] for p in graph.preds[i]), default=0.0)
    for i in reversed(range(graph.n)):
        tail[i] = max((fastest[j] + tail[j] for j in graph.succs[i]), default=0.0)
    return head, tail


def _same_links(devices: DeviceSet) -> bool:
    """Every link between two different devices (n ≥ 2) has the same latency and bandwidth."""
    off = ~np.eye(devices.n, dtype=bool)
    return bool(np.ptp(devices.link_latency_ms[off]) == 0
                and np.ptp(devices.link_bw_gbps[off]) == 0)


def _symmetric_devices(devices: DeviceSet) -> list[int]:
    """Devices 1..n-1 when they are one kind and every link between two devices is the same (else none)."""
    if devices.n < 2:
        return []
    same_kind = all(k == devices.kinds[1] for k in devices.kinds[1:])
    return list(range(1, devices.n)) if same_kind and _same_links(devices) else []


class _Rows:
    """Sparse constraint rows lo ≤ A v ≤ hi, appended in vectorised blocks."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.count = 0

    def add(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """`rows` are 0-based within this block of len(lo) rows."""
        rows, cols, vals = (np.asarray(a).ravel() for a in (rows, cols, vals))
        self.r.append(rows + self.count)
        self.c.append(cols)
        self.v.append(vals.astype(float))
        self.lo.append(np.broadcast_to(np.asarray(lo, float), (len(lo),)).copy())
        self.hi.append(np.broadcast_to(np.asarray(hi, float), (len(lo),)).copy())
        self.count += len(lo)


def _solve_milp(graph: OpGraph, devices: DeviceSet, costs: np.ndarray, time_limit_s: float, start: np.ndarray,
                mip_rel_gap: float, fixed: dict[int, int] | None = None) -> ExactResult:
    """The module's MILP for the whole graph; `fixed` pins ops to devices (op -> device)."""
    import highspy
    from scipy import sparse

    from isthmus.placement.simulator import simulate

    t0 = time.perf_counter()
    n, nd = graph.n, devices.n
    fixed = fixed or {}
    sim = simulate(graph, devices, start, costs=costs, timeline=True)
    if not sim.feasible:
        raise ValueError(f"start placement is infeasible ({sim.violation}). To fix: start from a feasible placement")
    sim_begin = {e.name: e.start_ms for e in sim.timeline if e.kind == "op"}
    sim_start_ms = np.array([sim_begin[op] for op in graph.ops])  # the start's schedule
    ub = float(sim.makespan_ms) * (1 + 1e-9) + 1e-12
    edges = np.array(graph.edges, dtype=int).reshape(-1, 2)
    reach = graph.reachability()
    pairs = _antichain_pairs(reach)
    ne, npairs = len(edges), len(pairs)
    fastest = costs.min(axis=1)
    head, tail = _head_tail(graph, fastest)
    off = ~np.eye(nd, dtype=bool)
    if nd > 1:
        lat_min = devices.link_latency_ms[off].min()
        inv_bw_min = (1.0 / (devices.link_bw_gbps[off] * 1e6)).min()
    else:
        lat_min = inv_bw_min = 0.0
    comm = lat_min + graph.out_bytes * inv_bw_min  # c_ij for edge i -> j, a function of i
    cin = np.array([devices.transfer_ms(0, d, graph.input_bytes) for d in range(nd)])
    need = graph.param_bytes + graph.out_bytes

    # column layout: x (n*nd) | s (n) | C | δ (ne) | y (npairs) | σ (npairs)
    X, S, CC = 0, n * nd, n * nd + n
    DL = CC + 1
    Y = DL + ne
    SG = Y + npairs
    ncol = SG + npairs
    xi = np.arange(n * nd).reshape(n, nd)
    col_lo = np.zeros(ncol)
    col_hi = np.ones(ncol)
    col_lo[S:S + n] = head
    col_hi[S:S + n] = ub - tail - fastest
    col_lo[CC], col_hi[CC] = max(head[i] + fastest[i] + tail[i] for i in range(n)) if n else 0.0, ub
    cost = np.zeros(ncol)
    cost[CC] = 1.0
    integer = np.zeros(ncol, dtype=np.uint8)
    integer[X:X + n * nd] = 1
    integer[Y:Y + npairs] = 1

    rows = _Rows()
    inf = highspy.kHighsInf
    ops = np.arange(n)
    # Σ_d x_{i,d} = 1
    rows.add(np.repeat(ops, nd), xi.ravel(), np.ones(n * nd), np.ones(n), np.ones(n))
    # C - s_i - Σ_d w_{i,d} x_{i,d} ≥ tail_i
    r = np.repeat(ops, nd + 2)
    c = np.concatenate([np.full((n, 1), CC), S + ops[:, None], xi], axis=1).ravel()
    v = np.concatenate([np.ones((n, 1)), -np.ones((n, 1)), -costs], axis=1).ravel()
    rows.add(r, c, v, tail, np.full(n, inf))
    # C - Σ_i w_{i,d} x_{i,d} ≥ 0 and Σ_i need_i x_{i,d} ≤ mem_d, per device
    dev = np.arange(nd)
    rows.add(np.concatenate([dev, np.repeat(dev, n)]), np.concatenate([np.full(nd, CC), xi.T.ravel()]),
             np.concatenate([np.ones(nd), -costs.T.ravel()]), np.zeros(nd), np.full(nd, inf))
    rows.add(np.repeat(dev, n), xi.T.ravel(), np.tile(need, nd), np.full(nd, -inf), devices.mem_bytes.astype(float))
    # entry ops: s_i - Σ_d cin_d x_{i,d} ≥ 0
    entries = np.array([i for i in range(n) if not graph.preds[i]], dtype=int)
    if entries.size and nd > 1:
        k = len(entries)
        rows.add(np.repeat(np.arange(k), nd + 1),
                 np.concatenate([S + entries[:, None], xi[entries]], axis=1).ravel(),
                 np.concatenate([np.ones((k, 1)), -np.tile(cin, (k, 1))], axis=1).ravel(), np.zeros(k),
                 np.full(k, inf))
    if ne:
        a, b = edges[:, 0], edges[:, 1]
        e = np.arange(ne)
        # s_b - s_a - Σ_d w_{a,d} x_{a,d} - c_a δ_e ≥ 0
        rows.add(np.repeat(e, nd + 3),
                 np.concatenate([(S + b)[:, None], (S + a)[:, None], xi[a], (DL + e)[:, None]], axis=1).ravel(),
                 np.concatenate([np.ones((ne, 1)), -np.ones((ne, 1)), -costs[a], -comm[a][:, None]], axis=1).ravel(),
                 np.zeros(ne), np.full(ne, inf))
        if nd > 1:  # δ_e - x_{a,d} + x_{b,d} ≥ 0
            m = ne * nd
            rr = np.repeat(np.arange(m), 3)
            cc = np.stack([np.repeat(DL + e, nd), xi[a].ravel(), xi[b].ravel()], axis=1).ravel()
            vv = np.tile([1.0, -1.0, 1.0], m)
            rows.add(rr, cc, vv, np.zeros(m), np.full(m, inf))
        else:
            col_hi[DL:DL + ne] = 0.0
    if npairs:
        i, j = pairs[:, 0], pairs[:, 1]
        p = np.arange(npairs)
        # σ_p - x_{i,d} - x_{j,d} ≥ -1
        m = npairs * nd
        rows.add(np.repeat(np.arange(m), 3),
                 np.stack([np.repeat(SG + p, nd), xi[i].ravel(), xi[j].ravel()], axis=1).ravel(),
                 np.tile([1.0, -1.0, -1.0], m), np.full(m, -1.0), np.full(m, inf))
        m_ij = np.maximum(ub - tail[i] - head[j], 0.0)  # s_i + w_i - s_j ≤ this
        m_ji = np.maximum(ub - tail[j] - head[i], 0.0)
        # i before j: s_j - s_i - w_i - M y - M σ ≥ -2M
        rows.add(np.repeat(p, nd + 4),
                 np.concatenate([(S + j)[:, None], (S + i)[:, None], xi[i], (Y + p)[:, None], (SG + p)[:, None]],
                                axis=1).ravel(),
                 np.concatenate([np.ones((npairs, 1)), -np.ones((npairs, 1)), -costs[i], -m_ij[:, None],
                                 -m_ij[:, None]], axis=1).ravel(), -2 * m_ij, np.full(npairs, inf))
        # j before i: s_i - s_j - w_j + M y - M σ ≥ -M
        rows.add(np.repeat(p, nd + 4),
                 np.concatenate([(S + i)[:, None], (S + j)[:, None], xi[j], (Y + p)[:, None], (SG + p)[:, None]],
                                axis=1).ravel(),
                 np.concatenate([np.ones((npairs, 1)), -np.ones((npairs, 1)), -costs[j], m_ji[:, None],
                                 -m_ji[:, None]], axis=1).ravel(), -m_ji, np.full(npairs, inf))
    _window_cuts(rows, graph, costs, reach, xi, S, CC)
    pinned = set(fixed.values())
    sym = [d for d in _symmetric_devices(devices) if d not in pinned]
    if not fixed and sym and len(entries) == 1 and len(sym) == nd - 1 and devices.kinds[0] == devices.kinds[1]:
        col_hi[xi[entries[0], 1:]] = 0.0  # one entry op, all devices alike: swapping its device with 0 never hurts
    for op, d in fixed.items():
        col_hi[xi[op]] = 0.0
        col_hi[xi[op, d]] = col_lo[xi[op, d]] = 1.0
    rr, kk = np.nonzero(np.tril(np.ones((n, n), dtype=bool), -1))  # k < i
    for d, d_next in zip(sym, sym[1:]):  # x_{i,d+1} - Σ_{k<i} x_{k,d} ≤ 0
        rows.add(np.concatenate([ops, rr]), np.concatenate([xi[:, d_next], xi[kk, d]]),
                 np.concatenate([np.ones(n), -np.ones(len(kk))]), np.full(n, -inf), np.zeros(n))

    a_mat = sparse.csc_matrix((np.concatenate(rows.v), (np.concatenate(rows.r), np.concatenate(rows.c))),
                              shape=(rows.count, ncol))
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = ncol, rows.count
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, col_lo, col_hi
    lp.row_lower_, lp.row_upper_ = np.concatenate(rows.lo), np.concatenate(rows.hi)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a_mat.indptr, a_mat.indices, a_mat.data
    lp.integrality_ = [highspy.HighsVarType.kInteger if t else highspy.HighsVarType.kContinuous for t in integer]
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
    h.passModel(lp)
    h.setSolution(_start_vector(start, sim_start_ms, sim.makespan_ms, pairs, edges, ncol, (S, CC, DL, Y, SG), xi))
    if h.run() == highspy.HighsStatus.kError:
        raise RuntimeError(f"HiGHS failed on the placement MILP of {graph.name!r} "
                           f"({h.modelStatusToString(h.getModelStatus())}). To fix: rerun with output_flag on")
    info = h.getInfo()
    status = h.modelStatusToString(h.getModelStatus())
    values = np.asarray(h.getSolution().col_value)
    if values.size == ncol and info.primal_solution_status == 2:
        placement = values[:n * nd].reshape(n, nd).argmax(axis=1)
        value = float(values[CC])
        begin = values[S:S + n]
    else:  # no incumbent at all (cannot happen with the start): keep the start
        placement, value, begin = np.asarray(start, int), float(sim.makespan_ms), sim_start_ms
    bound = float(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else float(col_lo[CC])
    bound = min(max(bound, float(col_lo[CC])), value)
    return ExactResult(placement.astype(int), value, bound, status == "Optimal", status,
                       time.perf_counter() - t0, npairs, begin)


def _articulations(reach: np.ndarray) -> list[int]:
    """Ops comparable to every other op (each op is before or after them), in topological order."""
    return [int(i) for i in np.nonzero(~_unrelated(reach).any(axis=1))[0]]


def _homogeneous(devices: DeviceSet) -> bool:
    return devices.n > 1 and all(k == devices.kinds[0] for k in devices.kinds) and _same_links(devices)


def _subgraph(graph: OpGraph, ops: list[int]) -> OpGraph:
    """Ops `ops` (sorted) and the edges among them; no request input (input_bytes 0)."""
    index = {v: k for k, v in enumerate(ops)}
    edges = [(index[a], index[b]) for a, b in graph.edges if a in index and b in index]
    pick = np.asarray(ops)
    return OpGraph(f"{graph.name}[{ops[0]}:{ops[-1]}]", [graph.ops[v] for v in ops], [graph.kinds[v] for v in ops],
                   graph.flops[pick], graph.param_bytes[pick], graph.in_bytes[pick], graph.out_bytes[pick],
                   graph.host_ms[pick], edges, 0, graph.host, batch=graph.batch)


def optimal_placement(graph: OpGraph, devices: DeviceSet, costs: np.ndarray | None = None,
                      time_limit_s: float = 20.0, start: np.ndarray | None = None,
                      mip_rel_gap: float = 1e-6) -> ExactResult:
    """Solve the module's MILP with HiGHS in at most about `time_limit_s` s; `start` (default: the best heuristic)
    gives the upper bound and the MIP start of the whole MILP.

    On alike devices (one kind, equal links) a graph with one entry and one exit op is cut at its articulation ops
    a_0 < a_1 < ... (ops every other op precedes or follows): ops between a_k and a_{k+1} run in
    [finish(a_k), start(a_{k+1})], so the MILP separates into one small MILP per segment and per case
    "a_{k+1} on a_k's device" / "on another" (by symmetry the only two), minimising start(a_{k+1}) - finish(a_k):
    optimum = Σ_k w(a_k) + Σ_k min(same_k, other_k), the same optimum as the whole MILP without memory limits (a
    relaxation, so still a lower bound; the placement is checked against them). Used only when no edge jumps over
    an articulation op; otherwise (and on mixed devices) the whole MILP is solved."""
    if time_limit_s <= 0:
        raise ValueError(f"time_limit_s={time_limit_s}: must be > 0. To fix: pass a positive number of seconds")
    costs = graph.cost_ms(devices) if costs is None else np.asarray(costs, float)
    reach = graph.reachability()
    arts = _articulations(reach)
    single_ends = sum(not p for p in graph.preds) == 1 and sum(not s for s in graph.succs) == 1
    edges = np.array(graph.edges, dtype=int).reshape(-1, 2)
    crossing = bool((reach[edges[:, 0]][:, arts] & reach[arts][:, edges[:, 1]].T).any()) if len(edges) else False
    if _homogeneous(devices) and single_ends and len(arts) >= 3 and not crossing:
        return _by_segments(graph, devices, costs, time_limit_s, arts, reach, mip_rel_gap)
    if start is None:
        from isthmus.placement.place import best_heuristic

        _, start, _, _, _ = best_heuristic(graph, devices, costs)
    return _solve_milp(graph, devices, costs, time_limit_s, np.asarray(start, int), mip_rel_gap)


def _by_segments(graph: OpGraph, devices: DeviceSet, costs: np.ndarray, time_limit_s: float, arts: list[int],
                 reach: np.ndarray, mip_rel_gap: float) -> ExactResult:
    from isthmus.placement.simulator import memory_bytes

    t0 = time.perf_counter()
    nd = devices.n
    segments = [(u, v, [int(i) for i in np.nonzero(reach[u] & reach[:, v])[0]]) for u, v in zip(arts, arts[1:])]
    hard = sum(1 for _, _, inner in segments if inner)
    value = bound = float(costs[arts, 0].sum())
    placement = np.zeros(graph.n, dtype=int)
    begin = np.zeros(graph.n)
    optimal, pairs, left = True, 0, time_limit_s
    for u, v, inner in segments:
        choice: tuple[str, np.ndarray | None] = ("same", None)  # u -> v directly: keeping v on u's device is free
        if inner:
            ops = [u] + inner + [v]
            sub = _subgraph(graph, ops)
            sub_costs = costs[ops].copy()
            sub_costs[0] = 0.0  # start the clock at u's finish
            w_v = float(costs[v, 0])
            results = {}
            for case, dv in (("same", 0), ("other", 1)):
                limit = max(left / max(hard, 1) / 2, 0.05)
                start = np.zeros(len(ops), dtype=int)
                start[-1] = dv
                res = _solve_milp(sub, devices, sub_costs, limit, start, mip_rel_gap, fixed={0: 0, len(ops) - 1: dv})
                results[case] = res
                left -= res.seconds
            hard -= 1
            case = min(results, key=lambda c: results[c].value_ms)
            res = results[case]
            value += res.value_ms - w_v
            bound += min(r.bound_ms for r in results.values()) - w_v
            optimal &= all(r.optimal for r in results.values())
            pairs += results["same"].n_pairs
            choice = (case, res.placement)
        du = placement[u]
        dv = du if choice[0] == "same" else (du + 1) % nd
        if choice[1] is not None:
            others = [d for d in range(nd) if d not in (du, dv)]
            mapping = np.array([du] + ([dv] if dv != du else []) + others)
            placement[inner] = mapping[choice[1][1:-1]]
            rel = results[choice[0]].start_ms - results[choice[0]].start_ms[0]  # after u's finish
            begin[inner] = begin[u] + costs[u, 0] + rel[1:-1]
            begin[v] = begin[u] + costs[u, 0] + rel[-1]
        else:
            begin[v] = begin[u] + costs[u, 0]
        placement[v] = dv
    feasible = bool((memory_bytes(graph, devices, placement) <= devices.mem_bytes).all())
    status = "Optimal" if optimal else "Time limit reached"
    if not feasible:
        status += " (segments' placement over a memory limit)"
    return ExactResult(placement, value, min(bound, value), optimal and feasible, status,
                       time.perf_counter() - t0, pairs, begin)


def _window_cuts(rows: _Rows, graph: OpGraph, costs: np.ndarray, reach: np.ndarray, xi: np.ndarray, S: int,
                 CC: int) -> None:
    """Valid cuts per device d: the ops of a window A_uv placed on d run one at a time between u's finish and v's
    start, s_v - s_u - w_u ≥ Σ_{i ∈ A_uv} w_{i,d} x_{i,d}; likewise s_v ≥ Σ_{anc(v)} and C ≥ s_u + w_u + Σ_{desc(u)}."""
    inf = float("inf")
    n, nd = costs.shape
    windows, masks = _windows(reach)
    u, v = windows[:, 0], windows[:, 1]
    w = np.arange(len(windows))
    k, i = np.nonzero(masks)
    ops = np.arange(n)
    vv, ii = np.nonzero(reach.T)  # ii is an ancestor of vv
    uu, jj = np.nonzero(reach)  # jj is a descendant of uu
    for d in range(nd):
        if len(windows):
            rows.add(np.concatenate([w, w, np.repeat(w, nd), k]),
                     np.concatenate([S + v, S + u, xi[u].ravel(), xi[i, d]]),
                     np.concatenate([np.ones(len(w)), -np.ones(len(w)), -costs[u].ravel(), -costs[i, d]]),
                     np.zeros(len(w)), np.full(len(w), inf))
        rows.add(np.concatenate([ops, vv]), np.concatenate([S + ops, xi[ii, d]]),
                 np.concatenate([np.ones(n), -costs[ii, d]]), np.zeros(n), np.full(n, inf))
        rows.add(np.concatenate([ops, ops, np.repeat(ops, nd), uu]),
                 np.concatenate([np.full(n, CC), S + ops, xi.ravel(), xi[jj, d]]),
                 np.concatenate([np.ones(n), -np.ones(n), -costs.ravel(), -costs[jj, d]]), np.zeros(n),
                 np.full(n, inf))


def _start_vector(start: np.ndarray, s: np.ndarray, makespan_ms: float, pairs: np.ndarray, edges: np.ndarray,
                  ncol: int, offsets: tuple[int, int, int, int, int], xi: np.ndarray):
    """The MIP start: placement `start` with its simulated start times `s` (a feasible point of the MILP)."""
    import highspy

    S, CC, DL, Y, SG = offsets
    place = np.asarray(start, int)
    v = np.zeros(ncol)
    v[xi[np.arange(len(place)), place]] = 1.0
    v[S:S + len(place)] = s
    v[CC] = makespan_ms
    if len(edges):
        v[DL:DL + len(edges)] = place[edges[:, 0]] != place[edges[:, 1]]
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        v[Y:Y + len(pairs)] = s[i] <= s[j]
        v[SG:SG + len(pairs)] = place[i] == place[j]
    sol = highspy.HighsSolution()
    sol.col_value = v.tolist()
    sol.value_valid = True
    return sol
