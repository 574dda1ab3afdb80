"""Make `model.pt`: a small conv net for 1x12x12 digit images (10 classes), saved as TorchScript next to this file.

Plain torch, seeded. It trains for a few epochs on sklearn's bundled digits (8x8, padded to 12x12), which takes
a few seconds on one CPU core. Any model you can `torch.jit.script` (or `torch.jit.trace`) serves the same way:
point a version's `artifact` at its file and give `input_shape` for one sample (no batch dimension).

    python examples/own-model/make_model.py          # writes examples/own-model/model.pt
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
EPOCHS = 8


class DigitsNet(nn.Module):
    """(batch, 1, 12, 12) float32 -> (batch, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 8 x 6 x 6
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))    # 16 x 3 x 3
        self.classifier = nn.Linear(16 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def digits_12x12() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's digits (1,797 images of 8x8, values 0-16) scaled to [0, 1] and zero-padded to 12x12."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    x = nn.functional.pad(x, (2, 2, 2, 2)).unsqueeze(1)                    # (n, 1, 12, 12)
    return x, torch.tensor(digits.target, dtype=torch.long)


def main() -> None:
    torch.manual_seed(0)
    start = time.monotonic()
    x, y = digits_12x12()
    order = torch.randperm(len(x))
    train, test = order[: len(x) * 4 // 5], order[len(x) * 4 // 5:]
    model = DigitsNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(EPOCHS):
        model.train()
        for batch in train[torch.randperm(len(train))].split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    path = HERE / "model.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    print(f"wrote {path} (test accuracy {accuracy:.3f} on {len(test)} held-out digits, "
          f"{time.monotonic() - start:.1f} s)")


if __name__ == "__main__":
    main()
