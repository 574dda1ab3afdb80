"""The gRPC stubs are built on first import in a fresh checkout (no Makefile step), safely when
several processes start at once, and rebuilt when a .proto file changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_SNIPPET = ("import isthmus._proto as p; assert p.__file__.startswith({root!r}), p.__file__; "
            "a = p.load('control_plane_pb2').Assignment(model='m', split=3); "
            "assert p.load('inference_pb2_grpc').InferenceStub; print(a.split)")


def _fresh_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "isthmus", root / "isthmus", ignore=shutil.ignore_patterns("_generated", "__pycache__"))
    shutil.copytree(REPO / "protos", root / "protos")
    return root


def _run(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.Popen([sys.executable, "-c", _SNIPPET.format(root=str(root))], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_fresh_checkout_builds_stubs_under_concurrency_and_rebuilds_on_change(tmp_path: Path) -> None:
    root = _fresh_checkout(tmp_path)
    assert not (root / "isthmus" / "_generated").exists()
    procs = [_run(root) for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0 and out.strip() == "3", err
    generated = root / "isthmus" / "_generated"
    assert (generated / "STAMP").is_file()
    assert generated.stat().st_mode & 0o755 == 0o755  # a service account can import the stubs
    assert sorted(p.name for p in (generated / "isthmus" / "v1").glob("*_pb2*.py")) == sorted(
        f"{n}_pb2{g}.py" for n in ("control_plane", "inference", "tensor") for g in ("", "_grpc"))
    assert not list(generated.parent.glob("._generated-*"))  # no temporary trees left behind
    # a changed .proto is noticed and the stubs are rebuilt
    stamp = (generated / "STAMP").read_text()
    proto = root / "protos" / "isthmus" / "v1" / "control_plane.proto"
    proto.write_text(proto.read_text().replace("string agent_version = 5;",
                                               "string agent_version = 5;\n  string firmware = 6;"))
    check = "import isthmus._proto as p; print(p.load('control_plane_pb2').RegisterRequest(firmware='x').firmware)"
    out = subprocess.run([sys.executable, "-c", check], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip() == "x", out.stderr
    assert (generated / "STAMP").read_text() != stamp
