"""What the demo table reports: sizes, latency and output error of a model."""

from __future__ import annotations

import math

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def memory_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (a sketch's fixed random matrices included)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def call(model, inputs):
    """``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a dict, ``model(inputs)`` otherwise."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


@torch.no_grad()
def latency_ms(model, inputs, *, min_run_time: float = 0.3) -> float:
    """Median milliseconds of one forward call (warm-up first; CUDA synchronised by the timer)."""
    from torch.utils import benchmark

    call(model, inputs)
    timer = benchmark.Timer(stmt="call(model, inputs)", globals={"call": call, "model": model, "inputs": inputs})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """‖output − reference‖_F / ‖reference‖_F in float64."""
    num = float((output.double() - reference.double()).norm())
    den = float(reference.double().norm())
    return num / den if den > 0 else num if num > 0 else 0.0


def fmt_kib(n_bytes: int | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 1024:,.0f}"


def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)
