"""`isthmus --help`: commands grouped by workflow; every option described; value types without Python noise."""

from __future__ import annotations

import re

import typer.main
from typer.testing import CliRunner

from isthmus.cli import PANELS, app


def _commands(command=None, path: tuple[str, ...] = ()):
    """(path, click command) of every command and group below the root."""
    command = command or typer.main.get_command(app)
    for name, sub in getattr(command, "commands", {}).items():
        yield (*path, name), sub
        yield from _commands(sub, (*path, name))


def _help(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_root_help_lists_commands_by_workflow() -> None:
    out = _help()
    titles = [re.search(rf"─ {re.escape(panel)} ─", out) for panel in PANELS]
    assert all(titles), out
    starts = [m.start() for m in titles]
    assert starts == sorted(starts), "panels out of workflow order"
    for (panel, names), start, end in zip(PANELS.items(), starts, [*starts[1:], len(out)]):
        listed = re.findall(r"^│ ([a-z][a-z-]*) ", out[start:end], re.M)
        assert listed == list(names), (panel, listed)


def test_every_command_is_in_a_panel() -> None:
    top = {path[0] for path, _ in _commands() if len(path) == 1}
    assert top == {name for names in PANELS.values() for name in names}


def test_every_option_and_argument_has_a_help_text() -> None:
    missing = [f"isthmus {' '.join(path)} {param.opts[0] if param.opts else param.name}"
               for path, command in _commands() for param in command.params
               if getattr(param, "param_type_name", "") in ("option", "argument") and not (param.help or "").strip()]
    assert not missing, missing


def test_flags_show_no_type_and_values_show_click_names() -> None:
    out = _help("plan")
    assert re.search(r"--json +Print the Plan JSON", out), out
    assert re.search(r"--time-limit-s +FLOAT ", out) and re.search(r"--method +TEXT ", out)
    assert re.search(r"\bSPEC +TEXT ", out)
    out = _help("serve-config")
    assert re.search(r"--triton-url +TEXT ", out) and re.search(r"--http-port +INTEGER ", out)


def test_every_help_page_is_free_of_python_type_labels() -> None:
    for path in [(), *(path for path, _ in _commands())]:
        out = _help(*path)
        assert not re.search(r"<(bool|str|int|float|list\[[^>]*\]|Path)>", out), (path, out)
        assert not re.search(r"Usage: .*\{[a-z_]+\}", out), (path, out)   # arguments as SPEC, not {spec}
