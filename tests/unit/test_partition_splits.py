"""Head/tail modules reproduce the whole model; SplitPoints for the planner are Pareto-useful."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from isthmus.models import build, example_input  # noqa: E402
from isthmus.partition.splits import split_modules  # noqa: E402


def _run(head, tail, x):
    act = head(x)
    return tail(*act) if isinstance(act, tuple) else tail(act)


@pytest.mark.parametrize("name", ["resnet", "inception"])
def test_dag_head_tail_equals_model(name):
    torch.manual_seed(0)
    model = build(name, "small")
    x = example_input(name, "small", batch=2)
    traced = torch.fx.symbolic_trace(model)
    n = sum(1 for v in traced.graph.nodes if v.op in ("call_module", "call_function", "call_method"))
    with torch.inference_mode():
        want = model(x)
        for split in sorted({-1, 0, n // 3, n // 2, n - 1}):
            head, tail = split_modules(traced, split)
            assert torch.allclose(_run(head, tail, x), want, atol=1e-5), split


def test_chain_head_tail_per_exit():
    from isthmus.models.zoo import exit_logits

    model = build("alexnet_exits", "small")
    x = example_input("alexnet_exits", "small", batch=2)
    with torch.inference_mode():
        logits = exit_logits(model, x)
        for key, want in logits.items():
            exit = None if int(key) == len(model.layers) - 1 else int(key)
            length = int(key) + 1 + (len(model.exits[key]) if exit is not None else 0)
            for split in (-1, 0, int(key), length - 1):
                head, tail = split_modules(model, split, exit)
                assert torch.allclose(_run(head, tail, x), want, atol=1e-5), (key, split)
    with pytest.raises(ValueError, match="exit 5 does not exist"):
        split_modules(model, 0, 5)
    with pytest.raises(ValueError, match="split 99 outside"):
        split_modules(model, 99, None)
