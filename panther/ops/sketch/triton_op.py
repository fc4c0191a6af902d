"""Triton ops for the sketch kernels: the GPU path of panther.sketch.

torch.ops.panther.sparse_sketch_apply_triton / sparse_sketch_apply_t_triton / fwht_triton
have the schema, math and gradients of the C++ ops sparse_sketch_apply / _t / fwht.
torch.ops.panther.sparse_sketch_apply_sorted_triton(A, rows, vals, order, offsets, d, dim) is
sparse_sketch_apply with the operator's non-zeros also given sorted by (chunk of input rows,
output row) (``bucket_order``), for the segmented-sum kernel on CUDA; elsewhere it is the C++ op.
torch.ops.panther.srht_apply_triton(A, signs, index, dim): the SRHT along ``dim`` (see
panther.sketch.srht); on CUDA along a non-last axis the sampled two-level Hadamard kernel
(triton_kernels.srht_sampled), elsewhere the composite of the fwht op. On CUDA
they launch the Triton kernels of triton_kernels.py; on every other device (CPU in CI)
their body calls the C++ op, so one entry point serves all devices, eagerly and under
torch.compile (which decomposes a triton_op into its body and sees the kernels).
"""

from __future__ import annotations

import math

import torch

from . import checks
from .op import setup_sketch, srht_composite, srht_composite_t, transpose_backward

from .._triton import triton_available

sparse_sketch_apply_triton = sparse_sketch_apply_sorted_triton = sparse_sketch_apply_t_triton = fwht_triton = None
srht_apply_triton = None
SRHT_MIN_POST = 4  # narrower trailing size: the fwht kernel along the last axis (contiguous rows) wins

if triton_available:
    from . import triton_kernels as tk

    _ops = torch.ops.panther

    @torch.library.triton_op("panther::sparse_sketch_apply_triton", mutates_args=())
    def sparse_sketch_apply_triton(
        A: torch.Tensor, rows: torch.Tensor, vals: torch.Tensor, d: int, dim: int
    ) -> torch.Tensor:
        wd = checks.check_apply(A, rows, vals, d, dim)
        if A.device.type != "cuda":
            return _ops.sparse_sketch_apply(A, rows, vals, d, dim)
        return tk.sparse_scatter(A, rows, vals, d, wd, launch=torch.library.wrap_triton)

    @torch.library.triton_op("panther::sparse_sketch_apply_sorted_triton", mutates_args=())
    def sparse_sketch_apply_sorted_triton(
        A: torch.Tensor, rows: torch.Tensor, vals: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor,
        d: int, dim: int,
    ) -> torch.Tensor:
        wd = checks.check_sorted(A, rows, vals, order, offsets, d, dim)
        if A.device.type != "cuda":
            return _ops.sparse_sketch_apply(A, rows, vals, d, dim)
        return tk.sparse_segment_sum(A, rows, vals, order, offsets, d, wd, launch=torch.library.wrap_triton)

    @torch.library.triton_op("panther::sparse_sketch_apply_t_triton", mutates_args=())
    def sparse_sketch_apply_t_triton(
        G: torch.Tensor, rows: torch.Tensor, vals: torch.Tensor, d: int, dim: int
    ) -> torch.Tensor:
        wd = checks.check_apply_t(G, rows, vals, d, dim)
        if G.device.type != "cuda":
            return _ops.sparse_sketch_apply_t(G, rows, vals, d, dim)
        return tk.sparse_gather(G, rows, vals, d, wd, launch=torch.library.wrap_triton)

    @torch.library.triton_op("panther::fwht_triton", mutates_args=())
    def fwht_triton(x: torch.Tensor) -> torch.Tensor:
        checks.check_fwht(x)
        if x.device.type != "cuda":
            return _ops.fwht(x)
        return tk.fwht(x, launch=torch.library.wrap_triton)

    @torch.library.triton_op("panther::srht_apply_triton", mutates_args=())
    def srht_apply_triton(A: torch.Tensor, signs: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
        wd = checks.check_srht(A, signs, index, dim)
        post = math.prod(A.shape[wd + 1:])
        if A.device.type != "cuda" or post < SRHT_MIN_POST:
            return srht_composite(A, signs, index, wd, fwht=fwht_triton)
        return tk.srht_sampled(A, signs, index, wd, launch=torch.library.wrap_triton)

    def _setup_srht(ctx, inputs, output):
        _, signs, index, dim = inputs
        ctx.save_for_backward(signs, index)
        ctx.dim = dim

    def _srht_backward(ctx, grad):
        signs, index = ctx.saved_tensors
        wd = ctx.dim % grad.dim()
        return srht_composite_t(grad, signs, index, wd, fwht=fwht_triton), None, None, None

    srht_apply_triton.register_autograd(_srht_backward, setup_context=_setup_srht)

    sparse_sketch_apply_triton.register_autograd(transpose_backward(sparse_sketch_apply_t_triton),
                                                 setup_context=setup_sketch)
    sparse_sketch_apply_sorted_triton.register_autograd(transpose_backward(sparse_sketch_apply_t_triton, 7),
                                                        setup_context=setup_sketch)
    sparse_sketch_apply_t_triton.register_autograd(transpose_backward(sparse_sketch_apply_triton),
                                                   setup_context=setup_sketch)
    fwht_triton.register_autograd(lambda ctx, grad: fwht_triton(grad))
