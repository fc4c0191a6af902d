"""torch.ops.panther.sketched_linear_triton: SKLinear with Triton kernels on CUDA.

Same math, schema and gradients as torch.ops.panther.sketched_linear. On CUDA, where
``triton_kernels.preferred`` says they win (many rows, small rank: measured), it runs the
two Triton kernels of triton_kernels.py (split-K projection, then a fused scale + bias
expansion, reading the factors in place); elsewhere, and on every other device (CPU in
CI), it runs the two-GEMM C++ op inside the same op. The backward
is the C++ backward op (cuBLAS GEMMs) for both. Entering through
torch.library.triton_op lets Inductor see the kernels under torch.compile.
"""

from __future__ import annotations

import torch

from . import checks
from .op import setup_sketched, sketched_linear_backward

from .._triton import triton_available

sketched_linear_triton = None

if triton_available:
    from . import triton_kernels

    @torch.library.triton_op("panther::sketched_linear_triton", mutates_args=())
    def sketched_linear_triton(
        x: torch.Tensor,
        S1s: torch.Tensor,
        S2s: torch.Tensor,
        U1s: torch.Tensor,
        U2s: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        L, d_in, k, d_out = checks.check_sketched(x, S1s, S2s, U1s, U2s)
        checks.check_bias(bias, x, d_out)
        # The body runs for every device: eagerly, and when torch.compile decomposes the
        # op into it. Other devices, and shapes where cuBLAS wins, take the C++ op.
        if x.device.type != "cuda" or not triton_kernels.preferred(x.numel() // d_in, L * k, x.dtype):
            return torch.ops.panther.sketched_linear(x, S1s, S2s, U1s, U2s, bias)
        y = triton_kernels.sketched_forward(x.reshape(-1, d_in), S1s, S2s, U1s, U2s, bias,
                                            launch=torch.library.wrap_triton)
        return y.view(*x.shape[:-1], d_out)

    sketched_linear_triton.register_autograd(sketched_linear_backward, setup_context=setup_sketched)
