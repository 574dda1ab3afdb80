"""The model zoo: five plain-torch models at two sizes.

| name          | graph | full size (latency)                      | small size (digits, 1x8x8, 10 classes) |
|---------------|-------|------------------------------------------|----------------------------------------|
| alexnet_exits | chain | AlexNet on 3x224x224 + 4 BranchyNet exits | same layer list, narrow, 3x3 kernels   |
| vgg           | chain | VGG-11-BN layout, quarter width, 224x224 | 6 conv layers                           |
| resnet        | DAG   | ResNet-18 layout (BasicBlock, BN, add)   | 3 stages of one block                   |
| inception     | DAG   | GoogLeNet stem + 4 Inception modules     | 3 Inception modules                     |
| rnnlm         | chain | 2-layer LSTM LM, vocab 10k, 35 tokens    | 1-layer LSTM over 64 pixel tokens       |

Chain models expose `model.layers` (an `nn.ModuleList` run in order: layer i's output feeds
layer i+1, the last returns logits). `alexnet_exits` also has `model.exits`, an `nn.ModuleDict`
keyed by `str(i)`: the branch attached after main layer i. Counting the final classifier it has
5 exits, as in Edgent. The DAG models are ordinary modules that `torch.fx.symbolic_trace` traces.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["ZOO_NAMES", "CHAIN_NAMES", "DIGITS_CLASSES", "build", "example_input", "exit_logits"]

ZOO_NAMES = ("alexnet_exits", "vgg", "resnet", "inception", "rnnlm")
CHAIN_NAMES = ("alexnet_exits", "vgg", "rnnlm")
DIGITS_CLASSES = 10
_FULL_CLASSES = 1000
_RNN_VOCAB = {"full": 10000, "small": 17}  # small: pixel intensities 0..16 of sklearn digits
_RNN_SEQ = {"full": 35, "small": 64}
Size = Literal["full", "small"]


def _w(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


class ChainNet(nn.Module):
    """A chain: `layers` run in order. Optional early-exit branches in `exits` (key = str(i))."""

    def __init__(self, layers: list[nn.Module], exits: dict[str, nn.Module] | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if exits is not None:
            self.exits = nn.ModuleDict(exits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def exit_logits(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits of every exit of a chain model, keyed by str(index of the main layer it follows).

    The final classifier's key is str(len(model.layers) - 1).
    """
    exits = getattr(model, "exits", {})
    out: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(model.layers):
        x = layer(x)
        if str(i) in exits:
            out[str(i)] = exits[str(i)](x)
    out[str(len(model.layers) - 1)] = x
    return out


# ---------------------------------------------------------------- AlexNet + BranchyNet exits

def _alexnet(size: Size, classes: int, width: float) -> ChainNet:
    if size == "full":
        c = [_w(n, width) for n in (64, 192, 384, 256, 256)]
        conv = [(3, c[0], 11, 4, 2), (c[0], c[1], 5, 1, 2), (c[1], c[2], 3, 1, 1), (c[2], c[3], 3, 1, 1),
                (c[3], c[4], 3, 1, 1)]
        pool, flat, fc = (3, 2), c[4] * 6 * 6, _w(4096, width)
    else:
        c = [_w(n, width) for n in (16, 32, 48, 48, 32)]
        conv = [(1, c[0], 3, 1, 1), (c[0], c[1], 3, 1, 1), (c[1], c[2], 3, 1, 1), (c[2], c[3], 3, 1, 1),
                (c[3], c[4], 3, 1, 1)]
        pool, flat, fc = (2, 2), c[4], _w(128, width)

    def cv(i: int) -> nn.Conv2d:
        cin, cout, k, s, p = conv[i]
        return nn.Conv2d(cin, cout, k, stride=s, padding=p)

    layers: list[nn.Module] = [
        cv(0), nn.ReLU(), nn.MaxPool2d(*pool), nn.LocalResponseNorm(5),       # 0-3
        cv(1), nn.ReLU(), nn.MaxPool2d(*pool), nn.LocalResponseNorm(5),       # 4-7
        cv(2), nn.ReLU(), cv(3), nn.ReLU(), cv(4), nn.ReLU(),                 # 8-13
        nn.MaxPool2d(*pool), nn.Flatten(),                                    # 14-15
        nn.Linear(flat, fc), nn.ReLU(), nn.Dropout(0.5),                      # 16-18
        nn.Linear(fc, fc), nn.ReLU(), nn.Dropout(0.5),                        # 19-21
        nn.Linear(fc, classes),                                               # 22
    ]
    branch_width = _w(64 if size == "full" else 16, width)

    def branch(cin: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, branch_width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                             nn.Flatten(), nn.Linear(branch_width * 4, classes))

    exits = {"3": branch(c[0]), "7": branch(c[1]), "9": branch(c[2]), "11": branch(c[3])}
    return ChainNet(layers, exits)


# ---------------------------------------------------------------- VGG

def _vgg(size: Size, classes: int, width: float) -> ChainNet:
    if size == "full":
        cfg: list[int | str] = [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"]
        cin, spatial, fc = 3, 7, _w(512, width)
    else:
        cfg = [16, 32, "M", 32, 64, "M", 64, 64, "M"]
        cin, spatial, fc = 1, 1, _w(128, width)
    layers: list[nn.Module] = []
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            cout = _w(int(item), width)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
    layers += [nn.Flatten(), nn.Linear(cin * spatial * spatial, fc), nn.ReLU(), nn.Dropout(0.5),
               nn.Linear(fc, fc), nn.ReLU(), nn.Dropout(0.5), nn.Linear(fc, classes)]
    return ChainNet(layers)


# ---------------------------------------------------------------- ResNet

class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNet(nn.Module):
    """ResNet-style DAG: stem, stages of BasicBlocks (residual add joins), global pool, fc."""

    def __init__(self, size: Size, classes: int, width: float):
        super().__init__()
        if size == "full":
            widths, blocks = [_w(n, width) for n in (64, 128, 256, 512)], (2, 2, 2, 2)
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(widths[0]), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1))
        else:
            widths, blocks = [_w(n, width) for n in (16, 32, 64)], (1, 1, 1)
            self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1, bias=False),
                                      nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for s, (cout, n) in enumerate(zip(widths, blocks)):
            for b in range(n):
                stages.append(_BasicBlock(cin, cout, 2 if (s > 0 and b == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


# ---------------------------------------------------------------- Inception

def _cbr(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class _InceptionModule(nn.Module):
    """Four branches joined by concatenation: 1x1 | 1x1->3x3 | 1x1->3x3->3x3 | maxpool->1x1."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        self.b1 = _cbr(cin, c1, 1)
        self.b2 = nn.Sequential(_cbr(cin, c3r, 1), _cbr(c3r, c3, 3))
        self.b3 = nn.Sequential(_cbr(cin, c5r, 1), _cbr(c5r, c5, 3), _cbr(c5, c5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), _cbr(cin, cp, 1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class Inception(nn.Module):
    """Inception-style DAG (GoogLeNet layout): stem, Inception modules with pooling, global pool, fc."""

    def __init__(self, size: Size, classes: int, width: float):
        super().__init__()

        def w(*cs: int) -> list[int]:
            return [_w(c, width) for c in cs]

        if size == "full":
            self.stem = nn.Sequential(_cbr(3, _w(64, width), 7, 2), nn.MaxPool2d(3, 2, padding=1),
                                      _cbr(_w(64, width), _w(192, width), 3), nn.MaxPool2d(3, 2, padding=1))
            plan: list[list[int] | str] = [w(64, 96, 128, 16, 32, 32), w(128, 128, 192, 32, 96, 64), "M",
                                           w(192, 96, 208, 16, 48, 64), w(160, 112, 224, 24, 64, 64)]
            cin = _w(192, width)
        else:
            self.stem = _cbr(1, _w(32, width), 3)
            plan = [w(16, 16, 24, 8, 12, 12), "M", w(32, 24, 32, 8, 16, 16), "M", w(48, 32, 48, 12, 24, 24)]
            cin = _w(32, width)
        mods: list[nn.Module] = []
        for item in plan:
            if item == "M":
                mods.append(nn.MaxPool2d(3, 2, padding=1))
            else:
                mod = _InceptionModule(cin, *item)
                mods.append(mod)
                cin = mod.out_channels
        self.body = nn.Sequential(*mods)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.flatten(self.pool(self.body(self.stem(x))))))


# ---------------------------------------------------------------- RNN language model

class _LSTMLayer(nn.Module):
    """nn.LSTM returning only the output sequence (so it composes in a chain)."""

    def __init__(self, cin: int, hidden: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(cin, hidden, num_layers=num_layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class _Head(nn.Module):
    """Linear head; `last_step` keeps only the final time step (sequence classification)."""

    def __init__(self, hidden: int, out: int, last_step: bool):
        super().__init__()
        self.fc = nn.Linear(hidden, out)
        self.last_step = last_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[:, -1] if self.last_step else x)


def _rnnlm(size: Size, classes: int | None, width: float) -> ChainNet:
    vocab = _RNN_VOCAB[size]
    if size == "full":
        emb, hidden, depth = _w(256, width), _w(512, width), 2
        out, last = classes or vocab, classes is not None
    else:
        emb, hidden, depth = _w(16, width), _w(64, width), 1
        out, last = classes or DIGITS_CLASSES, True
    return ChainNet([nn.Embedding(vocab, emb), _LSTMLayer(emb, hidden, depth), _Head(hidden, out, last)])


# ---------------------------------------------------------------- public API

def _check(name: str, size: str) -> None:
    if name not in ZOO_NAMES:
        raise ValueError(f"unknown zoo model {name!r}. To fix: use one of {list(ZOO_NAMES)}")
    if size not in ("full", "small"):
        raise ValueError(f"size {size!r} is not 'full' or 'small'. To fix: pass size='full' (latency) "
                         "or size='small' (trainable on digits)")


def build(name: str, size: Size = "full", num_classes: int | None = None, *, width: float = 1.0) -> nn.Module:
    """A fresh (randomly initialised, eval-mode) zoo model.

    `size="full"`: realistic size for latency (1000 classes on 3x224x224; rnnlm: next-token logits
    over a 10k vocabulary). `size="small"`: 10 classes on 1x8x8 digits. `width` scales every
    channel count (the distillation student uses width < 1).
    """
    _check(name, size)
    if width <= 0:
        raise ValueError(f"width {width} must be > 0. To fix: pass e.g. width=0.5 for a half-width student")
    classes = num_classes or (_FULL_CLASSES if size == "full" else DIGITS_CLASSES)
    if name == "alexnet_exits":
        model: nn.Module = _alexnet(size, classes, width)
    elif name == "vgg":
        model = _vgg(size, classes, width)
    elif name == "resnet":
        model = ResNet(size, classes, width)
    elif name == "inception":
        model = Inception(size, classes, width)
    else:
        model = _rnnlm(size, num_classes, width)
    return model.eval()


def example_input(name: str, size: str = "full", batch: int = 1) -> torch.Tensor:
    """A random input of the model's shape: images (batch, C, H, W) or token ids (batch, seq) for rnnlm."""
    _check(name, size)
    gen = torch.Generator().manual_seed(0)
    if name == "rnnlm":
        return torch.randint(0, _RNN_VOCAB[size], (batch, _RNN_SEQ[size]), generator=gen)
    shape = (batch, 3, 224, 224) if size == "full" else (batch, 1, 8, 8)
    return torch.rand(shape, generator=gen)
