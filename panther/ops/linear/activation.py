"""Activations the linear ops can fuse into their epilogue, and their gradients.

``lowrank_linear_triton``, ``lowrank_expand`` and ``lowrank_expand_project`` take ``activation``
by name; the Triton kernels apply it to the float32 sum (bias included) before rounding (GELU
for 16-bit results with an erf approximation accurate to 2.2e-7, ``triton_kernels._gelu_16bit``),
the other paths apply it to the rounded output with the matching PyTorch function below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

aten = torch.ops.aten

# name -> the Triton epilogue's code (triton_kernels._activate)
ACTIVATIONS = {"none": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}


def check_activation(activation: str) -> int:
    """The kernel code of ``activation``; a ValueError naming the valid ones otherwise."""
    code = ACTIVATIONS.get(activation) if isinstance(activation, str) else None
    if code is None:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return code


def activate(z: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(z)
    if activation == "gelu":
        return F.gelu(z)
    if activation == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if activation == "silu":
        return F.silu(z)
    return z


def activation_backward(grad: torch.Tensor, z: torch.Tensor, activation: str) -> torch.Tensor:
    """d act(z) / dz applied to ``grad``, for the pre-activation ``z``."""
    if activation == "relu":
        return aten.threshold_backward(grad, z, 0)
    if activation == "gelu":
        return aten.gelu_backward(grad, z)
    if activation == "gelu_tanh":
        return aten.gelu_backward(grad, z, approximate="tanh")
    if activation == "silu":
        return aten.silu_backward(grad, z)
    return grad
