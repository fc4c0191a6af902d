"""Small models shared by the backend, passes and export tests."""

import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Two eligible linears and one too small to sketch (must stay dense)."""

    def __init__(self, d=64, h=128):
        super().__init__()
        self.fc1, self.fc2, self.tiny = nn.Linear(d, h), nn.Linear(h, d), nn.Linear(d, 2)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x))), self.tiny(x)
