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
"""

from __future__ import annotations

import torch

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


def _setup_sketch(ctx, inputs, output):
    _, rows, vals, d, dim = inputs
    ctx.save_for_backward(rows, vals)
    ctx.d, ctx.dim = d, dim


def _apply_backward(ctx, grad):
    rows, vals = ctx.saved_tensors
    return _ops.sparse_sketch_apply_t(grad, rows, vals, ctx.d, ctx.dim), None, None, None, None


def _apply_t_backward(ctx, grad):
    rows, vals = ctx.saved_tensors
    return _ops.sparse_sketch_apply(grad, rows, vals, ctx.d, ctx.dim), None, None, None, None


def _fwht_backward(ctx, grad):
    return _ops.fwht(grad)


torch.library.register_autograd("panther::sparse_sketch_apply", _apply_backward, setup_context=_setup_sketch)
torch.library.register_autograd("panther::sparse_sketch_apply_t", _apply_t_backward, setup_context=_setup_sketch)
torch.library.register_autograd("panther::fwht", _fwht_backward)
