"""The demo's HTML report renders in headless Chromium (issue #5): a synthetic run, so it needs no cluster.

`tests/e2e/test_demo.py` checks the report of a real `isthmus demo --quick` run the same way; this module covers
the report writer on its own (seconds, not minutes) and the check itself: a plot that does not decode is caught.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_browser import find_chromium, render  # noqa: E402

pytestmark = [pytest.mark.timeout(300)]


def _plan(cost: float, split: int | None, latency_ms: float) -> dict:
    return {"cost_per_hour": cost, "compute_cost_per_hour": cost * 0.9, "egress_cost_per_hour": cost * 0.1,
            "routes": [{"fraction": 1.0, "split": split, "latency_ms": latency_ms, "site": "us-east"}]}


def _synthetic_report(out: Path) -> Path:
    """A short run through the real summary and report writers: raw inputs, a drop at 10 s, split 14 after 12 s."""
    from isthmus.demo import _Sample, _State
    from isthmus.demo_report import summarize_run, write_report

    state = _State(t0=0.0)
    state.overhead_ms, state.slo_ms, state.accuracy_model = 20.0, 40.0, 0.97
    state.plans = [{"t_s": 0.0, "bandwidth_mbps": 0.2, "plan": _plan(0.5, None, 33.0)},
                   {"t_s": 11.0, "bandwidth_mbps": 0.1, "plan": _plan(0.6, 14, 36.0)}]
    state.events = [{"event": "load_start", "t_s": 0.0}, {"event": "bandwidth_drop", "t_s": 10.0},
                    {"event": "published", "t_s": 11.0}, {"event": "agents_switched", "t_s": 12.0}]
    for i in range(200):
        t_s = i * 0.1
        raw = t_s < 12.0
        latency = (33.0 if t_s < 10.0 else 46.0) if raw else 36.0
        state.samples.append(_Sample(agent="a", t_s=t_s, latency_ms=latency + (i % 7) * 0.3, ok=True,
                                     split=-1 if raw else 14, correct=i % 10 != 0))
    spec = SimpleNamespace(services=[SimpleNamespace(name="digits", slo_ms=40.0, slo_percentile=99.0)])
    traces = {"file": "traces.jsonl", "count": 200, "complete": 200, "complete_to_triton_client": 200,
              "min_spans": 6, "hops": ["edge_agent", "ingress", "deployment", "triton"], "missing_hops": {}}
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_run(out, state, spec, traces, "", SimpleNamespace(bandwidth_mbps=0.2))
    return write_report(out, summary, state)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if find_chromium() is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium; apt-get install chromium)")
    return _synthetic_report(tmp_path_factory.mktemp("report") / "out")


def test_every_plot_of_the_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    seen = render(report, tmp_path)
    assert seen["images"] == 3 and seen["decoded"] == 3, seen
    assert all(w > 200 and h > 150 for _, _, w, h in seen["rects"]), seen["rects"]
    assert all(y + h <= seen["size"][1] for _, y, _, h in seen["rects"]), (seen["rects"], seen["size"])
    assert all(0.03 < ink < 0.9 for ink in seen["ink"]), seen["ink"]  # drawn plots: neither blank nor solid
    html = report.read_text()
    assert "How the spec is shaped" in html and "SLO" in html


def test_the_check_catches_a_plot_that_does_not_decode(report: Path, tmp_path: Path) -> None:
    """A report whose second plot is not a PNG: the browser decodes 2 of 3 and shows no plot area for it (a
    broken-image icon and its alt text), while the other two plots are still drawn."""
    import re

    html = report.read_text()
    datas = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace(datas[1], "bm90IGEgcG5n"))  # base64 of "not a png"
    seen = render(broken, tmp_path / "chromium")
    assert seen["images"] == 3 and seen["decoded"] == 2, seen
    heights = [h for _, _, _, h in seen["rects"]]
    assert heights[1] < 40 < 150 < min(heights[0], heights[2]), seen["rects"]  # one line of alt text, no plot
    assert min(seen["ink"][0], seen["ink"][2]) > 0.03, seen["ink"]
