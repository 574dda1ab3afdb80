"""Candidate routes of a Spec, enumerated with numpy broadcasting (no per-route Python loops).

A route r of service s is (data version d, model version m, site j, instance type t): one pool
p = (j, t) with device dev(p). Its latency (docs/spec.md "Semantics") is

    L_r = rtt(o_s, j) + 8·bytes_d / bw(o_s, j) + latency_ms(m, dev(p))

and for a split route (k, e) of a source at an edge site:

    L_r = head_ms(k, e) + rtt(o_s, j) + 8·activation_bytes_k / bw(o_s, j) + tail_ms(k, e, dev(p)).

Resource use per request/s of flow f_r:
  * `usage[r]`: share of one instance of pool-version q(r) = (p, m) a request/s takes relative to
    the version's capacity c_q = capacity_rps(m, dev(p)) (1 for a whole-model route, tail/latency for a split);
  * `head_s[r]`: device-seconds per second on the source's edge site (the split head);
  * `egress_per_rps[r]`: $/h per request/s = bytes_sent·3600/1e9·egress_per_gb(o_s, j).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from isthmus.spec import Spec

__all__ = ["Network", "Pools", "RouteTable", "build_routes"]


@dataclass
class Network:
    """Dense place×place matrices; a place reaches itself with 0 ms and unlimited bandwidth."""

    places: list[str]
    rtt_ms: np.ndarray
    bandwidth_mbps: np.ndarray
    egress_per_gb: np.ndarray
    linked: np.ndarray

    @classmethod
    def from_spec(cls, spec: Spec) -> "Network":
        places = spec.place_names()
        index = {p: i for i, p in enumerate(places)}
        n = len(places)
        rtt = np.full((n, n), np.inf)
        bw = np.zeros((n, n))
        egress = np.zeros((n, n))
        np.fill_diagonal(rtt, 0.0)
        np.fill_diagonal(bw, np.inf)
        for link in spec.links:
            a, b = index[link.src], index[link.dst]
            for i, j in ((a, b), (b, a)):
                rtt[i, j], bw[i, j], egress[i, j] = link.rtt_ms, link.bandwidth_mbps, link.egress_per_gb
        return cls(places, rtt, bw, egress, np.isfinite(rtt))

    def index(self, place: str) -> int:
        return self.places.index(place)


@dataclass
class Pools:
    """Instance pools p = (site, instance type); an edge site is one pool of its device, free, `count` strong."""

    site: np.ndarray          # place index of the pool's site
    device: list[str]
    type_name: list[str]
    price_per_hour: np.ndarray
    max_count: np.ndarray
    is_edge: np.ndarray

    @classmethod
    def from_spec(cls, spec: Spec, net: Network) -> "Pools":
        rows = [(r.name, it.device, it.name, it.price_per_hour, it.max_count, False)
                for r in spec.regions for it in r.instance_types]
        rows += [(e.name, e.device, e.device, 0.0, e.count, True) for e in spec.edge_sites]
        site, device, name, price, count, edge = zip(*rows) if rows else ((),) * 6
        return cls(np.array([net.index(s) for s in site], dtype=np.int64), list(device), list(name),
                   np.array(price, dtype=float), np.array(count, dtype=float), np.array(edge, dtype=bool))

    def __len__(self) -> int:
        return len(self.device)


@dataclass
class RouteTable:
    """Routes as parallel arrays; `pv` indexes pool-versions q = (pool, model version), -1 for device-only."""

    spec: Spec
    net: Network
    pools: Pools
    version_names: list[tuple[str, str]]          # global model-version index -> (model, version)
    service: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    data_version: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    version: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pool: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    site: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    split: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    exit: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    usage: np.ndarray = field(default_factory=lambda: np.zeros(0))
    head_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    head_pool: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    egress_per_rps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # pool-versions
    pv: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pv_pool: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pv_version: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pv_capacity_rps: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.service)

    def subset(self, routes: np.ndarray) -> "RouteTable":
        """The table restricted to `routes` (indices), pool-versions re-indexed to those still used."""
        sub = RouteTable(self.spec, self.net, self.pools, self.version_names)
        for name in _ROUTE_COLUMNS:
            setattr(sub, name, getattr(self, name)[routes])
        used, sub.pv = np.unique(sub.pv, return_inverse=True)
        if len(used) and used[0] == -1:
            used, sub.pv = used[1:], sub.pv - 1
        sub.pv_pool, sub.pv_version, sub.pv_capacity_rps = self.pv_pool[used], self.pv_version[used], \
            self.pv_capacity_rps[used]
        return sub

    def compute_ms(self, r: int) -> float:
        """The part of route r's L_r spent at its site: the version's latency on the pool's device, or a split's
        tail there (a device-only split: its head on the edge device); the rest is the source's network and head."""
        model, name = self.version_names[self.version[r]]
        version = next(v for v in self.spec.model(model).versions if v.name == name)
        if self.split[r] < 0:
            return float(version.latency_ms[self.pools.device[self.pool[r]]])
        exit = None if self.exit[r] < 0 else int(self.exit[r])
        point = next(sp for sp in version.splits if sp.split == self.split[r] and sp.exit == exit)
        if self.pool[r] < 0:
            return float(point.head_ms[self.pools.device[self.head_pool[r]]])
        return float(point.tail_ms[self.pools.device[self.pool[r]]])

    def keys(self) -> np.ndarray:
        """One int64 key per route, stable across telemetry updates of the same spec structure."""
        cols = [self.service, self.data_version, self.version, self.pool + 1, self.split + 1, self.exit + 1]
        key = np.zeros(len(self), dtype=np.int64)
        for col in cols:
            key = key * 1_000_003 + col
        return key


_ROUTE_COLUMNS = ("service", "data_version", "version", "pool", "site", "split", "exit", "latency_ms", "accuracy",
                  "usage", "head_s", "head_pool", "egress_per_rps", "pv")


def _version_tables(spec: Spec, devices: list[str]):
    """Per global model version: accuracy, latency and capacity matrices over device kinds (nan = cannot run)."""
    names, acc, lat, cap, model_of = [], [], [], [], []
    for mi, model in enumerate(spec.models):
        for v in model.versions:
            names.append((model.name, v.name))
            acc.append(v.accuracy)
            lat.append([v.latency_ms.get(d, np.nan) for d in devices])
            cap.append([v.capacity(d) if d in v.latency_ms else np.nan for d in devices])
            model_of.append(mi)
    return names, np.array(acc), np.array(lat).reshape(len(names), len(devices)), \
        np.array(cap).reshape(len(names), len(devices)), np.array(model_of, dtype=np.int64)


def build_routes(spec: Spec, latency_headroom: float = 0.0) -> RouteTable:
    """Every route with L_r <= slo_s·(1 + latency_headroom), vectorised per model.

    Routes above the SLO but inside the headroom are kept so that a re-plan after telemetry can
    switch them on through a parameter (the planner bounds their flow to 0 while L_r > slo_s).
    """
    net = Network.from_spec(spec)
    pools = Pools.from_spec(spec, net)
    devices = sorted(spec.devices)
    dev_index = {d: i for i, d in enumerate(devices)}
    pool_dev = np.array([dev_index[d] for d in pools.device], dtype=np.int64)
    names, acc, lat, cap, model_of = _version_tables(spec, devices)
    t = RouteTable(spec, net, pools, names)
    parts: list[dict[str, np.ndarray]] = []
    source_index = {s.name: i for i, s in enumerate(spec.sources)}
    model_index = {m.name: i for i, m in enumerate(spec.models)}
    services = spec.services
    if not services or len(pools) == 0:
        return _finish(t, parts, cap, pool_dev)
    max_d = max(len(s.data_versions) for s in spec.sources)
    svc_src = np.array([source_index[s.source] for s in services])
    svc_model = np.array([model_index[s.model] for s in services])
    svc_slo = np.array([s.slo_ms for s in services]) * (1 + latency_headroom)
    origin = np.array([net.index(src.location) for src in spec.sources])
    dbytes = np.full((len(spec.sources), max_d), np.nan)
    ddelta = np.full((len(spec.sources), max_d), np.nan)
    for i, src in enumerate(spec.sources):
        dbytes[i, :len(src.data_versions)] = [d.bytes for d in src.data_versions]
        ddelta[i, :len(src.data_versions)] = [d.accuracy_delta for d in src.data_versions]
    for mi in range(len(spec.models)):
        svc = np.flatnonzero(svc_model == mi)
        vers = np.flatnonzero(model_of == mi)
        if len(svc) == 0:
            continue
        o = origin[svc_src[svc]]                                   # (S,)
        rtt = net.rtt_ms[o][:, pools.site]                         # (S, P)
        bw = net.bandwidth_mbps[o][:, pools.site]
        b = dbytes[svc_src[svc]]                                   # (S, D)
        with np.errstate(divide="ignore", invalid="ignore"):                  # unlinked: bw 0, rtt inf
            net_ms = rtt[:, None, :] + 8.0 * b[:, :, None] / (bw[:, None, :] * 1000.0)   # (S, D, P)
        comp = lat[vers][:, pool_dev]                              # (V, P)
        total = net_ms[:, :, None, :] + comp[None, None, :, :]     # (S, D, V, P)
        ok = np.isfinite(total) & (total <= svc_slo[svc][:, None, None, None])
        si, di, vi, pi = np.nonzero(ok)
        s_glob, v_glob = svc[si], vers[vi]
        egress = net.egress_per_gb[o[si], pools.site[pi]]
        parts.append(dict(
            service=s_glob, data_version=di, version=v_glob, pool=pi, site=pools.site[pi],
            split=np.full(len(si), -1), exit=np.full(len(si), -1), latency_ms=total[si, di, vi, pi],
            accuracy=acc[v_glob] + ddelta[svc_src[s_glob], di], usage=np.ones(len(si)), head_s=np.zeros(len(si)),
            head_pool=np.full(len(si), -1),
            egress_per_rps=b[si, di] * 3600.0 / 1e9 * egress))
    parts += _split_routes(spec, net, pools, pool_dev, lat, acc, names, svc_src, origin,
                           ddelta, svc_slo)
    return _finish(t, parts, cap, pool_dev)


def _split_routes(spec, net, pools, pool_dev, lat, acc, names, svc_src, origin, ddelta, svc_slo):
    """Split routes (k, e) for services whose source sits at an edge site: one vector over pools per split point.

    A tail may only run where the version itself has a latency (its pool-version capacity c_q is defined).
    """
    edge_pool = {net.places[pools.site[p]]: p for p in np.flatnonzero(pools.is_edge)}
    version_index = {n: i for i, n in enumerate(names)}
    parts = []
    for s, service in enumerate(spec.services):
        src = spec.sources[svc_src[s]]
        if src.location not in edge_pool:
            continue
        ep = edge_pool[src.location]
        head_dev = pools.device[ep]
        best_d = int(np.nanargmax(ddelta[svc_src[s]]))
        o = origin[svc_src[s]]
        cloud = np.flatnonzero(pools.site != pools.site[ep])
        for v in spec.model(service.model).versions:
            vg = version_index[(service.model, v.name)]
            for sp in v.splits:
                if head_dev not in sp.head_ms:
                    continue
                accuracy = (sp.accuracy if sp.accuracy is not None else acc[vg]) + ddelta[svc_src[s], best_d]
                head = sp.head_ms[head_dev]
                if not sp.tail_ms:                                  # device-only: the exit ends on the device
                    p_sel, lat_r, usage = np.array([ep]), np.array([head]), np.zeros(1)
                    pool_r = np.array([-1])
                    egress = np.zeros(1)
                else:
                    tail = np.array([sp.tail_ms.get(pools.device[p], np.nan) for p in cloud])
                    rtt = net.rtt_ms[o, pools.site[cloud]]
                    bw = net.bandwidth_mbps[o, pools.site[cloud]]
                    with np.errstate(divide="ignore", invalid="ignore"):
                        lat_r = head + rtt + 8.0 * sp.activation_bytes / (bw * 1000.0) + tail
                    keep = np.isfinite(lat_r)
                    p_sel, lat_r, tail = cloud[keep], lat_r[keep], tail[keep]
                    # the tail takes tail/latency of one instance of the version on that device
                    usage = tail / lat[vg, pool_dev[p_sel]]
                    pool_r = p_sel
                    egress = sp.activation_bytes * 3600.0 / 1e9 * net.egress_per_gb[o, pools.site[p_sel]]
                keep = (lat_r <= svc_slo[s]) & np.isfinite(usage)
                n = int(keep.sum())
                if n == 0:
                    continue
                parts.append(dict(
                    service=np.full(n, s), data_version=np.full(n, best_d), version=np.full(n, vg),
                    pool=pool_r[keep], site=pools.site[p_sel[keep]], split=np.full(n, sp.split),
                    exit=np.full(n, -1 if sp.exit is None else sp.exit), latency_ms=lat_r[keep],
                    accuracy=np.full(n, accuracy), usage=usage[keep], head_s=np.full(n, head / 1000.0),
                    head_pool=np.full(n, ep),
                    egress_per_rps=egress[keep]))
    return parts


def _finish(t: RouteTable, parts, cap, pool_dev) -> RouteTable:
    """Concatenate the route parts and index the pool-versions they use."""
    int_cols = ("service", "data_version", "version", "pool", "site", "split", "exit", "head_pool")
    for name in _ROUTE_COLUMNS[:-1]:
        arrays = [p[name] for p in parts]
        dtype = np.int64 if name in int_cols else float
        setattr(t, name, np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype))
    n_pools = max(len(t.pools), 1)
    has_pool = t.pool >= 0
    combined = np.where(has_pool, t.version * n_pools + t.pool, -1)
    unique, inverse = np.unique(combined[has_pool], return_inverse=True)
    t.pv = np.full(len(t), -1, dtype=np.int64)
    t.pv[has_pool] = inverse
    t.pv_version, t.pv_pool = unique // n_pools, unique % n_pools
    t.pv_capacity_rps = cap[t.pv_version, pool_dev[t.pv_pool]] if len(unique) else np.zeros(0)
    return t
