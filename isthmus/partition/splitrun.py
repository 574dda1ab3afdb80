"""A real split run: the head partition in one process, the tail in another, the activation sent
over loopback TCP through a token bucket of `bandwidth_mbps`: tokens accrue at
bandwidth_mbps·1e6/8 bytes/s from the start of a message (the link is idle between requests) and
a chunk leaves once the bucket holds its bytes, so byte b of a message leaves at 8·b/bandwidth and
a tensor of B bytes arrives after 8·B/bandwidth (a late wake-up delays one chunk, not the rest).

    python -m isthmus.partition.splitrun tail TAIL.pt PORT_FILE
    python -m isthmus.partition.splitrun head HEAD.pt INPUT.pt HOST PORT BANDWIDTH_MBPS REQUESTS OUT.json

`split_run(...)` starts both, returns the per-request end-to-end latencies measured by the head
(head compute + shaped send + tail compute + the reply).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SplitRunResult", "split_run", "predict_vs_measure", "send_tensors", "recv_tensors"]

_CHUNK_BYTES = 8192
_HEADER = struct.Struct("!I")


def _pack(tensors: list[Any]) -> tuple[bytes, list[bytes]]:
    meta = [{"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for t in tensors]
    payload = [t.contiguous().numpy().tobytes() for t in tensors]
    header = json.dumps({"tensors": meta, "sizes": [len(p) for p in payload]}).encode()
    return _HEADER.pack(len(header)) + header, payload


def send_tensors(sock: socket.socket, tensors: list[Any], bandwidth_mbps: float | None = None) -> int:
    """Send tensors (header + raw bytes), the payload shaped by a token bucket if `bandwidth_mbps`;
    returns the payload bytes."""
    header, payload = _pack(tensors)
    sock.sendall(header)
    data = b"".join(payload)
    if bandwidth_mbps is None:
        sock.sendall(data)
        return len(data)
    rate = bandwidth_mbps * 1e6 / 8.0  # bytes per second
    start = time.perf_counter()
    for offset in range(0, len(data), _CHUNK_BYTES):
        chunk = data[offset:offset + _CHUNK_BYTES]
        due = start + (offset + len(chunk)) / rate  # the bucket has filled with this chunk's bytes
        while (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        sock.sendall(chunk)
    return len(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(min(1 << 20, n - len(buf)))
        if not part:
            raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
        buf += part
    return bytes(buf)


def recv_tensors(sock: socket.socket) -> list[Any]:
    import numpy as np
    import torch

    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    header = json.loads(_recv_exact(sock, size))
    out = []
    for meta, n in zip(header["tensors"], header["sizes"]):
        array = np.frombuffer(_recv_exact(sock, n), dtype=getattr(np, meta["dtype"])).reshape(meta["shape"])
        out.append(torch.from_numpy(array.copy()))
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _serve_tail(tail_path: str, port_file: str) -> None:
    import torch

    torch.set_num_threads(1)
    tail = torch.jit.load(tail_path)
    server = socket.create_server(("127.0.0.1", 0))
    Path(port_file + ".tmp").write_text(str(server.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with torch.inference_mode():
        while True:
            try:
                inputs = recv_tensors(conn)
            except ConnectionError:
                return
            send_tensors(conn, _as_list(tail(*inputs)))


def _run_head(head_path: str, input_path: str, host: str, port: int, bandwidth_mbps: float, requests: int,
              out_path: str) -> None:
    import torch

    torch.set_num_threads(1)
    head = torch.jit.load(head_path)
    x = torch.load(input_path)
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies, sent = [], 0
    with torch.inference_mode():
        for _ in range(2):  # warm-up (TorchScript profiling runs), not measured
            send_tensors(sock, _as_list(head(x)))
            recv_tensors(sock)
        for _ in range(requests):
            start = time.perf_counter()
            sent = send_tensors(sock, _as_list(head(x)), bandwidth_mbps)
            recv_tensors(sock)
            latencies.append((time.perf_counter() - start) * 1e3)
    sock.close()
    Path(out_path).write_text(json.dumps({"latency_ms": latencies, "activation_bytes": sent}))


@dataclass(frozen=True)
class SplitRunResult:
    latency_ms: list[float]
    activation_bytes: int

    @property
    def median_ms(self) -> float:
        import statistics

        return statistics.median(self.latency_ms)


def split_run(head_path: str | Path, tail_path: str | Path, example: Any, bandwidth_mbps: float,
              requests: int = 10, timeout_s: float = 300.0) -> SplitRunResult:
    """Run head and tail in two fresh processes (1 torch thread each) over a shaped loopback link."""
    import torch

    if not bandwidth_mbps > 0 or requests < 1:
        raise ValueError(f"bandwidth_mbps={bandwidth_mbps}, requests={requests}. To fix: use > 0 and >= 1")
    with tempfile.TemporaryDirectory(prefix="isthmus-splitrun-") as tmp:
        port_file, input_path, out_path = (os.path.join(tmp, n) for n in ("port", "x.pt", "out.json"))
        torch.save(example, input_path)
        cmd = [sys.executable, "-m", "isthmus.partition.splitrun"]
        tail = subprocess.Popen(cmd + ["tail", str(tail_path), port_file])
        try:
            deadline = time.monotonic() + timeout_s
            while not os.path.exists(port_file):
                if tail.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tail process did not start (exit code {tail.poll()})")
                time.sleep(0.05)
            port = Path(port_file).read_text()
            head = subprocess.run(cmd + ["head", str(head_path), input_path, "127.0.0.1", port, str(bandwidth_mbps),
                                         str(requests), out_path], timeout=max(1.0, deadline - time.monotonic()))
            if head.returncode != 0:
                raise RuntimeError(f"head process failed with exit code {head.returncode}")
            data = json.loads(Path(out_path).read_text())
        finally:
            if tail.poll() is None:
                tail.terminate()
            tail.wait(timeout=30)
    return SplitRunResult(data["latency_ms"], data["activation_bytes"])


def _path_prediction_ms(model: Any, x: Any, exit: int | None, split: int, bandwidth_mbps: float) -> float:
    """The chain formula on a fresh per-layer profile (this CPU, 1 thread) of the exit path's layers."""
    import torch

    from isthmus.partition.profiles import chain_table
    from isthmus.partition.splits import split_modules
    from isthmus.profiler import profile_module

    head, tail = split_modules(model, split, exit)
    path = torch.nn.Module()
    path.layers = torch.nn.ModuleList(list(head) + list(tail))  # a chain, profiled layer by layer
    local = profile_module(path, x, model_name="split-run", repeats=4, warmup=1)
    return chain_table(local, local).latency_ms(None, split, bandwidth_mbps, rtt_ms=0.0)


def predict_vs_measure(model_name: str, model: Any, x: Any, cases: list[tuple[int | None, int, float]],
                       workdir: str | Path, requests: int = 6, size: str = "full") -> list[dict[str, Any]]:
    """For each (exit, split, bandwidth_mbps) of a chain zoo model: export head/tail, run them in two
    processes over the shaped link, and compare the median end-to-end latency with the partitioner's
    prediction. The machine may be shared and its load drifts: the path is profiled right before
    and right after the run and the two predictions are averaged.
    """
    import torch

    from isthmus.partition.splits import export_partitions

    rows = []
    with _one_thread():
        for exit, split, bw in cases:
            head, tail = export_partitions(model_name, size, split, exit, workdir, model=model)
            before = _path_prediction_ms(model, x, exit, split, bw)
            run = split_run(head, tail, x, bw, requests=requests)
            after = _path_prediction_ms(model, x, exit, split, bw)
            predicted = (before + after) / 2
            rows.append({"exit": exit, "split": split, "bandwidth_mbps": bw, "activation_bytes": run.activation_bytes,
                         "predicted_ms": predicted, "measured_ms": run.median_ms,
                         "error": abs(run.median_ms - predicted) / run.median_ms})
    return rows


def _one_thread() -> Any:
    """Profile with one torch thread, like the head and tail processes."""
    from isthmus.models.runtime import torch_threads

    return torch_threads(1)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["tail"] and len(args) == 3:
        _serve_tail(args[1], args[2])
    elif args[:1] == ["head"] and len(args) == 8:
        _run_head(args[1], args[2], args[3], int(args[4]), float(args[5]), int(args[6]), args[7])
    else:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
