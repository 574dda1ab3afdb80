"""Local node provider: Ray nodes on this machine, started with `ray start` so they outlive the command that
starts them (what `isthmus deploy --local` runs on).

Every node of a deployment shares one Ray temp dir, `temp_dir(state_dir)` (short, so Ray's socket paths stay
under the 107-byte limit), and carries a resource naming it, `isthmus-node:<name>` (1 unit), besides the
resources it is started with. That lets `remove` find its raylet among the others on the host (its command
line), and `processes` find every process of the deployment for `isthmus down`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["NodeError", "LocalNodes", "temp_dir", "node_resource", "processes", "raylet_pids", "kill_processes"]

NODE_PREFIX = "isthmus-node:"
_OBJECT_STORE_BYTES = 80 * 1024 * 1024


class NodeError(RuntimeError):
    """A node could not be started or did not register (the message says how to fix it)."""


def temp_dir(state_dir: str | Path) -> str:
    """Ray temp dir of the deployment whose state lives in `state_dir`: /tmp/isthmus-ray-<8 hex of its path>."""
    digest = hashlib.sha1(str(Path(state_dir).resolve()).encode()).hexdigest()[:8]
    return f"/tmp/isthmus-ray-{digest}"


def node_resource(name: str) -> str:
    return f"{NODE_PREFIX}{name}"


def _ray_cli() -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts"]


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without a Ray worker's own variables (the provider may run inside an actor),
    plus `extra` (Serve's settings, which every raylet must start with)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYLET_"))}
    env.update(extra)
    return env


class LocalNodes:
    """Start and stop Ray nodes of one deployment on this machine.

    `LocalNodes.start_head(...)` starts the head (resource `isthmus:head`) and returns the provider;
    `add(name, resources)` starts a node and returns once it registered; `remove(name)` stops it.
    """

    def __init__(self, address: str, temp: str, env: dict[str, str] | None = None, num_cpus: int = 1) -> None:
        self.address, self.temp, self.env, self.num_cpus = address, temp, dict(env or {}), num_cpus

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "temp": self.temp, "env": self.env, "num_cpus": self.num_cpus}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LocalNodes":
        return cls(data["address"], data["temp"], data.get("env"), data.get("num_cpus", 1))

    @classmethod
    def start_head(cls, temp: str, env: dict[str, str], port: int, client_port: int, num_cpus: int = 1,
                   timeout_s: float = 120.0) -> "LocalNodes":
        args = ["start", "--head", f"--port={port}", f"--ray-client-server-port={client_port}",
                f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats",
                "--node-ip-address=127.0.0.1"]
        cls._run(args, {"isthmus:head": 1.0}, env, num_cpus, timeout_s, "head")
        return cls(f"127.0.0.1:{port}", temp, env, num_cpus)

    @staticmethod
    def _run(args: list[str], resources: dict[str, float], env: dict[str, str], num_cpus: int, timeout_s: float,
             what: str) -> None:
        command = _ray_cli() + args + [f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}",
                                       f"--object-store-memory={_OBJECT_STORE_BYTES}",
                                       "--dashboard-agent-listen-port=0", "--min-worker-port=0",
                                       "--max-worker-port=0"]
        try:
            proc = subprocess.run(command, env=_clean_env(env), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise NodeError(f"`ray start` for the {what} took over {timeout_s:.0f} s. To fix: retry when the "
                            "machine is less loaded") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise NodeError(f"`ray start` for the {what} failed (exit {proc.returncode}): {tail}. To fix: read "
                            "the message above; `isthmus down` cleans up a half-started deployment")

    def add(self, name: str, resources: dict[str, float], timeout_s: float = 180.0) -> str:
        """Start node `name` with `resources` (+ its `isthmus-node:<name>` resource); returns its node id once it
        registered. A node that does not register within `timeout_s` is stopped and NodeError raised."""
        import ray

        resources = {**resources, node_resource(name): 1.0}
        self._run(["start", f"--address={self.address}", "--node-ip-address=127.0.0.1"], resources, self.env,
                  self.num_cpus, timeout_s, f"node {name}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            node_id = node_ids(ray.nodes()).get(name)
            if node_id:
                return node_id
            time.sleep(0.25)
        self.remove(name)
        raise NodeError(f"node {name} did not register within {timeout_s:.0f} s. To fix: retry when the machine is "
                        "less loaded")

    def remove(self, name: str, timeout_s: float = 30.0) -> None:
        """Stop node `name`: SIGTERM its raylet (which stops its workers and agents), SIGKILL after `timeout_s`."""
        raylets = (raylet_pids(self.temp) or {}).get(node_resource(name), [])
        table = _process_table()
        pids = [pid for pid in table if pid in raylets or table[pid][0] in raylets]   # its workers and agents too
        kill_processes(pids, timeout_s)


def node_ids(nodes: list[dict[str, Any]]) -> dict[str, str]:
    """Node name → id of the alive nodes (as `ray.nodes()` lists them) that carry an `isthmus-node:` resource."""
    out = {}
    for node in nodes:
        if node.get("Alive"):
            for resource in node.get("Resources", {}):
                if resource.startswith(NODE_PREFIX):
                    out[resource[len(NODE_PREFIX):]] = node["NodeID"]
    return out


def processes(marker: str) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every live process whose command line mentions `marker` (a temp dir, a state dir), and of
    their descendants (Ray's workers and agents rename themselves, e.g. `ray::IDLE`, so only their raylet's
    command line still names the temp dir)."""
    table = _process_table()
    own = _ancestors()
    found = {pid for pid, (_, args) in table.items() if pid not in own and any(marker in a for a in args)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child not in own:
                found.add(child)
                todo.append(child)
    return [(pid, table[pid][1]) for pid in sorted(found)]


def raylet_pids(marker: str) -> dict[str, list[int]] | None:
    """Custom resource → pids of the live raylets whose command line mentions `marker` (a session or temp dir)
    and carries the resource (`--static_resource_list=name,amount,name,amount,...`); None where /proc is absent."""
    if not os.path.isdir("/proc"):
        return None
    out: dict[str, list[int]] = {}
    for pid, (_, args) in _process_table().items():
        if not args[0].endswith("raylet") or not any(marker in a for a in args):
            continue
        for a in args:
            if a.startswith("--static_resource_list="):
                for resource in a.split("=", 1)[1].split(",")[::2]:
                    out.setdefault(resource, []).append(pid)
    return out


def _process_table() -> dict[int, tuple[int, list[str]]]:
    """pid → (parent pid, argv) of every live (not zombie) process, from /proc ({} where there is none)."""
    out = {}
    if not os.path.isdir("/proc"):
        return out
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            out[int(entry.name)] = (int(fields[1]), args)
    return out


def _ancestors() -> set[int]:
    """This process and its ancestors (a shell that ran `isthmus down --state-dir X` mentions X too)."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().split(")")[-1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def kill_processes(pids: list[int], timeout_s: float = 15.0) -> None:
    """SIGTERM `pids`, wait up to `timeout_s` for them to exit, SIGKILL the rest."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (timeout_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        pids = [pid for pid in pids if _alive(pid)]
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
