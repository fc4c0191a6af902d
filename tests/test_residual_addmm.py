"""torch.ops.panther.residual_addmm(residual, h, B, bias): residual + h B + bias in one GEMM."""

import pytest
import torch
from torch.library import opcheck

from .conftest import DEVICES, call_in_mode, rel_err

ops = torch.ops.panther
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def operands(lead, r, out, dtype, device, bias=True, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, device=device, dtype=torch.float64).to(dtype)  # noqa: E731
    return mk(*lead, out), mk(*lead, r), mk(r, out) / r**0.5, mk(out) if bias else None


def reference(residual, h, B, bias):
    y = residual.double() + h.double() @ B.double()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lead", [(), (7,), (2, 3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_float64_reference_with_gradients(device, dtype, lead, bias):
    residual, h, B, b = operands(lead, 24, 40, dtype, device, bias)
    leaves = [t.requires_grad_() for t in (residual, h, B) + ((b,) if bias else ())]
    y = ops.residual_addmm(residual, h, B, b)
    expected = reference(residual, h, B, b)
    assert y.dtype == dtype and y.shape == (*lead, 40)
    assert rel_err(y, expected) < TOL[dtype]
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, grad)
    want = torch.autograd.grad(expected, leaves, grad.double())
    for name, g, w in zip(("residual", "h", "B", "bias"), got, want):
        assert g.dtype == dtype and g.shape == w.shape, name
        assert rel_err(g, w) < TOL[dtype], name


def test_gradcheck_float64():
    residual, h, B, b = (t.requires_grad_() for t in operands((3, 4), 5, 6, torch.float64, "cpu"))
    assert torch.autograd.gradcheck(ops.residual_addmm, (residual, h, B, b))
    assert torch.autograd.gradcheck(ops.residual_addmm, (residual, h, B, None))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(device, bias):
    residual, h, B, b = operands((4, 6), 8, 16, torch.float32, device, bias)
    opcheck(ops.residual_addmm, (residual, h, B, b))
    opcheck(ops.residual_addmm, (residual.requires_grad_(), h.requires_grad_(), B.requires_grad_(), b))



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_compile_fullgraph_forward_and_backward_equal_eager(device, bias):
    torch.compiler.reset()
    leaves = [t.requires_grad_() for t in operands((2, 5), 8, 16, torch.float32, device, bias) if t is not None]
    args = leaves if bias else [*leaves, None]
    eager = ops.residual_addmm(*args)
    compiled = torch.compile(lambda *a: ops.residual_addmm(*a), fullgraph=True)(*args)
    torch.testing.assert_close(compiled, eager)
    grad = torch.randn_like(eager)
    for got, want in zip(torch.autograd.grad(compiled, leaves, grad), torch.autograd.grad(eager, leaves, grad)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_and_empty_operands(device, dtype):
    """A residual or h that is a transposed or sliced view (the CUDA GEMM reads only unit-stride
    rows: the others go through ATen), a column-major B, and zero rows."""
    residual, h, B, b = operands((9,), 16, 32, dtype, device)
    wide = torch.randn(9, 64, device=device, dtype=dtype)
    views = {
        "residual sliced": (wide[:, 8:40], h, B),
        "residual transposed": (residual.t().contiguous().t(), h, B),
        "h transposed": (residual, h.t().contiguous().t(), B),
        "B transposed": (residual, h, B.t().contiguous().t()),
    }
    for name, (r_, h_, B_) in views.items():
        assert rel_err(ops.residual_addmm(r_, h_, B_, b), reference(r_, h_, B_, b)) < TOL[dtype], name
    empty = ops.residual_addmm(residual[:0], h[:0], B, b)
    assert empty.shape == (0, 32)


def test_the_residual_is_read_not_written():
    residual, h, B, b = operands((5,), 4, 8, torch.float32, "cpu")
    before = residual.clone()
    y = ops.residual_addmm(residual, h, B, b)
    assert torch.equal(residual, before) and y.data_ptr() != residual.data_ptr()


BAD = [
    ("residual shape", lambda r, h, B, b: (r[:, :-1], h, B, b), "residual has shape"),
    ("residual leading dims", lambda r, h, B, b: (r[:-1], h, B, b), "residual has shape"),
    ("h last dim", lambda r, h, B, b: (r, h[:, :-1], B, b), "h has shape"),
    ("B dims", lambda r, h, B, b: (r, h, B[None], b), "B must be a 2-D tensor"),
    ("bias size", lambda r, h, B, b: (r, h, B, b[:-1]), "bias has shape"),
    ("residual dtype", lambda r, h, B, b: (r.double(), h, B, b), "residual has dtype"),
    ("B dtype", lambda r, h, B, b: (r, h, B.double(), b), "B has dtype"),
    ("bias dtype", lambda r, h, B, b: (r, h, B, b.double()), "bias has dtype"),
    ("h integer", lambda r, h, B, b: (r, h.long(), B, b), "h must be a floating-point tensor"),
]


@pytest.mark.parametrize("desc,mutate,words", BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("mode", ["eager", "fake"])
def test_bad_inputs_name_the_argument(desc, mutate, words, mode):
    args = mutate(*operands((5,), 4, 8, torch.float32, "cpu"))
    with pytest.raises(RuntimeError, match=words):
        call_in_mode(ops.residual_addmm, args, mode)
