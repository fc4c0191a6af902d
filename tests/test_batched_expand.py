"""torch.ops.panther.batched_expand(h, B, bias): G expansions of one shared projection as one GEMM."""

import pytest
import torch
from torch.library import opcheck

from .conftest import DEVICES, call_in_mode, rel_err

ops = torch.ops.panther
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def operands(lead, G, r, N, dtype, device, bias=True, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, device=device, dtype=torch.float64).to(dtype)  # noqa: E731
    return mk(*lead, G * r), mk(G, r, N) / r**0.5, mk(G, N) if bias else None


def reference(h, B, bias):
    """Member g: its columns of h times B[g] (+ bias[g]), in float64, stacked on a new dim 0."""
    G, r, _ = B.shape
    outs = [h.double()[..., g * r:(g + 1) * r] @ B[g].double() for g in range(G)]
    return torch.stack(outs if bias is None else [o + b.double() for o, b in zip(outs, bias)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lead", [(), (7,), (2, 3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_float64_reference_with_gradients(device, dtype, lead, bias):
    h, B, b = operands(lead, 3, 16, 40, dtype, device, bias)
    leaves = [t.requires_grad_() for t in (h, B) + ((b,) if bias else ())]
    y = ops.batched_expand(h, B, b)
    expected = reference(h, B, b)
    assert y.dtype == dtype and y.shape == (3, *lead, 40)
    assert rel_err(y, expected) < TOL[dtype]
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, grad)
    want = torch.autograd.grad(expected, leaves, grad.double())
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == dtype and g.shape == w.shape, i
        assert rel_err(g, w) < TOL[dtype], i


def test_gradcheck_float64():
    leaves = [t.requires_grad_() for t in operands((3, 4), 2, 5, 6, torch.float64, "cpu")]
    assert torch.autograd.gradcheck(ops.batched_expand, leaves)
    assert torch.autograd.gradcheck(ops.batched_expand, leaves[:2] + [None])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(device, bias):
    h, B, b = operands((4, 6), 3, 8, 16, torch.float32, device, bias)
    opcheck(ops.batched_expand, (h, B, b))
    opcheck(ops.batched_expand, (h.requires_grad_(), B.requires_grad_(), b.requires_grad_() if bias else None))



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_compile_fullgraph_forward_and_backward_equal_eager(device, bias):
    torch.compiler.reset()
    leaves = [t.requires_grad_() for t in operands((2, 5), 3, 8, 16, torch.float32, device, bias) if t is not None]
    args = leaves if bias else [*leaves, None]
    eager = ops.batched_expand(*args)
    compiled = torch.compile(lambda *a: ops.batched_expand(*a), fullgraph=True)(*args)
    torch.testing.assert_close(compiled, eager)
    grad = torch.randn_like(eager)
    for got, want in zip(torch.autograd.grad(compiled, leaves, grad), torch.autograd.grad(eager, leaves, grad)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_one_member_and_empty_operands(device, dtype):
    """h a column slice of a wider product, B with transposed matrices, a single member, zero rows."""
    h, B, b = operands((9,), 3, 16, 32, dtype, device)
    wide = torch.randn(9, 64, device=device, dtype=dtype)
    cases = {"h sliced": (wide[:, 8:56], B, b),
             "B transposed": (h, B.transpose(1, 2).contiguous().transpose(1, 2), b),
             "bias rows strided": (h, B, torch.randn(3, 64, device=device, dtype=dtype)[:, ::2]),
             "one member": (h[:, :16], B[:1], b[:1])}
    for name, (h_, B_, b_) in cases.items():
        assert rel_err(ops.batched_expand(h_, B_, b_), reference(h_, B_, b_)) < TOL[dtype], name
    assert ops.batched_expand(h[:0], B, b).shape == (3, 0, 32)


BAD = [
    ("h last dim", lambda h, B, b: (h[:, :-1], B, b), "h has shape"),
    ("B dims", lambda h, B, b: (h, B[0], b), "B must be a 3-D tensor"),
    ("no member", lambda h, B, b: (h[:, :0], B[:0], None), "at least one member"),
    ("bias members", lambda h, B, b: (h, B, b[:-1]), "bias has shape"),
    ("bias size", lambda h, B, b: (h, B, b[:, :-1]), "bias has shape"),
    ("bias dims", lambda h, B, b: (h, B, b[0]), "bias must be a 2-D tensor"),
    ("B dtype", lambda h, B, b: (h, B.double(), b), "B has dtype"),
    ("bias dtype", lambda h, B, b: (h, B, b.double()), "bias has dtype"),
    ("h integer", lambda h, B, b: (h.long(), B, b), "h must be a floating-point tensor"),
]


@pytest.mark.parametrize("desc,mutate,words", BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("mode", ["eager", "fake"])
def test_bad_inputs_name_the_argument(desc, mutate, words, mode):
    args = mutate(*operands((5,), 3, 4, 8, torch.float32, "cpu"))
    with pytest.raises(RuntimeError, match=words):
        call_in_mode(ops.batched_expand, args, mode)
