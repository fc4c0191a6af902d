"""Fake kernels for torch.ops.panther.favor_attention (csrc/attention/; its autograd is C++:
csrc/attention/autograd.cpp).

torch.ops.panther.favor_attention(q, k, v, projection, kernel_fn="softmax", causal=False,
                                  key_padding_mask=None, chunk_size=0)
    q [B, H, N, D], k [B, H, S, D], v [B, H, S, Dv], projection [m, D] (random features);
    key_padding_mask [B, S] bool, True = masked out (nn.MultiheadAttention's convention);
    chunk_size: tokens per chunk of the causal algorithm (0 = default).
    FAVOR+ attention: phi(q) (phi(k)^T v) / phi(q) (phi(k)^T 1), causal by chunks.
    Gradients flow to q, k and v; the projection is a fixed random matrix.
"""

from __future__ import annotations

import torch

from . import checks


@torch.library.register_fake("panther::favor_attention")
def _favor_attention_fake(q, k, v, projection, kernel_fn="softmax", causal=False, key_padding_mask=None,
                          chunk_size=0):
    shape = checks.check_favor(q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size)
    return q.new_empty(shape)


@torch.library.register_fake("panther::favor_attention_backward")
def _favor_attention_backward_fake(grad, q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size,
                                   output_mask):
    shape = checks.check_favor(q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size)
    checks.check_grad(grad, q, shape)
    return tuple(t.new_empty(t.shape) if need else None for t, need in zip((q, k, v), output_mask))
