"""Helpers for the edge agent / control plane e2e tests: a tiny TorchScript chain with early exits,
certificates, agent configs and a running agent process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from isthmus.edge_agent import write_config

INPUT_SHAPE = (1, 1, 8, 8)


def script_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module.eval()), buf)
    return buf.getvalue()


class TinyChain:
    """Three layers on an 8x8 image with an early exit after each: exit k reads the output of layer k.

    head(k) = layers 1..k, tail(k, e) = layers k+1..e then exit e, local exit k = exit k alone.
    """

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.layers = [nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
                       nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
                       nn.Sequential(nn.Flatten(), nn.Linear(8 * 16, 32), nn.ReLU())]
        self.exits = [nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 10)),
                      nn.Sequential(nn.Flatten(), nn.Linear(8 * 16, 10)),
                      nn.Linear(32, 10)]

    def head(self, split: int) -> bytes:
        return script_bytes(nn.Sequential(*self.layers[:split]))

    def tail(self, split: int, exit_index: int) -> bytes:
        return script_bytes(nn.Sequential(*self.layers[split:exit_index], self.exits[exit_index - 1]))

    def local_exit(self, split: int) -> bytes:
        return script_bytes(self.exits[split - 1])

    def reference(self, x: torch.Tensor, exit_index: int) -> list[int]:
        with torch.no_grad():
            h = nn.Sequential(*self.layers[:exit_index])(x)
            return self.exits[exit_index - 1](h).argmax(dim=1).tolist()

    def tails(self, model: str = "tiny") -> dict[tuple[str, int, int], bytes]:
        return {(model, k, 3): self.tail(k, 3) for k in range(0, 3)}

    def assignment(self, split: int, target: str, *, model: str = "tiny", tls: bool = False) -> dict[str, Any]:
        return {"model": model, "split": split, "exit": 3, "head": self.head(split) if split else None,
                "local_exits": {split: self.local_exit(split)} if split else {},
                "inference_target": target, "inference_tls": tls}


def write_agent_config(path: Path, certs: Path, agent_id: str, *, control_plane: str, listen_port: int,
                       **extra: Any) -> Path:
    """An agent config with fast backoff and telemetry, for tests."""
    fast = {"backoff_initial_s": 0.2, "backoff_max_s": 1.0, "telemetry_interval_s": 1.0, "probe_interval_s": 2.0,
            "cloud_timeout_s": 2.0, "cloud_retry_s": 3.0}
    return write_config(path, certs_dir=certs, agent_id=agent_id, site="cam-1", device="rpi3",
                        control_plane=control_plane, listen=f"127.0.0.1:{listen_port}", **{**fast, **extra})


def start_agent(config: Path, log: Path) -> subprocess.Popen:
    """The real console script (`python -m isthmus.edge_agent`) in its own process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "isthmus.edge_agent", "--config", str(config)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def http(port: int, path: str, body: dict | None = None, timeout_s: float = 10.0,
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, urllib.error.URLError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def status(port: int) -> dict:
    return http(port, "/status")[1]


def infer(port: int, x: torch.Tensor, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    return http(port, "/infer", {"input": x.tolist()}, headers=headers)
