"""Edge agent configuration: a TOML file (stdlib `tomllib`), validated with clear errors.

    agent_id = "cam-1-a"                 # = the CN of the agent certificate
    site = "cam-1"
    device = "rpi3"
    control_plane = "cloud.example.com:50051"
    ca_cert = "certs/ca.pem"             # relative paths are relative to this file
    cert = "certs/agents/cam-1-a/agent.pem"
    key = "certs/agents/cam-1-a/agent.key"
    token_file = "certs/agents/cam-1-a/token"   # or env ISTHMUS_AGENT_TOKEN
    listen = "127.0.0.1:8470"            # local HTTP endpoint for callers on the device
    uplink_mbps = 0                      # token-bucket limit of the agent's uplink (0 = none)
    state_dir = "/var/lib/isthmus"       # optional: verified partitions + last assignment survive a
                                         # restart, so the agent serves even if the control plane is down
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["AgentConfig", "ConfigError", "load_config", "parse_config", "write_config"]


class ConfigError(ValueError):
    """A bad agent config (the message names the key and says how to fix it)."""


@dataclass
class AgentConfig:
    """Everything the agent needs; see the module docstring for the file format."""

    agent_id: str
    site: str
    device: str
    control_plane: str
    ca_cert: Path
    cert: Path
    key: Path
    token: str = field(repr=False)
    listen: str = "127.0.0.1:8470"
    uplink_mbps: float = 0.0
    uplink_burst_bytes: int = 0
    cloud_timeout_s: float = 5.0
    cloud_retry_s: float = 1.0
    telemetry_interval_s: float = 5.0
    probe_interval_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_multiplier: float = 2.0
    backoff_jitter: float = 0.5
    max_request_bytes: int = 16 * 1024 * 1024
    max_partition_bytes: int = 512 * 1024 * 1024
    tls_server_name: str = ""
    arrow: bool = False
    threads: int = 1
    profile_file: Path | None = None
    trace_file: Path | None = None
    state_dir: Path | None = None

    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host, int(port)


_REQUIRED = ("agent_id", "site", "device", "control_plane", "ca_cert", "cert", "key")
_PATHS = ("ca_cert", "cert", "key", "profile_file", "trace_file", "state_dir")
_POSITIVE = ("cloud_timeout_s", "cloud_retry_s", "telemetry_interval_s", "probe_interval_s", "backoff_initial_s",
             "backoff_max_s", "max_request_bytes", "max_partition_bytes", "threads")


def _host_port(key: str, value: Any) -> str:
    host, sep, port = str(value).rpartition(":")
    if not isinstance(value, str) or not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key} = {value!r} is not host:port. To fix: e.g. {key} = \"127.0.0.1:50051\".")
    return value


def load_config(path: str | Path, **overrides: Any) -> AgentConfig:
    """Read and validate an agent TOML file; `overrides` replace keys (e.g. from the command line)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist. To fix: copy "
                          "isthmus/edge_agent/agent.example.toml and edit it.") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {p} is not valid TOML ({err}). To fix: check the syntax.") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return parse_config(raw, base_dir=p.parent)


def parse_config(raw: dict[str, Any], *, base_dir: Path = Path(".")) -> AgentConfig:
    """Validate a config mapping (see `load_config`)."""
    known = {f.name for f in fields(AgentConfig)} | {"token_file"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}. To fix: remove them; valid keys are {sorted(known)}.")
    missing = [k for k in _REQUIRED if not raw.get(k)]
    if missing:
        raise ConfigError(f"missing config key(s) {missing}. To fix: add them to the agent's TOML file.")
    values = dict(raw)
    token_file = values.pop("token_file", None)
    token = values.get("token") or os.environ.get("ISTHMUS_AGENT_TOKEN")
    if not token and token_file:
        tpath = (base_dir / token_file) if not Path(token_file).is_absolute() else Path(token_file)
        try:
            token = tpath.read_text().strip()
        except OSError as err:
            raise ConfigError(f"token_file {str(tpath)!r} cannot be read ({err.strerror}). To fix: point it at "
                              "the token written by `isthmus certs add-agent`.") from None
    if not token:
        raise ConfigError("no bearer token. To fix: set token_file (or the env var ISTHMUS_AGENT_TOKEN).")
    values["token"] = token
    for key in _PATHS:
        if values.get(key):
            q = Path(values[key])
            values[key] = q if q.is_absolute() else base_dir / q
    for key in ("ca_cert", "cert", "key"):
        if not values[key].is_file():
            raise ConfigError(f"{key} = {str(values[key])!r} does not exist. To fix: run `isthmus certs init DIR` "
                              "and point the config at its files.")
    _host_port("control_plane", values["control_plane"])
    _host_port("listen", values.get("listen", AgentConfig.listen))
    for key in _POSITIVE:
        if key in values and (not isinstance(values[key], (int, float)) or values[key] <= 0):
            raise ConfigError(f"{key} = {values[key]!r} must be a positive number. To fix: e.g. {key} = 5.")
    for key in ("uplink_mbps", "uplink_burst_bytes", "backoff_jitter"):
        if key in values and (not isinstance(values[key], (int, float)) or values[key] < 0):
            raise ConfigError(f"{key} = {values[key]!r} must be >= 0 (0 = no limit / no jitter).")
    if values.get("backoff_jitter", 0) > 1:
        raise ConfigError(f"backoff_jitter = {values['backoff_jitter']} must be in [0, 1].")
    return AgentConfig(**values)


def write_config(path: str | Path, *, certs_dir: str | Path, agent_id: str, site: str, device: str,
                 control_plane: str, listen: str, **extra: Any) -> Path:
    """Write an agent TOML file using the files of `isthmus certs init CERTS_DIR` (for demos and tests).

    `extra` holds any other key of `AgentConfig` (e.g. `uplink_mbps=10`); the result is validated.
    """
    certs = Path(certs_dir).resolve()
    agent = certs / "agents" / agent_id
    values = {"agent_id": agent_id, "site": site, "device": device, "control_plane": control_plane,
              "ca_cert": str(certs / "ca.pem"), "cert": str(agent / "agent.pem"), "key": str(agent / "agent.key"),
              "token_file": str(agent / "token"), "listen": listen,
              **{k: str(v) if isinstance(v, Path) else v for k, v in extra.items() if v is not None}}
    parse_config(values)
    out = Path(path)
    # JSON strings and numbers are valid TOML basic strings / numbers
    out.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return out
