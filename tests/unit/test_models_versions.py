"""Model versions: Spec v1 entries from measurements, early-exit chains, version profiles."""

import pytest
import torch

import isthmus.models.train as train_mod
import isthmus.models.versions as versions_mod
from isthmus.models import build, example_input
from isthmus.models.versions import build_version, make_versions, version_names
from isthmus.models.zoo import exit_logits
from isthmus.spec import ModelVersion

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _fast(tmp_path, monkeypatch):
    monkeypatch.setenv("ISTHMUS_CACHE", str(tmp_path))
    monkeypatch.setitem(train_mod.DEFAULT_EPOCHS, "rnnlm", 2)
    monkeypatch.setitem(train_mod.DEFAULT_EPOCHS, "alexnet_exits", 1)
    monkeypatch.setattr(versions_mod, "LOWRANK_FINETUNE_EPOCHS", 1)


def test_version_names():
    assert version_names("resnet") == ["fp32", "int8", "lowrank", "distilled"]
    assert version_names("alexnet_exits")[4:] == ["exit3", "exit7", "exit9", "exit11"]
    with pytest.raises(ValueError, match="To fix"):
        version_names("lenet")


def test_make_versions_gives_spec_v1_entries_from_measurements():
    entries = make_versions("rnnlm", repeats=1, latency_size="small")
    assert [e["name"] for e in entries] == ["fp32", "int8", "lowrank", "distilled"]
    for e in entries:
        assert set(e) == {"name", "accuracy", "latency_ms"} and set(e["latency_ms"]) == {"cpu"}
        ModelVersion(**e)  # fills a spec directly
    accuracies = [e["accuracy"] for e in entries]
    assert max(accuracies) > 0.2  # trained (10 classes: chance is 0.1), not hard-coded
    assert make_versions("rnnlm", repeats=1, latency_size="small") == entries  # cached


def test_exit_version_is_the_chain_up_to_its_exit():
    model = build("alexnet_exits", "small")
    x = example_input("alexnet_exits", "small", batch=4)
    chain = versions_mod._exit_chain(model, "7")
    assert len(chain.layers) == 8 + len(model.exits["7"])
    with torch.inference_mode():
        assert torch.allclose(chain(x), exit_logits(model, x)["7"])


def test_small_versions_are_trained_and_profiled():
    from isthmus.profiler import profile_model

    exit_model, _ = build_version("alexnet_exits", "exit3", "small")
    prof = profile_model("alexnet_exits", "int8", "small", repeats=1, progress=False)
    assert [x.name for x in prof.layers] == [str(i) for i in range(23)]
    assert prof.layers[0].out_bytes == 16 * 8 * 8  # int8 activations: 1 byte per element
    assert [e.after for e in prof.exits] == ["3", "7", "9", "11", "22"]
    assert all(e.accuracy is not None for e in prof.exits)  # the trained model is cached
    assert len(exit_model.layers) == 4 + 5
