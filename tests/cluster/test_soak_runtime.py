"""Soak (issue #8 item 7) through the whole cloud runtime: Serve HTTP ingress -> site deployment -> Triton.

One module-scoped local Ray cluster (head + one region node, `start_local_cluster`), a DeviceActor owning a
real Triton on the region's node, and the Serve application built from a Plan (`plan_spec` ->
`serve_app.serve_config` -> `apply_serve_config`; ingress pinned to the head, the site deployment to the
region). Load: `_RATE_RPS` requests/s for `_LOAD_S` s through Serve's HTTP ingress from a bounded thread
pool (tests/e2e/test_chaos.py's `_Load`: paced by schedule, every request ends as ok / wrong / error /
timeout). RSS (`/proc/PID/status` VmRSS, tests/e2e/test_soak.py's `_Sampler`) is sampled every second of:
the Serve HTTP proxy, the ingress replica, the site replica, the DeviceActor, the Triton server and its
Python-backend stub, and this test process.

What must hold (bounds documented and generous: up to 8 engineers share 2 cores):
- every request answered correctly (0 wrong, 0 errors, 0 timeouts) and Triton never restarted;
- no memory growth trend: after `_WARMUP_S` s, the least-squares slope of RSS over time is below
  `_MAX_SLOPE_MB_PER_MIN` for each process: a leak of `_MAX_LEAK_KIB_PER_REQUEST` KiB per request at
  `_RATE_RPS` (7.0 MB/min at 6 KiB and 20 rps). Each request carries a `_INPUT_FLOATS`-float tensor
  (16 KiB as float32, ~80 KB as JSON), so keeping one request's tensor per request would grow 18.8 MB/min
  (2.7x the bound) and keeping its body 13x. Why not tighter: Ray Serve's HTTP proxy and the ingress
  replica (each makes one Ray actor call per request) grow 2.3-4.7 MB/min (5 runs of 60 s, load average
  6-20) in their first two minutes of load and then flatten (a 200 s run, ISTHMUS_SOAK_LOAD_S=200: proxy
  5.7, 2.0, 1.1, 0.9, 0.5 MB/min and ingress 7.5, 2.6, 1.6, 2.7, 0.4 MB/min over successive 40 s windows,
  the first one including the warm-up; Triton and its stub stay under 1 MB/min, the site replica under
  2.4). A 60 s soak sees only that warm-up
  slope, so the bound is set per request; a longer soak (the environment variable) shows the flattening
  (`slope_mb_per_min_last_40_s` in the results);
- p99 stable: p99 of the last third <= `_P99_RATIO` x p99 of the first third + `_P99_SLACK_MS`, while the
  machine's 1-minute load average (at the start and the end of the load) stays <= `_BUSY_LOAD_AVG`; on a
  machine busier than that (other engineers' clusters: 20 on 2 cores seen, p50 8x a quieter run's) the
  others' bursts decide the thirds, so only a loose bound holds: `_BUSY_P99_RATIO` x + `_BUSY_P99_SLACK_MS`.
Numbers go to bench/results/soak_runtime.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from test_chaos import _Load, _outcomes  # noqa: E402
from test_soak import _p99, _rss_mb, _Sampler, _slope_per_min  # noqa: E402

from isthmus.platform import serve_app  # noqa: E402
from isthmus.platform.triton import TritonModel, free_port  # noqa: E402
from isthmus.spec import parse_spec  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

_ROOT = Path(__file__).resolve().parents[2]
_RESULTS_PATH = _ROOT / "bench" / "results" / "soak_runtime.json"
_SITE = "us-east"
_RATE_RPS = 20.0
_LOAD_S = float(os.environ.get("ISTHMUS_SOAK_LOAD_S", "60"))  # longer soaks: set it (s)
_WARMUP_S = 15.0
_MAX_LEAK_KIB_PER_REQUEST = 6.0
_INPUT_FLOATS = 4096
_MAX_SLOPE_MB_PER_MIN = _MAX_LEAK_KIB_PER_REQUEST * _RATE_RPS * 60 / 1024
_P99_RATIO = 3.0
_P99_SLACK_MS = 50.0  # one more process hop than the edge soak (proxy -> ingress -> site -> Triton)
_BUSY_LOAD_AVG = 12.0
_BUSY_P99_RATIO = 8.0
_BUSY_P99_SLACK_MS = 500.0
_SPEC = {
    "name": "soak-runtime",
    "regions": [{"name": _SITE, "instance_types": [
        {"name": "c.small", "device": "cpu", "price_per_hour": 0.5, "max_count": 1}]}],
    "devices": {"cpu": {"kind": "cpu", "tflops": 1, "mem_gb": 4}},
    "sources": [{"name": "clients", "location": _SITE, "rate_rps": _RATE_RPS,
                 "data_versions": [{"name": "raw", "bytes": 64}]}],
    "models": [{"name": "mlp", "versions": [{"name": "fp32", "accuracy": 0.9, "latency_ms": {"cpu": 2},
                                             "capacity_rps": {"cpu": 100}}]}],
    "services": [{"name": "detect", "source": "clients", "model": "mlp", "slo_ms": 200}],
}


def _actor_pids() -> dict[str, int]:
    """Ray class name -> pid of every alive actor of the connected cluster (GCS actor table; no dashboard needed)."""
    from ray._private import state

    return {a["ActorClassName"]: int(a["Pid"]) for a in state.actors(actor_state_name="ALIVE").values()}


def _children(pid: int, needle: bytes) -> list[int]:
    """Pids of the live child processes of `pid` whose command line contains `needle`."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and needle in (stat.parent / "cmdline").read_bytes():
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return sorted(out)


def _pids_to_sample(device_pid: int) -> dict[str, int]:
    """name -> pid of every process on the request path (see the module docstring)."""
    actors = _actor_pids()

    def actor(suffix: str) -> int:
        found = [pid for name, pid in actors.items() if name.endswith(suffix)]
        assert len(found) == 1, f"expected one alive actor of class *{suffix}, got {sorted(actors)}"
        return found[0]

    tritons = _children(device_pid, b"tritonserver")
    assert len(tritons) == 1, f"expected one tritonserver child of the DeviceActor (pid {device_pid}), got {tritons}"
    stubs = _children(tritons[0], b"triton_python_backend_stub")
    assert stubs, f"tritonserver (pid {tritons[0]}) has no Python-backend stub child"
    return {"serve_proxy": actor("ProxyActor"),
            "ingress_replica": actor(f"ServeReplica:{serve_app.INGRESS_APP}:Ingress"),
            "site_replica": actor(f"ServeReplica:{serve_app.site_app_name(_SITE, 'mlp', 'fp32')}:SiteModel"),
            "device_actor": device_pid, "triton": tritons[0],
            **{f"triton_stub{'' if len(stubs) == 1 else i}": pid for i, pid in enumerate(stubs)},
            "test_process": os.getpid()}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, tritonserver: str):
    from isthmus.optimizer import plan_spec
    from isthmus.platform.cluster import start_local_cluster

    tmp = tmp_path_factory.mktemp("soak_runtime")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(_INPUT_FLOATS, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    torch.jit.save(torch.jit.script(model), str(tmp / "mlp.pt"))
    spec = parse_spec(_SPEC)
    plan = plan_spec(spec, time_limit_s=20)
    cluster = start_local_cluster(spec)
    device = None
    try:
        triton_model = TritonModel(name=serve_app.triton_model_name("mlp", "fp32"), torchscript_path=tmp / "mlp.pt",
                                   input_shape=(_INPUT_FLOATS,), max_batch_size=8, max_queue_delay_us=500)
        device = serve_app.start_site_device(_SITE, "cpu", [triton_model], spec)
        ray.get(device.start.remote(), timeout=300)   # the site app resolves Triton's URL through the actor
        http_port = free_port()
        config = serve_app.serve_config(plan, spec, http_port=http_port, grpc_port=free_port(),
                                        ingress_resources={"isthmus:head": 0.01})
        serve_app.apply_serve_config(config, timeout_s=300)
        x = np.random.default_rng(0).standard_normal((1, _INPUT_FLOATS)).astype(np.float32)
        yield {"plan": plan, "device": device, "port": http_port, "x": x,
               "expected": model(torch.from_numpy(x)).detach().numpy()}
    finally:
        from ray import serve

        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001 - best effort before the cluster goes
            pass
        if device is not None:
            try:
                ray.get(device.stop.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - stopping the cluster stops it anyway
                pass
        ray.shutdown()
        cluster.shutdown()


def test_plan_serves_from_one_region(runtime) -> None:
    assert runtime["plan"].feasible and {r.site for r in runtime["plan"].routes} == {_SITE}
    warm = _Load(runtime, total=40, rate_rps=_RATE_RPS).start().join()   # first calls compile; not part of the soak
    assert _outcomes(warm) == {"ok": 40, "wrong": 0, "error": 0, "timeout": 0}, [
        r for r in warm if r["outcome"] != "ok"][:3]
    assert {r["site"] for r in warm} == {_SITE}


def test_steady_load_for_60_s_no_memory_growth_and_stable_p99(runtime) -> None:
    device_pid = _actor_pids()["_DeviceActor"]
    pids = _pids_to_sample(device_pid)
    restarts_before = ray.get(runtime["device"].health.remote(), timeout=60)["restarts"]
    total = int(_RATE_RPS * _LOAD_S)
    sampler = _Sampler(pids, time.monotonic())
    sampler.start()
    load_avg_start = os.getloadavg()[0]
    load = _Load(runtime, total=total, rate_rps=_RATE_RPS, deadline_s=20.0, workers=8).start()
    records = load.join()
    load_s = time.time() - load.t0
    load_avg = max(load_avg_start, os.getloadavg()[0])
    busy = load_avg > _BUSY_LOAD_AVG
    p99_ratio, p99_slack_ms = (_BUSY_P99_RATIO, _BUSY_P99_SLACK_MS) if busy else (_P99_RATIO, _P99_SLACK_MS)
    sampler.stop_event.set()
    sampler.join(timeout=5)
    health = ray.get(runtime["device"].health.remote(), timeout=60)
    alive = {name: Path(f"/proc/{pid}").exists() for name, pid in pids.items()}

    counts = _outcomes(records)
    ok = [r for r in records if r["outcome"] == "ok"]
    thirds = [[r["latency_ms"] for r in ok if k * _LOAD_S / 3 <= r["start"] - load.t0 < (k + 1) * _LOAD_S / 3]
              for k in range(3)]
    p99_first, p99_last = _p99(thirds[0]), _p99(thirds[2])
    memory = {}
    for name, points in sampler.samples.items():
        steady = [(t, mb) for t, mb in points if t >= _WARMUP_S]
        memory[name] = {"pid": pids[name], "rss_mb_start": points[0][1], "rss_mb_after_warmup": steady[0][1],
                        "rss_mb_end": points[-1][1], "slope_mb_per_min_after_warmup": _slope_per_min(steady),
                        "slope_mb_per_min_last_40_s": _slope_per_min([p for p in points if p[0] >= points[-1][0] - 40]),
                        "samples": len(points), "samples_mb": [round(mb, 2) for _, mb in points]}
    latencies = sorted(r["latency_ms"] for r in ok)
    result = {
        "note": "written by tests/cluster/test_soak_runtime.py: Serve HTTP ingress -> site deployment -> Triton "
                "on a local Ray cluster; p99 ratio is last third vs first third of the same run",
        "load": {"rate_rps": _RATE_RPS, "duration_s": _LOAD_S, "warmup_s": _WARMUP_S, "sent": load.sent,
                 "finished": len(records), "wall_s": round(load_s, 1), "load_avg_1min_max": load_avg, **counts,
                 "sites": sorted({r["site"] for r in ok}), "max_attempts": max((r["attempts"] for r in ok), default=0)},
        "latency_ms": {"p50": latencies[len(latencies) // 2] if latencies else None, "p99": _p99(latencies),
                       "p99_first_third": p99_first, "p99_middle_third": _p99(thirds[1]), "p99_last_third": p99_last,
                       "p99_ratio_last_vs_first": p99_last / p99_first},
        "triton_restarts": health["restarts"] - restarts_before,
        "memory": memory,
        "bounds": {"max_slope_mb_per_min": _MAX_SLOPE_MB_PER_MIN,
                   "max_leak_kib_per_request": _MAX_LEAK_KIB_PER_REQUEST,
                   "p99_last_third_max_ms": p99_ratio * p99_first + p99_slack_ms,
                   "p99_bound": "busy machine (loose)" if busy else "strict"},
    }
    _RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    _RESULTS_PATH.write_text(json.dumps(result, indent=1) + "\n")
    print("\n" + json.dumps({k: v for k, v in result.items() if k != "memory"}, indent=1))
    print({name: {k: round(v, 2) for k, v in m.items() if k not in ("samples_mb", "pid")}
           for name, m in memory.items()})

    assert load.sent == total and len(records) == total, (load.sent, len(records), total)   # every request counted
    assert counts == {"ok": total, "wrong": 0, "error": 0, "timeout": 0}, (
        counts, [r for r in records if r["outcome"] != "ok"][:5])
    assert result["triton_restarts"] == 0 and all(alive.values()), (result["triton_restarts"], alive)
    for name, m in memory.items():
        assert m["samples"] >= 0.8 * _LOAD_S, (name, m["samples"])
        assert m["slope_mb_per_min_after_warmup"] < _MAX_SLOPE_MB_PER_MIN, (name, m)
    assert p99_last <= p99_ratio * p99_first + p99_slack_ms, (p99_first, p99_last, load_avg)


def test_rss_reader_and_actor_table_see_this_process(runtime) -> None:
    """The helpers the soak relies on read real numbers (a broken reader would make any slope 0)."""
    assert 10 < _rss_mb(os.getpid()) < 24 * 1024
    pids = _actor_pids()
    assert "_DeviceActor" in pids and all(pid > 0 for pid in pids.values()), pids
