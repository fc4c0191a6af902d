"""torch.ops.panther.favor_attention_triton: FAVOR+ attention with the Triton forward on CUDA.

Same schema, math and gradients as torch.ops.panther.favor_attention. On CUDA the forward
runs the fused Triton kernels (triton_kernels.py) where their register tiles fit (at most
256 random features and head dims of 256); elsewhere, and on every other device (CPU in
CI), the body calls the C++ op, because torch.compile decomposes a triton_op into its body
for any device. The Triton kernels choose their chunk size by autotuning: ``chunk_size``
steers the C++ op only (the result does not depend on it beyond rounding). The backward
is the C++ backward op (ATen, chunked) on both. Entering through torch.library.triton_op
lets Inductor see the kernels under torch.compile.
"""

from __future__ import annotations

import torch

from . import checks
from .op import backward, setup_context

from .._triton import triton_available

favor_attention_triton = None

if triton_available:
    from . import triton_kernels

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
        if q.device.type != "cuda" or not triton_kernels.supported(projection.shape[0], q.shape[3], v.shape[3]):
            return torch.ops.panther.favor_attention(q, k, v, projection, kernel_fn, causal, key_padding_mask,
                                                     chunk_size)
        return triton_kernels.favor_forward(q, k, v, projection, kernel_fn, causal, key_padding_mask,
                                            launch=torch.library.wrap_triton)

    favor_attention_triton.register_autograd(backward, setup_context=setup_context)
