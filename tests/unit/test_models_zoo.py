"""Zoo contract: shapes, chain/DAG structure, exits, fx traceability (small sizes; full only where cheap)."""

import pytest
import torch
import torch.fx

from isthmus.models import ZOO_NAMES, build, example_input
from isthmus.models.zoo import exit_logits


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_small_models_give_ten_logits(name):
    model = build(name, "small")
    with torch.inference_mode():
        out = model(example_input(name, "small", batch=3))
    assert out.shape == (3, 10)


@pytest.mark.parametrize("name", ["alexnet_exits", "vgg", "rnnlm"])
def test_chain_layers_compose_to_forward(name):
    model = build(name, "small")
    x = example_input(name, "small", batch=2)
    with torch.inference_mode():
        h = x
        for layer in model.layers:
            h = layer(h)
        assert torch.equal(h, model(x))


def test_alexnet_has_five_exits_like_edgent():
    model = build("alexnet_exits", "small")
    assert sorted(model.exits, key=int) == ["3", "7", "9", "11"]
    with torch.inference_mode():
        logits = exit_logits(model, example_input("alexnet_exits", "small", batch=2))
    assert list(logits) == ["3", "7", "9", "11", str(len(model.layers) - 1)]
    assert all(v.shape == (2, 10) for v in logits.values())


@pytest.mark.parametrize("name", ["alexnet_exits", "vgg", "resnet", "inception"])
def test_fx_traces_and_dags_have_joins(name):
    graph = torch.fx.symbolic_trace(build(name, "small")).graph
    fan_in = [n for n in graph.nodes if len([a for a in n.all_input_nodes if a.op != "get_attr"]) > 1]
    fan_out = [n for n in graph.nodes if len(n.users) > 1]
    if name in ("resnet", "inception"):
        assert fan_in and fan_out  # real branches and joins (add / cat)
    else:
        assert not fan_in


def test_full_size_shapes():
    assert example_input("alexnet_exits").shape == (1, 3, 224, 224)
    assert example_input("rnnlm", batch=2).shape == (2, 35)
    with torch.inference_mode():
        assert build("rnnlm", "full")(example_input("rnnlm")).shape == (1, 35, 10000)


def test_width_shrinks_the_model():
    def params(m):
        return sum(p.numel() for p in m.parameters())

    assert params(build("resnet", "small", width=0.5)) < 0.4 * params(build("resnet", "small"))


@pytest.mark.parametrize("kwargs, field", [({"name": "lenet"}, "lenet"), ({"name": "vgg", "size": "huge"}, "huge")])
def test_bad_input_names_the_value(kwargs, field):
    with pytest.raises(ValueError, match=f"{field}.*To fix"):
        build(**kwargs)
