"""Tests for torch.ops.panther.favor_attention(_triton), RandMultiHeadAttention and make_performer."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.library import opcheck

import panther as pr
from panther.ops.attention import (
    favor_attention_plain,
    favor_attention_reference,
    favor_attention_triton,
    orthogonal_random_features,
    triton_available,
)

from .conftest import DEVICES

ops = torch.ops.panther


def inputs(B=2, H=2, N=19, S=None, D=8, Dv=6, m=16, dtype=torch.float64, device="cpu", scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = N if S is None else S
    q = (torch.randn(B, H, N, D, generator=g, dtype=dtype) * scale).to(device)
    k = (torch.randn(B, H, S, D, generator=g, dtype=dtype) * scale).to(device)
    v = torch.randn(B, H, S, Dv, generator=g, dtype=dtype).to(device)
    P = orthogonal_random_features(m, D, generator=g, dtype=dtype, device=device)
    return q, k, v, P


def padding_mask(B, S, seed=0, p=0.3):
    mask = torch.rand(B, S, generator=torch.Generator().manual_seed(seed)) < p
    mask[:, 0] = False  # every query keeps at least one key (causal: the first)
    return mask


# --------------------------------------------------------------------------- op vs references

@pytest.mark.parametrize("kernel_fn", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_op_matches_float64_reference_values_and_grads(kernel_fn, causal, masked):
    q, k, v, P = inputs(N=37, S=37 if causal else 23)
    mask = padding_mask(2, k.shape[2]) if masked else None
    leaves = [t.requires_grad_() for t in (q, k, v)]
    y = ops.favor_attention(q, k, v, P, kernel_fn, causal, mask, 8)  # 5 chunks, the last partial
    ref = favor_attention_reference(q, k, v, P, kernel_fn, causal, mask)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    for name, a, b in zip("qkv", torch.autograd.grad(y, leaves, g), torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_causal_chunk_size_does_not_change_result(chunk):
    q, k, v, P = inputs(N=21)
    want = favor_attention_reference(q, k, v, P, "softmax", True)
    torch.testing.assert_close(ops.favor_attention(q, k, v, P, "softmax", True, None, chunk), want)


def test_stabiliser_handles_large_norms():
    """Queries with |q'|^2/2 ~ 200 underflow exp() in float32 without the FAVOR+ max subtraction."""
    q, k, v, P = inputs(N=16, dtype=torch.float32)
    q = q / q.norm(dim=-1, keepdim=True) * 20 * 8 ** 0.25  # |q'| = 20 after the D^-1/4 scaling
    k = k * 4
    unstabilised = favor_attention_reference(q, k, v, P, "softmax", False)
    assert not torch.isfinite(unstabilised).all()  # 0 / 0: what the stabiliser prevents
    for causal in (False, True):
        y = ops.favor_attention(q, k, v, P, "softmax", causal, None, 4)
        ref = favor_attention_reference(q.double(), k.double(), v.double(), P.double(), "softmax", causal)
        torch.testing.assert_close(y.double(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("chunk", [4, 64])
@pytest.mark.parametrize("masked", [False, True])
def test_causal_stabiliser_large_early_key_norms(chunk, masked):
    """Early keys with logits ~150 below the later keys': one constant over all keys
    underflows every feature an early query sees (0/0 in float32). The causal per-position
    stabiliser keeps values and gradients finite and exact, across chunks (4) and within one
    (64), with masked keys."""
    q, k, v, P = inputs(B=1, N=40, D=16, Dv=16, m=32, dtype=torch.float32, seed=0)
    k[:, :, :21] *= 20
    q = q * 6
    mask = padding_mask(1, 40) if masked else None
    leaves = [t.requires_grad_() for t in (q, k, v)]
    y = ops.favor_attention(q, k, v, P, "softmax", True, mask, chunk)
    ref = favor_attention_reference(*(t.double() for t in (q, k, v, P)), "softmax", True, mask)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(y.double(), ref, rtol=1e-3, atol=1e-4)
    g = torch.randn_like(y)
    for name, a, b in zip("qkv", torch.autograd.grad(y, leaves, g), torch.autograd.grad(ref, leaves, g.double())):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.double(), b.double(), rtol=2e-3, atol=2e-3, msg=lambda m: f"grad {name}: {m}")


def test_gradcheck():
    q, k, v, P = inputs(B=1, H=1, N=6, D=4, Dv=3, m=8)
    mask = torch.tensor([[False, True, False, False, True, False]])
    for causal in (False, True):
        for kernel_fn in ("softmax", "relu"):
            fn = lambda q, k, v: ops.favor_attention(q, k, v, P, kernel_fn, causal, mask, 4)  # noqa: B023,E731
            assert torch.autograd.gradcheck(fn, (q.requires_grad_(), k.requires_grad_(), v.requires_grad_()))


def test_softmax_estimator_converges_to_exact_attention():
    """FAVOR+ error vs F.scaled_dot_product_attention falls as the number of features grows."""
    q, k, v, _ = inputs(B=2, H=2, N=32, D=16, Dv=16, scale=0.6, dtype=torch.float64)
    exact = F.scaled_dot_product_attention(q, k, v)
    errors = []
    for m in (16, 256, 4096):
        errs = []
        for seed in range(3):
            P = orthogonal_random_features(m, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            y = ops.favor_attention(q, k, v, P, "softmax", False, None, 0)
            errs.append(((y - exact).norm() / exact.norm()).item())
        errors.append(sum(errs) / len(errs))
    assert errors[0] > errors[1] > errors[2], errors
    # Monte-Carlo error ~ m^-1/2: 256x more features should cut it ~16x (a biased estimator stalls)
    assert errors[0] > 6 * errors[2] and errors[2] < 0.12, errors
    # the causal estimate converges to causal softmax attention the same way
    P = orthogonal_random_features(4096, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact_c = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y_c = ops.favor_attention(q, k, v, P, "softmax", True, None, 8)
    assert ((y_c - exact_c).norm() / exact_c.norm()).item() < 0.12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_half_inputs_accumulate_in_float32(dtype, causal):
    q, k, v, P = inputs(N=40, D=16, Dv=16, m=32, dtype=torch.float32)
    want = favor_attention_reference(*(t.double() for t in (q, k, v, P)), "softmax", causal)
    got = ops.favor_attention(*(t.to(dtype) for t in (q, k, v, P)), "softmax", causal, None, 16)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=3e-2, atol=3e-2)
    q.requires_grad_()
    y = ops.favor_attention(*(t.to(dtype) for t in (q, k, v, P)), "softmax", causal, None, 16)
    (dq,) = torch.autograd.grad(y.float().sum(), q)
    assert torch.isfinite(dq).all()


def test_plain_pytorch_baseline_matches():
    q, k, v, P = inputs(N=24, dtype=torch.float32)
    for causal in (False, True):
        torch.testing.assert_close(favor_attention_plain(q, k, v, P, "softmax", causal),
                                   ops.favor_attention(q, k, v, P, "softmax", causal, None, 8), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    q, k, v, P = inputs(N=10, dtype=torch.float32, device=device)
    mask = padding_mask(2, 10).to(device)
    opcheck(ops.favor_attention, (q, k, v, P, "softmax", False, None, 0))
    opcheck(ops.favor_attention, (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), P, "softmax", True,
                                  mask, 4))
    opcheck(ops.favor_attention, (q, k, v, P, "relu", True, None, 3))
    g = torch.randn(2, 2, 10, 6, device=device)
    opcheck(ops.favor_attention_backward, (g, q.detach(), k.detach(), v.detach(), P, "softmax", True, mask, 4,
                                           [True, False, True]))


def test_bad_arguments_raise_clear_errors():
    q, k, v, P = inputs(N=8, S=6, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="causal attention needs as many queries as keys"):
        ops.favor_attention(q, k, v, P, "softmax", True, None, 0)
    with pytest.raises(RuntimeError, match="kernel_fn must be one of"):
        ops.favor_attention(q, k, v, P, "gelu", False, None, 0)
    with pytest.raises(RuntimeError, match=r"projection has shape .*head dim"):
        ops.favor_attention(q, k, v, P[:, :4], "softmax", False, None, 0)
    with pytest.raises(RuntimeError, match=r"v has shape .*key length"):
        ops.favor_attention(q, k, v[:, :, :5], P, "softmax", False, None, 0)
    with pytest.raises(RuntimeError, match="key_padding_mask must be a bool tensor"):
        ops.favor_attention(q, k, v, P, "softmax", False, torch.zeros(2, 6), 0)
    with pytest.raises(RuntimeError, match=r"key_padding_mask has shape .*key length"):
        ops.favor_attention(q, k, v, P, "softmax", False, torch.zeros(2, 8, dtype=torch.bool), 0)
    with pytest.raises(RuntimeError, match="k has dtype"):
        ops.favor_attention(q, k.double(), v, P, "softmax", False, None, 0)


# --------------------------------------------------------------------------- Triton kernels

needs_triton = pytest.mark.skipif(not triton_available, reason="needs triton")


def _configs(bf, bn, chunk, bdv, causal):
    """(key pass, output) configs: the key pass is the walk kernel's (causal: key blocks of bn,
    bdv value dims) or the state kernel's (bf features, bn keys)."""
    import triton

    keys = {"BLOCK_N": bn, "BDV": bdv} if causal else {"BF": bf, "BLOCK_N": bn}
    return (triton.Config(keys, num_warps=4, num_stages=1),
            triton.Config({"CHUNK": chunk, "BDV": bdv}, num_warps=4, num_stages=1))


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@needs_triton
@pytest.mark.parametrize("kernel_fn", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("segments", [1, 3])
@pytest.mark.parametrize("state_len", [16, 32])
def test_triton_kernels_match_reference(kernel_fn, causal, masked, segments, state_len):
    """The Triton kernels themselves (interpreted on CPU, compiled on GPU), on awkward sizes:
    N and S not multiples of the chunk or the segment, m = 40 features in blocks of 16 and
    padded to 64, Dv = 20 in blocks of 16, a padding mask that empties whole chunks. Causal:
    a stored state every 16 keys (one key block per chunk) or every 32 (two, the first
    unmasked), one segment (no entering state) or several."""
    from panther.ops.attention.triton_kernels import favor_forward

    if not causal and state_len != 16:
        pytest.skip("state_len is causal only")
    q, k, v, P = inputs(N=45, S=45 if causal else 37, D=16, Dv=20, m=40, dtype=torch.float32, device=_device())
    mask = None
    if masked:
        mask = padding_mask(2, k.shape[2], p=0.3)
        mask[1, 16:32] = True  # a whole chunk of keys masked
        mask = mask.to(q.device)
    got = favor_forward(q, k, v, P, kernel_fn, causal, mask, segments=segments, state_len=state_len,
                        configs=_configs(16, 16, 16, 16, causal))
    want = favor_attention_reference(*(t.double() for t in (q, k, v, P)), kernel_fn, causal, mask)
    torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=1e-4, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
def test_triton_kernels_larger_tiles(causal):
    """Tiles larger than the sizes (BF > m, BDV > Dv, chunk > segment) only mask more."""
    from panther.ops.attention.triton_kernels import favor_forward

    q, k, v, P = inputs(N=50, D=8, Dv=6, m=24, dtype=torch.float32, device=_device())
    want = favor_attention_reference(*(t.double() for t in (q, k, v, P)), "softmax", causal)
    for configs in (_configs(32, 32, 32, 32, causal), _configs(64, 16, 64, 16, causal)):
        got = favor_forward(q, k, v, P, "softmax", causal, None, segments=2, state_len=64, configs=configs)
        torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=1e-4, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
def test_triton_stabiliser_large_norms(causal):
    """Early keys with large norms have logits ~150 below the later keys': a stabiliser taken
    over all keys (or all keys of a chunk) underflows every feature an early query sees
    (0/0). The kernels' causal per-position stabiliser keeps every output finite and exact."""
    from panther.ops.attention.triton_kernels import favor_forward

    q, k, v, P = inputs(B=1, N=40, D=16, Dv=16, m=32, dtype=torch.float32, device=_device(), seed=0)
    k[:, :, :21] *= 20  # |k'| ~ 20: logits about -160 for these keys, about 0 for the rest
    q = q * 6
    want = favor_attention_reference(*(t.double() for t in (q, k, v, P)), "softmax", causal)
    assert torch.isfinite(want).all()
    for segments, state_len in ((1, 16), (2, 16), (1, 32)):
        got = favor_forward(q, k, v, P, "softmax", causal, None, segments=segments, state_len=state_len,
                            configs=_configs(16, 16, 16, 16, causal))
        torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=1e-3, atol=1e-4)


@needs_triton
@pytest.mark.parametrize("large", ["first", "second"])
@pytest.mark.parametrize("segments, state_len", [(2, 16), (2, 32), (4, 16)])
def test_triton_causal_stored_and_entering_states_far_apart(large, segments, state_len):
    """Causal, keys in two halves whose logits lie ~150 apart (the first or the second half
    with large norms): the state entering a segment and the stored state within it have
    stabilisers far apart, either way round (one of the two scales underflows to 0 when
    both are brought to the larger), and every query still matches the float64 reference."""
    from panther.ops.attention.triton_kernels import favor_forward

    q, k, v, P = inputs(B=1, N=64, D=16, Dv=16, m=32, dtype=torch.float32, device=_device(), seed=3)
    half = slice(0, 32) if large == "first" else slice(32, 64)
    k[:, :, half] *= 20
    q = q * 6
    want = favor_attention_reference(*(t.double() for t in (q, k, v, P)), "softmax", True)
    assert torch.isfinite(want).all()
    got = favor_forward(q, k, v, P, "softmax", True, None, segments=segments, state_len=state_len,
                        configs=_configs(16, 16, 16, 16, True))
    torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=1e-3, atol=1e-4)


@needs_triton
def test_triton_state_len_must_divide_into_blocks():
    from panther.ops.attention.triton_kernels import favor_forward

    q, k, v, P = inputs(N=40, D=16, Dv=16, m=16, dtype=torch.float32, device=_device())
    with pytest.raises(ValueError, match="state_len=24 must be a multiple of every CHUNK"):
        favor_forward(q, k, v, P, "softmax", True, None, state_len=24, configs=_configs(16, 16, 16, 16, True))


class _BoundsChecked:
    """Triton's interpreter with every masked-in load and store checked against the extent of
    the kernel's tensor arguments: an out-of-bounds address raises instead of reading or
    writing a neighbouring allocation (which a GPU reports as an illegal memory access)."""

    def __enter__(self):
        from triton.runtime import interpreter as interp

        self.interp, self.ranges, self.accesses = interp, [], 0
        b, g = interp.InterpreterBuilder, interp.GridExecutor
        self.saved = (b.create_masked_load, b.create_masked_store, g._init_args_hst)
        load, store, init = self.saved
        check = self._check

        def init_args(executor, args_dev, kwargs):
            args_hst, kwargs_hst = init(executor, args_dev, kwargs)
            self.ranges = []
            for arg in [*args_hst, *kwargs_hst.values()]:
                if isinstance(arg, torch.Tensor) and arg.numel():
                    last = sum((n - 1) * st for n, st in zip(arg.shape, arg.stride()))
                    lo = arg.data_ptr()
                    self.ranges.append((lo, lo + (last + 1) * arg.element_size()))
            return args_hst, kwargs_hst

        def masked_load(builder, ptrs, mask, other, *a):
            check(ptrs, mask)
            return load(builder, ptrs, mask, other, *a)

        def masked_store(builder, ptrs, value, mask, *a):
            check(ptrs, mask)
            return store(builder, ptrs, value, mask, *a)

        b.create_masked_load, b.create_masked_store, g._init_args_hst = masked_load, masked_store, init_args
        return self

    def _check(self, ptrs, mask):
        import numpy as np

        addr = np.broadcast_to(ptrs.data, np.broadcast_shapes(ptrs.data.shape, mask.data.shape))
        addr = addr[np.broadcast_to(mask.data, addr.shape)].astype(np.int64)
        if addr.size == 0:
            return
        self.accesses += addr.size
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        inside = np.zeros(addr.shape, dtype=bool)
        for lo, hi in self.ranges:
            inside |= (addr >= lo) & (addr + size <= hi)
        if not inside.all():
            bad = addr[~inside][:4]
            raise AssertionError(f"out-of-bounds addresses {bad.tolist()} (arguments span {self.ranges})")

    def __exit__(self, *exc):
        b, g = self.interp.InterpreterBuilder, self.interp.GridExecutor
        b.create_masked_load, b.create_masked_store, g._init_args_hst = self.saved


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks addresses in Triton's interpreter")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N", [1, 63, 65, 130])
def test_triton_every_gpu_config_in_bounds(causal, N):
    """Every GPU autotuner config at the benchmark's head dims (D = Dv = 64, m = 256), in the
    interpreter with every load and store bounds-checked, on lengths around chunk and
    segment boundaries (1, 3 and 5 segments): exact, and no address outside its tensor."""
    from panther.ops.attention.triton_kernels import (
        GPU_STATE_CONFIGS,
        GPU_STATE_LEN,
        GPU_WALK_CONFIGS,
        favor_forward,
        output_configs,
    )

    q, k, v, P = inputs(B=1, H=2, N=N, D=64, Dv=64, m=256, dtype=torch.float32, seed=N)
    mask = padding_mask(1, N, seed=N) if N > 1 else None
    want = favor_attention_reference(*(t.double() for t in (q, k, v, P)), "softmax", causal, mask)
    keys = GPU_WALK_CONFIGS if causal else GPU_STATE_CONFIGS
    outputs = output_configs(causal, gpu=True)
    n = max(len(keys), len(outputs))
    pairs = [(keys[i % len(keys)], outputs[i % len(outputs)]) for i in range(n)]
    with _BoundsChecked() as checked:
        for i, configs in enumerate(pairs):
            segments = (1, 3, 5)[i % 3]
            # causal: a state every GPU_STATE_LEN keys (the default, 64: the smallest interval the GPU
            # configs allow) and every 128: lengths 63 to 130 then span one to three intervals
            state_len = (GPU_STATE_LEN, 128)[i % 2] if causal else 0
            got = favor_forward(q, k, v, P, "softmax", causal, mask, segments=segments, state_len=state_len,
                                configs=configs)
            what = f"{configs}, {segments} segments, state_len {state_len}"
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"{what}: {m}")  # noqa: B023
    assert checked.accesses > 0


@needs_triton
def test_triton_kernels_float16():
    from panther.ops.attention.triton_kernels import favor_forward

    q, k, v, P = inputs(N=40, D=16, Dv=16, m=16, dtype=torch.float32, device=_device())
    for causal in (False, True):
        want = favor_attention_reference(*(t.double() for t in (q, k, v, P)), "softmax", causal)
        got = favor_forward(*(t.half() for t in (q, k, v, P)), "softmax", causal, None, segments=2)
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=2e-2, atol=2e-2)


@needs_triton
def test_triton_kernels_reject_too_many_features():
    from panther.ops.attention.triton_kernels import favor_forward

    q, k, v, P = inputs(N=8, D=8, m=300, dtype=torch.float32)
    with pytest.raises(ValueError, match="300 random features"):
        favor_forward(q, k, v, P, "softmax", False)


@needs_triton
def test_triton_op_falls_back_on_cpu_and_has_autograd():
    q, k, v, P = inputs(N=12, dtype=torch.float32)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    y = favor_attention_triton(q, k, v, P, "softmax", True, None, 4)
    ref = ops.favor_attention(q, k, v, P, "softmax", True, None, 4)
    torch.testing.assert_close(y, ref)
    for a, b in zip(torch.autograd.grad(y.sum(), leaves), torch.autograd.grad(ref.sum(), leaves)):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("m", [128, 256])
def test_triton_op_cuda_bf16_compile(causal, m):
    q, k, v, P = inputs(B=2, H=4, N=1000, D=64, Dv=64, m=m, dtype=torch.float32, device="cuda")
    want = ops.favor_attention(q, k, v, P, "softmax", causal, None, 0)
    got = favor_attention_triton(*(t.bfloat16() for t in (q, k, v, P)), "softmax", causal, None, 0)
    torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2)
    fn = torch.compile(lambda *a: favor_attention_triton(*a, "softmax", causal, None, 0), fullgraph=True)
    torch.testing.assert_close(fn(q, k, v, P), want, rtol=1e-2, atol=1e-2)
    opcheck(favor_attention_triton, (q[:, :, :64], k[:, :, :64], v[:, :, :64], P, "softmax", causal, None, 0))


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_triton_every_config_cuda(causal):
    """Every pair of key and output configs that runs in this mode, compiled, in bf16, softmax and
    relu, at two shapes: m = 200 with a padding mask, and m = 128 (no padded features), where
    Triton 3.6 on the H200 miscompiled a 4-warp output config non-causal and an 8-warp one causal
    (outputs off by several times their size; those configs now run in the other mode only)."""
    from panther.ops.attention.triton_kernels import STATE_CONFIGS, WALK_CONFIGS, favor_forward, output_configs

    keys = WALK_CONFIGS if causal else STATE_CONFIGS
    pairs = [(key, out) for key in keys for out in output_configs(causal)]
    for N, Dv, m, masked in ((700, 48, 200, True), (1000, 64, 128, False)):
        q, k, v, P = inputs(B=2, H=4, N=N, D=64, Dv=Dv, m=m, dtype=torch.float32, device="cuda")
        mask = padding_mask(2, N).cuda() if masked else None
        lp = [t.bfloat16() for t in (q, k, v, P)]
        for kernel_fn in ("softmax", "relu"):
            want = ops.favor_attention(q, k, v, P, kernel_fn, causal, mask, 0)
            for configs in pairs:
                got = favor_forward(*lp, kernel_fn, causal, mask, configs=configs)
                torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2,
                                           msg=lambda msg: f"N={N} m={m} {configs}: {msg}")  # noqa: B023


def test_output_configs_exclude_the_miscompiled_mode():
    from panther.ops.attention import triton_kernels as tk

    causal, noncausal = tk.output_configs(True, gpu=True), tk.output_configs(False, gpu=True)
    assert tk.GPU_OUTPUT_CONFIGS[0] in causal and tk.GPU_OUTPUT_CONFIGS[0] not in noncausal
    assert tk.GPU_OUTPUT_CONFIGS[1] in noncausal and tk.GPU_OUTPUT_CONFIGS[1] not in causal
    q, k, v, P = inputs(B=1, H=1, N=8, D=8, Dv=8, m=16, dtype=torch.float32)
    with pytest.raises(ValueError, match="does not run non-causal"):
        tk.favor_forward(q, k, v, P, "softmax", False, configs=(tk.STATE_CONFIGS[0], tk.GPU_OUTPUT_CONFIGS[0]))


@pytest.mark.gpu
def test_triton_op_cuda_falls_back_beyond_its_tiles():
    q, k, v, P = inputs(B=1, H=2, N=100, D=64, Dv=64, m=300, dtype=torch.float32, device="cuda")
    torch.testing.assert_close(favor_attention_triton(q, k, v, P, "softmax", True, None, 0),
                               ops.favor_attention(q, k, v, P, "softmax", True, None, 0))


# --------------------------------------------------------------------------- layer

def test_seed_examples_run_as_written():
    attention = pr.nn.RandMultiHeadAttention(embed_dim=512, num_heads=8, sketch_dim=64, dropout=0.1)
    x = torch.randn(10, 32, 512)  # (seq_len, batch, embed_dim) in the docs; batch-first here
    output, attn_weights = attention(x, x, x)
    assert output.shape == (10, 32, 512) and attn_weights is None
    layer = pr.nn.RandMultiHeadAttention(embed_dim=64, num_heads=8, num_random_features=32, dropout=0.1,
                                         kernel_fn="softmax", iscausal=False)
    out, _ = layer(torch.randn(3, 20, 64), torch.randn(3, 20, 64), torch.randn(3, 20, 64))
    assert out.shape == (3, 20, 64)


def test_layer_attributes_and_bad_arguments():
    layer = pr.nn.RandMultiHeadAttention(32, 4, 16, bias=False, kernel_fn="relu", iscausal=True)
    assert layer.projection_matrix.shape == (16, 8) and layer.causal and layer.iscausal and layer.bq is None
    assert {"Wq", "Wk", "Wv", "W0"} <= dict(layer.named_parameters()).keys()
    with pytest.raises(ValueError, match="embed_dim=30 must be divisible by num_heads=4"):
        pr.nn.RandMultiHeadAttention(30, 4, 16)
    with pytest.raises(ValueError, match=r"dropout must be a float in \[0, 1\)"):
        pr.nn.RandMultiHeadAttention(32, 4, 16, dropout=1.0)
    with pytest.raises(ValueError, match="kernel_fn must be one of"):
        pr.nn.RandMultiHeadAttention(32, 4, 16, kernel_fn="gelu")
    with pytest.raises(TypeError, match="needs num_random_features"):
        pr.nn.RandMultiHeadAttention(32, 4)
    with pytest.raises(TypeError, match="iscausal must be a bool"):
        pr.nn.RandMultiHeadAttention(32, 4, 16, iscausal=1)
    x = torch.randn(2, 5, 32)
    with pytest.raises(ValueError, match="query, key, value must end in"):
        layer(x, torch.randn(2, 5, 16), x)
    with pytest.raises(ValueError, match="causal attention needs as many queries as keys"):
        layer(x, torch.randn(2, 6, 32), torch.randn(2, 6, 32))


def test_projection_from_generator_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = pr.nn.RandMultiHeadAttention(32, 4, 16, generator=torch.Generator().manual_seed(1))
    b = pr.nn.RandMultiHeadAttention(32, 4, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.projection_matrix, b.projection_matrix) and torch.equal(a.Wq, b.Wq)
    torch.manual_seed(0)
    c = pr.nn.RandMultiHeadAttention(32, 4, 16)
    torch.manual_seed(1)
    d = pr.nn.RandMultiHeadAttention(32, 4, 16)
    assert not torch.equal(c.projection_matrix, d.projection_matrix)  # the earlier seed-42 reset is gone
    old = a.projection_matrix.clone()
    a.redraw_projection(torch.Generator().manual_seed(2))
    assert not torch.equal(old, a.projection_matrix)


def test_orthogonal_features_are_orthogonal_blocks_with_gaussian_norms():
    P = orthogonal_random_features(40, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    block = P[:16] / P[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(16, dtype=torch.float64))
    big = orthogonal_random_features(4000, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(big.square().sum(1).mean().item() / 16 - 1) < 0.05  # E|w|^2 = d, as for N(0, I) rows


def test_dropout_applies_in_training_only():
    layer = pr.nn.RandMultiHeadAttention(32, 4, 16, dropout=0.5)
    x = torch.randn(2, 12, 32)
    layer.train()
    assert not torch.allclose(layer(x, x, x)[0], layer(x, x, x)[0])
    layer.eval()
    torch.testing.assert_close(layer(x, x, x)[0], layer(x, x, x)[0])
    # dropout is unbiased: the mean over many draws approaches the eval output
    layer.train()
    torch.manual_seed(0)
    mean = torch.stack([layer(x, x, x)[0] for _ in range(200)]).mean(0)
    layer.eval()
    ev = layer(x, x, x)[0]
    assert ((mean - ev).norm() / ev.norm()).item() < 0.1


def _with_mha_layer(batch_first, kdim=None, bias=True):
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first, kdim=kdim, vdim=kdim, bias=bias, dtype=torch.float64)
    perf = pr.nn.make_performer(mha, 4096, "softmax", False, generator=torch.Generator().manual_seed(0))
    return mha, perf


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 24])
def test_make_performer_keeps_weights_and_approximates_mha(batch_first, kdim):
    mha, perf = _with_mha_layer(batch_first, kdim)
    mha.eval()
    perf.eval()
    E = 32
    wq = mha.in_proj_weight[:E] if kdim is None else mha.q_proj_weight
    torch.testing.assert_close(perf.Wq, wq)
    torch.testing.assert_close(perf.W0, mha.out_proj.weight)
    torch.testing.assert_close(perf.bv, mha.in_proj_bias[2 * E:])
    assert perf.batch_first == batch_first and perf.Wk.data_ptr() != mha.out_proj.weight.data_ptr()
    kd = kdim or E
    shape = (2, 10) if batch_first else (10, 2)
    x = torch.randn(*shape, E, dtype=torch.float64) * 0.3
    kv = torch.randn(*shape, kd, dtype=torch.float64) * 0.3
    with torch.no_grad():
        want, _ = mha(x, kv, kv)
        got, weights = perf(x, kv, kv)
    assert weights is None and got.shape == want.shape
    assert ((got - want).norm() / want.norm()).item() < 0.1  # 4096 features: close to exact softmax


def test_make_performer_rejects_unsupported():
    with pytest.raises(ValueError, match="add_bias_kv"):
        pr.nn.make_performer(nn.MultiheadAttention(16, 2, add_bias_kv=True), 8)
    with pytest.raises(TypeError, match="mha must be a torch.nn.MultiheadAttention"):
        pr.nn.make_performer(nn.Linear(2, 2), 8)
    mha = nn.MultiheadAttention(16, 2, bias=False)
    perf = pr.nn.make_performer(mha, 8, "relu", True)
    assert perf.bq is None and perf.b0 is None and perf.kernel_fn == "relu" and perf.causal


def _layer_pair():
    layer = pr.nn.RandMultiHeadAttention(16, 2, 2048, dtype=torch.float64,
                                         generator=torch.Generator().manual_seed(0)).eval()
    mha = nn.MultiheadAttention(16, 2, batch_first=True, dtype=torch.float64).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([layer.Wq, layer.Wk, layer.Wv]))
        mha.in_proj_bias.zero_()
        mha.out_proj.weight.copy_(layer.W0)
        mha.out_proj.bias.zero_()
    return layer, mha


def test_masks_follow_multihead_attention_convention():
    """True = masked out, like nn.MultiheadAttention: compare against exact attention."""
    layer, mha = _layer_pair()
    B, L = 2, 9
    x = torch.randn(B, L, 16, dtype=torch.float64) * 0.3
    pad = padding_mask(B, L, seed=3, p=0.4)
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    with torch.no_grad():
        cases = [
            (dict(key_padding_mask=pad), dict(key_padding_mask=pad)),
            (dict(attention_mask=pad[:, None, :].expand(B, L, L)), dict(key_padding_mask=pad)),
            (dict(attention_mask=causal), dict(attn_mask=causal)),
            (dict(attention_mask=causal[None] | pad[:, None, :]), dict(attn_mask=causal, key_padding_mask=pad)),
        ]
        for ours, theirs in cases:
            got = layer(x, x, x, **ours)[0]
            want = mha(x, x, x, need_weights=False, **theirs)[0]
            assert ((got - want).norm() / want.norm()).item() < 0.1, ours.keys()
        # an all-False mask is no mask
        torch.testing.assert_close(layer(x, x, x, attention_mask=torch.zeros(L, L, dtype=torch.bool))[0],
                                   layer(x, x, x)[0])


def test_unsupported_masks_raise():
    layer = pr.nn.RandMultiHeadAttention(16, 2, 8)
    x = torch.randn(2, 5, 16)
    arbitrary = torch.zeros(5, 5, dtype=torch.bool)
    arbitrary[1, 3] = True
    with pytest.raises(ValueError, match="pattern random-feature attention cannot apply"):
        layer(x, x, x, attention_mask=arbitrary)
    with pytest.raises(TypeError, match="attention_mask must be a bool tensor"):
        layer(x, x, x, attention_mask=torch.zeros(5, 5))
    with pytest.raises(ValueError, match=r"attention_mask must have shape"):
        layer(x, x, x, attention_mask=torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape"):
        layer(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("iscausal", [False, True])
def test_layer_compile_fullgraph_and_backward(iscausal):
    layer = pr.nn.RandMultiHeadAttention(16, 2, 8, iscausal=iscausal, chunk_size=4)
    x = torch.randn(2, 10, 16, requires_grad=True)
    pad = padding_mask(2, 10)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x, x, x, key_padding_mask=pad)[0]
    torch.testing.assert_close(y, layer(x, x, x, key_padding_mask=pad)[0])
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gx_eager,) = torch.autograd.grad(layer(x, x, x, key_padding_mask=pad)[0].sum(), x)
    torch.testing.assert_close(gx, gx_eager)


def test_layer_compile_inductor_and_export():
    layer = pr.nn.RandMultiHeadAttention(16, 2, 8, iscausal=True).eval()
    x = torch.randn(2, 10, 16)
    want = layer(x, x, x)[0]
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x, x, x)[0], want)
    ep = torch.export.export(layer, (x, x, x))
    assert any("favor_attention" in str(n.target) for n in ep.graph.nodes)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "rmha.pt2")
        torch.export.save(ep, path)
        loaded = torch.export.load(path)
    torch.testing.assert_close(loaded.module()(x, x, x)[0], want)


@pytest.mark.gpu
def test_layer_cuda_matches_cpu():
    layer = pr.nn.RandMultiHeadAttention(64, 4, 64, iscausal=True).eval()
    x = torch.randn(2, 300, 64)
    want = layer(x, x, x)[0]
    got = layer.cuda()(x.cuda(), x.cuda(), x.cuda())[0]
    torch.testing.assert_close(got.cpu(), want, rtol=2e-3, atol=2e-3)


def test_autocast_layer_and_op():
    layer = pr.nn.RandMultiHeadAttention(32, 4, 16, iscausal=True).eval()
    x = torch.randn(2, 12, 32)
    want = layer(x, x, x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x, x, x)[0]
        q, k, v, P = inputs(N=12, dtype=torch.float32)
        assert ops.favor_attention(q, k, v, P, "softmax", True, None, 0).dtype == torch.bfloat16
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2)
