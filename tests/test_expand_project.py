"""torch.ops.panther.lowrank_expand_project: u = act(h B + b) C, the middle of a low-rank MLP
with its hidden activation kept in registers (Triton on the GPU, Triton's interpreter on CPU for
the kernel itself; the op's other paths run the unfused PyTorch composite)."""

import pytest
import torch
from torch.library import opcheck

from panther.ops.linear import mlp_kernels, triton_kernels

from .conftest import ACTS, DEVICES, KERNEL_DEVICE, check_against_float64, rel_err

ops = torch.ops.panther
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def factors(r1, hidden, r2, dtype, device, bias=True, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    B = torch.randn(r1, hidden, generator=g, device=device, dtype=dtype) / r1**0.5
    C = torch.randn(hidden, r2, generator=g, device=device, dtype=dtype) / hidden**0.5
    b = torch.randn(hidden, generator=g, device=device, dtype=dtype) if bias else None
    return B, C, b


def reference(h, B, C, b, activation):
    z = h.double() @ B.double()
    return ACTS[activation](z if b is None else z + b.double()) @ C.double()


@pytest.fixture
def fused_eagerly(monkeypatch):
    """Eager CUDA calls take the kernel at any size (eagerly it otherwise waits for large hidden layers)."""
    monkeypatch.setattr(mlp_kernels, "EAGER_MIN_HIDDEN_BYTES", 0)


@pytest.mark.parametrize("activation", sorted(ACTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("r1,hidden,r2", [(1, 1, 1), (7, 70, 5), (32, 300, 16), (17, 129, 40)])
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_matches_float64_reference(activation, dtype, r1, hidden, r2, bias):
    """Odd ranks and hidden sizes (masked tails), with and without bias; hidden > 64 splits the
    hidden axis across programs (float32 partials summed) on the interpreter."""
    B, C, b = factors(r1, hidden, r2, dtype, KERNEL_DEVICE, bias)
    h = torch.randn(37, r1, device=KERNEL_DEVICE, dtype=dtype)
    u = mlp_kernels.expand_project(h, B, b, activation, C)
    assert u.shape == (37, r2) and u.dtype == dtype
    assert rel_err(u, reference(h, B, C, b, activation)) < TOL[dtype]


def test_kernel_reads_strided_operands():
    """h a column slice of a wider projection, B and C transposed copies: all read in place."""
    shared = torch.randn(29, 3 * 12 + 5, device=KERNEL_DEVICE)
    h = shared[:, 14:26]
    B, C, b = factors(12, 90, 9, torch.float32, KERNEL_DEVICE)
    B, C = B.t().contiguous().t(), C.t().contiguous().t()
    u = mlp_kernels.expand_project(h, B, b, "gelu", C)
    assert rel_err(u, reference(h, B, C, b, "gelu")) < TOL[torch.float32]


def test_kernel_empty_sizes():
    B, C, b = factors(4, 10, 3, torch.float32, KERNEL_DEVICE)
    assert mlp_kernels.expand_project(torch.empty(0, 4, device=KERNEL_DEVICE), B, b, "relu", C).shape == (0, 3)
    B0, C0 = B[:, :0], C[:0]
    u = mlp_kernels.expand_project(torch.randn(5, 4, device=KERNEL_DEVICE), B0, None, "gelu", C0)
    assert u.shape == (5, 3) and not u.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU configs compile only on CUDA")
@pytest.mark.parametrize("config", mlp_kernels.CONFIGS, ids=str)
def test_every_gpu_config(config):
    B, C, b = factors(64, 1000, 64, torch.bfloat16, "cuda")
    h = torch.randn(300, 64, device="cuda", dtype=torch.bfloat16)
    if mlp_kernels.smem(config, 2, 64) > mlp_kernels._SHARED_MEMORY_BUDGET:
        pytest.skip("tiles exceed the shared-memory budget at this rank")
    u = mlp_kernels.expand_project(h, B, b, "gelu", C, config=config)
    assert rel_err(u, reference(h, B, C, b, "gelu")) < TOL[torch.bfloat16]


def test_unsupported_ranks_raise_in_the_kernel_and_fall_back_in_the_op():
    B, C, b = factors(4, 6, 300, torch.float32, "cpu")
    assert not mlp_kernels.supported(4, 300, torch.float32)
    with pytest.raises(ValueError, match="do not fit the fused MLP kernel"):
        mlp_kernels.expand_project(torch.randn(3, 4), B, b, "relu", C)
    h = torch.randn(3, 4)
    assert rel_err(ops.lowrank_expand_project(h, B, C, b, "relu"), reference(h, B, C, b, "relu")) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", sorted(ACTS))
@pytest.mark.parametrize("bias", [True, False])
def test_op_forward_backward_match_float64_reference(device, activation, bias, fused_eagerly):
    B, C, b = factors(6, 40, 5, torch.float32, device, bias)
    h = torch.randn(2, 7, 6, device=device)
    u = check_against_float64(lambda h, B, C, *b: ops.lowrank_expand_project(h, B, C, *(b or [None]), activation),
                              lambda h, B, C, *b: reference(h, B, C, *(b or [None]), activation),
                              (h, B, C) + ((b,) if bias else ()), TOL[torch.float32])
    assert u.shape == (2, 7, 5)


@pytest.mark.parametrize("activation", ["none", "gelu", "silu"])
def test_gradcheck_float64(activation):
    B, C, b = factors(4, 9, 3, torch.float64, "cpu")
    h = torch.randn(2, 3, 4, dtype=torch.float64)
    args = [t.requires_grad_() for t in (h, B, C, b)]
    torch.autograd.gradcheck(lambda *a: ops.lowrank_expand_project(*a, activation), args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, fused_eagerly):
    B, C, b = factors(5, 24, 4, torch.float32, device)
    h = torch.randn(2, 3, 5, device=device)
    opcheck(ops.lowrank_expand_project, (h, B, C, b, "gelu"))
    opcheck(ops.lowrank_expand_project, (h.requires_grad_(), B.requires_grad_(), C.requires_grad_(), None, "relu"))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_matches_eager(device):
    B, C, b = factors(6, 40, 5, torch.float32, device)
    h = torch.randn(4, 6, device=device, requires_grad=True)
    f = lambda h: ops.lowrank_expand_project(h, B, C, b, "gelu").square().sum()  # noqa: E731
    eager = f(h)
    eager_grad = torch.autograd.grad(eager, h)[0]
    compiled = torch.compile(f, fullgraph=True)(h)
    compiled_grad = torch.autograd.grad(compiled, h)[0]
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_argument():
    B, C, b = factors(4, 6, 3, torch.float32, "cpu")
    h = torch.randn(5, 4)
    with pytest.raises(RuntimeError, match="C has shape"):
        ops.lowrank_expand_project(h, B, C[:5], b)
    with pytest.raises(RuntimeError, match="expected last dim 4"):
        ops.lowrank_expand_project(h[:, :3], B, C, b)
    with pytest.raises(RuntimeError, match="C has dtype"):
        ops.lowrank_expand_project(h, B, C.double(), b)
    with pytest.raises(RuntimeError, match="bias has shape"):
        ops.lowrank_expand_project(h, B, C, b[:5])
    with pytest.raises(ValueError, match="activation must be one of"):
        ops.lowrank_expand_project(h, B, C, b, "tanh")


def test_eager_calls_fuse_only_large_hidden_layers():
    assert not mlp_kernels.preferred(2048, 4096, 64, 64, torch.bfloat16, compiled=False)
    assert mlp_kernels.preferred(2048, 4096, 64, 64, torch.bfloat16, compiled=True)
    assert mlp_kernels.preferred(65536, 4096, 64, 64, torch.bfloat16, compiled=False)  # 512 MiB hidden
    assert not mlp_kernels.preferred(8192, 4096, 512, 64, torch.bfloat16, compiled=True)  # rank > MAX_RANK


# ---- the gated form: u = (act(h B + b) * (hu Bu + bu)) C (SwiGLU, GeGLU)


def gated_factors(r1, ru, hidden, r2, dtype, device, bias=True, seed=1):
    B, C, b = factors(r1, hidden, r2, dtype, device, bias, seed)
    Bu, _, bu = factors(ru, hidden, 1, dtype, device, bias, seed + 1)
    return B, Bu, C, b, bu


def gated_reference(h, B, hu, Bu, C, b, bu, activation):
    z = h.double() @ B.double() + (0 if b is None else b.double())
    zu = hu.double() @ Bu.double() + (0 if bu is None else bu.double())
    return (ACTS[activation](z) * zu) @ C.double()


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("r1,ru,hidden,r2", [(1, 1, 1, 1), (7, 5, 70, 6), (32, 17, 300, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_gated_kernel_matches_float64_reference(activation, dtype, r1, ru, hidden, r2, bias):
    B, Bu, C, b, bu = gated_factors(r1, ru, hidden, r2, dtype, KERNEL_DEVICE, bias)
    h = torch.randn(37, r1, device=KERNEL_DEVICE, dtype=dtype)
    shared = torch.randn(37, r1 + ru + 3, device=KERNEL_DEVICE, dtype=dtype)
    hu = shared[:, r1 + 1:r1 + 1 + ru]  # a strided slice, as the rewrite's shared x·[A_gate A_up]
    u = mlp_kernels.gated_expand_project(h, B, b, activation, hu, Bu, bu, C)
    assert u.shape == (37, r2) and u.dtype == dtype
    assert rel_err(u, gated_reference(h, B, hu, Bu, C, b, bu, activation)) < TOL[dtype]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU configs compile only on CUDA")
@pytest.mark.parametrize("config", mlp_kernels.CONFIGS, ids=str)
def test_gated_every_gpu_config(config):
    if mlp_kernels.smem(config, 2, 64, gated=True) > mlp_kernels._SHARED_MEMORY_BUDGET:
        pytest.skip("tiles exceed the shared-memory budget at this rank")
    B, Bu, C, b, bu = gated_factors(64, 64, 1000, 64, torch.bfloat16, "cuda")
    h, hu = (torch.randn(300, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    u = mlp_kernels.gated_expand_project(h, B, b, "silu", hu, Bu, bu, C, config=config)
    assert rel_err(u, gated_reference(h, B, hu, Bu, C, b, bu, "silu")) < TOL[torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_gated_op_forward_backward_match_float64_reference(device, bias, fused_eagerly):
    B, Bu, C, b, bu = gated_factors(6, 4, 40, 5, torch.float32, device, bias)
    h, hu = torch.randn(2, 7, 6, device=device), torch.randn(2, 7, 4, device=device)
    u = check_against_float64(lambda *a: ops.lowrank_gated_expand_project(*a[:5], *(a[5:] or [None, None]), "silu"),
                              lambda *a: gated_reference(*a[:5], *(a[5:] or [None, None]), "silu"),
                              (h, B, hu, Bu, C) + ((b, bu) if bias else ()), TOL[torch.float32])
    assert u.shape == (2, 7, 5)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gated_gradcheck_float64(activation):
    B, Bu, C, b, bu = gated_factors(4, 3, 9, 3, torch.float64, "cpu")
    h, hu = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 3, dtype=torch.float64)
    args = [t.requires_grad_() for t in (h, B, hu, Bu, C, b, bu)]
    torch.autograd.gradcheck(lambda *a: ops.lowrank_gated_expand_project(*a, activation), args)


@pytest.mark.parametrize("device", DEVICES)
def test_gated_opcheck_and_compile(device, fused_eagerly):
    B, Bu, C, b, bu = gated_factors(5, 3, 24, 4, torch.float32, device)
    h, hu = torch.randn(2, 3, 5, device=device), torch.randn(2, 3, 3, device=device)
    opcheck(ops.lowrank_gated_expand_project, (h, B, hu, Bu, C, b, bu, "silu"))
    opcheck(ops.lowrank_gated_expand_project, (h.requires_grad_(), B, hu.requires_grad_(), Bu, C, None, None, "gelu"))
    f = lambda h, hu: ops.lowrank_gated_expand_project(h, B, hu, Bu, C, b, bu).square().sum()  # noqa: E731
    eager = torch.autograd.grad(f(h, hu), (h, hu))
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(h, hu), (h, hu))
    for c, e in zip(compiled, eager):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


def test_gated_bad_inputs_name_the_argument():
    B, Bu, C, b, bu = gated_factors(4, 3, 6, 2, torch.float32, "cpu")
    h, hu = torch.randn(5, 4), torch.randn(5, 3)
    with pytest.raises(RuntimeError, match="hu has shape"):
        ops.lowrank_gated_expand_project(h, B, hu[:4], Bu, C)
    with pytest.raises(RuntimeError, match="Bu has shape"):
        ops.lowrank_gated_expand_project(h, B, hu, Bu[:, :5], C)
    with pytest.raises(RuntimeError, match="Bu has shape"):
        ops.lowrank_gated_expand_project(h, B, hu[:, :2], Bu, C)
    with pytest.raises(RuntimeError, match="bias_u has shape"):
        ops.lowrank_gated_expand_project(h, B, hu, Bu, C, b, bu[:5])
    with pytest.raises(RuntimeError, match="Bu has dtype"):
        ops.lowrank_gated_expand_project(h, B, hu, Bu.double(), C)
    assert not mlp_kernels.supported(4, 4, torch.float32, 300)


def test_split_choice_adds_no_guard_on_the_row_count(monkeypatch):
    """Traced with dynamic shapes, the hidden-axis split is chosen from the example row count
    without a guard on it (any split is exact), so a new batch size does not recompile."""
    from torch.fx.experimental.proxy_tensor import make_fx

    monkeypatch.setattr(triton_kernels, "_sm_count", lambda index: 132)

    def split_buffer(h):
        split = mlp_kernels.num_splits(mlp_kernels._size_hint(h.shape[0]), 4096, torch.device("cuda", 0))
        return h.new_empty((split, h.shape[0]))

    gm = make_fx(split_buffer, tracing_mode="symbolic")(torch.randn(8192, 8))
    assert gm.shape_env.guards == []
    assert gm(torch.randn(100, 8)).shape == (5, 100)  # 4 x 132 programs over 128 row blocks at the example size
