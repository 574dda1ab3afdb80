"""Compression on real trained models: int8 and low-rank keep digits accuracy within the stated drop;
factorisations are exact at full rank; versions export as TorchScript and reload."""

import pytest
import torch
from torch import nn

from isthmus.models import build, example_input
from isthmus.models.compress import _conv_tucker2, low_rank, quant_engine, quantize_int8, rank_for_energy
from isthmus.models.export import to_torchscript
from isthmus.models.train import accuracy, digits, fit
from isthmus.models.versions import LOWRANK_ENERGY, MAX_DROP

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def trained():
    """Two quickly trained small models: a chain (vgg, conv+bn+relu) and a DAG (resnet, residual adds)."""
    cache = {}
    for name, epochs in (("vgg", 3), ("resnet", 2)):
        model = fit(build(name, "small"), name, epochs=epochs, seed=0)
        cache[name] = (model, accuracy(model, name))
    return cache


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_int8_keeps_accuracy_and_really_is_int8(trained, name):
    model, acc = trained[name]
    assert acc > 0.85, f"the fp32 reference trained badly ({acc:.3f})"
    q = quantize_int8(model, digits(name, "train")[0][:256])
    q_acc = accuracy(q, name)
    assert acc - q_acc <= MAX_DROP["int8"], f"int8 dropped {acc - q_acc:.3f} on {name}"
    kinds = {type(m).__module__ for m in q.modules()}
    assert any("quantized" in k for k in kinds)
    assert quant_engine() in ("x86", "fbgemm", "qnnpack")


def test_int8_chain_keeps_layer_indices_and_sends_int8_activations(trained):
    model, _ = trained["vgg"]
    q = quantize_int8(model, digits("vgg", "train")[0][:128])
    assert len(q.layers) == len(model.layers)
    x = example_input("vgg", "small")
    with torch.inference_mode():
        h = q.layers[0](x)
    assert h.is_quantized and h.element_size() == 1  # 4x fewer bytes cross a split than fp32


def test_lowrank_keeps_accuracy_and_shrinks(trained):
    model, acc = trained["resnet"]
    lr_model, fractions = low_rank(model, LOWRANK_ENERGY)
    assert fractions and all(0 < f <= 1 for fs in fractions.values() for f in fs)
    fit(lr_model, "resnet", epochs=1, lr=5e-4)
    lr_acc = accuracy(lr_model, "resnet")
    assert acc - lr_acc <= MAX_DROP["lowrank"], f"low rank dropped {acc - lr_acc:.3f}"

    def params(m):
        return sum(p.numel() for p in m.parameters())

    assert params(lr_model) < params(model)


def test_rank_for_energy():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert rank_for_energy(s, 0.5) == 1
    assert rank_for_energy(s, 0.9) == 2
    assert rank_for_energy(s, 1.0) == 3
    with pytest.raises(ValueError, match="To fix"):
        rank_for_energy(s, 1.5)


def test_factorisations_are_exact_at_full_rank():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1)
    x = torch.rand(2, 8, 9, 9)
    with torch.no_grad():
        assert torch.allclose(_conv_tucker2(conv, 12, 8)(x), conv(x), atol=1e-5)
    # an exactly rank-2 linear layer is reproduced with rank 2 (energy 1.0 picks r = 2)
    lin = nn.Linear(30, 20)
    with torch.no_grad():
        lin.weight.copy_(torch.rand(20, 2) @ torch.rand(2, 30))
    small, fractions = low_rank(nn.Sequential(lin), energy=0.999999)
    assert fractions["0"] == [2 / 20]
    with torch.no_grad():
        assert torch.allclose(small(x.new_ones(3, 30)), lin(x.new_ones(3, 30)), atol=1e-4)


def test_rank_fractions_transfer_to_another_size():
    small, fractions = low_rank(build("vgg", "small"), energy=0.5)
    assert "*conv" in fractions and "*fc" in fractions  # defaults for layers the other size adds
    wide, used = low_rank(build("vgg", "small", width=1.5), rank_fraction=fractions)
    assert used and set(used) <= {p for p, _ in wide.named_modules()}
    for path, fs in used.items():
        assert fs == pytest.approx(fractions.get(path, fractions["*conv"]), abs=0.1)
    with torch.inference_mode():
        assert wide(example_input("vgg", "small")).shape == (1, 10)


@pytest.mark.parametrize("name", ["alexnet_exits", "resnet", "rnnlm"])
def test_int8_versions_export_as_torchscript(tmp_path, name):
    model = build(name, "small")
    x = example_input(name, "small", batch=2)
    q = quantize_int8(model, x)
    path = to_torchscript(q, x, tmp_path / f"{name}.pt")
    loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        assert torch.allclose(loaded(x), q(x))
