"""A real split run: head and tail of full-size AlexNet (with exits) in two processes, the activation
sent over loopback through a token bucket; the measured end-to-end latency must match the
partitioner's prediction (profile on this CPU + 8·bytes/bandwidth) within 15 % MAPE."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from isthmus.models import build, example_input  # noqa: E402
from isthmus.partition.profiles import chain_table  # noqa: E402
from isthmus.partition.splitrun import split_run  # noqa: E402
from isthmus.partition.splits import export_partitions, split_modules  # noqa: E402
from isthmus.profiler.core import profile_module  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# (exit, split, bandwidth_mbps): cloud-only, after pool2, after flatten, an early exit after pool1;
# bandwidths of a Pi on Wi-Fi/LTE, where the link is about half of the end-to-end latency
CASES = [(None, -1, 20.0), (None, 6, 5.0), (None, 15, 1.0), (3, 2, 10.0)]
REQUESTS = 6


def _predicted_ms(model, x, exit, split, bw):
    """The partitioner's prediction from a fresh per-layer profile of this CPU (1 thread) of the exit path."""
    head, tail = split_modules(model, split, exit)
    path = torch.nn.Module()
    path.layers = torch.nn.ModuleList(list(head) + list(tail))  # a chain: profiled layer by layer
    local = profile_module(path, x, model_name="alexnet_exits", repeats=4, warmup=1)
    return chain_table(local, local).latency_ms(None, split, bw, rtt_ms=0.0), local


def test_split_run_latency_matches_prediction(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the head and tail processes run with one thread each
    model = build("alexnet_exits", "full")
    x = example_input("alexnet_exits", "full")
    rows = []
    for exit, split, bw in CASES:
        head, tail = export_partitions("alexnet_exits", "full", split, exit, tmp_path, model=model)
        # profile right before and right after the run; the machine is shared and a load spike only
        # ever inflates a profile, so the lower of the two is the less disturbed one
        before, local = _predicted_ms(model, x, exit, split, bw)
        run = split_run(head, tail, x, bw, requests=REQUESTS)
        after, _ = _predicted_ms(model, x, exit, split, bw)
        assert run.activation_bytes == chain_table(local, local).decide(None, split, bw).activation_bytes
        rows.append((exit, split, bw, min(before, after), run.median_ms))
    errors = [abs(measured - predicted) / measured for *_, predicted, measured in rows]
    mape = sum(errors) / len(errors)
    report = "\n".join(f"exit={e} split={k} bw={bw:g} Mbps: predicted {p:.1f} ms, measured {m:.1f} ms"
                       for e, k, bw, p, m in rows)
    print(f"\n{report}\nMAPE {100 * mape:.1f} %")
    assert mape < 0.15, f"MAPE {100 * mape:.1f} % >= 15 %\n{report}"
