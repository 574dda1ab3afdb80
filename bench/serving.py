"""Serving bench: direct torch, Triton alone, Serve alone, Serve + Triton; dynamic batching on vs off.

Same run, same model (a zoo model via `isthmus.models.build`, TorchScripted). The load generator
works like Triton's perf_analyzer: for each concurrency level C, C closed-loop async clients send
requests back to back for `--window-s` seconds after a warm-up. The paths compared with each other
are measured in interleaved rounds (A B A B ...; `--rounds`) so the drifting load of a shared
machine hits them alike; p50/p99 are over the pooled requests that finish inside the windows and
throughput = those requests / (rounds * window). Triton paths use
`tritonclient.grpc.aio`; Serve paths go through Serve's own HTTP proxy with aiohttp.

Claims checked (ratios, same run):
- Serve + Triton adds <= 3 ms p50 over Triton alone (at concurrency 1);
- dynamic batching gives >= 3x throughput at an equal p99 bound: for a bound B, the best
  throughput over concurrency levels whose p99 <= B, batching on / batching off. B defaults to the
  p99 of batching-off at the highest concurrency level (its saturated regime), so batching-on
  counts only levels whose p99 is no worse than that.

Both Serve paths run with the access log off (`--serve-defaults` keeps Serve's default logging).

    python bench/serving.py            # ~4-6 min on 2 shared cores; writes bench/results/serving.json
    python bench/serving.py --quick    # shorter windows, fewer levels (smoke run)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
_TARGET_SERVE_OVERHEAD_MS = 3.0
_TARGET_BATCHING_RATIO = 3.0
_SERVICER = "serving._add_inference_servicer"  # this file: bench/ is put on the workers' PYTHONPATH


# ------------------------------------------------------------------------------------------
# model


def _build_model(name: str, size: str, width: float, workdir: Path) -> tuple[Any, Path, tuple[int, ...], str]:
    """TorchScript a zoo model (or a small CNN if the zoo is absent); returns (module, path, shape, dtype)."""
    import torch

    try:
        from isthmus.models import build, example_input

        module = build(name, size, width=width)
        sample = example_input(name, size, batch=1)
    except ImportError:  # the zoo lands separately; a plain CNN of the same input keeps the bench running
        name = "cnn"
        module = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10),
        ).eval()
        sample = torch.rand(1, 1, 8, 8)
    path = workdir / f"{name}-{size}.pt"
    try:
        scripted = torch.jit.script(module)
    except Exception:  # noqa: BLE001 - some modules only trace
        scripted = torch.jit.trace(module, sample)
    torch.jit.save(scripted, str(path))
    return torch.jit.load(str(path)).eval(), path, tuple(sample.shape[1:]), str(sample.numpy().dtype)


# ------------------------------------------------------------------------------------------
# load generation (perf_analyzer-style closed loop)


Sender = Callable[[], Awaitable[None]]


async def _closed_loop(send: Sender, concurrency: int, window_s: float, warmup_s: float) -> tuple[list[float], int]:
    """C workers send back to back; return latencies of requests that start and end inside the window, errors."""
    latencies_ms: list[float] = []
    errors = 0
    t0 = time.perf_counter()
    start, end = t0 + warmup_s, t0 + warmup_s + window_s

    async def worker() -> None:
        nonlocal errors
        while True:
            begin = time.perf_counter()
            if begin >= end:
                return
            try:
                await send()
            except Exception as exc:  # noqa: BLE001 - counted, reported
                errors += 1
                if errors == 1:
                    print(f"first error: {exc!r}"[:400], file=sys.stderr)
                continue
            done = time.perf_counter()
            if begin >= start and done <= end:
                latencies_ms.append((done - begin) * 1000.0)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), warmup_s + window_s + 60)
    return latencies_ms, errors


async def _interleaved(senders: dict[str, Sender], levels: list[int], rounds: int, window_s: float,
                       warmup_s: float, sequential: frozenset[str] = frozenset()) -> dict[str, list[dict[str, float]]]:
    """For each level, `rounds` rounds of one window per path (A B C A B C ...), pooled per path.

    Interleaving spreads the machine's drifting background load evenly over the paths compared.
    p50/p99 are over the pooled latencies; throughput = pooled requests / (rounds * window_s).
    Paths in `sequential` (blocking calls, e.g. direct torch) run at concurrency 1 only.
    """
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in senders}
    for c in levels:
        active = [name for name in senders if c == 1 or name not in sequential]
        pooled: dict[str, list[float]] = {name: [] for name in active}
        errors = dict.fromkeys(active, 0)
        for _ in range(rounds):
            for name in active:
                latencies, errs = await _closed_loop(senders[name], c, window_s, warmup_s)
                pooled[name] += latencies
                errors[name] += errs
        for name in active:
            rows[name].append(_stats(pooled[name], c, errors[name], rounds * window_s))
    return rows


def _stats(latencies_ms: list[float], concurrency: int, errors: int, seconds: float) -> dict[str, float]:
    arr = np.asarray(latencies_ms) if latencies_ms else np.asarray([np.nan])
    return {"concurrency": concurrency, "requests": len(latencies_ms), "errors": errors,
            "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "throughput_rps": len(latencies_ms) / seconds}


def _triton_sender(client: Any, model: str, x: np.ndarray) -> Sender:
    from tritonclient.grpc import InferInput
    from tritonclient.utils import np_to_triton_dtype

    from isthmus.platform.triton import INPUT_NAME, OUTPUT_NAME

    tensor = InferInput(INPUT_NAME, list(x.shape), np_to_triton_dtype(x.dtype))
    tensor.set_data_from_numpy(x)  # serialised once, like perf_analyzer's pre-loaded input data

    async def send() -> None:
        (await client.infer(model, [tensor])).as_numpy(OUTPUT_NAME)

    return send


def _alias_generated_protos() -> Any:
    """Register the generated isthmus.v1 modules under the names their classes carry, so Serve can
    pickle requests between its gRPC proxy and the replica; returns inference_pb2_grpc."""
    from isthmus._proto import load

    for name in ("tensor_pb2", "inference_pb2", "inference_pb2_grpc"):
        sys.modules.setdefault(f"isthmus.v1.{name}", load(name))
    return load("inference_pb2_grpc")


def _add_inference_servicer(servicer: Any, server: Any) -> None:
    """`grpc_servicer_functions` entry of Serve's gRPC proxy: the isthmus.v1.Inference service."""
    _alias_generated_protos().add_InferenceServicer_to_server(servicer, server)


def _serve_grpc_sender(channel: Any, application: str, x: np.ndarray) -> Sender:
    """isthmus.v1.Inference/Infer through Serve's gRPC proxy (the `application` metadata routes it)."""
    from isthmus._proto import encode_tensor, load

    stub = load("inference_pb2_grpc").InferenceStub(channel)
    request = load("inference_pb2").InferRequest(model="bench", tensor=encode_tensor(x))
    metadata = (("application", application),)

    async def send() -> None:
        await stub.Infer(request, metadata=metadata)

    return send


def _http_sender(session: Any, url: str, x: np.ndarray) -> Sender:
    body = x.tobytes()

    async def send() -> None:
        async with session.post(url, data=body) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status} from {url}")
            await response.read()

    return send


async def _measure(module: Any, triton_url: str, serve_urls: tuple[str, str, str], x: np.ndarray,
                   args: argparse.Namespace, levels: list[int],
                   serve_levels: list[int]) -> dict[str, list[dict[str, float]]]:
    import aiohttp
    import tritonclient.grpc.aio as aio

    import grpc

    client = aio.InferenceServerClient(triton_url)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    channel = grpc.aio.insecure_channel(serve_urls[2])
    try:
        rows = await _interleaved({
            "triton_batching_on": _triton_sender(client, "batch_on", x),
            "triton_batching_off": _triton_sender(client, "batch_off", x),
        }, levels, args.rounds, args.window_s, args.warmup_s)
        rows |= await _interleaved({
            "direct_torch": _torch_sender(module, x),
            "triton_alone": _triton_sender(client, "batch_on", x),
            "serve_triton": _http_sender(session, serve_urls[1], x),
            "serve_grpc_triton": _serve_grpc_sender(channel, "triton", x),
            "serve_torch": _http_sender(session, serve_urls[0], x),
        }, sorted({1, *serve_levels}), args.rounds, args.window_s, args.warmup_s, frozenset({"direct_torch"}))
        return rows
    finally:
        await channel.close()
        await session.close()
        await client.close()


def _torch_sender(module: Any, x: np.ndarray) -> Sender:
    """One in-process forward pass per request, no server: the floor every served path is compared to."""
    import torch

    torch.set_num_threads(1)
    tensor = torch.from_numpy(x)

    async def send() -> None:
        with torch.inference_mode():
            module(tensor)

    return send


# ------------------------------------------------------------------------------------------
# Serve applications (built inside the bench: one local Ray instance)


def _serve_apps(torchscript_path: Path, shape: tuple[int, ...], dtype: str, triton_url: str, model: str,
                port: int, quiet_logs: bool) -> tuple[str, str, str]:
    """Deploy `/torch` (the model inside the replica) and `/triton` (the replica calls Triton, over HTTP or
    Serve's gRPC proxy with the isthmus.v1.Inference service); return the two HTTP URLs and the gRPC address."""
    from ray import serve
    from ray.serve.schema import LoggingConfig
    from starlette.requests import Request
    from starlette.responses import Response

    logging = LoggingConfig(enable_access_log=not quiet_logs, log_level="INFO" if not quiet_logs else "WARNING")

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64, logging_config=logging)
    class TorchModel:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(1)
            self._torch = torch
            self._model = torch.jit.load(str(torchscript_path)).eval()

        async def __call__(self, request: Request) -> Response:
            x = np.frombuffer(await request.body(), dtype=dtype).reshape((-1, *shape))
            with self._torch.inference_mode():
                out = self._model(self._torch.from_numpy(x.copy())).numpy()
            return Response(out.tobytes(), media_type="application/octet-stream")

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64, logging_config=logging)
    class TritonProxy:
        def __init__(self) -> None:
            import tritonclient.grpc.aio as aio

            _alias_generated_protos()

            self._client = aio.InferenceServerClient(triton_url)

        async def __call__(self, request: Request) -> Response:
            from tritonclient.grpc import InferInput
            from tritonclient.utils import np_to_triton_dtype

            from isthmus.platform.triton import INPUT_NAME, OUTPUT_NAME

            x = np.frombuffer(await request.body(), dtype=dtype).reshape((-1, *shape))
            tensor = InferInput(INPUT_NAME, list(x.shape), np_to_triton_dtype(x.dtype))
            tensor.set_data_from_numpy(x)
            out = (await self._client.infer(model, [tensor])).as_numpy(OUTPUT_NAME)
            return Response(out.tobytes(), media_type="application/octet-stream")

        async def Infer(self, request: Any) -> Any:  # noqa: N802 - the isthmus.v1.Inference RPC name
            from tritonclient.grpc import InferInput
            from tritonclient.utils import np_to_triton_dtype

            from isthmus._proto import decode_tensor, encode_tensor, load
            from isthmus.platform.triton import INPUT_NAME, OUTPUT_NAME

            x = decode_tensor(request.tensor)
            tensor = InferInput(INPUT_NAME, list(x.shape), np_to_triton_dtype(x.dtype))
            tensor.set_data_from_numpy(x)
            out = (await self._client.infer(model, [tensor])).as_numpy(OUTPUT_NAME)
            return load("inference_pb2").InferReply(output=encode_tensor(out))

    from isthmus.platform.triton import free_port

    grpc_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=logging,
                grpc_options={"port": grpc_port, "grpc_servicer_functions": [_SERVICER]})
    serve.run(TorchModel.bind(), name="torch", route_prefix="/torch")
    serve.run(TritonProxy.bind(), name="triton", route_prefix="/triton")
    return (f"http://127.0.0.1:{port}/torch", f"http://127.0.0.1:{port}/triton", f"127.0.0.1:{grpc_port}")


def _ray_init(ray: Any) -> None:
    """A new single-node Ray instance; retried because Ray gives its raylet a hard-coded 30 s to
    register, which a machine shared by many engineers sometimes misses."""
    for attempt in range(3):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
            return
        except Exception:  # noqa: BLE001 - "The current node timed out during startup"
            ray.shutdown()
            if attempt == 2:
                raise


# ------------------------------------------------------------------------------------------
# report


def _best_under(rows: list[dict[str, float]], bound_ms: float) -> float:
    ok = [r["throughput_rps"] for r in rows if r["requests"] and r["p99_ms"] <= bound_ms]
    return max(ok, default=0.0)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"serving bench: {results['model']} ({results['cpu_note']})")
    table.add_column("path", no_wrap=True, min_width=19)
    for col in ("concurrency", "p50 ms", "p99 ms", "throughput rps", "errors"):
        table.add_column(col, justify="right")
    for path, rows in results["paths"].items():
        for r in rows:
            table.add_row(path, str(r["concurrency"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                          f"{r['throughput_rps']:.0f}", str(r["errors"]))
    console = Console()
    console.print(table)
    claims = Table(title="claims (ratios in this run)")
    for col in ("claim", "measured", "target", "met"):
        claims.add_column(col)
    for c in results["claims"]:
        claims.add_row(c["claim"], c["measured"], c["target"], "yes" if c["met"] else "NO")
    console.print(claims)
    fmt = lambda d: "  ".join(f"{k}: {v:.2f}x" if v else f"{k}: n/a" for k, v in d.items())  # noqa: E731
    console.print("batching on/off throughput by p99 bound (ms):", fmt(results["ratios"]["batching_ratio_by_p99_bound_ms"]))
    console.print("batching on/off throughput by concurrency:   ", fmt(results["ratios"]["batching_ratio_by_concurrency"]))


def _claims(paths: dict[str, list[dict[str, float]]], bound_ms: float | None) -> tuple[list[dict], dict]:
    """Batching: best throughput under the p99 bound, on / off. Serve overhead: p50 of Serve+Triton (HTTP
    proxy; also gRPC proxy) minus p50 of Triton alone interleaved with it, at the lowest common concurrency."""
    on, off = paths["triton_batching_on"], paths["triton_batching_off"]
    peak_off = max(off, key=lambda r: r["throughput_rps"])
    bound = bound_ms if bound_ms is not None else max(off, key=lambda r: r["concurrency"])["p99_ms"]
    thr_on, thr_off = _best_under(on, bound), _best_under(off, bound)
    batching_ratio = _ratio(thr_on, thr_off)
    base = {r["concurrency"]: r for r in paths["triton_alone"]}
    serve_tr = {r["concurrency"]: r for r in paths["serve_triton"]}
    serve_grpc = {r["concurrency"]: r for r in paths["serve_grpc_triton"]}
    c1 = min(set(base) & set(serve_tr))
    overhead_ms = serve_tr[c1]["p50_ms"] - base[c1]["p50_ms"]
    grpc_overhead_ms = serve_grpc[c1]["p50_ms"] - base[c1]["p50_ms"]
    serve_alone = {r["concurrency"]: r for r in paths["serve_torch"]}
    direct = paths["direct_torch"][0]
    ratios = {
        "p99_bound_ms": bound,
        "batching_on_rps_at_bound": thr_on,
        "batching_off_rps_at_bound": thr_off,
        "batching_throughput_ratio": batching_ratio,
        "batching_peak_throughput_ratio": _ratio(max(r["throughput_rps"] for r in on), peak_off["throughput_rps"]),
        "serve_triton_minus_triton_p50_ms": overhead_ms,
        "serve_grpc_triton_minus_triton_p50_ms": grpc_overhead_ms,
        "serve_triton_over_triton_p50_ratio": _ratio(serve_tr[c1]["p50_ms"], base[c1]["p50_ms"]),
        "triton_over_direct_torch_p50_ratio": _ratio(base[c1]["p50_ms"], direct["p50_ms"]),
        "serve_torch_over_direct_torch_p50_ratio": _ratio(serve_alone[min(serve_alone)]["p50_ms"], direct["p50_ms"]),
        "compared_at_concurrency": c1,
        "batching_ratio_by_p99_bound_ms": {
            str(b): _ratio(_best_under(on, b), _best_under(off, b)) for b in (25.0, 50.0, 100.0, 250.0, 1000.0)
        },
        "batching_ratio_by_concurrency": {
            str(a["concurrency"]): _ratio(a["throughput_rps"], b["throughput_rps"]) for a, b in zip(on, off)
        },
    }
    claims = [
        {"claim": f"Serve+Triton p50 overhead over Triton alone (c={c1})", "measured": f"{overhead_ms:+.2f} ms",
         "target": f"<= {_TARGET_SERVE_OVERHEAD_MS} ms", "met": overhead_ms <= _TARGET_SERVE_OVERHEAD_MS},
        {"claim": f"  same through Serve's gRPC proxy (c={c1})", "measured": f"{grpc_overhead_ms:+.2f} ms",
         "target": f"<= {_TARGET_SERVE_OVERHEAD_MS} ms", "met": grpc_overhead_ms <= _TARGET_SERVE_OVERHEAD_MS},
        {"claim": f"batching on/off throughput at p99 <= {bound:.1f} ms",
         "measured": f"{batching_ratio:.2f}x ({thr_on:.0f} / {thr_off:.0f} rps)" if batching_ratio else "n/a",
         "target": f">= {_TARGET_BATCHING_RATIO}x",
         "met": bool(batching_ratio and batching_ratio >= _TARGET_BATCHING_RATIO)},
    ]
    return claims, ratios


# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="alexnet_exits", help="zoo model name")
    parser.add_argument("--size", default="small", choices=["small", "full"])
    parser.add_argument("--width", type=float, default=4.0,
                        help="zoo channel width: 4 gives ~7 ms per sample, enough compute for batching to matter")
    parser.add_argument("--levels", default="1,4,16,32,64", help="concurrency levels for the Triton paths")
    parser.add_argument("--serve-levels", default="1,8", help="concurrency levels for the Serve paths")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per level and path")
    parser.add_argument("--window-s", type=float, default=2.0, help="measured seconds per round")
    parser.add_argument("--warmup-s", type=float, default=0.5, help="unmeasured seconds before each window")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--p99-bound-ms", type=float, default=None,
                        help="p99 bound for the batching claim (default: batching-off p99 at the top level)")
    parser.add_argument("--serve-defaults", action="store_true", help="keep Serve's default (access) logging")
    parser.add_argument("--quick", action="store_true", help="1 round, levels 1,16; a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.serve_levels, args.rounds = "1,16", "1", 1
    levels = [int(v) for v in args.levels.split(",")]
    serve_levels = [int(v) for v in args.serve_levels.split(",")]

    from isthmus.platform.triton import TritonModel, TritonServer, free_port, write_model_repository

    began, load_start = time.perf_counter(), os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="isthmus-bench-serving-"))
    module, path, shape, dtype = _build_model(args.model, args.size, args.width, workdir)
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(dtype)
    common = {"torchscript_path": path, "input_shape": shape, "dtype": dtype,
              "max_batch_size": args.max_batch_size, "torch_threads": 1}
    repo = write_model_repository(workdir / "repo", [
        TritonModel(name="batch_on", max_queue_delay_us=args.max_queue_delay_us, **common),
        TritonModel(name="batch_off", dynamic_batching=False, **common),
    ])
    paths: dict[str, list[dict[str, float]]] = {}
    server = TritonServer(repo, log_dir=workdir / "logs")
    ray_started = False
    try:
        server.start(timeout_s=180)
        import ray
        from ray import serve

        _alias_generated_protos()  # generates the stubs before Serve's gRPC proxy imports them
        os.environ["PYTHONPATH"] = os.pathsep.join(  # inherited by the raylet: workers import `serving`
            p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")) if p)
        _ray_init(ray)
        ray_started = True
        serve_urls = _serve_apps(path, shape, dtype, server.grpc_url, "batch_on", free_port(),
                                 quiet_logs=not args.serve_defaults)
        paths |= asyncio.run(_measure(module, server.grpc_url, serve_urls, x, args, levels, serve_levels))
        serve.shutdown()
    finally:
        if ray_started:
            import ray

            ray.shutdown()
        server.stop()

    claims, ratios = _claims(paths, args.p99_bound_ms)
    results = {
        "bench": "serving",
        "model": f"{args.model}/{args.size} width {args.width} input {list(shape)} {dtype}",
        "cpu_note": f"{os.cpu_count()} CPUs shared; load avg {load_start:.1f} -> {os.getloadavg()[0]:.1f}",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "paths": paths,
        "ratios": ratios,
        "claims": claims,
        "seconds": time.perf_counter() - began,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    _print_table(results)
    print(f"wrote {args.out} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
