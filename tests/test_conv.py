"""Tests for torch.ops.panther.sketched_conv2d, pr.nn.SKConv2d and panther.factors.conv."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from torch import nn
from torch.library import opcheck

import panther as pr
from panther.factors import conv_sketch_factors, conv_svd_factors
from panther.ops.conv import sketched_conv2d_reference

from .conftest import DEVICES

ops = torch.ops.panther


def factors(C_in, C_out, groups, two_L, k, kh, kw, dtype=torch.float64, device="cpu", bias=True):
    S1s = torch.randn(groups * two_L * k, C_in // groups, kh, kw, dtype=dtype, device=device)
    U1s = torch.randn(two_L, k, C_out, dtype=dtype, device=device)
    b = torch.randn(C_out, dtype=dtype, device=device) if bias else None
    return S1s, U1s, b


def effective_kernel(S1s, U1s, groups):
    """Dense kernel of the sketched layer, from the definition (used for nn.Conv2d comparisons)."""
    two_L, k, C_out = U1s.shape
    C_og = C_out // groups
    S = S1s.reshape(groups, two_L * k, -1)
    U = U1s.reshape(two_L * k, groups, C_og).permute(1, 2, 0)  # [G, C_og, 2Lk]
    return (U @ S).reshape(C_out, *S1s.shape[1:]) / two_L


# (C_in, C_out, groups, 2L, k, kernel, stride, padding (l, r, t, b), dilation, mode, H, W)
GEOMETRIES = [
    (6, 8, 1, 2, 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "zeros", 9, 8),
    (6, 8, 1, 2, 2, (4, 4), (1, 1), (1, 2, 1, 2), (1, 1), "zeros", 8, 7),  # 'same' for an even kernel
    (6, 9, 3, 2, 1, (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), "reflect", 9, 8),
    (4, 6, 2, 4, 2, (3, 3), (1, 2), (2, 1, 1, 2), (2, 1), "circular", 7, 9),
    (5, 7, 1, 2, 3, (2, 3), (2, 2), (0, 2, 1, 0), (1, 1), "replicate", 8, 10),
    (4, 4, 4, 2, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "zeros", 6, 6),  # depthwise
    (6, 4, 1, 8, 4, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), "zeros", 7, 7),  # 2Lk > C_out: effective-kernel path
    (3, 5, 1, 2, 2, (1, 1), (3, 3), (0, 0, 0, 0), (1, 1), "zeros", 10, 11),  # 1x1, strided
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_matches_sum_of_term_convolutions(geometry):
    C_in, C_out, G, two_L, k, ks, stride, pad, dil, mode, H, W = geometry
    S1s, U1s, b = factors(C_in, C_out, G, two_L, k, *ks)
    x = torch.randn(2, C_in, H, W, dtype=torch.float64)
    args = (list(stride), list(pad), list(dil), G, mode)
    leaves = [t.requires_grad_() for t in (x, S1s, b)]
    y = ops.sketched_conv2d(x, S1s, U1s, b, *args)
    ref = sketched_conv2d_reference(x, S1s, U1s, b, *args)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, g)
    want = torch.autograd.grad(ref, leaves, g)
    for name, a, w in zip(("x", "S1s", "bias"), got, want):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad {name}: {m}")


def test_gradcheck():
    S1s, U1s, b = factors(4, 6, 2, 2, 2, 3, 2)
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    for mode, pad in (("zeros", [1, 0, 1, 1]), ("reflect", [1, 1, 0, 2])):
        fn = lambda x, S, b: ops.sketched_conv2d(x, S, U1s, b, [1, 2], pad, [1, 1], 2, mode)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x.requires_grad_(), S1s.requires_grad_(), b.requires_grad_()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["two_step", "effective"])
def test_opcheck(device, path):
    two_L, k = (2, 2) if path == "two_step" else (4, 4)
    S1s, U1s, b = factors(4, 8, 1, two_L, k, 3, 3, dtype=torch.float32, device=device)
    x = torch.randn(2, 4, 6, 5, device=device)
    args = ([1, 1], [1, 1, 1, 1], [1, 1], 1, "zeros")
    opcheck(ops.sketched_conv2d, (x, S1s, U1s, b, *args))
    opcheck(ops.sketched_conv2d, (x.requires_grad_(), S1s.requires_grad_(), U1s, None, [2, 1], [0, 1, 2, 0],
                                  [1, 2], 1, "circular"))
    x_cl = torch.randn(2, 4, 6, 5, device=device).to(memory_format=torch.channels_last).requires_grad_()
    opcheck(ops.sketched_conv2d, (x_cl, S1s, U1s, b.requires_grad_(), *args))
    g = torch.randn(2, 8, 6, 5, device=device)
    opcheck(ops.sketched_conv2d_backward, (g, x.detach(), S1s.detach(), U1s, *args, [True, True, True]))
    opcheck(ops.sketched_conv2d_backward, (g, x.detach(), S1s.detach(), U1s, *args, [False, True, False]))


@pytest.mark.parametrize("conv_kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=(2, 5), padding="same", dilation=(3, 1)),
    dict(kernel_size=3, padding="valid", stride=2),
    dict(kernel_size=3, padding=(2, 1), padding_mode="reflect", dilation=2),
    dict(kernel_size=4, padding="same", padding_mode="circular"),
    dict(kernel_size=3, padding=1, padding_mode="replicate", groups=4, stride=(2, 1)),
])
def test_full_rank_svd_equals_nn_conv2d(conv_kwargs):
    """With 2Lk >= the kernel's rank, the svd init reproduces nn.Conv2d exactly: this pins
    padding ('same' for even kernels too), dilation, groups and padding modes to PyTorch's."""
    conv = nn.Conv2d(8, 12, bias=True, dtype=torch.float64, **conv_kwargs)
    sk = pr.nn.SKConv2d.from_conv(conv, num_terms=2, low_rank=4, init="svd")  # 2Lk = 16 >= 12
    assert sk.padding == conv.padding and sk.groups == conv.groups and sk.padding_mode == conv.padding_mode
    x = torch.randn(2, 8, 11, 10, dtype=torch.float64)
    torch.testing.assert_close(sk(x), conv(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(effective_kernel(sk.S1s, sk.U1s, sk.groups), conv.weight.detach())


def test_svd_init_is_best_low_rank_and_beats_sketch():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1, dtype=torch.float64)
    W = conv.weight.detach()
    S1s, U1s = conv_svd_factors(W, 1, 4, generator=g)  # rank 8
    W8 = effective_kernel(S1s, U1s, 1)
    P, s, Qh = torch.linalg.svd(W.reshape(32, -1), full_matrices=False)
    best = (P[:, :8] * s[:8]) @ Qh[:8]
    torch.testing.assert_close(W8.reshape(32, -1), best)
    S1s, U1s = conv_sketch_factors(W, 1, 4, generator=g)
    err_sketch = (effective_kernel(S1s, U1s, 1) - W).norm() / W.norm()
    assert (W8 - W).norm() / W.norm() < err_sketch


def test_sketch_init_is_unbiased():
    """The mean of many sketched effective kernels approaches W (a biased scale would not)."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(8, 2, 3, 3, dtype=torch.float64)  # groups=2: C_in = 4
    draws = [effective_kernel(*conv_sketch_factors(W, 1, 2, groups=2, generator=g), 2) for _ in range(400)]
    single = (draws[0] - W).norm() / W.norm()
    mean_err = (torch.stack(draws).mean(0) - W).norm() / W.norm()
    assert mean_err < 0.2 * single and mean_err < 0.15


@pytest.mark.filterwarnings("ignore:SKConv2d")
def test_layer_shapes_attributes_and_seed_example():
    conv_layer = pr.nn.SKConv2d(in_channels=64, out_channels=128, kernel_size=3, stride=1, padding=1,
                                num_terms=1, low_rank=16)
    y = conv_layer(torch.randn(2, 64, 14, 14))
    assert y.shape == (2, 128, 14, 14)
    assert conv_layer.S1s.shape == (32, 64, 3, 3) and conv_layer.U1s.shape == (2, 16, 128)
    assert "U1s" in dict(conv_layer.named_buffers()) and "S1s" in dict(conv_layer.named_parameters())
    default = pr.nn.SKConv2d(16, 256)  # earlier defaults: 3x3, stride 1, padding 1, L=6, k=8
    assert default.S1s.shape == (96, 16, 3, 3) and default.U1s.shape == (12, 8, 256)
    assert default(torch.randn(4, 16, 5, 5)).shape == (4, 256, 5, 5)
    assert default(torch.randn(16, 5, 5)).shape == (256, 5, 5)  # unbatched, like nn.Conv2d


@pytest.mark.filterwarnings("ignore:SKConv2d")
def test_from_torch_and_layer_argument():
    conv = nn.Conv2d(6, 10, (3, 5), stride=(2, 1), padding=(1, 2), bias=False)
    sk = pr.nn.SKConv2d.fromTorch(conv, num_terms=2, low_rank=3)
    assert sk.bias is None and sk.kernel_size == (3, 5) and sk.stride == (2, 1)
    x = torch.randn(2, 6, 9, 9)
    assert sk(x).shape == conv(x).shape
    torch.manual_seed(3)
    a = pr.nn.SKConv2d(6, 10, (3, 5), layer=conv)
    assert a.S1s.shape == (2 * 6 * 8, 6, 3, 5)
    with pytest.raises(ValueError, match="layer must be a torch.nn.Conv2d"):
        pr.nn.SKConv2d(6, 10, layer=nn.Linear(3, 3))
    with pytest.raises(ValueError, match="layer.weight has shape"):
        pr.nn.SKConv2d(6, 10, 3, layer=conv)


def test_generator_reproducible_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = pr.nn.SKConv2d(8, 16, num_terms=1, low_rank=2, generator=torch.Generator().manual_seed(5))
    b = pr.nn.SKConv2d(8, 16, num_terms=1, low_rank=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.S1s, b.S1s) and torch.equal(a.U1s, b.U1s)
    torch.manual_seed(0)
    c = pr.nn.SKConv2d(8, 16, num_terms=1, low_rank=2)
    torch.manual_seed(0)
    d = pr.nn.SKConv2d(8, 16, num_terms=1, low_rank=2)
    assert torch.equal(c.S1s, d.S1s) and not torch.equal(a.S1s, c.S1s)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_float32(dtype):
    layer = pr.nn.SKConv2d(8, 16, 3, num_terms=1, low_rank=4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 8, 10, 10)
    want = layer(x)
    got = layer.to(dtype)(x.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2)


def test_channels_last_keeps_format():
    layer = pr.nn.SKConv2d(8, 16, 3, num_terms=1, low_rank=4)
    x = torch.randn(2, 8, 10, 10)
    y = layer(x.to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, layer(x))


def test_compile_fullgraph_and_backward():
    layer = pr.nn.SKConv2d(4, 8, 4, padding="same", num_terms=1, low_rank=2, padding_mode="reflect")
    x = torch.randn(2, 4, 7, 6, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, layer(x))
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    (gx_eager,) = torch.autograd.grad(layer(x).square().sum(), x)
    torch.testing.assert_close(gx, gx_eager)


def test_compile_inductor():
    layer = pr.nn.SKConv2d(4, 8, 3, num_terms=1, low_rank=2)
    x = torch.randn(2, 4, 7, 6)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x))


def test_export_save_load():
    layer = pr.nn.SKConv2d(4, 8, (3, 2), stride=2, padding=(1, 0), num_terms=1, low_rank=2, dilation=(1, 2))
    x = torch.randn(2, 4, 9, 8)
    ep = torch.export.export(layer, (x,))
    assert any("sketched_conv2d" in str(n.target) for n in ep.graph.nodes)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "skconv.pt2")
        torch.export.save(ep, path)
        loaded = torch.export.load(path)
    torch.testing.assert_close(loaded.module()(x), layer(x))


def test_bad_arguments_raise_clear_errors():
    S1s, U1s, b = factors(4, 6, 1, 2, 2, 3, 3, dtype=torch.float32)
    x = torch.randn(2, 4, 6, 6)
    args = ([1, 1], [1, 1, 1, 1], [1, 1], 1, "zeros")
    with pytest.raises(RuntimeError, match=r"S1s has shape .*in_channels / groups"):
        ops.sketched_conv2d(torch.randn(2, 5, 6, 6), S1s, U1s, b, *args)
    with pytest.raises(RuntimeError, match="expected a multiple of groups=3"):
        ops.sketched_conv2d(x, S1s, U1s, b, [1, 1], [1, 1, 1, 1], [1, 1], 3, "zeros")
    with pytest.raises(RuntimeError, match="padding_mode must be one of"):
        ops.sketched_conv2d(x, S1s, U1s, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, "mirror")
    with pytest.raises(RuntimeError, match="too large for padding_mode='reflect'"):
        ops.sketched_conv2d(x, S1s, U1s, b, [1, 1], [6, 1, 1, 1], [1, 1], 1, "reflect")
    with pytest.raises(RuntimeError, match="too small for kernel"):
        ops.sketched_conv2d(torch.randn(2, 4, 2, 2), S1s, U1s, b, [1, 1], [0, 0, 0, 0], [1, 1], 1, "zeros")
    with pytest.raises(RuntimeError, match="bias has shape"):
        ops.sketched_conv2d(x, S1s, U1s, torch.randn(5), *args)
    with pytest.raises(RuntimeError, match="U1s has dtype"):
        ops.sketched_conv2d(x, S1s, U1s.double(), b, *args)
    with pytest.raises(ValueError, match="groups=3 must divide in_channels=4"):
        pr.nn.SKConv2d(4, 6, groups=3)
    with pytest.raises(ValueError, match="padding must be one of"):
        pr.nn.SKConv2d(4, 6, padding="full")
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        pr.nn.SKConv2d(4, 6, padding="same", stride=2)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        pr.nn.SKConv2d(4, 6, padding_mode="mirror")
    with pytest.raises(TypeError, match="kernel_size must be an int or a tuple of 2 ints"):
        pr.nn.SKConv2d(4, 6, kernel_size=(3, 3, 3))
    with pytest.raises(ValueError, match="num_terms must be a positive int"):
        pr.nn.SKConv2d(4, 6, num_terms=0)
    with pytest.raises(TypeError, match="conv must be a torch.nn.Conv2d"):
        pr.nn.SKConv2d.from_conv(nn.Linear(2, 2), 1, 1)
    with pytest.raises(ValueError, match="init must be one of"):
        pr.nn.SKConv2d.from_conv(nn.Conv2d(2, 2, 1), 1, 1, init="qr")
    with pytest.raises(UserWarning, match="costs at least as much as the dense convolution"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pr.nn.SKConv2d(4, 6, num_terms=4, low_rank=8)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    layer = pr.nn.SKConv2d(16, 32, 3, num_terms=1, low_rank=4)
    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    layer_cuda = layer.cuda()
    xc = x.detach().cuda().requires_grad_()
    yc = layer_cuda(xc)
    yc.sum().backward()
    torch.testing.assert_close(yc.cpu(), y, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(xc.grad.cpu(), x.grad, rtol=1e-3, atol=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert layer_cuda(xc.to(memory_format=torch.channels_last)).shape == (2, 32, 12, 12)


def test_autocast_runs_in_autocast_dtype():
    layer = pr.nn.SKConv2d(8, 16, 3, num_terms=1, low_rank=4)
    x = torch.randn(2, 8, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), rtol=3e-2, atol=3e-2)
