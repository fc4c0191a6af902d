"""Triton kernels for FAVOR+ attention (forward), non-causal and chunked causal.

The feature maps are fused: phi(q) and phi(k) never reach memory. The sequence is cut
into segments so that B*H*segments programs fill the GPU:

1. ``_segment_state_kernel``, grid (feature blocks, segments, B*H): each program streams
   one segment's keys and values in blocks and accumulates its slice of the key-value
   state sum_s phi(k_s) v_s^T [BF, Dv] and normaliser sum_s phi(k_s) [BF] in float32.
   Its softmax stabiliser is a running max over its keys and features (the partial state
   is rescaled when it grows, as in online softmax); it is stored beside the state.
2. ``_combine`` (a few small torch ops): rescales the partial states to one stabiliser
   and sums them. Non-causal: the total state. Causal: the state entering each segment
   (the sum over the earlier segments), with the max over the earlier segments as its
   stabiliser. Storing partials and reducing them keeps the result deterministic.
3. ``_output_kernel``, grid (Dv blocks, segments, B*H): each program loads the state its
   segment starts from and walks the segment by chunks of C queries. Non-causal:
   out = phi(Q_c) S / phi(Q_c) z. Causal: the inter-chunk term phi(Q_c) S plus the masked
   intra-chunk term tril(phi(Q_c) phi(K_c)^T) V_c, then S and z absorb the chunk's keys.

Causal stabiliser. The softmax features of a key are exp(t_s - c) with one constant c per
product (c cancels between numerator and denominator), and c must stay near the largest
logit the query sees, or every phi(k_s) underflows and the output is 0/0. A global max over
all keys fails exactly there in the causal case: an early query whose keys all have large
norms (very negative logits) sees only underflowed features when a later key is larger.
So the stabiliser of query l is M_l = max of the key logits at positions <= l, computed
causally: every key is exponentiated against its own row max c_s (phi(k_s) = exp(t_s - c_s),
largest entry 1), each intra-chunk score (phi(q_l) . phi(k_s)) is scaled by
exp(c_s - M_l) <= 1, the inter-chunk term by exp(c_state - M_l) <= 1, and the state is kept
relative to the running max c_state of the keys it holds. The result for query l then
depends on keys <= l only, in value and in rounding. Queries need no care: the row max of
phi(q_l)'s logits (and its |q'|^2/2 term) is a per-row constant, cancelled by the
normaliser.

The backward (triton_backward.py) shares the jit helpers of the feature maps and of the causal
stabiliser (``_features``, ``_query_features``, ``_key_features``, ``_causal_weights``,
``_running_max``), and recomputes the key states with ``key_states`` (the state kernel and
``_combine``).

Products run on tensor cores in the input dtype (bf16/fp16) with float32 accumulation;
the state stays float32 and is rounded to bf16 (bf16 inputs) or read as tf32 (fp16 inputs:
a long sequence's state can overflow fp16) for phi(Q_c) S. float32 inputs use IEEE
products unless torch allows tf32.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

RELU_EPS = 1e-6  # same epsilon as the C++ kernel's relu features
LOG2E = math.log2(math.e)
# The output kernel holds phi(Q_c) [C, m] and the state [m, BDV] in registers: larger
# feature counts (and head dims) run the C++ op.
MAX_FEATURES = 256
MAX_HEAD_DIM = 256
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


# The autotuner's configs on GPUs; the interpreter tunes nothing (one small config), but
# tests run these explicitly there too.
GPU_STATE_CONFIGS = [
    triton.Config({"BF": bf, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bf, bn, w, s in ((64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3), (64, 64, 4, 2), (128, 128, 8, 2))
]
GPU_OUTPUT_CONFIGS = [
    triton.Config({"CHUNK": c, "BDV": bdv}, num_warps=w, num_stages=s)
    # (CHUNK 64, BDV 32, 8 warps, 2 stages) is left out: Triton 3.6 code for it faults with an
    # illegal memory access in the causal kernel on an H200 (benchmarks/attention_configs.py),
    # although its addressing stays in bounds in the interpreter.
    for c, bdv, w, s in ((32, 64, 8, 2), (64, 64, 8, 2), (32, 32, 8, 2), (16, 64, 4, 2),
                         (16, 32, 4, 2), (32, 64, 8, 1))
]


def _state_configs():
    if _INTERPRET:
        return [triton.Config({"BF": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return GPU_STATE_CONFIGS


def _output_configs():
    if _INTERPRET:
        return [triton.Config({"CHUNK": 16, "BDV": 16}, num_warps=4, num_stages=1)]
    return GPU_OUTPUT_CONFIGS


STATE_CONFIGS = _state_configs()
OUTPUT_CONFIGS = _output_configs()


def _tuned(configs):
    """The configs the autotuner tries. PANTHER_TRITON_AUTOTUNE=0 keeps only the first (the
    default: moderate tiles that fit every supported shape), so GPU test runs compile one
    config; tests of each config pass them explicitly."""
    if os.environ.get("PANTHER_TRITON_AUTOTUNE", "1") == "0":
        return configs[:1]
    return configs


@triton.jit
def _float32_scalars(logit_scale, norm_scale, inv_sqrt_m, eps):
    """The kernels' float arguments as float32. Inductor passes Python floats as float64 scalars:
    without the casts every value derived from them is float64 and a loop-carried state changes
    type. tl.cast also takes the plain Python floats the interpreter passes."""
    return (tl.cast(logit_scale, tl.float32), tl.cast(norm_scale, tl.float32), tl.cast(inv_sqrt_m, tl.float32),
            tl.cast(eps, tl.float32))


@triton.jit
def _program(H):
    """This program's place in a (blocks, segments, B*H) grid: (block, segment, bh, batch b, head h),
    b and h as int64 (they scale strides)."""
    bh = tl.program_id(2)
    return tl.program_id(0), tl.program_id(1), bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.jit
def _load_rows(base, rows, r_ok, stride_n, cols, c_ok, stride_c):
    """The [rows, cols] tile of a [N, C] matrix at ``base`` with strides (stride_n, stride_c), zero
    outside r_ok x c_ok."""
    return tl.load(base + rows[:, None] * stride_n + cols[None, :] * stride_c, mask=r_ok[:, None] & c_ok[None, :],
                   other=0.0)


@triton.jit
def _store_partial_state(state_ptr, z_ptr, c_ptr, acc, z, c_run, bh, seg, NSEG, DV, offs_f, offs_v, v_ok,
                         M_PAD: tl.constexpr, BF: tl.constexpr, STABILISED: tl.constexpr):
    """One segment's feature block of a partial state [BF, DV], its normaliser [BF] and stabiliser
    (c_run where STABILISED, else 0) into [BH, NSEG, M_PAD, ...] buffers, for ``_combine``."""
    base = (bh * NSEG + seg).to(tl.int64) * M_PAD
    f_in = offs_f < M_PAD
    tl.store(state_ptr + (base + offs_f[:, None]) * DV + offs_v[None, :], acc, mask=f_in[:, None] & v_ok[None, :])
    tl.store(z_ptr + base + offs_f, z, mask=f_in)
    c_rows = tl.zeros((BF,), dtype=tl.float32)
    if STABILISED:
        c_rows += c_run
    tl.store(c_ptr + base + offs_f, c_rows, mask=f_in)


@triton.jit
def _features_of(u, x, logit_scale, norm_scale, inv_sqrt_m, eps, ok, SOFTMAX: tl.constexpr, KEY: tl.constexpr):
    """Logits (softmax) or features (relu) of a tile x [R, D_PAD] from its products u = x p^T [R, F].

    softmax: t = log2(e) (x' p^T - |x'|^2/2) with x' = x D^-1/4, -inf where not ``ok``: base-2
    logits, so every exponential is one exp2. Queries skip |x'|^2/2 (a per-row constant that
    cancels). relu: relu(x p^T)/sqrt(m) + eps, 0 where not ok.
    """
    # x is scaled after the product (in float32), not rounded to the input dtype first.
    if SOFTMAX:
        t = u * logit_scale
        if KEY:
            xf = x.to(tl.float32)
            t -= (tl.sum(xf * xf, 1) * norm_scale)[:, None]
        return tl.where(ok, t, float("-inf"))
    return tl.where(ok, tl.maximum(u, 0.0) * inv_sqrt_m + eps, 0.0)


@triton.jit
def _features(x, p, logit_scale, norm_scale, inv_sqrt_m, eps, ok, SOFTMAX: tl.constexpr, KEY: tl.constexpr,
              DOT_PRECISION: tl.constexpr):
    """``_features_of`` the products x p^T of a tile x [R, D_PAD] with p [F, D_PAD]: [R, F] float32."""
    u = tl.dot(x, tl.trans(p), input_precision=DOT_PRECISION)
    return _features_of(u, x, logit_scale, norm_scale, inv_sqrt_m, eps, ok, SOFTMAX, KEY)


@triton.jit
def _key_features(kk, p, logit_scale, norm_scale, inv_sqrt_m, eps, ok, SOFTMAX: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    """Features of a chunk of keys for the causal product, each against its own row max.

    Returns (phi [R, F], c [R], u [R, F]): softmax phi = exp2(t - c) with c the row max of the
    logits t (-inf for a masked key, whose phi is 0), relu phi as ``_features`` (c unused);
    u = kk p^T, the products (the relu derivative's sign).
    """
    u = tl.dot(kk, tl.trans(p), input_precision=DOT_PRECISION)
    phi = _features_of(u, kk, logit_scale, norm_scale, inv_sqrt_m, eps, ok, SOFTMAX, True)
    c = tl.max(phi, 1)
    if SOFTMAX:
        phi = tl.exp2(phi - tl.where(c == float("-inf"), 0.0, c)[:, None])
    return phi, c, u


@triton.jit
def _query_features(qq, p, logit_scale, norm_scale, inv_sqrt_m, eps, ok, SOFTMAX: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """Features of a chunk of queries: (phi [R, F], r [R], u [R, F]).

    softmax: phi = exp2(t - r) with r the row max of the logits t, a per-row stabiliser that
    cancels in num / den (phi's largest entry is 1); relu: phi as ``_features`` (r unused).
    u = qq p^T, the products.
    """
    u = tl.dot(qq, tl.trans(p), input_precision=DOT_PRECISION)
    phi = _features_of(u, qq, logit_scale, norm_scale, inv_sqrt_m, eps, ok, SOFTMAX, False)
    r = tl.max(phi, 1)
    if SOFTMAX:
        phi = tl.exp2(phi - r[:, None])
    return phi, r, u


@triton.jit
def _causal_weights(ck, c_state, causal_mask):
    """The causal stabiliser of a chunk of queries (see the module docstring).

    ck [C]: the chunk's key stabilisers, c_state: the entering state's. Returns M [C] with
    M_l = max(c_state, max_{s <= l} c_s) (-inf while no key is seen), the inter-chunk weights
    exp2(c_state - M_l) [C] and the intra-chunk weights exp2(c_s - M_l) [C, C] (0 above the
    diagonal and for masked keys).
    """
    ck_seen = tl.where(causal_mask, ck[None, :], float("-inf"))
    m_row = tl.maximum(tl.max(ck_seen, 1), c_state)
    safe = tl.where(m_row == float("-inf"), 0.0, m_row)
    return m_row, tl.exp2(c_state - safe), tl.exp2(ck_seen - safe[:, None])


@triton.jit
def _running_max(c_state, rowc):
    """A state kept relative to its running max c_state absorbs rows with stabilisers rowc [R].

    Returns (the new max, the factor that rescales the state to it, the rows' weights
    exp2(rowc - new max)); -inf everywhere (nothing seen) gives a 0 factor and weights.
    """
    c_new = tl.maximum(c_state, tl.max(rowc, 0))
    safe = tl.where(c_new == float("-inf"), 0.0, c_new)
    return c_new, tl.exp2(c_state - safe), tl.exp2(rowc - safe)


@triton.autotune(configs=_tuned(STATE_CONFIGS),
                 key=["LEN_BUCKET", "M_PAD", "D_PAD", "DV_PAD", "SOFTMAX", "HAS_KEEP", "ELEMENT_SIZE"])
@triton.jit
def _segment_state_kernel(
    k_ptr, v_ptr, p_ptr, keep_ptr, state_ptr, z_ptr, c_ptr,
    H, S, D, DV, M, SEG_LEN, NSEG, LEN_BUCKET, logit_scale, norm_scale, inv_sqrt_m, eps,
    skb, skh, skn, skd, svb, svh, svn, svd, spm, spd,
    HAS_KEEP: tl.constexpr, SOFTMAX: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr, ELEMENT_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BF: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # One feature block of one segment's state: sum phi(k) v^T [BF, DV] and sum phi(k) [BF].
    logit_scale, norm_scale, inv_sqrt_m, eps = _float32_scalars(logit_scale, norm_scale, inv_sqrt_m, eps)
    fb, seg, bh, b, h = _program(H)
    offs_f = fb * BF + tl.arange(0, BF)
    offs_d = tl.arange(0, D_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    offs_v = tl.arange(0, DV_PAD)
    f_ok = offs_f < M
    d_ok = offs_d < D
    v_ok = offs_v < DV
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh

    acc = tl.zeros((BF, DV_PAD), dtype=tl.float32)
    z = tl.zeros((BF,), dtype=tl.float32)
    c_run = tl.max(tl.full((BLOCK_N,), float("-inf"), tl.float32), 0)
    start = seg * SEG_LEN
    end = tl.minimum(start + SEG_LEN, S)
    for s0 in range(start, end, BLOCK_N):
        rows = (s0 + offs_n).to(tl.int64)  # row offsets in int64: long sequences pass 2**31 elements
        r_ok = rows < end
        kk = _load_rows(k_base, rows, r_ok, skn, offs_d, d_ok, skd)
        vv = _load_rows(v_base, rows, r_ok, svn, offs_v, v_ok, svd)
        p = tl.load(p_ptr + offs_f[:, None] * spm + offs_d[None, :] * spd, mask=f_ok[:, None] & d_ok[None, :],
                    other=0.0)
        valid = r_ok
        if HAS_KEEP:
            valid = valid & (tl.load(keep_ptr + b * S + rows, mask=r_ok, other=0) != 0)
        ok = valid[:, None] & f_ok[None, :]
        phi = _features(kk, p, logit_scale, norm_scale, inv_sqrt_m, eps, ok, SOFTMAX, True, DOT_PRECISION)
        if SOFTMAX:
            c_new = tl.maximum(c_run, tl.max(tl.max(phi, 1), 0))
            c_safe = tl.where(c_new == float("-inf"), 0.0, c_new)
            alpha = tl.exp2(c_run - c_safe)  # rescale the partial state to the new stabiliser
            acc = acc * alpha
            z = z * alpha
            c_run = c_new
            phi = tl.exp2(phi - c_safe)
        acc = tl.dot(tl.trans(phi.to(vv.dtype)), vv, acc, input_precision=DOT_PRECISION)
        z += tl.sum(phi, 0)

    # relu features need no stabiliser: 0
    _store_partial_state(state_ptr, z_ptr, c_ptr, acc, z, c_run, bh, seg, NSEG, DV, offs_f, offs_v, v_ok, M_PAD, BF,
                         SOFTMAX)


@triton.autotune(configs=_tuned(OUTPUT_CONFIGS),
                 key=["LEN_BUCKET", "M_PAD", "D_PAD", "DV", "CAUSAL", "SOFTMAX", "HAS_KEEP", "ELEMENT_SIZE"])
@triton.jit
def _output_kernel(
    q_ptr, k_ptr, v_ptr, p_ptr, keep_ptr, state_ptr, z_ptr, c_ptr, o_ptr,
    H, N, D, DV, M, SEG_LEN, NSTATE, LEN_BUCKET, logit_scale, norm_scale, inv_sqrt_m, eps,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, spm, spd,
    CAUSAL: tl.constexpr, HAS_KEEP: tl.constexpr, SOFTMAX: tl.constexpr, M_PAD: tl.constexpr,
    D_PAD: tl.constexpr, ELEMENT_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    STATE_PRECISION: tl.constexpr, STATE_BF16: tl.constexpr, CHUNK: tl.constexpr, BDV: tl.constexpr,
):
    logit_scale, norm_scale, inv_sqrt_m, eps = _float32_scalars(logit_scale, norm_scale, inv_sqrt_m, eps)
    dvb, seg, bh, b, h = _program(H)
    offs_m = tl.arange(0, M_PAD)
    offs_d = tl.arange(0, D_PAD)
    offs_c = tl.arange(0, CHUNK)
    offs_v = dvb * BDV + tl.arange(0, BDV)
    m_ok = offs_m < M
    d_ok = offs_d < D
    v_ok = offs_v < DV
    q_base = q_ptr + b * sqb + h * sqh
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    o_base = o_ptr + b * sob + h * soh

    # the state this segment starts from (non-causal: the total), its normaliser and stabiliser
    sidx = (bh * NSTATE + (seg if CAUSAL else 0)).to(tl.int64)
    state = tl.load(state_ptr + (sidx * M_PAD + offs_m[:, None]) * DV + offs_v[None, :], mask=v_ok[None, :],
                    other=0.0)
    z = tl.load(z_ptr + sidx * M_PAD + offs_m)
    c_state = tl.load(c_ptr + sidx)
    causal_mask = offs_c[None, :] <= offs_c[:, None]  # [query l, key s]: s <= l

    start = seg * SEG_LEN
    end = tl.minimum(start + SEG_LEN, N)
    for l0 in range(start, end, CHUNK):
        rows = (l0 + offs_c).to(tl.int64)
        r_ok = rows < end
        # projection rows are re-read per chunk (L1/L2 hits) rather than pinned in registers
        p = tl.load(p_ptr + offs_m[:, None] * spm + offs_d[None, :] * spd, mask=m_ok[:, None] & d_ok[None, :],
                    other=0.0)
        qq = _load_rows(q_base, rows, r_ok, sqn, offs_d, d_ok, sqd)
        a, _, _ = _query_features(qq, p, logit_scale, norm_scale, inv_sqrt_m, eps, m_ok[None, :], SOFTMAX,
                                  DOT_PRECISION)
        if STATE_BF16:
            num = tl.dot(a.to(tl.bfloat16), state.to(tl.bfloat16))
        else:
            num = tl.dot(a, state, input_precision=STATE_PRECISION)
        den = tl.sum(a * z[None, :], 1)
        if CAUSAL:
            kk = _load_rows(k_base, rows, r_ok, skn, offs_d, d_ok, skd)
            vv = _load_rows(v_base, rows, r_ok, svn, offs_v, v_ok, svd)
            valid = r_ok
            if HAS_KEEP:
                valid = valid & (tl.load(keep_ptr + b * N + rows, mask=r_ok, other=0) != 0)
            bk, ck, _ = _key_features(kk, p, logit_scale, norm_scale, inv_sqrt_m, eps, valid[:, None] & m_ok[None, :],
                                      SOFTMAX, DOT_PRECISION)
            if SOFTMAX:
                _, w_inter, w_intra = _causal_weights(ck, c_state, causal_mask)
                num = num * w_inter[:, None]
                den = den * w_inter
            else:
                w_intra = tl.where(causal_mask, 1.0, 0.0)
            scores = tl.dot(a.to(vv.dtype), tl.trans(bk.to(vv.dtype)), input_precision=DOT_PRECISION) * w_intra
            num = tl.dot(scores.to(vv.dtype), vv, num, input_precision=DOT_PRECISION)
            den += tl.sum(scores, 1)
            if SOFTMAX:  # the state absorbs the chunk relative to the new running max
                c_state, beta, w_keys = _running_max(c_state, ck)
                state = state * beta
                z = z * beta
                bk = bk * w_keys[:, None]
            state = tl.dot(tl.trans(bk.to(vv.dtype)), vv, state, input_precision=DOT_PRECISION)
            z += tl.sum(bk, 0)
        out = num / den[:, None]
        tl.store(o_base + rows[:, None] * son + offs_v[None, :] * sod, out.to(o_ptr.dtype.element_ty),
                 mask=r_ok[:, None] & v_ok[None, :])


def _pow2(n: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(n))


def _bucket(tokens: int) -> int:
    """Autotuning key for the work size (tokens over all heads): the next power of four."""
    bucket = 1
    while bucket < tokens:
        bucket *= 4
    return bucket


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _segments(length: int, programs_per_segment: int, device: torch.device, min_len: int) -> tuple[int, int]:
    """(segment length, number of segments): about four programs per SM, segments >= min_len."""
    if device.type != "cuda":
        return _split(length, 2, 16)  # the interpreter: exercise the multi-segment path cheaply
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    wanted = triton.cdiv(4 * sms, max(1, programs_per_segment))
    return _split(length, max(1, min(wanted, 64, length // min_len)), 64)


def _split(length: int, wanted: int, unit: int = 16) -> tuple[int, int]:
    """Segments of a multiple of ``unit`` tokens (64: whole chunks for every config)."""
    seg_len = triton.cdiv(triton.cdiv(max(length, 1), max(1, wanted)), unit) * unit
    return seg_len, triton.cdiv(max(length, 1), seg_len)


def supported(num_features: int, head_dim: int, value_dim: int) -> bool:
    """Whether the kernels' register tiles fit these sizes (else use the C++ op)."""
    return num_features <= MAX_FEATURES and head_dim <= MAX_HEAD_DIM and value_dim <= MAX_HEAD_DIM


def _combine(states, zs, cs, causal: bool):
    """One stabiliser per (batch*head [, segment]) for the partial states.

    states [BH, G, M_PAD, Dv], zs and cs [BH, G, M_PAD] (cs: each feature row's stabiliser, a
    base-2 logit).
    Non-causal: the total state [BH, 1, ...] (its stabiliser cancels). Causal: the state
    entering each segment, sum over earlier segments g' < g, relative to their max c_g
    (-inf for the first segment, whose state is empty), returned with it [BH, G].
    """
    BH, G = cs.shape[:2]
    if causal:
        seen = torch.cummax(cs.amax(2), 1).values
        ref = torch.cat([torch.full_like(seen[:, :1], float("-inf")), seen[:, :-1]], 1)
        before = torch.ones(G, G, dtype=torch.bool, device=cs.device).tril(-1)  # [g, g']: g' < g
    else:
        ref = cs.amax((1, 2)).unsqueeze(1)
        before = torch.ones(1, G, dtype=torch.bool, device=cs.device)
    safe = torch.where(torch.isfinite(ref), ref, torch.zeros_like(ref))
    # exponents <= 0 where kept; where() keeps the overflowing ones of later segments out
    w = torch.where(before[None, :, :, None], cs[:, None] - safe[:, :, None, None], float("-inf")).exp2()
    state = torch.einsum("bgkm,bkmd->bgmd", w, states).contiguous()
    z = torch.einsum("bgkm,bkm->bgm", w, zs).contiguous()
    return state, z, ref.contiguous()


class Problem(NamedTuple):
    """Sizes and launch arguments shared by the forward and backward kernels."""

    B: int
    H: int
    N: int
    S: int
    D: int
    DV: int
    M: int
    M_PAD: int
    D_PAD: int
    DV_PAD: int
    softmax: bool
    keep: torch.Tensor  # int8 [B, S], 1 = attend (any tensor when there is no mask)
    scalars: tuple  # logit_scale, norm_scale, inv_sqrt_m, eps
    common: dict  # constexprs of every kernel

    @property
    def BH(self) -> int:
        return self.B * self.H


def problem(q, k, v, projection, kernel_fn: str, key_padding_mask, caller: str) -> Problem:
    """The shared launch arguments; raises where the sizes do not fit the kernels' tiles."""
    B, H, N, D = q.shape
    S, DV, M = k.shape[2], v.shape[3], projection.shape[0]
    if not supported(M, D, DV):
        raise ValueError(f"{caller}: {M} random features, head dims {D} and {DV} do not fit the Triton kernels "
                         f"(at most {MAX_FEATURES} features and head dims {MAX_HEAD_DIM}); use "
                         "torch.ops.panther.favor_attention")
    softmax = kernel_fn == "softmax"
    has_keep = key_padding_mask is not None
    keep = (~key_padding_mask).to(torch.int8).contiguous() if has_keep else q
    # base-2 logits t = log2(e) (x.p D^-1/4 - |x|^2 D^-1/2 / 2): the scale of the products, of |x|^2
    scalars = (LOG2E * float(D) ** -0.25, LOG2E * 0.5 / math.sqrt(D), 1.0 / math.sqrt(M), RELU_EPS)
    common = dict(HAS_KEEP=has_keep, SOFTMAX=softmax, M_PAD=_pow2(M), D_PAD=_pow2(D),
                  ELEMENT_SIZE=q.element_size(), DOT_PRECISION=_dot_precision(q.dtype))
    return Problem(B, H, N, S, D, DV, M, _pow2(M), _pow2(D), _pow2(DV), softmax, keep, scalars, common)


def _config_meta(config) -> dict:
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def key_states(pb: Problem, k, v, projection, causal: bool, seg_len: int, nseg: int, launch, config=None):
    """The key-value state of the keys, by ``_segment_state_kernel`` and ``_combine``.

    Non-causal: the total [BH, 1, M_PAD, DV], its normaliser and stabiliser [BH, 1]. Causal:
    the state entering each of ``nseg`` segments of ``seg_len`` keys. ``config``: one
    triton.Config instead of autotuning.
    """
    kernel, meta = (_segment_state_kernel, {}) if config is None else (_segment_state_kernel.fn, _config_meta(config))
    states = k.new_empty(pb.BH, nseg, pb.M_PAD, pb.DV, dtype=torch.float32)
    zs = k.new_empty(pb.BH, nseg, pb.M_PAD, dtype=torch.float32)
    cs = k.new_empty(pb.BH, nseg, pb.M_PAD, dtype=torch.float32)
    launch(kernel)[lambda meta: (triton.cdiv(pb.M_PAD, meta["BF"]), nseg, pb.BH)](
        k, v, projection, pb.keep, states, zs, cs,
        pb.H, pb.S, pb.D, pb.DV, pb.M, seg_len, nseg, _bucket(pb.BH * pb.S), *pb.scalars,
        *k.stride(), *v.stride(), *projection.stride(),
        DV_PAD=pb.DV_PAD, **pb.common, **meta,
    )
    return _combine(states, zs, cs, causal)


def favor_forward(q, k, v, projection, kernel_fn: str, causal: bool, key_padding_mask=None, segments: int = 0,
                  launch=lambda kernel: kernel, configs=None):
    """FAVOR+ attention forward with the Triton kernels; same math as the C++ op.

    ``segments``: sequence segments (0 = enough to fill the device). ``launch`` wraps each
    kernel before launching (torch.library.wrap_triton inside a triton_op). ``configs`` =
    (state, output) triton.Configs bypasses autotuning, for tests of every config.
    """
    pb = problem(q, k, v, projection, kernel_fn, key_padding_mask, "favor_forward")
    B, H, N, S, DV, M_PAD, BH = pb.B, pb.H, pb.N, pb.S, pb.DV, pb.M_PAD, pb.BH
    out = q.new_empty(B, H, N, DV)
    if out.numel() == 0:
        return out
    dev = q.device
    # products with the float32 state: bf16 for bf16 inputs (its rounding is the output's), tf32
    # for fp16 (a long sequence's state can pass fp16's 65504), IEEE in the interpreter
    precision = pb.common["DOT_PRECISION"]
    state_precision = precision if q.dtype == torch.float32 or dev.type != "cuda" else "tf32"
    state_bf16 = q.dtype == torch.bfloat16 and dev.type == "cuda"
    output_kernel, meta_o = _output_kernel, {}
    if configs is not None:
        output_kernel, meta_o = _output_kernel.fn, _config_meta(configs[1])

    if segments > 0:
        seg_len, nseg = _split(S, segments)
    elif causal:  # the output kernel's segments: it does the work
        seg_len, nseg = _segments(S, BH, dev, 256)
    else:
        seg_len, nseg = _segments(S, BH * triton.cdiv(M_PAD, 64), dev, 256)
    state, z, c = key_states(pb, k, v, projection, causal, seg_len, nseg, launch,
                             None if configs is None else configs[0])
    if causal:
        q_seg_len, q_nseg = seg_len, nseg
    elif segments > 0:
        q_seg_len, q_nseg = _split(N, segments)
    else:
        q_seg_len, q_nseg = _segments(N, BH, dev, 128)
    launch(output_kernel)[lambda meta: (triton.cdiv(DV, meta["BDV"]), q_nseg, BH)](
        q, k, v, projection, pb.keep, state, z, c, out,
        H, N, pb.D, DV, pb.M, q_seg_len, state.shape[1], _bucket(BH * N), *pb.scalars,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *projection.stride(),
        CAUSAL=causal, STATE_PRECISION=state_precision, STATE_BF16=state_bf16, **pb.common, **meta_o,
    )
    return out
