"""Fake kernels of the C++ linear ops (csrc/linear/). Their autograd is C++
(csrc/linear/autograd.cpp): a training step never enters Python.

torch.ops.panther.sketched_linear(x, S1s, S2s, U1s, U2s, bias=None)
    y = 1/(2L) * sum_i (x S1_i U1_i + x U2_i S2_i) + b, computed as two GEMMs.
    Gradients flow to x, S1s, S2s and bias; U1s and U2s are fixed sketches.
torch.ops.panther.lowrank_linear(x, A, B, bias=None)
    y = (x A) B + b for precomputed factors; gradients for every input.

Both take x of any leading shape (..., in_features).
torch.ops.panther.residual_addmm(residual, h, B, bias=None)
    y = residual + h B + b for h [..., r] and residual [..., out]: a low-rank linear's expansion
    with the residual connection that reads its output added in the GEMM's epilogue (one pass
    over the output instead of three). Gradients for every input.
torch.ops.panther.batched_expand(h, B, bias=None)
    out[g] = h[..., g r:(g + 1) r] B[g] + bias[g] for h [..., G r], B [G, r, N], bias [G, N]:
    the expansions of G low-rank linears sharing one projection (q/k/v) as one batched GEMM;
    out [G, ..., N]. Gradients for every input.

``lowrank_linear_as_gemms`` is lowrank_linear written as the two ATen GEMMs it runs, the
decomposition the panther backend hands Inductor (``panther.backend``).
"""

from __future__ import annotations

import torch

from . import checks


def _out_like(x: torch.Tensor, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.register_fake("panther::sketched_linear")
def _sketched_linear_fake(x, S1s, S2s, U1s, U2s, bias=None):
    *_, d_out = checks.check_sketched(x, S1s, S2s, U1s, U2s)
    checks.check_bias(bias, x, d_out)
    return _out_like(x, d_out)


@torch.library.register_fake("panther::sketched_linear_backward")
def _sketched_linear_backward_fake(grad, x, S1s, S2s, U1s, U2s, output_mask):
    *_, d_out = checks.check_sketched(x, S1s, S2s, U1s, U2s)
    checks.check_grad(grad, x, d_out)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else None,
        torch.empty_like(S1s, memory_format=torch.contiguous_format) if output_mask[1] else None,
        torch.empty_like(S2s, memory_format=torch.contiguous_format) if output_mask[2] else None,
        x.new_empty((d_out,)) if output_mask[3] else None,
    )


@torch.library.register_fake("panther::lowrank_linear")
def _lowrank_linear_fake(x, A, B, bias=None):
    checks.check_lowrank(x, A, B)
    checks.check_bias(bias, x, B.shape[1])
    return _out_like(x, B.shape[1])


@torch.library.register_fake("panther::lowrank_linear_backward")
def _lowrank_linear_backward_fake(grad, x, A, B, output_mask):
    checks.check_lowrank(x, A, B)
    checks.check_grad(grad, x, B.shape[1])
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else None,
        torch.empty_like(A, memory_format=torch.contiguous_format) if output_mask[1] else None,
        torch.empty_like(B, memory_format=torch.contiguous_format) if output_mask[2] else None,
        x.new_empty((B.shape[1],)) if output_mask[3] else None,
    )


@torch.library.register_fake("panther::residual_addmm")
def _residual_addmm_fake(residual, h, B, bias=None):
    checks.check_residual_addmm(residual, h, B, bias)
    return residual.new_empty(residual.shape)


@torch.library.register_fake("panther::batched_expand")
def _batched_expand_fake(h, B, bias=None):
    checks.check_batched_expand(h, B, bias)
    return h.new_empty((B.shape[0], *h.shape[:-1], B.shape[2]))


def lowrank_linear_as_gemms(x, A, B, bias=None):
    """panther.lowrank_linear(x, A, B, bias) as ATen ops: x2 = x reshaped to rows, h = x2 A, then
    addmm(bias, h, B) (mm without a bias), reshaped back. The same two GEMMs and roundings as the
    op (h in x's dtype); a compiler that sees them schedules them as its own GEMMs instead of
    calling the op, whose call costs host time on every run (H200 host, the 24-layer benchmark
    model: ~46 us a call against ~37 us for mm + addmm, which also ran 2.5 us faster on the GPU)."""
    checks.check_lowrank(x, A, B)
    checks.check_bias(bias, x, B.shape[1])
    h = torch.mm(x.reshape(-1, x.shape[-1]), A)
    y = torch.mm(h, B) if bias is None else torch.addmm(bias, h, B)
    return y.reshape(*x.shape[:-1], B.shape[1])
