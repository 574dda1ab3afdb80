"""`kill -TERM` on `isthmus triton-serve` stops tritonserver and its Python-backend stub, as Ctrl-C does."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
    return out


def _matching(needle: str) -> dict[int, str]:
    """tritonserver and stub processes whose command line mentions `needle` (the model repository)."""
    return {pid: c for pid, c in _cmdlines().items()
            if needle in c and ("tritonserver" in c or "triton_python_backend_stub" in c)}


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def test_sigterm_stops_tritonserver_and_its_stub(tritonserver: str, mlp_torchscript: Path) -> None:
    isthmus = Path(sys.executable).parent / "isthmus"
    proc = subprocess.Popen([str(isthmus), "triton-serve", str(mlp_torchscript), "--input-shape", "16"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    repo = ""
    try:
        first = proc.stdout.readline()  # printed once Triton and the model are ready
        assert first.startswith("grpc "), first + proc.stdout.read()
        assert "INPUT0 float32 [-1, 16]" in proc.stdout.readline()
        servers = [c for c in _children(proc.pid) if "tritonserver" in _cmdlines().get(c, "")]
        assert servers, "no tritonserver child"
        repo = next(a for a in _cmdlines()[servers[0]].split() if a.startswith("--model-repository="))
        repo = repo.split("=", 1)[1]
        assert any("triton_python_backend_stub" in c for c in _matching(repo).values()), _matching(repo)
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _matching(repo) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _matching(repo), _matching(repo)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _matching(repo) if repo else ():  # a failed run leaves no orphans behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
