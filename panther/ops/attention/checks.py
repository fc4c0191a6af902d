"""Checks for torch.ops.panther.favor_attention(_triton), used by the fake kernels.

Same checks and words as csrc/attention/favor_attention.cpp.
"""

from __future__ import annotations

import torch

from ..linear.checks import _fail, check_dim, check_like, check_size

KERNEL_FNS = ("relu", "softmax")


def check_favor(q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size) -> list[int]:
    """Returns the output shape [B, H, N, Dv] after checking every argument."""
    if not q.dtype.is_floating_point:
        _fail(f"q must be a floating-point tensor, got {q.dtype}")
    check_dim(q, "q", 4)
    check_dim(k, "k", 4)
    check_dim(v, "v", 4)
    check_dim(projection, "projection", 2)
    B, H, N, D = q.shape
    check_size(k, "k", 0, B, "batch, from q [B, H, N, D]")
    check_size(k, "k", 1, H, "heads, from q [B, H, N, D]")
    check_size(k, "k", 3, D, "head dim, from q [B, H, N, D]")
    S = k.shape[2]
    check_size(v, "v", 0, B, "batch, from q [B, H, N, D]")
    check_size(v, "v", 1, H, "heads, from q [B, H, N, D]")
    check_size(v, "v", 2, S, "key length, from k [B, H, S, D]")
    check_size(projection, "projection", 1, D, "head dim, from q [B, H, N, D]")
    if projection.shape[0] < 1:
        _fail(f"projection has shape {list(projection.shape)}: expected at least 1 random feature (dim 0)")
    check_like(k, "k", q, "q")
    check_like(v, "v", q, "q")
    check_like(projection, "projection", q, "q")
    if kernel_fn not in KERNEL_FNS:
        _fail(f"kernel_fn must be one of {list(KERNEL_FNS)}, got '{kernel_fn}'")
    if causal and N != S:
        _fail(f"causal attention needs as many queries as keys: q has {N} and k has {S}")
    if chunk_size < 0:
        _fail(f"chunk_size must be >= 0 (0 = default), got {chunk_size}")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            _fail(f"key_padding_mask must be a bool tensor (True = masked out), got {key_padding_mask.dtype}")
        check_dim(key_padding_mask, "key_padding_mask", 2)
        check_size(key_padding_mask, "key_padding_mask", 0, B, "batch")
        check_size(key_padding_mask, "key_padding_mask", 1, S, "key length")
        if key_padding_mask.device != q.device:
            _fail(f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}: expected the same device")
    return [B, H, N, v.shape[3]]


def check_grad(grad, q, expected, name: str = "grad") -> None:
    """``grad`` (or the saved output ``out``) must have q's dtype and device and the output shape."""
    check_like(grad, name, q, "q")
    if list(grad.shape) != list(expected):
        _fail(f"{name} has shape {list(grad.shape)}: expected the output shape {list(expected)}")


def check_output_mask(output_mask) -> None:
    if len(output_mask) != 3:
        _fail(f"output_mask must have 3 entries (q, k, v), got {len(output_mask)}")
