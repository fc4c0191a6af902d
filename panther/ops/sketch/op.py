"""Fake kernels and autograd for the C++ sketch ops (csrc/sketch/).

torch.ops.panther.sparse_sketch_apply(A, rows, vals, d, dim)
    S A along axis ``dim`` (size m -> d) for the sparse operator S [d, m] whose column i
    has non-zeros vals[i, :] at rows rows[i, :].
torch.ops.panther.sparse_sketch_apply_t(G, rows, vals, d, dim)
    Sᵀ G along axis ``dim`` (size d -> m): the adjoint, hence the backward of the above.
torch.ops.panther.fwht(x)
    Orthonormal fast Walsh–Hadamard transform of the last axis (power-of-two length);
    self-adjoint, so its backward is itself.

The operators are fixed random matrices: gradients flow to the tensor argument only.

``srht_composite`` / ``srht_composite_t``: the SRHT y = √(N/d)·R·(H_N/√N)·D·pad(A) along an axis
and its adjoint, composed of the fwht op (the CPU path of panther::srht_apply_triton, and the
path used without Triton).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import checks

_ops = torch.ops.panther


@torch.library.register_fake("panther::sparse_sketch_apply")
def _apply_fake(A, rows, vals, d, dim):
    wd = checks.check_apply(A, rows, vals, d, dim)
    return A.new_empty(checks.replaced(A.shape, wd, d))


@torch.library.register_fake("panther::sparse_sketch_apply_t")
def _apply_t_fake(G, rows, vals, d, dim):
    wd = checks.check_apply_t(G, rows, vals, d, dim)
    return G.new_empty(checks.replaced(G.shape, wd, rows.shape[0]))


@torch.library.register_fake("panther::fwht")
def _fwht_fake(x):
    checks.check_fwht(x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def setup_sketch(ctx, inputs, output):
    """Saves what a sparse apply's backward needs: (A, rows, vals, [order, offsets,] d, dim)."""
    rows, vals, d, dim = inputs[1], inputs[2], inputs[-2], inputs[-1]
    ctx.save_for_backward(rows, vals)
    ctx.d, ctx.dim = d, dim


def transpose_backward(transpose, num_inputs: int = 5):
    """The backward of a sparse apply (or of its transpose): the other one applied to grad; the
    index inputs get no gradient."""

    def backward(ctx, grad):
        rows, vals = ctx.saved_tensors
        return (transpose(grad, rows, vals, ctx.d, ctx.dim),) + (None,) * (num_inputs - 1)

    return backward


def _fwht_backward(ctx, grad):
    return _ops.fwht(grad)


torch.library.register_autograd("panther::sparse_sketch_apply", transpose_backward(_ops.sparse_sketch_apply_t),
                                setup_context=setup_sketch)
torch.library.register_autograd("panther::sparse_sketch_apply_t", transpose_backward(_ops.sparse_sketch_apply),
                                setup_context=setup_sketch)
torch.library.register_autograd("panther::fwht", _fwht_backward)


def srht_composite(A, signs, index, dim: int, fwht=_ops.fwht):
    """SRHT of A along ``dim`` (wrapped): sign flip, zero-pad to N, orthonormal FWHT, keep ``index``."""
    n = A.shape[dim]
    N = 1 << (n - 1).bit_length()
    x = A.movedim(dim, -1) * signs
    if N != n:
        x = F.pad(x, (0, N - n))
    y = fwht(x).index_select(-1, index) * math.sqrt(N / index.shape[0])
    return y.movedim(-1, dim)


def srht_composite_t(G, signs, index, dim: int, fwht=_ops.fwht):
    """The adjoint of ``srht_composite``: G [.., d, ..] along ``dim`` -> [.., n, ..]."""
    n = signs.shape[0]
    N = 1 << (n - 1).bit_length()
    g = G.movedim(dim, -1)
    z = g.new_zeros((*g.shape[:-1], N)).index_copy_(-1, index, g) * math.sqrt(N / index.shape[0])
    return (fwht(z)[..., :n] * signs).movedim(-1, dim)

