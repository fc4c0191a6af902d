"""torch.ops.panther.favor_attention_triton: FAVOR+ attention with Triton kernels on CUDA.

Same schema, math and gradients as torch.ops.panther.favor_attention. On CUDA the forward
runs the fused Triton kernels (triton_kernels.py) where their register tiles fit (at most
256 random features and head dims of 256); elsewhere, and on every other device (CPU in
CI), the body calls the C++ op, because torch.compile decomposes a triton_op into its body
for any device. The Triton kernels choose their chunk size by autotuning: ``chunk_size``
steers the C++ op only (the result does not depend on it beyond rounding).

The backward is torch.ops.panther.favor_attention_triton_backward(grad, q, k, v, projection,
out, kernel_fn, causal, key_padding_mask, chunk_size, output_mask) -> (dq, dk, dv): the
Triton backward kernels (triton_backward.py) where the forward runs Triton, else the C++
backward op; ``out`` is the forward's output (saved for the backward), and gradients not
asked for in ``output_mask`` come back as empty tensors. Entering through
torch.library.triton_op lets Inductor see the kernels of both under torch.compile.
"""

from __future__ import annotations

import torch

from . import checks

from .._triton import triton_available

favor_attention_triton = favor_attention_triton_backward = None


def _triton_runs(q, projection, v) -> bool:
    """Whether the Triton kernels run (CUDA, sizes that fit their tiles) rather than the C++ op."""
    from . import triton_kernels

    return q.device.type == "cuda" and triton_kernels.supported(projection.shape[0], q.shape[3], v.shape[3])


if triton_available:
    from . import triton_backward, triton_kernels

    @torch.library.triton_op("panther::favor_attention_triton", mutates_args=())
    def favor_attention_triton(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        projection: torch.Tensor,
        kernel_fn: str = "softmax",
        causal: bool = False,
        key_padding_mask: torch.Tensor | None = None,
        chunk_size: int = 0,
    ) -> torch.Tensor:
        checks.check_favor(q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size)
        if not _triton_runs(q, projection, v):
            return torch.ops.panther.favor_attention(q, k, v, projection, kernel_fn, causal, key_padding_mask,
                                                     chunk_size)
        return triton_kernels.favor_forward(q, k, v, projection, kernel_fn, causal, key_padding_mask,
                                            launch=torch.library.wrap_triton)

    @torch.library.triton_op("panther::favor_attention_triton_backward", mutates_args=())
    def favor_attention_triton_backward(
        grad: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        projection: torch.Tensor,
        out: torch.Tensor,
        kernel_fn: str,
        causal: bool,
        key_padding_mask: torch.Tensor | None,
        chunk_size: int,
        output_mask: list[bool],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = checks.check_favor(q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size)
        checks.check_grad(grad, q, shape)
        checks.check_grad(out, q, shape, "out")
        checks.check_output_mask(output_mask)
        if _triton_runs(q, projection, v):
            grads = triton_backward.favor_backward(grad, q, k, v, projection, out, kernel_fn, causal,
                                                   key_padding_mask, output_mask, launch=torch.library.wrap_triton)
        else:
            grads = torch.ops.panther.favor_attention_backward(grad, q, k, v, projection, kernel_fn, causal,
                                                               key_padding_mask, chunk_size, output_mask)
        # a custom op returns tensors: an empty one where no gradient was asked for
        return tuple(g if need else t.new_empty(0) for g, t, need in zip(grads, (q, k, v), output_mask))

    def _setup_context(ctx, inputs, output):
        q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size = inputs
        ctx.save_for_backward(q, k, v, projection, key_padding_mask, output)
        ctx.options = (kernel_fn, causal, chunk_size)

    def _backward(ctx, grad):
        q, k, v, projection, key_padding_mask, out = ctx.saved_tensors
        kernel_fn, causal, chunk_size = ctx.options
        mask = [bool(n) for n in ctx.needs_input_grad[:3]]
        grads = (None, None, None)
        if any(mask):
            grads = favor_attention_triton_backward(grad, q, k, v, projection, out, kernel_fn, causal,
                                                    key_padding_mask, chunk_size, mask)
        return *(g if need else None for g, need in zip(grads, mask)), None, None, None, None, None

    favor_attention_triton.register_autograd(_backward, setup_context=_setup_context)
