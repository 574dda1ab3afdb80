"""A real split run: head and tail of full-size AlexNet (with exits) in two processes, the activation
sent over loopback through a token bucket; the measured end-to-end latency must match the
partitioner's prediction (per-layer profile on this CPU + 8·bytes/bandwidth) within 15 % MAPE."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from isthmus.models import build, example_input  # noqa: E402
from isthmus.partition.splitrun import predict_vs_measure  # noqa: E402
from isthmus.partition.splits import split_modules  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# (exit, split, bandwidth_mbps): cloud-only, after pool2, after flatten, an early exit after pool1;
# bandwidths of a Pi on Wi-Fi/LTE, where the link is about half of the end-to-end latency
CASES = [(None, -1, 20.0), (None, 6, 5.0), (None, 15, 1.0), (3, 2, 10.0)]


def test_split_run_latency_matches_prediction(tmp_path):
    torch.manual_seed(0)
    model = build("alexnet_exits", "full")
    x = example_input("alexnet_exits", "full")
    rows = predict_vs_measure("alexnet_exits", model, x, CASES, tmp_path, requests=8)
    for row in rows:  # the bytes on the wire are the head's output tensor
        head, _ = split_modules(model, row["split"], row["exit"])
        with torch.no_grad():
            assert row["activation_bytes"] == head(x).numel() * 4
    mape = sum(r["error"] for r in rows) / len(rows)
    report = "\n".join(f"exit={r['exit']} split={r['split']} bw={r['bandwidth_mbps']:g} Mbps: predicted "
                       f"{r['predicted_ms']:.1f} ms, measured {r['measured_ms']:.1f} ms" for r in rows)
    print(f"\n{report}\nMAPE {100 * mape:.1f} %")
    assert mape < 0.15, f"MAPE {100 * mape:.1f} % >= 15 %\n{report}"
