"""The README's quick start, run as written: every line of the bash blocks between `<!-- quickstart -->` and
`<!-- /quickstart -->`, in order, each with bash, in a copy of examples/own-model (cwd: a temporary folder laid
out like the repository root, its `.venv` a link to the repository's). HOME is a temporary folder, so the
deployment's default state dir (~/.isthmus/deploy) is the test's own.

Every line must exit 0; the curl line's reply has a "prediction"; before `isthmus down`, `isthmus status --json`
shows planned == running for every fleet entry. `isthmus down` runs at the end whatever happened. `make ...`
lines are checked with `make -q` in the repository (the test already runs in that .venv, and a rebuild from a
test would reinstall the interpreter running it): an out-of-date .venv skips the test with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
TIMEOUT_S = {"fill-latencies": 300, "deploy": 900, "down": 300}   # every other line: 180 s


def quickstart_lines() -> list[str]:
    """The commands of the README's quick start, in order (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- quickstart -->", 1)[1].split("<!-- /quickstart -->", 1)[0]
    lines: list[str] = []
    for lang, code in FENCE.findall(block):
        if lang not in ("bash", "sh", "shell"):
            continue
        pending = ""
        for raw in code.splitlines():
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _run(line: str, cwd: Path, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    """`bash -c line` in its own process group; on timeout the whole group is killed (bounded)."""
    proc = subprocess.Popen(["bash", "-c", line], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`{line}` did not finish in {timeout_s:.0f} s\nstdout: {out[-2000:]}\nstderr: {err[-3000:]}")
    return subprocess.CompletedProcess(line, proc.returncode, out, err)


def _timeout(line: str) -> float:
    return next((t for word, t in TIMEOUT_S.items() if f"isthmus {word}" in line), 180)


def _fleet(work: Path, env: dict[str, str]) -> list[dict]:
    result = _run(".venv/bin/isthmus status --json", work, env, 180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)["fleet"]


def test_readme_quickstart_as_written(tmp_path: Path, tritonserver: str) -> None:
    if shutil.which("curl") is None:
        pytest.skip("no curl on this machine: the README's request line needs it")
    lines = quickstart_lines()
    for word in ("make_model.py", "isthmus fill-latencies", "isthmus deploy", "curl", "isthmus down"):
        assert any(word in line for line in lines), f"the README's quick start has no `{word}` line: {lines}"

    work, home = tmp_path / "repo", tmp_path / "home"
    home.mkdir()
    ignore = (ROOT / "examples" / "own-model" / ".gitignore").read_text().split()
    shutil.copytree(ROOT / "examples" / "own-model", work / "examples" / "own-model",
                    ignore=shutil.ignore_patterns(*ignore))          # what a fresh clone has: no model.pt yet
    (work / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)
    state = home / ".isthmus" / "deploy"

    took: dict[str, float] = {}
    try:
        for line in lines:
            if line.startswith("make "):
                check = _run(line.replace("make ", "make -q ", 1), ROOT, env, 60)
                if check.returncode != 0:
                    pytest.skip(f"`{line}` would rebuild .venv (it is older than pyproject.toml or requirements.lock):"
                                f" run `{line}` first")
                continue
            if re.search(r"isthmus down\b", line):      # before the README stops it: every instance serves
                fleet = _fleet(work, env)
                assert fleet and all(p["planned"] == p["running"] for p in fleet), fleet
            start = time.monotonic()
            result = _run(line, work, env, _timeout(line))
            took[line[:60]] = time.monotonic() - start
            assert result.returncode == 0, f"`{line}` exited {result.returncode}\nstdout: {result.stdout[-2000:]}\n" \
                                           f"stderr: {result.stderr[-4000:]}"
            if line.startswith("curl"):
                reply = json.loads(result.stdout)
                assert "prediction" in reply and reply.get("output"), reply
            if "isthmus deploy" in line:
                assert (state / "deployment.json").is_file(), f"deploy kept no state in {state}"
        assert not (state / "deployment.json").exists(), "`isthmus down` left the deployment's state behind"
    finally:
        if (state / "deployment.json").exists():
            _run(".venv/bin/isthmus down", work, env, 300)
    print("\n" + "\n".join(f"{s:6.1f} s  {line}" for line, s in took.items()))
