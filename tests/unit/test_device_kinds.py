"""One registry of device kinds: `place`, `profile` and `partition` accept the same names (and reject the same)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from isthmus.cli import app
from isthmus.profiler.devices import DEVICE_KINDS, HOST_KINDS


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _run(cache: str, *args: str):
    return CliRunner().invoke(app, list(args), env={"ISTHMUS_CACHE": cache})


def _commands(kind: str) -> dict[str, list[str]]:
    return {
        "place": ["place", "alexnet_exits", "--size", "small", "--devices", f"2x{kind}", "--episodes", "0", "--json"],
        "profile": ["profile", "alexnet_exits", "--size", "small", "--device", kind, "--repeats", "1", "--json"],
        "partition": ["partition", "alexnet_exits", "--size", "small", "--device", kind, "--site-device", kind,
                      "--bandwidth-mbps", "10", "--slo-ms", "1000", "--json"],
    }


@pytest.mark.parametrize("kind", sorted(DEVICE_KINDS))
def test_every_command_accepts_every_known_device_kind(cache: str, kind: str) -> None:
    for command, args in _commands(kind).items():
        out = _run(cache, *args)
        assert out.exit_code == 0, (command, out.output)
        json.loads(out.output)


def test_every_command_names_the_same_kinds_when_one_is_unknown(cache: str) -> None:
    for command, args in _commands("q9000").items():
        out = _run(cache, *args)
        text = " ".join(out.output.split())
        assert out.exit_code == 2 and "To fix" in text, (command, out.output)
        assert all(kind in text for kind in DEVICE_KINDS), (command, text)


@pytest.mark.parametrize("host", HOST_KINDS)
def test_this_machine_is_cpu_or_local_cpu_where_a_command_runs_on_it(cache: str, host: str) -> None:
    for command, args in list(_commands(host).items())[:2]:   # place and profile; partition scales to declared kinds
        out = _run(cache, *args)
        assert out.exit_code == 0, (command, out.output)
