"""Plain-PyTorch FAVOR+ references: the formulas as written, for tests and benchmarks.

``favor_attention_reference`` has no stabiliser (exact in float64 for moderate inputs) and
runs the causal case token by token with a running state, the textbook recurrence the
chunked kernels must reproduce. ``favor_attention_plain`` is the usual vectorised
PyTorch implementation (stabilised; causal through an [N, N] masked product), the
"plain-PyTorch FAVOR" baseline of the benchmarks.
"""

from __future__ import annotations

import math

import torch

RELU_EPS = 1e-6


def feature_map(x, projection, kernel_fn, stabilise_dims=None, keep=None):
    m, d = projection.shape
    if kernel_fn == "relu":
        phi = torch.relu(x @ projection.T) / math.sqrt(m) + RELU_EPS
    else:
        xs = x * d ** -0.25
        t = xs @ projection.T - xs.square().sum(-1, keepdim=True) / 2
        if stabilise_dims is not None:
            masked = t if keep is None else t.masked_fill(~keep, float("-inf"))
            t = t - masked.amax(dim=stabilise_dims, keepdim=True).detach()
        phi = torch.exp(t) / math.sqrt(m)
    return phi if keep is None else phi * keep


def favor_attention_reference(q, k, v, projection, kernel_fn="softmax", causal=False, key_padding_mask=None):
    keep = None if key_padding_mask is None else ~key_padding_mask[:, None, :, None]
    a = feature_map(q, projection, kernel_fn)
    b = feature_map(k, projection, kernel_fn, keep=keep)
    if not causal:
        num = a @ (b.transpose(-1, -2) @ v)
        den = a @ b.sum(-2, keepdim=True).transpose(-1, -2)
        return num / den
    state = torch.zeros(*a.shape[:-2], a.shape[-1], v.shape[-1], dtype=a.dtype, device=a.device)
    z = torch.zeros(*a.shape[:-2], a.shape[-1], dtype=a.dtype, device=a.device)
    outs = []
    for t in range(q.shape[-2]):  # the per-token recurrence, on purpose
        state = state + b[..., t, :, None] * v[..., t, None, :]
        z = z + b[..., t, :]
        num = (a[..., t, :, None] * state).sum(-2)
        den = (a[..., t, :] * z).sum(-1, keepdim=True)
        outs.append(num / den)
    return torch.stack(outs, dim=-2)


def favor_attention_plain(q, k, v, projection, kernel_fn="softmax", causal=False):
    """Vectorised plain-PyTorch FAVOR+ (stabilised, float32 features), as users write it."""
    dtype = q.dtype
    q, k, v, projection = (t.float() for t in (q, k, v, projection))
    a = feature_map(q, projection, kernel_fn, stabilise_dims=(-1,))
    b = feature_map(k, projection, kernel_fn, stabilise_dims=(-2, -1))
    if causal:
        scores = torch.tril(a @ b.transpose(-1, -2))
        out = (scores @ v) / scores.sum(-1, keepdim=True)
    else:
        out = (a @ (b.transpose(-1, -2) @ v)) / (a @ b.sum(-2, keepdim=True).transpose(-1, -2))
    return out.to(dtype)
