"""Tests for the Triton backward of FAVOR+ attention (panther/ops/attention/triton_backward.py)
and its registration as the autograd of torch.ops.panther.favor_attention_triton.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py) on small shapes; the
tests marked ``gpu`` repeat the checks compiled on CUDA at moderate sizes. bf16 runs on the
GPU only: the interpreter's bf16 products are wrong (numpy has no bf16).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.library import opcheck

from panther.ops.attention import favor_attention_reference, favor_attention_triton, triton_available

from .test_attention import _BoundsChecked, inputs, padding_mask

ops = torch.ops.panther

pytestmark = pytest.mark.skipif(not triton_available, reason="needs triton")


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _reference_grads(q, k, v, P, kernel_fn, causal, mask, g):
    """Output and (dq, dk, dv) of the float64 reference formula, by autograd."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    mask = None if mask is None else mask.cpu()
    y = favor_attention_reference(*(t.cpu() for t in leaves), P.detach().double().cpu(), kernel_fn, causal, mask)
    return y.detach(), torch.autograd.grad(y, leaves, g.detach().double().cpu())


def _cpp_grads(q, k, v, P, kernel_fn, causal, mask, g):
    """(dq, dk, dv) of the C++ backward op, in float32."""
    f = [t.float() for t in (g, q, k, v, P)]
    return ops.favor_attention_backward(*f, kernel_fn, causal, mask, 0, [True, True, True])


def assert_grads_close(got, want, tol, what=""):
    """Each gradient within ``tol`` of the largest entry of the wanted one (a factor-of-2 bug in
    any term is far outside), finite everywhere. A gradient that is (about) zero, as dq and dk
    with one key, is measured against 1e-2 of the largest of the three instead."""
    want = [b.detach().double().cpu() for b in want]
    floor = 1e-2 * max(b.abs().max().item() for b in want)
    for name, a, b in zip("qkv", got, want):
        a = a.detach().double().cpu()
        assert torch.isfinite(a).all(), f"{what} d{name} not finite"
        err = (a - b).abs().max().item() / max(b.abs().max().item(), floor, 1e-30)
        assert err < tol, f"{what} d{name}: max error {err:.3g} of the largest entry (tolerance {tol})"


def _backward(*args, **kwargs):
    from panther.ops.attention.triton_backward import favor_backward

    return favor_backward(*args, **kwargs)


# --------------------------------------------------------------------------- the kernels

@pytest.mark.parametrize("kernel_fn", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_triton_backward_matches_float64_reference_and_cpp(kernel_fn, causal, masked):
    """float32, awkward sizes: N and S not multiples of the chunk or the segment (S != N when
    non-causal), Dv = 20 in two value blocks of 16 (partial dq and dk summed), D = 16 != Dv,
    m = 40 features padded to 64, a padding mask that empties a whole chunk of keys (masked
    keys get exactly zero gradients)."""
    q, k, v, P = inputs(N=45, S=45 if causal else 37, D=16, Dv=20, m=40, dtype=torch.float32, device=_device())
    mask = None
    if masked:
        mask = padding_mask(2, k.shape[2], p=0.3)
        mask[1, 16:32] = True
        mask = mask.to(q.device)
    g = torch.randn(2, 2, 45, 20, generator=torch.Generator().manual_seed(1)).to(q.device)
    out, want = _reference_grads(q, k, v, P, kernel_fn, causal, mask, g)
    segments = 3 if masked else 2
    got = _backward(g, q, k, v, P, out.float().to(q.device), kernel_fn, causal, mask, segments=segments,
                    value_block=16)
    assert [t.dtype for t in got] == [torch.float32] * 3
    assert_grads_close(got, want, 2e-5, "vs float64 reference:")
    assert_grads_close(got, _cpp_grads(q, k, v, P, kernel_fn, causal, mask, g), 2e-5, "vs C++ backward:")
    if masked:
        gone = mask[:, None, :, None].expand(-1, 2, -1, 1)
        assert (got[1] * gone).abs().max() == 0 and (got[2] * gone).abs().max() == 0


@pytest.mark.parametrize("masked", [False, True])
def test_triton_backward_causal_stabiliser_large_early_key_norms(masked):
    """Early keys with logits ~150 below the later keys' (as in the forward's test): the causal
    per-position stabiliser keeps every gradient finite and exact, across segments and chunks,
    one value block (Dv = 16)."""
    q, k, v, P = inputs(B=1, N=40, D=16, Dv=16, m=32, dtype=torch.float32, device=_device(), seed=0)
    k[:, :, :21] *= 20
    q = q * 6
    mask = padding_mask(1, 40).to(q.device) if masked else None
    g = torch.randn(1, 2, 40, 16, generator=torch.Generator().manual_seed(2)).to(q.device)
    out, want = _reference_grads(q, k, v, P, "softmax", True, mask, g)
    assert torch.isfinite(out).all()
    for segments in (1, 2):
        got = _backward(g, q, k, v, P, out.float().to(q.device), "softmax", True, mask, segments=segments)
        assert_grads_close(got, want, 2e-4, f"{segments} segments:")


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # the forward's 0/0
@pytest.mark.parametrize("kernel_fn", ["softmax", "relu"])
def test_triton_backward_queries_that_see_no_key(kernel_fn):
    """Causal with the first three keys masked: the first three outputs are 0/0 (NaN, as in the
    C++ op); their gradient rows are 0 and nothing else is touched: the other rows are the
    gradients of the sequence without those three positions."""
    from panther.ops.attention.triton_kernels import favor_forward

    q, k, v, P = inputs(B=1, N=37, D=8, Dv=6, m=16, dtype=torch.float32, device=_device())
    mask = torch.zeros(1, 37, dtype=torch.bool, device=q.device)
    mask[0, :3] = True
    out = favor_forward(q, k, v, P, kernel_fn, True, mask, segments=2)
    assert not torch.isfinite(out[:, :, :3]).any() and torch.isfinite(out[:, :, 3:]).all()
    g = torch.randn(1, 2, 37, 6, generator=torch.Generator().manual_seed(4)).to(q.device)
    got = _backward(g, q, k, v, P, out, kernel_fn, True, mask, segments=2)
    cut = [t[:, :, 3:] for t in (q, k, v)]
    _, want = _reference_grads(*cut, P, kernel_fn, True, None, g[:, :, 3:])
    assert all(t[:, :, :3].abs().max() == 0 for t in got)
    assert_grads_close([t[:, :, 3:] for t in got], want, 2e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_triton_backward_float16(causal):
    """fp16 inputs (products with the backward's float32 quantities in float32): gradients in
    fp16, close to the float64 reference."""
    from panther.ops.attention.triton_kernels import favor_forward

    q, k, v, P = inputs(N=40, S=40 if causal else 29, D=16, Dv=16, m=16, dtype=torch.float32, device=_device())
    g = torch.randn(2, 2, 40, 16, generator=torch.Generator().manual_seed(3)).to(q.device)
    _, want = _reference_grads(q, k, v, P, "softmax", causal, None, g)
    h = [t.half() for t in (q, k, v, P)]
    out = favor_forward(*h, "softmax", causal, None, segments=2)
    got = _backward(g.half(), *h, out, "softmax", causal, None, segments=2)
    assert [t.dtype for t in got] == [torch.float16] * 3
    assert_grads_close(got, want, 2e-2, "fp16:")


def test_triton_backward_only_the_gradients_asked_for():
    q, k, v, P = inputs(N=20, D=8, Dv=6, m=16, dtype=torch.float32, device=_device())
    g = torch.randn(2, 2, 20, 6).to(q.device)
    out, want = _reference_grads(q, k, v, P, "softmax", True, None, g)
    out = out.float().to(q.device)
    for needs in ([True, False, False], [False, True, False], [False, False, True], [False, False, False]):
        got = _backward(g, q, k, v, P, out, "softmax", True, None, needs=needs)
        for name, a, b, need in zip("qkv", got, want, needs):
            if need:
                assert_grads_close([a], [b], 1e-4, f"needs={needs}:")
            else:
                assert a is None, name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks addresses in Triton's interpreter")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N", [1, 97])
def test_triton_backward_every_gpu_config_in_bounds(causal, N):
    """Every GPU autotuner config of the three backward kernels (and of the recomputed state
    kernel) at the benchmark's head dims (D = Dv = 64 in one value block, m = 256), in the
    interpreter with every load and store bounds-checked, on lengths around chunk and segment
    boundaries (1, 2 and 3 segments): exact, and no address outside its tensor."""
    from panther.ops.attention.triton_backward import (
        GPU_DKV_CONFIGS,
        GPU_DQ_CONFIGS,
        GPU_QUERY_STATE_CONFIGS,
        GPU_VALUE_BLOCK,
    )
    from panther.ops.attention.triton_kernels import GPU_STATE_CONFIGS

    q, k, v, P = inputs(B=1, H=1, N=N, D=64, Dv=64, m=256, dtype=torch.float32, seed=N)
    mask = padding_mask(1, N, seed=N) if N > 1 else None
    g = torch.randn(1, 1, N, 64, generator=torch.Generator().manual_seed(N))
    out, want = _reference_grads(q, k, v, P, "softmax", causal, mask, g)
    lists = (GPU_STATE_CONFIGS, GPU_DQ_CONFIGS, GPU_QUERY_STATE_CONFIGS, GPU_DKV_CONFIGS)
    n = max(len(c) for c in lists)
    with _BoundsChecked() as checked:
        for i in range(n):
            configs = tuple(c[i % len(c)] for c in lists)
            segments = (1, 2, 3)[i % 3]
            got = _backward(g, q, k, v, P, out.float(), "softmax", causal, mask, segments=segments,
                            value_block=GPU_VALUE_BLOCK, configs=configs)
            assert_grads_close(got, want, 2e-5, f"{configs}, {segments} segments:")
    assert checked.accesses > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run them")
def test_backward_kernels_compile_for_hopper():
    """The interpreter runs what Triton's compiler refuses (a non-constexpr global inside a
    kernel, say): the three backward kernels compile for sm_90 (tests/compile_hopper.py, one
    GPU config each, causal and not, softmax and relu, with and without a mask)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-m", "tests.compile_hopper"], cwd=Path(__file__).resolve().parents[1],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "0 failed" in r.stdout


# --------------------------------------------------------------------------- the op's autograd

@pytest.mark.skipif(torch.cuda.is_available(), reason="forces the Triton kernels on CPU tensors (the interpreter); "
                    "test_triton_op_cuda_autograd_compile_and_opcheck covers CUDA")
def test_triton_op_autograd_runs_the_triton_backward(monkeypatch):
    """favor_attention_triton's autograd calls favor_attention_triton_backward, which runs the
    Triton backward where the forward runs Triton (forced here on the CPU, in the
    interpreter), with the saved output: gradients as the C++ op's."""
    from panther.ops.attention import triton_backward, triton_op

    calls = []
    real = triton_backward.favor_backward

    def counting(*args, **kwargs):
        calls.append(kwargs.get("launch"))
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_op, "_triton_runs", lambda *a: True)
    monkeypatch.setattr(triton_backward, "favor_backward", counting)
    q, k, v, P = inputs(N=21, D=8, Dv=6, m=16, dtype=torch.float32)
    mask = padding_mask(2, 21)
    for kernel_fn, causal in (("softmax", True), ("relu", False)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        y = favor_attention_triton(*leaves, P, kernel_fn, causal, mask, 0)
        ref = ops.favor_attention(*leaves, P, kernel_fn, causal, mask, 0)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
        g = torch.randn_like(y)
        for name, a, b in zip("qkv", torch.autograd.grad(y, leaves, g), torch.autograd.grad(ref, leaves, g)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"d{name}: {m}")  # noqa: B023
        (dv,) = torch.autograd.grad(favor_attention_triton(q, k, leaves[2], P, kernel_fn, causal, mask, 0).sum(),
                                    leaves[2])
        ref = ops.favor_attention(q, k, leaves[2], P, kernel_fn, causal, mask, 0)
        torch.testing.assert_close(dv, torch.autograd.grad(ref.sum(), leaves[2])[0], rtol=1e-4, atol=1e-5)
    assert len(calls) == 4 and all(c is not None for c in calls)


def test_triton_op_opcheck_with_backward():
    """opcheck of favor_attention_triton with gradients (its autograd, the backward op's fake
    kernel) and of favor_attention_triton_backward itself, on the CPU (the C++ backward inside)."""
    q, k, v, P = inputs(N=10, dtype=torch.float32)
    mask = padding_mask(2, 10)
    opcheck(favor_attention_triton, (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), P, "softmax", True,
                                     mask, 4))
    opcheck(favor_attention_triton, (q, k, v, P, "relu", False, None, 0))
    out = ops.favor_attention(q, k, v, P, "softmax", True, mask, 4).detach()
    g = torch.randn_like(out)
    args = (g, q.detach(), k.detach(), v.detach(), P, out, "softmax", True, mask, 4)
    opcheck(ops.favor_attention_triton_backward, (*args, [True, False, True]))
    dq, dk, dv = ops.favor_attention_triton_backward(*args, [True, False, True])
    assert dk.numel() == 0
    want = ops.favor_attention_backward(*args[:5], *args[6:], [True, False, True])
    torch.testing.assert_close(dq, want[0])
    torch.testing.assert_close(dv, want[2])
    with pytest.raises(RuntimeError, match=r"out has shape .*expected the output shape"):
        ops.favor_attention_triton_backward(*args[:5], out[:, :, :5], *args[6:], [True, True, True])
    with pytest.raises(RuntimeError, match="output_mask must have 3 entries"):
        ops.favor_attention_triton_backward(*args, [True, True])


# --------------------------------------------------------------------------- CUDA

def _cuda_case(N=700, S=None, Dv=48, m=200, seed=0):
    q, k, v, P = inputs(B=2, H=3, N=N, S=S, D=64, Dv=Dv, m=m, dtype=torch.float32, device="cuda", seed=seed)
    g = torch.randn(2, 3, N, Dv, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
    return q, k, v, P, g


@pytest.mark.gpu
@pytest.mark.parametrize("kernel_fn", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_backward_cuda_matches_cpp(kernel_fn, causal, dtype):
    """Compiled on CUDA: the autotuned Triton backward against the C++ backward (float32
    inputs), with a padding mask, Dv = 48 (one block) and S != N when non-causal."""
    from panther.ops.attention.triton_kernels import favor_forward

    q, k, v, P, g = _cuda_case(S=None if causal else 513)
    mask = padding_mask(2, k.shape[2]).cuda()
    lp = [t.to(dtype) for t in (g, q, k, v, P)]
    # the reference sees the same rounded inputs: relu's derivative is a step, so rounding q or k
    # flips features on and off, a difference of the inputs rather than of the backward
    want = _cpp_grads(*lp[1:], kernel_fn, causal, mask, lp[0])
    out = favor_forward(*lp[1:], kernel_fn, causal, mask)
    got = _backward(lp[0], *lp[1:], out, kernel_fn, causal, mask)
    assert [t.dtype for t in got] == [dtype] * 3
    assert_grads_close(got, want, 1e-4 if dtype == torch.float32 else 3e-2, f"{dtype}:")


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_triton_backward_cuda_every_config(causal):
    """Every autotuner config of the backward kernels, compiled, bf16, with a mask, for both
    feature maps, and a value dim of 128 (two value blocks)."""
    from panther.ops.attention.triton_backward import DKV_CONFIGS, DQ_CONFIGS, QUERY_STATE_CONFIGS
    from panther.ops.attention.triton_kernels import STATE_CONFIGS, favor_forward

    for Dv in (48, 128):
        q, k, v, P, g = _cuda_case(Dv=Dv)
        mask = padding_mask(2, 700).cuda()
        lp = [t.bfloat16() for t in (g, q, k, v, P)]
        lists = (STATE_CONFIGS, DQ_CONFIGS, QUERY_STATE_CONFIGS, DKV_CONFIGS)
        n = max(len(c) for c in lists)
        for kernel_fn in ("softmax", "relu"):
            want = _cpp_grads(*lp[1:], kernel_fn, causal, mask, lp[0])  # the same rounded inputs
            out = favor_forward(*lp[1:], kernel_fn, causal, mask)
            for i in range(n):
                configs = tuple(c[i % len(c)] for c in lists)
                got = _backward(lp[0], *lp[1:], out, kernel_fn, causal, mask, configs=configs)
                assert_grads_close(got, want, 3e-2, f"Dv={Dv} {kernel_fn} {configs}:")


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_triton_backward_cuda_large_early_key_norms(causal):
    q, k, v, P = inputs(B=1, N=300, D=64, Dv=64, m=128, dtype=torch.float32, device="cuda", seed=0)
    k[:, :, :150] *= 20
    q = q * 6
    g = torch.randn(1, 2, 300, 64, device="cuda")
    out, want = _reference_grads(q, k, v, P, "softmax", causal, None, g)
    from panther.ops.attention.triton_kernels import favor_forward

    y = favor_forward(q, k, v, P, "softmax", causal)
    torch.testing.assert_close(y.double().cpu(), out, rtol=1e-3, atol=1e-4)
    got = _backward(g, q, k, v, P, y, "softmax", causal)
    assert_grads_close(got, want, 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_triton_op_cuda_autograd_compile_and_opcheck(causal):
    """On CUDA favor_attention_triton's autograd runs the Triton backward (eager and under
    torch.compile with Inductor), and opcheck passes with gradients."""
    q, k, v, P, g = _cuda_case(N=300, Dv=64, m=128)
    mask = padding_mask(2, 300).cuda()
    want = _cpp_grads(q, k, v, P, "softmax", causal, mask, g)
    leaves = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    y = favor_attention_triton(*leaves, P.bfloat16(), "softmax", causal, mask, 0)
    assert_grads_close(torch.autograd.grad(y, leaves, g.bfloat16()), want, 3e-2, "eager:")
    fn = torch.compile(lambda q, k, v: favor_attention_triton(q, k, v, P, "softmax", causal, mask, 0), fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    assert_grads_close(torch.autograd.grad(fn(*leaves), leaves, g), want, 1e-3, "compiled:")
    small = [t[:, :, :64].detach().clone().requires_grad_() for t in (q, k, v)]
    opcheck(favor_attention_triton, (*small, P, "softmax", causal, mask[:, :64], 0))
