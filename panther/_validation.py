"""Argument checks for the Python API: errors name the argument and what was expected."""

from __future__ import annotations

import numbers

import torch


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive int (>= 1), got {value}")
    return int(value)


def one_of(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def float_matrices(value, name: str):
    """A float32/float64 tensor [..., m, n] (a matrix or a batch of them)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {value.dtype}")
    if value.dim() < 2:
        raise ValueError(f"{name} must be a tensor [..., m, n] with at least 2 dimensions, got shape "
                         f"{list(value.shape)}")
    return value
