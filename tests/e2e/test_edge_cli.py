"""The three processes a user starts by hand: `isthmus inference-server`, `isthmus control-plane`
(assignments file re-read on change) and `isthmus-edge-agent`, all real, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from edge_helpers import INPUT_SHAPE, TinyChain, infer, start_agent, status, wait_for, write_agent_config  # noqa: E402

from isthmus.platform._grpc import free_port  # noqa: E402
from isthmus.platform.certs import init_certs  # noqa: E402

pytestmark = pytest.mark.timeout(300)
ISTHMUS = [sys.executable, "-c", "from isthmus.cli import main; main()"]


def _assignments(root: Path, split: int, target: str) -> None:
    entry = {"model": "tiny", "split": split, "exit": 3, "head": f"parts/head{split}.pt",
             "local_exits": {str(split): f"parts/exit{split}.pt"}, "inference_target": target, "inference_tls": True}
    tmp = root / "assignments.json.tmp"
    tmp.write_text(json.dumps({"cam-1": entry}))
    tmp.replace(root / "assignments.json")
    later = time.time() + 2  # a distinct mtime even on coarse-grained filesystems
    os.utime(root / "assignments.json", (later, later))


def test_servers_from_the_cli_drive_an_agent(tmp_path: Path) -> None:
    chain = TinyChain(seed=4)
    init_certs(tmp_path / "certs", agents=["cli-agent"])
    (tmp_path / "parts").mkdir()
    tails = []
    for split in (1, 2):
        (tmp_path / "parts" / f"head{split}.pt").write_bytes(chain.head(split))
        (tmp_path / "parts" / f"exit{split}.pt").write_bytes(chain.local_exit(split))
        (tmp_path / "parts" / f"tail{split}.pt").write_bytes(chain.tail(split, 3))
        tails += ["--tail", f"tiny:{split}:3={tmp_path / 'parts' / f'tail{split}.pt'}"]
    inf_port, cp_port, http_port = free_port(), free_port(), free_port()
    _assignments(tmp_path, 1, f"127.0.0.1:{inf_port}")
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("inference", "control")}
    procs = [
        subprocess.Popen([*ISTHMUS, "inference-server", *tails, "--certs", str(tmp_path / "certs"),
                          "--port", str(inf_port)], stdout=logs["inference"], stderr=subprocess.STDOUT),
        subprocess.Popen([*ISTHMUS, "control-plane", "--certs", str(tmp_path / "certs"), "--assignments",
                          str(tmp_path / "assignments.json"), "--port", str(cp_port), "--partitions",
                          str(tmp_path / "store")], stdout=logs["control"], stderr=subprocess.STDOUT),
    ]
    config = write_agent_config(tmp_path / "agent.toml", tmp_path / "certs", "cli-agent",
                                control_plane=f"127.0.0.1:{cp_port}", listen_port=http_port)
    procs.append(start_agent(config, tmp_path / "agent.log"))
    x = torch.randn(2, *INPUT_SHAPE[1:], generator=torch.Generator().manual_seed(5))
    try:
        loaded = wait_for(lambda: any(p.poll() is not None for p in procs) or status(http_port).get("loaded"), 120,
                          "the agent to load split 1 from the CLI control plane")
        assert all(p.poll() is None for p in procs), [p.returncode for p in procs]
        assert loaded["split"] == 1
        code, reply = wait_for(lambda: (lambda r: r if r[0] == 200 and r[1]["source"] == "cloud" else None)(
            infer(http_port, x)), 60, "a cloud answer from the CLI inference server")
        assert reply["prediction"] == chain.reference(x, 3)
        _assignments(tmp_path, 2, f"127.0.0.1:{inf_port}")
        wait_for(lambda: status(http_port)["loaded"]["split"] == 2, 60, "the agent to follow the edited assignments")
        code, reply = infer(http_port, x)
        assert code == 200 and reply["split"] == 2 and reply["prediction"] == chain.reference(x, 3)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.values():
            log.close()


def test_inference_server_rejects_a_file_that_is_not_torchscript(tmp_path: Path) -> None:
    (tmp_path / "t.pt").write_bytes(b"not torchscript")
    proc = subprocess.run([*ISTHMUS, "inference-server", "--tail", f"m:1:2={tmp_path / 't.pt'}", "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a TorchScript archive" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
