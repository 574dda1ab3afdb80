"""README.md and docs/*.md stay true: every `isthmus` command they name exists, their links and file references
resolve, they say nothing about internal folders, and the README's own-model example plans as it says."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from isthmus.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OWN_MODEL = ROOT / "examples" / "own-model"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
# `isthmus <command> [<subcommand>]`, also as .venv/bin/isthmus; not /opt/isthmus, isthmus-edge-agent, isthmus.x
COMMAND = re.compile(r"(?<![\w./<-])(?:\.venv/bin/)?isthmus[ \t]+([a-z][a-z0-9-]*)(?:[ \t]+([a-z][a-z0-9_-]*))?")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(r"^(?:isthmus|tests|bench|terraform|protos|examples|docs)/[\w./*-]+$")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def _code(text: str) -> list[str]:
    """Fenced blocks and inline code spans of a markdown text."""
    blocks = FENCE.findall(text)
    return blocks + re.findall(r"`([^`\n]+)`", FENCE.sub("", text))


@lru_cache(maxsize=None)
def _commands(*group: str) -> frozenset[str]:
    """Command names listed by `isthmus [group] --help`: the panels after Options ("Commands", or the workflow
    panels of the root)."""
    result = CliRunner().invoke(app, [*group, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    listing = result.output.partition("─ Options ─")[2].partition("╰")[2]
    return frozenset(re.findall(r"^(?:│ | {2})([a-z][a-z0-9-]*)\s", listing, re.M))


def test_markers_find_commands():
    assert {"deploy", "status", "down", "fill-latencies", "plan", "certs"} <= _commands()
    assert {"init", "add-agent"} <= _commands("certs")


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_isthmus_command_named_exists(doc: Path):
    named = {(m.group(1), m.group(2)) for code in _code(doc.read_text()) for m in COMMAND.finditer(code)}
    assert named or doc.name not in ("README.md", "runtime.md"), f"no isthmus command found in {doc}"
    top = _commands()
    missing = sorted(f"isthmus {c}" for c, _ in named if c not in top)
    assert not missing, f"{doc.relative_to(ROOT)} names commands `isthmus --help` does not list: {missing}"
    for command, sub in sorted(named, key=str):
        group = _commands(command)
        if group and sub is not None:   # a command group: its subcommand must exist too
            assert sub in group, f"{doc.relative_to(ROOT)}: `isthmus {command} {sub}`, but {command} has {set(group)}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_no_internal_references(doc: Path):
    text = doc.read_text()
    for word in ("shared/", "DESIGN.md"):
        lines = [n for n, line in enumerate(text.splitlines(), 1) if word in line]
        assert not lines, f"{doc.relative_to(ROOT)} mentions {word} on lines {lines}; link docs/spec.md instead"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_links_resolve(doc: Path):
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.exists(), f"{doc.relative_to(ROOT)} links {target}: {path} does not exist"
        if anchor:
            assert path.suffix == ".md" and anchor in _anchors(path), \
                f"{doc.relative_to(ROOT)} links {target}: no heading with anchor #{anchor} in {path.name}"


def _ignored(path: Path) -> bool:
    """Named in a .gitignore next to it (files the reader makes, like examples/own-model/model.pt)."""
    ignore = path.parent / ".gitignore"
    return ignore.is_file() and path.name in ignore.read_text().split()


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_referenced_files_exist(doc: Path):
    """Files named in inline code (tests, benches, examples, modules) exist; directories and globs too."""
    for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", doc.read_text())):
        token = span.split("::")[0].strip()
        if not PATH.match(token):
            continue
        if "*" in token:
            assert list(ROOT.glob(token)), f"{doc.relative_to(ROOT)}: nothing matches {token}"
        elif not _ignored(ROOT / token):
            assert (ROOT / token).exists(), f"{doc.relative_to(ROOT)} names {token}, which does not exist"


def test_readme_quickstart_block():
    """The block tests/e2e/test_readme_quickstart.py runs: marked, and the front-door commands in order."""
    text = (ROOT / "README.md").read_text()
    assert text.count("<!-- quickstart -->") == 1 and text.count("<!-- /quickstart -->") == 1
    block = text.split("<!-- quickstart -->")[1].split("<!-- /quickstart -->")[0]
    lines = [line for code in FENCE.findall(block) for line in code.splitlines() if line.strip()]
    order = ["make venv", "make_model.py", "isthmus fill-latencies", "isthmus deploy", "curl", "isthmus status",
             "isthmus down"]
    found = [next((i for i, line in enumerate(lines) if word in line), None) for word in order]
    assert None not in found and found == sorted(found), list(zip(order, found))
    assert text.index("<!-- quickstart -->") < len(text) // 3, "the quick start belongs on the README's first screen"


def test_own_model_example_plans_one_or_two_instances(tmp_path: Path):
    """make_model.py writes a TorchScript model that takes request.json's input; the spec, filled by
    fill-latencies, plans 1-2 instances."""
    import torch

    from isthmus.optimizer import GeoPlanner
    from isthmus.spec import load_spec

    work = tmp_path / "own-model"
    shutil.copytree(OWN_MODEL, work, ignore=shutil.ignore_patterns("model.pt", "filled.yaml"))
    made = subprocess.run([sys.executable, str(work / "make_model.py")], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    assert (work / "model.pt").is_file()
    raw = yaml.safe_load((work / "spec.yaml").read_text())
    version = raw["models"][0]["versions"][0]
    assert "latency_ms" not in version and version["artifact"]["path"] == "model.pt"
    request = json.loads((work / "request.json").read_text())
    assert request["service"] in {s["name"] for s in raw["services"]}
    x = torch.tensor(request["input"], dtype=torch.float32)
    assert tuple(x.shape[1:]) == tuple(version["artifact"]["input_shape"])
    with torch.no_grad():
        assert torch.jit.load(str(work / "model.pt"))(x).shape == (x.shape[0], 10)

    result = CliRunner().invoke(app, ["fill-latencies", str(work / "spec.yaml"), "-o", str(work / "filled.yaml")])
    assert result.exit_code == 0, result.output
    spec = load_spec(str(work / "filled.yaml"))
    assert all(v.latency_ms and v.capacity_rps for m in spec.models for v in m.versions)
    plan = GeoPlanner(spec).solve()
    assert plan.feasible and 1 <= sum(i.count for i in plan.instances) <= 2, plan.instances
