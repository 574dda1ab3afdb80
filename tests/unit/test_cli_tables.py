"""Tables at normal terminal widths: no name is cut with "…" (plan, models list, partition; `print_table`)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from isthmus.cli import app
from isthmus.tables import print_table

_ROOT = Path(__file__).resolve().parents[2]
_GEO = str(_ROOT / "examples" / "geo-3-regions.yaml")


def _run(args: list[str], width: int, cache: str | None = None):
    env = {"COLUMNS": str(width)} | ({"ISTHMUS_CACHE": cache} if cache else {})
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def _assert_whole(out: str, names: set[str]) -> None:
    """No ellipsis, and every name on one line, not cut and not folded."""
    assert "…" not in out, out
    for name in names:
        assert re.search(rf"(?<![\w./-]){re.escape(name)}(?![\w./-])", out), f"{name!r} not whole in:\n{out}"


@pytest.fixture(scope="module")
def plan_names() -> set[str]:
    plan = json.loads(_run(["plan", _GEO, "--json"], 200))
    names = {r["service"] for r in plan["routes"]} | {r["site"] for r in plan["routes"]}
    names |= {i["instance_type"] for i in plan["instances"]} | {i["model_version"] for i in plan["instances"]}
    assert {"classify-eu", "g4dn.xlarge", "resnet/int8"} <= names
    return names


@pytest.mark.parametrize("width", [80, 100])
def test_plan_tables_keep_every_name(width: int, plan_names: set[str]) -> None:
    out = _run(["plan", _GEO, "--compare"], width)
    _assert_whole(out, plan_names | {"latency-first", "cost-first (model-only)", "single-region"})
    assert max(len(line) for line in out.splitlines()) <= width


@pytest.mark.parametrize("width", [80, 100])
def test_models_list_keeps_every_name(width: int) -> None:
    from isthmus.models.versions import version_names
    from isthmus.models.zoo import ZOO_NAMES

    out = _run(["models", "list"], width)
    _assert_whole(out, set(ZOO_NAMES) | {v for name in ZOO_NAMES for v in version_names(name)})


@pytest.mark.parametrize("width", [80, 100])
def test_partition_table_keeps_every_name(width: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = str(tmp_path_factory.getbasetemp() / "partition-cache")
    out = _run(["partition", "rnnlm", "--size", "full", "--device", "rpi3", "--site-device", "t4",
                "--bandwidth-mbps", "10", "--slo-ms", "2000"], width, cache)
    _assert_whole(out, {"device_only", "cloud_only", "neurosurgeon", "edgent", "rnnlm/fp32"})


def _printed(table: Table, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    print_table(table, console)
    return console.file.getvalue()


def _wide_table() -> Table:
    table = Table(title="sites")
    for column in ("service", "site", "instance type", "note"):
        table.add_column(column)
    table.add_row("checkout-recommendations", "ap-southeast-2", "g5.12xlarge", "runs two models at a time here")
    table.add_row("classify", "us-east", "inf2.xlarge", "-")
    return table


def test_print_table_wraps_at_spaces_only() -> None:
    out = _printed(_wide_table(), 64)
    _assert_whole(out, {"checkout-recommendations", "ap-southeast-2", "g5.12xlarge", "inf2.xlarge"})
    assert max(len(line) for line in out.splitlines()) <= 64
    assert "two models" in out or "runs two" in out   # the note wrapped at a space, a table still


def test_print_table_stacks_rows_when_the_words_do_not_fit_side_by_side() -> None:
    out = _printed(_wide_table(), 44)
    _assert_whole(out, {"checkout-recommendations", "ap-southeast-2", "g5.12xlarge", "instance type"})
    assert max(len(line) for line in out.splitlines()) <= 44
    assert out.count("service") == 2   # one block per row, each with the column names


def test_print_table_folds_a_word_wider_than_the_terminal() -> None:
    table = Table()
    table.add_column("service")
    table.add_row("x" * 50)
    out = _printed(table, 30)
    assert "…" not in out and sum(line.count("x") for line in out.splitlines()) == 50
