"""The demo's built-in task: scikit-learn's handwritten digits (1,797 8×8 images, 10 classes).

The dataset ships inside scikit-learn (no download). The model is an MLP 64 → H → H → 10;
its sketched twin replaces the H×H hidden layer with ``pr.nn.SKLinear`` (the input and output
layers are too thin for a sketch to save anything).
"""

from __future__ import annotations

import torch
from torch import nn

import panther as pr

HIDDEN = 1024


def load_digits_split(seed: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1], a fixed 80/20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the demo's default task needs scikit-learn (pip install scikit-learn), "
                          "or pass your own model with --model") from exc
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order].to(device), y[order].to(device)
    n_train = int(0.8 * len(x))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


class DigitsMLP(nn.Module):
    """64 → hidden → hidden → 10 with ReLU; ``sketch=(L, k)`` makes the middle layer an SKLinear."""

    def __init__(self, hidden: int = HIDDEN, sketch: tuple[int, int] | None = None):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = pr.nn.SKLinear(hidden, hidden, *sketch) if sketch else nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(dim=-1) == y).float().mean())


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int, desc: str,
          progress: bool, batch_size: int = 64, lr: float = 1e-3) -> nn.Module:
    """Adam on cross-entropy, shuffled mini-batches; one progress-bar step per epoch."""
    from panther.tuner.progress import progress_bar

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order_gen = torch.Generator().manual_seed(seed)
    bar = progress_bar(epochs, desc, progress)
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in torch.randperm(len(x), generator=order_gen).split(batch_size):
            idx = idx.to(x.device)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        bar.set_postfix_str(f"loss {total / count:.4f}")
        bar.update(1)
    bar.close()
    return model.eval()
