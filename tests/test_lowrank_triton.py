"""torch.ops.panther.lowrank_linear_triton / lowrank_expand: act(x A B + b) and act(h B + b) with
the activation in the expansion kernel's epilogue (Triton on the GPU, Triton's interpreter on CPU
for the kernels themselves, the C++ op + PyTorch activation for the ops' other paths)."""

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from panther.ops.linear import activation as act_mod
from panther.ops.linear import triton_kernels

from .conftest import ACTS, DEVICES, KERNEL_DEVICE, rel_err

ops = torch.ops.panther
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 3e-3}


def lowrank(d_in, r, d_out, dtype, device, bias=True, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    A = torch.randn(d_in, r, generator=g, device=device, dtype=dtype) / d_in**0.5
    B = torch.randn(r, d_out, generator=g, device=device, dtype=dtype) / r**0.5
    b = torch.randn(d_out, generator=g, device=device, dtype=dtype) if bias else None
    return A, B, b


def reference(x, A, B, b, activation):
    z = x.double() @ A.double() @ B.double()
    return ACTS[activation](z if b is None else z + b.double())


@pytest.mark.parametrize("activation", sorted(ACTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("r", [1, 7, 32, 96])
def test_kernels_match_float64_reference(activation, dtype, r):
    """The Triton kernels themselves, odd ranks (uneven halves) included; A and B read in place
    through strides (a transposed copy of each)."""
    M, d_in, d_out = 37, 70, 45
    A, B, b = lowrank(d_in, r, d_out, dtype, KERNEL_DEVICE)
    A, B = A.t().contiguous().t(), B.t().contiguous().t()
    x = torch.randn(M, d_in, device=KERNEL_DEVICE, dtype=dtype)
    y = triton_kernels.lowrank_forward(x, A, B, b, activation)
    assert y.shape == (M, d_out) and y.dtype == dtype
    assert rel_err(y, reference(x, A, B, b, activation)) < TOL[dtype]


@pytest.mark.parametrize("activation", sorted(ACTS))
@pytest.mark.parametrize("r", [1, 16, 33])
def test_expand_kernel_reads_a_strided_slice(activation, r):
    """h as a column slice of a wider projection (row stride > r), as the fused q/k/v expansions."""
    shared = torch.randn(41, 3 * r + 5, device=KERNEL_DEVICE)
    h = shared[:, r + 2:2 * r + 2]
    _, B, b = lowrank(1, r, 29, torch.float32, KERNEL_DEVICE)
    y = triton_kernels.lowrank_expand(h, B, b, activation)
    ref = ACTS[activation](h.double() @ B.double() + b.double())
    assert rel_err(y, ref) < TOL[torch.float32]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", sorted(ACTS))
@pytest.mark.parametrize("bias", [True, False])
def test_ops_forward_backward_match_float64_reference(device, activation, bias):
    A, B, b = lowrank(24, 6, 19, torch.float32, device, bias)
    x = torch.randn(2, 5, 24, device=device)
    leaves = [t.clone().requires_grad_() for t in (x, A, B) + ((b,) if bias else ())]
    y = ops.lowrank_linear_triton(*leaves[:3], leaves[3] if bias else None, activation)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = reference(*ref_leaves[:3], ref_leaves[3] if bias else None, activation)
    assert y.shape == (2, 5, 19) and rel_err(y, ref) < TOL[torch.float32]
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g.double())
    for t, r in zip(leaves, ref_leaves):
        assert rel_err(t.grad, r.grad) < 1e-4

    h = torch.randn(3, 4, 6, device=device, dtype=torch.float64, requires_grad=True)
    Bd = B.detach().double().requires_grad_()
    bd = b.detach().double().requires_grad_() if bias else None
    torch.autograd.gradcheck(lambda h, B, *bb: ops.lowrank_expand(h, B, bb[0] if bb else None, activation),
                             (h, Bd) + ((bd,) if bias else ()))


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_gradcheck_float64(activation):
    A, B, b = lowrank(9, 4, 7, torch.float64, "cpu")
    x = torch.randn(3, 9, dtype=torch.float64)
    args = [t.requires_grad_() for t in (x, A, B, b)]
    torch.autograd.gradcheck(lambda *a: ops.lowrank_linear_triton(*a, activation), args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    A, B, b = lowrank(16, 5, 12, torch.float32, device)
    x = torch.randn(2, 3, 16, device=device)
    opcheck(ops.lowrank_linear_triton, (x, A, B, b, "gelu"))
    opcheck(ops.lowrank_linear_triton, (x.requires_grad_(), A.requires_grad_(), B.requires_grad_(), None, "silu"))
    opcheck(ops.lowrank_expand, (torch.randn(4, 5, device=device), B, b, "relu"))


def test_compile_fullgraph_matches_eager():
    A, B, b = lowrank(16, 6, 12, torch.float32, "cpu")
    x = torch.randn(4, 16, requires_grad=True)
    f = lambda x: ops.lowrank_linear_triton(x, A, B, b, "gelu").sum()  # noqa: E731
    eager_grad = torch.autograd.grad(f(x), x)[0]
    compiled_grad = torch.autograd.grad(torch.compile(f, fullgraph=True)(x), x)[0]
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_argument():
    A, B, b = lowrank(8, 4, 6, torch.float32, "cpu")
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="activation must be one of"):
        ops.lowrank_linear_triton(x, A, B, b, "tanh")
    with pytest.raises(RuntimeError, match="B has shape"):
        ops.lowrank_linear_triton(x, A, B[:3], b)
    with pytest.raises(RuntimeError, match="expected last dim 4"):
        ops.lowrank_expand(x, B, b)
    with pytest.raises(RuntimeError, match="B has dtype"):
        ops.lowrank_expand(x[:, :4], B.double(), None)
    with pytest.raises(ValueError, match="activation must be one of"):
        act_mod.check_activation(None)


def test_eager_cuda_calls_keep_the_cpp_op_below_the_launch_cost():
    """Measured host cost of the Triton path (~0.1-0.15 ms a call) exceeds the GPU time of
    these problems: eagerly they run the C++ op; traced (torch.compile) they take the kernels."""
    kw = dict(n_in=8192, n_out=8192)
    assert not triton_kernels.preferred(8192, 16, torch.float16, compiled=False, **kw)
    assert triton_kernels.preferred(8192, 16, torch.float16, compiled=True, **kw)
    assert triton_kernels.preferred(131072, 16, torch.float16, compiled=False, **kw)  # 4 GiB moved
    assert not triton_kernels.preferred(8192, 64, torch.float16, compiled=True, **kw)  # cuBLAS wins at rank 128
    assert not triton_kernels.preferred(4096, 16, torch.float16, compiled=True, **kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gelu_epilogue_is_exact_to_the_output_rounding(dtype):
    """y = gelu(0 * B + bias) puts the epilogue's GELU alone on a grid of [-10, 10]: 16-bit
    outputs use the Abramowitz-Stegun erf (|error| < 2.2e-7 before rounding), float32 libdevice's
    erf (whose 1 + erf cancels in the negative tail, as PyTorch's own GELU does); either way
    within one rounding at the scale of the inputs (|x| ~ 1) of the float64 GELU."""
    bias = torch.linspace(-10, 10, 4001, dtype=torch.float64)
    h = torch.zeros(3, 4, device=KERNEL_DEVICE, dtype=dtype)
    B = torch.zeros(4, bias.numel(), device=KERNEL_DEVICE, dtype=dtype)
    b = bias.to(KERNEL_DEVICE, dtype)
    y = triton_kernels.lowrank_expand(h, B, b, "gelu")
    want = F.gelu(b.double())
    bound = torch.finfo(dtype).eps * (want.abs() + 1) + 2.2e-7
    assert ((y[0].double() - want).abs() <= bound).all()
