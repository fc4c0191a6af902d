"""Triton kernels for FAVOR+ attention (forward), non-causal and causal.

The feature maps are fused: phi(q) and phi(k) never reach memory. Two passes, the second
with no loop-carried state:

Non-causal.
1. ``_segment_state_kernel``, grid (feature blocks, segments, B*H): each program streams
   one segment's keys and values in blocks and accumulates its slice of the key-value
   state sum_s phi(k_s) v_s^T [BF, Dv] and normaliser sum_s phi(k_s) [BF] in float32.
   Its softmax stabiliser is a running max over its keys and features (the partial state
   is rescaled when it grows, as in online softmax); it is stored beside the state.
2. ``_combine_kernel``: rescales the partial states to one stabiliser and sums them in a
   fixed order (deterministic, no atomics): the total state, stored in the products'
   dtype (below).
3. ``_chunk_output_kernel``, grid (chunks of CHUNK queries, Dv blocks, B*H):
   out = phi(Q_c) S / phi(Q_c) z, every chunk independent.

Causal.
1. ``_walk_kernel``, grid (Dv blocks, segments, B*H): each program walks one segment's keys
   in order with the state sum_s phi(k_s) v_s^T [m, BDV] and z in float32 registers, and
   every STATE_LEN keys stores the state so far (in the products' dtype), z and its
   stabiliser: the state entering every STATE_LEN-aligned position, relative to the
   segment's start. Then the segment's total (float32).
2. ``_combine_kernel`` on the totals (several segments only): the state entering each
   segment, the sum over the earlier ones (exclusive prefix, fixed order).
3. ``_chunk_output_kernel``: each chunk of queries loads the stored state at or before it
   (plus its segment's entering state) for the inter-chunk term phi(Q_c) S, then the
   keys from that state's position to the chunk's last query block by block (CHUNK keys
   at a time, the last block masked by s <= l) for the intra term (phi(Q_c) phi(K_b)^T) V_b.

Why this design (issue #4). The former causal output kernel walked each segment chunk by chunk
holding phi(Q_c) [C, m], phi(K_c) [C, m], the state [m, Dv] float32 and z in registers: 255
registers and ~1.3 KB of spills per thread, one 8-warp program per SM, and a serial chain of
state updates through all the heavy work (82% of the causal forward). Here the serial walk
does only what the recurrence needs (key features, one product into the state) and every
chunk's output runs in parallel from a stored state. Alternatives weighed:
- splitting the feature axis m across programs (partial numerators and denominators summed
  afterwards): the partial outputs are float32 [N, Dv] per feature block, 2-4x the output
  in extra traffic (~0.5-1 GB at B=4, H=16, N=16384), and every block still needs the keys'
  row maxima over all m;
- per-chunk states, an exclusive prefix over chunks, then the outputs (fully
  chunk-parallel): the prefix reads and writes every chunk's state again; the walk is that
  prefix fused with the per-chunk states, so each state is written once and read once;
- the walk stores a state every STATE_LEN keys, not every chunk: a bf16 state [m, Dv] is
  32 KB (m = 256, Dv = 64), as large as the q, k, v and out of 64 tokens, so per token it
  costs 2 * 32 KB / STATE_LEN of traffic (STATE_LEN = 64: 1 GB at the size above, write
  and read, against 0.5 GB for q, k, v, out); the price is recomputing phi(k) for the keys
  between the stored state and the chunk (on average (STATE_LEN/CHUNK + 1)/2 blocks per chunk).
  Memory holds B*H*S/STATE_LEN states: 8x the size of q at m = 256, Dv = 64, STATE_LEN = 64.
The products keep the features' axis m as their M dimension (features transposed, [m, C]):
a product with M = 64 rows sits whole in each of the two warp groups of 8 warps, so a
float32 [C, m] tile would cost 2x the registers; masks enter as row/column vectors.

Causal stabiliser. The softmax features of a key are exp(t_s - c) with one constant c per
product (c cancels between numerator and denominator), and c must stay near the largest
logit the query sees, or every phi(k_s) underflows and the output is 0/0. A global max over
all keys fails exactly there in the causal case: an early query whose keys all have large
norms (very negative logits) sees only underflowed features when a later key is larger.
So the stabiliser of query l is M_l = max of the key logits at positions <= l, computed
causally: every key is exponentiated against its own row max c_s (phi(k_s) = exp(t_s - c_s),
largest entry 1), each intra-chunk score (phi(q_l) . phi(k_s)) is scaled by
exp(c_s - M_l) <= 1, the inter-chunk term by exp(c_state - M_l) <= 1, and every stored state
is kept relative to the running max c_state of the keys it holds (the segment's entering
state and the stored state are brought to the larger of their two maxima). The output
kernel takes M_l as a running max over its key blocks (num and den rescaled when it grows,
as in flash attention). The result for query l then depends on keys <= l only, in value and
in rounding. Queries need no care: the row max of phi(q_l)'s logits (and its |q'|^2/2 term)
is a per-row constant, cancelled by the normaliser.

The backward (triton_backward.py) shares the jit helpers of the feature maps and of the causal
stabiliser (``_features``, ``_query_features``, ``_key_features``, ``_causal_weights``,
``_running_max``), and recomputes the key states with ``key_states`` (the state kernel and
``_combine``).

Products run on tensor cores in the input dtype (bf16/fp16) with float32 accumulation;
states accumulate in float32 and are stored in bf16 for bf16 inputs (the rounding phi(Q_c) S
had anyway) and in float32 read as tf32 for fp16 inputs (a long sequence's state can
overflow fp16). float32 inputs use IEEE products unless torch allows tf32.
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
# The walk holds the state [m, BDV] and a key block's features [m, BLOCK_N] in registers, the
# backward's kernels their states and [C, m] tiles: larger feature counts (and head dims) run
# the C++ op.
MAX_FEATURES = 256
MAX_HEAD_DIM = 256
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


# The autotuner's configs on GPUs; the interpreter tunes nothing (one small config), but
# tests run these explicitly there too.
GPU_STATE_CONFIGS = [
    triton.Config({"BF": bf, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bf, bn, w, s in ((64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3), (64, 64, 4, 2), (128, 128, 8, 2))
]
# The walk's key blocks and the output kernel's chunks divide the state interval (STATE_LEN, a
# multiple of 64 on GPUs). The walk holds its state [m, BDV] and one key block's features
# [m, BLOCK_N] in float32 registers: 8 warps at m = 256 (4 spill).
GPU_WALK_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BDV": bdv}, num_warps=w, num_stages=s)
    for bn, bdv, w, s in ((64, 64, 8, 2), (32, 64, 8, 2), (64, 64, 8, 3))
]
# 8 warps: the products with the features [m, CHUNK] split m across two warp groups; 4 warps
# with 32-query chunks: two programs an SM (250 registers, no spills), which hide each other's
# loads of the stored state. With one stage (32, 64, 4, 1) fits every supported size in shared
# memory, as (32, 64, 8, 2) does (head dims of 256 in bf16: 176 KB), while (64, 64, 8, 2) needs
# 240 KB at 256. No value blocks narrower than 64 (the features would be computed once per
# block; and (64, 32, 8, 2) of the former kernel faulted under Triton 3.6).
# Each config runs in the modes listed (True: causal). Triton 3.6 miscompiles two of them on the
# H200 in one mode each: (32, 64, 4, 1) non-causal and (32, 64, 8, 2) causal gave outputs off by
# 1-10x their size, at times an illegal address, with every key config at three shapes (H200
# probe of every pair, one process each), while the bounds-checked interpreter runs both exactly
# (test_triton_every_gpu_config_in_bounds). The first config of each mode (the one when
# autotuning is off) is the fastest measured at the benchmark shape (H200, B=4 H=16 N=16384 D=64
# m=256 bf16, causal: 2.26 ms against 3.65 for (32, 64, 8, 2)).
_GPU_OUTPUT_TABLE = (
    ((32, 64, 4, 1), (True,)),
    ((32, 64, 8, 2), (False,)),
    ((64, 64, 8, 2), (True, False)),
    ((32, 64, 8, 1), (True, False)),
)
GPU_OUTPUT_CONFIGS = [
    triton.Config({"CHUNK": c, "BDV": bdv}, num_warps=w, num_stages=s) for (c, bdv, w, s), _ in _GPU_OUTPUT_TABLE
]
_OUTPUT_MODES = {id(c): modes for c, (_, modes) in zip(GPU_OUTPUT_CONFIGS, _GPU_OUTPUT_TABLE)}
# Keys between two stored causal states (a multiple of 64). H200, B=4 H=16 N=16384 D=64 m=256
# bf16, output config (32, 64, 4, 1), walk (64, 64, 8, 2): 64 -> 1.95 ms, 128 -> 2.25, 256 -> 2.87
# (the shorter interval recomputes fewer key features per chunk: (STATE_LEN/CHUNK + 1)/2 blocks).
GPU_STATE_LEN = 64


def _state_configs():
    if _INTERPRET:
        return [triton.Config({"BF": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return GPU_STATE_CONFIGS


def _walk_configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": 16, "BDV": 16}, num_warps=4, num_stages=1)]
    return GPU_WALK_CONFIGS


def _output_configs():
    if _INTERPRET:
        return [triton.Config({"CHUNK": 16, "BDV": 16}, num_warps=4, num_stages=1)]
    return GPU_OUTPUT_CONFIGS


STATE_CONFIGS = _state_configs()
WALK_CONFIGS = _walk_configs()
OUTPUT_CONFIGS = _output_configs()


def _runs_in(config, causal: bool) -> bool:
    return causal in _OUTPUT_MODES.get(id(config), (True, False))


def output_configs(causal: bool, gpu: bool = False) -> list:
    """The output kernel's configs (``gpu``: the GPU list, also in the interpreter) that run in
    this mode."""
    return [c for c in (GPU_OUTPUT_CONFIGS if gpu else OUTPUT_CONFIGS) if _runs_in(c, causal)]


def _prune_output_configs(configs, named_args, **kwargs):
    return [c for c in configs if _runs_in(c, kwargs["CAUSAL"])]
STATE_LEN = 32 if _INTERPRET else GPU_STATE_LEN


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
def _lanes(fb, dvb, M, D, DV, BF: tl.constexpr, D_PAD: tl.constexpr, BDV: tl.constexpr):
    """A program's feature, head-dim and value-dim lanes (feature block ``fb`` of BF, value block
    ``dvb`` of BDV; all features: fb = 0, BF = M_PAD) and their masks:
    (offs_f, offs_d, offs_v, f_ok, d_ok, v_ok)."""
    offs_f = fb * BF + tl.arange(0, BF)
    offs_d = tl.arange(0, D_PAD)
    offs_v = dvb * BDV + tl.arange(0, BDV)
    return offs_f, offs_d, offs_v, offs_f < M, offs_d < D, offs_v < DV


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
    offs_f, offs_d, offs_v, f_ok, d_ok, v_ok = _lanes(fb, 0, M, D, DV, BF, D_PAD, DV_PAD)
    offs_n = tl.arange(0, BLOCK_N)
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


@triton.jit
def _products_t(x, p, f_ok, SOFTMAX: tl.constexpr, MASK_F: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """The products p x^T [F, R] of a tile x [R, D_PAD] (float32), -inf at the padded features
    (rows not in f_ok) for softmax where MASK_F (m < M_PAD).

    Transposed, so that the features go along the products' M axis, which the warps split (a
    float32 [R, F] tile of a product with R = 64 rows sits whole in each warp group of 8
    warps), and the walk's features come out as the left operand of its state product. Masks
    enter as row and column vectors: a broadcast [F, R] mask costs registers.
    """
    u = tl.dot(p, tl.trans(x), input_precision=DOT_PRECISION)
    if SOFTMAX and MASK_F:
        u = tl.where(f_ok[:, None], u, float("-inf"))
    return u


@triton.jit
def _relu_t(u, inv_sqrt_m, eps, f_ok):
    """relu features of the products u [F, R]: relu(u)/sqrt(m) + eps, 0 at padded features."""
    return (tl.maximum(u, 0.0) * inv_sqrt_m + eps) * tl.where(f_ok, 1.0, 0.0)[:, None]


@triton.jit
def _key_bias(kk, k_ok, norm_scale):
    """Each key's -|k'|^2/2 (base 2) [R], -inf for a masked key: its logits t = u * logit_scale + bias."""
    xf = kk.to(tl.float32)
    return tl.where(k_ok, -(tl.sum(xf * xf, 1) * norm_scale), float("-inf"))


@triton.autotune(configs=_tuned(WALK_CONFIGS),
                 key=["LEN_BUCKET", "M_PAD", "D_PAD", "DV", "SOFTMAX", "HAS_KEEP", "ELEMENT_SIZE", "STATE_LEN"])
@triton.jit
def _walk_kernel(
    k_ptr, v_ptr, p_ptr, keep_ptr, st_ptr, sz_ptr, sc_ptr, tot_ptr, tz_ptr, tc_ptr,
    H, S, D, DV, M, SEG_LEN, NSEG, NSTATE, LEN_BUCKET, logit_scale, norm_scale, inv_sqrt_m, eps,
    skb, skh, skn, skd, svb, svh, svn, svd, spm, spd,
    HAS_KEEP: tl.constexpr, SOFTMAX: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr,
    ELEMENT_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr, MASK_F: tl.constexpr, STATE_LEN: tl.constexpr,
    TOTALS: tl.constexpr, BLOCK_N: tl.constexpr, BDV: tl.constexpr,
):
    # Causal: one segment's keys in order; every STATE_LEN keys the state so far (relative to
    # its running max c_state) goes to memory, then the segment's total (for _combine_kernel).
    logit_scale, norm_scale, inv_sqrt_m, eps = _float32_scalars(logit_scale, norm_scale, inv_sqrt_m, eps)
    dvb, seg, bh, b, h = _program(H)
    offs_m, offs_d, offs_v, m_ok, d_ok, v_ok = _lanes(0, dvb, M, D, DV, M_PAD, D_PAD, BDV)
    offs_n = tl.arange(0, BLOCK_N)
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh

    p = tl.load(p_ptr + offs_m[:, None] * spm + offs_d[None, :] * spd, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    state = tl.zeros((M_PAD, BDV), dtype=tl.float32)
    z = tl.zeros((M_PAD,), dtype=tl.float32)
    c_state = tl.max(tl.full((BLOCK_N,), float("-inf"), tl.float32), 0)
    start = seg * SEG_LEN
    end = tl.minimum(start + SEG_LEN, S)
    for s0 in range(start, end, BLOCK_N):
        if s0 % STATE_LEN == 0:  # the state entering keys s0.. (segments start at multiples of STATE_LEN)
            sidx = (bh * NSTATE + s0 // STATE_LEN).to(tl.int64)
            tl.store(st_ptr + (sidx * M_PAD + offs_m[:, None]) * DV + offs_v[None, :],
                     state.to(st_ptr.dtype.element_ty), mask=v_ok[None, :])
            if dvb == 0:
                tl.store(sz_ptr + sidx * M_PAD + offs_m, z)
                tl.store(sc_ptr + sidx, c_state)
        rows = (s0 + offs_n).to(tl.int64)
        r_ok = rows < end
        kk = _load_rows(k_base, rows, r_ok, skn, offs_d, d_ok, skd)
        vv = _load_rows(v_base, rows, r_ok, svn, offs_v, v_ok, svd)
        valid = r_ok
        if HAS_KEEP:
            valid = valid & (tl.load(keep_ptr + b * S + rows, mask=r_ok, other=0) != 0)
        u = _products_t(kk, p, m_ok, SOFTMAX, MASK_F, DOT_PRECISION)
        if SOFTMAX:
            # each key's stabiliser c_s (its logits' max) only moves the running max: the state
            # absorbs exp2(t - c_state) = exp2(u * logit_scale + (bias - c_state)), one exp a feature
            k_bias = _key_bias(kk, valid, norm_scale)
            c_new = tl.maximum(c_state, tl.max(tl.max(u, 0) * logit_scale + k_bias, 0))
            if c_new > c_state:  # the running max grew: rescale (skipped, it is exact, when it did not)
                beta = tl.exp2(c_state - c_new)
                state = state * beta
                z = z * beta
                c_state = c_new
            safe = tl.where(c_state == float("-inf"), 0.0, c_state)
            bt = tl.exp2(u * logit_scale + (k_bias - safe)[None, :])
        else:
            bt = _relu_t(u, inv_sqrt_m, eps, m_ok) * tl.where(valid, 1.0, 0.0)[None, :]
        state = tl.dot(bt.to(vv.dtype), vv, state, input_precision=DOT_PRECISION)
        z += tl.sum(bt, 1)
    if TOTALS:
        _store_partial_state(tot_ptr, tz_ptr, tc_ptr, state, z, c_state, bh, seg, NSEG, DV, offs_m, offs_v, v_ok,
                             M_PAD, M_PAD, SOFTMAX)


@triton.jit
def _state_product(at, st_ptr, sidx, DV, offs_m, offs_v, v_ok, M_PAD: tl.constexpr, STATE_BF16: tl.constexpr,
                   STATE_PRECISION: tl.constexpr, acc):
    """acc + (a S)^T [BDV, C] for the features at = a^T [M_PAD, C] (float32) and the stored state
    S [M_PAD, BDV] at index sidx (bf16, or float32 read at STATE_PRECISION)."""
    s = tl.load(st_ptr + (sidx * M_PAD + offs_m[:, None]) * DV + offs_v[None, :], mask=v_ok[None, :], other=0.0)
    if STATE_BF16:
        prod = tl.dot(tl.trans(s), at.to(tl.bfloat16), acc)
    else:
        prod = tl.dot(tl.trans(s), at, acc, input_precision=STATE_PRECISION)
    return prod


@triton.autotune(configs=list({id(c): c for mode in (True, False) for c in _tuned(output_configs(mode))}.values()),
                 key=["LEN_BUCKET", "M_PAD", "D_PAD", "DV", "CAUSAL", "SOFTMAX", "HAS_KEEP", "ELEMENT_SIZE",
                      "STATE_LEN"],
                 prune_configs_by={"early_config_prune": _prune_output_configs})
@triton.jit
def _chunk_output_kernel(
    q_ptr, k_ptr, v_ptr, p_ptr, keep_ptr, st_ptr, sz_ptr, sc_ptr, e_ptr, ez_ptr, ec_ptr, o_ptr,
    H, N, D, DV, M, SEG_LEN, NSTATE, NSEG, LEN_BUCKET, logit_scale, norm_scale, inv_sqrt_m, eps,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, spm, spd,
    CAUSAL: tl.constexpr, HAS_KEEP: tl.constexpr, SOFTMAX: tl.constexpr, M_PAD: tl.constexpr,
    D_PAD: tl.constexpr, ELEMENT_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    STATE_PRECISION: tl.constexpr, STATE_BF16: tl.constexpr, MASK_F: tl.constexpr, STATE_LEN: tl.constexpr,
    HAS_ENTRY: tl.constexpr, CHUNK: tl.constexpr, BDV: tl.constexpr,
):
    # One chunk of CHUNK queries (grid axis 0: up to 2**31 - 1 chunks), one block of value dims;
    # no loop-carried state.
    logit_scale, norm_scale, inv_sqrt_m, eps = _float32_scalars(logit_scale, norm_scale, inv_sqrt_m, eps)
    cid, dvb, bh, b, h = _program(H)
    offs_m, offs_d, offs_v, m_ok, d_ok, v_ok = _lanes(0, dvb, M, D, DV, M_PAD, D_PAD, BDV)
    offs_c = tl.arange(0, CHUNK)
    q_base = q_ptr + b * sqb + h * sqh
    o_base = o_ptr + b * sob + h * soh
    l0 = cid * CHUNK
    rows = (l0 + offs_c).to(tl.int64)
    r_ok = rows < N

    p = tl.load(p_ptr + offs_m[:, None] * spm + offs_d[None, :] * spd, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    qq = _load_rows(q_base, rows, r_ok, sqn, offs_d, d_ok, sqd)
    # the chunk's features transposed, at [m, CHUNK] (features along the products' M axis, which
    # the warps split: a float32 [CHUNK, m] tile would sit whole in every warp group)
    u = _products_t(qq, p, m_ok, SOFTMAX, MASK_F, DOT_PRECISION)
    if SOFTMAX:  # each query's own max taken out (a per-query constant: it cancels)
        at = tl.exp2(u * logit_scale - (tl.max(u, 0) * logit_scale)[None, :])
    else:
        at = _relu_t(u, inv_sqrt_m, eps, m_ok)
    # the stored state: non-causal the total, causal the state of the keys from the segment's
    # start to the last multiple of STATE_LEN at or before the chunk (relative to c_state) ...
    sidx = (bh * NSTATE + (l0 // STATE_LEN if CAUSAL else 0)).to(tl.int64)
    z = tl.load(sz_ptr + sidx * M_PAD + offs_m)
    a_lo = at.to(k_ptr.dtype.element_ty)  # the intra-chunk products' operand
    if CAUSAL and HAS_ENTRY:
        # ... plus the state entering the segment (the earlier segments, relative to c_e): both
        # products accumulate into one, the features scaled to the larger stabiliser first
        eidx = (bh * NSEG + l0 // SEG_LEN).to(tl.int64)
        c_s = tl.load(sc_ptr + sidx)
        c_e = tl.load(ec_ptr + eidx)
        c_state = tl.maximum(c_e, c_s)
        safe = tl.where(c_state == float("-inf"), 0.0, c_state)
        f_s = tl.exp2(c_s - safe)
        f_e = tl.exp2(c_e - safe)
        den = tl.sum(at * (z * f_s + tl.load(ez_ptr + eidx * M_PAD + offs_m) * f_e)[:, None], 0)
        num = _state_product(at * f_s, st_ptr, sidx, DV, offs_m, offs_v, v_ok, M_PAD, STATE_BF16, STATE_PRECISION,
                             tl.zeros((BDV, CHUNK), dtype=tl.float32))
        num = _state_product(at * f_e, e_ptr, eidx, DV, offs_m, offs_v, v_ok, M_PAD, STATE_BF16, STATE_PRECISION,
                             num)
    else:
        den = tl.sum(at * z[:, None], 0)
        num = _state_product(at, st_ptr, sidx, DV, offs_m, offs_v, v_ok, M_PAD, STATE_BF16, STATE_PRECISION,
                             tl.zeros((BDV, CHUNK), dtype=tl.float32))
        if CAUSAL:
            c_state = tl.load(sc_ptr + sidx)
    if CAUSAL:
        # the keys from the stored state's end to the chunk's queries, CHUNK at a time (the last
        # block is the chunk itself): masked products, each key s weighted exp2(c_s - M_l) with
        # M_l the running max of the stabilisers query l has seen (online, as in flash attention)
        k_base = k_ptr + b * skb + h * skh
        v_base = v_ptr + b * svb + h * svh
        m_run = tl.zeros((CHUNK,), dtype=tl.float32) + c_state
        for s0 in range((l0 // STATE_LEN) * STATE_LEN, l0 + CHUNK, CHUNK):
            krows = (s0 + offs_c).to(tl.int64)
            k_ok = krows < N
            kk = _load_rows(k_base, krows, k_ok, skn, offs_d, d_ok, skd)
            vv = _load_rows(v_base, krows, k_ok, svn, offs_v, v_ok, svd)
            valid = k_ok
            if HAS_KEEP:
                valid = valid & (tl.load(keep_ptr + b * N + krows, mask=k_ok, other=0) != 0)
            u = _products_t(kk, p, m_ok, SOFTMAX, MASK_F, DOT_PRECISION)
            if SOFTMAX:  # phi(k_s) = exp2(t_s - c_s), c_s the max of key s's logits (-inf: masked)
                c_rel = tl.max(u, 0) * logit_scale
                ck = c_rel + _key_bias(kk, valid, norm_scale)
                bt = tl.exp2(u * logit_scale - c_rel[None, :])
            else:
                bt = _relu_t(u, inv_sqrt_m, eps, m_ok) * tl.where(valid, 1.0, 0.0)[None, :]
            seen = offs_c[None, :] <= offs_c[:, None] + (l0 - s0)  # [query l, key s]: s <= l
            scores = tl.dot(tl.trans(a_lo), bt.to(vv.dtype), input_precision=DOT_PRECISION)
            if SOFTMAX:
                ck_seen = tl.where(seen, ck[None, :], float("-inf"))
                m_new = tl.maximum(m_run, tl.max(ck_seen, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_run - m_safe)  # rescales what the query has so far
                num = num * alpha[None, :]
                den = den * alpha
                scores = scores * tl.exp2(ck_seen - m_safe[:, None])
                m_run = m_new
            else:
                scores = tl.where(seen, scores, 0.0)
            num = tl.dot(tl.trans(vv), tl.trans(scores.to(vv.dtype)), num, input_precision=DOT_PRECISION)
            den += tl.sum(scores, 1)
    out = num / den[None, :]  # [BDV, CHUNK]
    tl.store(o_base + rows[None, :] * son + offs_v[:, None] * sod, out.to(o_ptr.dtype.element_ty),
             mask=r_ok[None, :] & v_ok[:, None])


@triton.jit
def _combine_kernel(s_ptr, z_ptr, c_ptr, os_ptr, oz_ptr, oc_ptr, G, DV,
                    CAUSAL: tl.constexpr, REVERSE: tl.constexpr, M_PAD: tl.constexpr, BF: tl.constexpr,
                    DV_PAD: tl.constexpr):
    # One feature block of one batch*head: the G partial states in order (REVERSE: last first),
    # each rescaled to the running max of the stabilisers seen; causal stores the sum before
    # each segment (exclusive), non-causal the total.
    fb = tl.program_id(0)
    bh = tl.program_id(1)
    offs_f = fb * BF + tl.arange(0, BF)
    offs_all = tl.arange(0, M_PAD)
    offs_v = tl.arange(0, DV_PAD)
    v_ok = offs_v < DV
    acc = tl.zeros((BF, DV_PAD), dtype=tl.float32)
    zacc = tl.zeros((BF,), dtype=tl.float32)
    ref = tl.max(tl.full((BF,), float("-inf"), tl.float32), 0)
    for i in range(0, G):
        g = i
        if REVERSE:
            g = G - 1 - i
        base = (bh * G + g).to(tl.int64) * M_PAD
        if CAUSAL:
            tl.store(os_ptr + (base + offs_f[:, None]) * DV + offs_v[None, :], acc.to(os_ptr.dtype.element_ty),
                     mask=v_ok[None, :])
            tl.store(oz_ptr + base + offs_f, zacc)
            if fb == 0:
                tl.store(oc_ptr + bh * G + g, ref)
        c_rows = tl.load(c_ptr + base + offs_f)
        new = tl.maximum(ref, tl.max(tl.load(c_ptr + base + offs_all), 0))
        safe = tl.where(new == float("-inf"), 0.0, new)
        f = tl.exp2(ref - safe)  # 0 while nothing was seen
        w = tl.exp2(c_rows - safe)
        part = tl.load(s_ptr + (base + offs_f[:, None]) * DV + offs_v[None, :], mask=v_ok[None, :], other=0.0)
        acc = acc * f + part * w[:, None]
        zacc = zacc * f + tl.load(z_ptr + base + offs_f) * w
        ref = new
    if not CAUSAL:
        out = bh.to(tl.int64) * M_PAD
        tl.store(os_ptr + (out + offs_f[:, None]) * DV + offs_v[None, :], acc.to(os_ptr.dtype.element_ty),
                 mask=v_ok[None, :])
        tl.store(oz_ptr + out + offs_f, zacc)
        if fb == 0:
            tl.store(oc_ptr + bh, ref)


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


def _segments(length: int, programs_per_segment: int, device: torch.device, min_len: int,
              unit: int = 64) -> tuple[int, int]:
    """(segment length, number of segments): about four programs per SM, segments >= min_len,
    of a multiple of ``unit`` tokens."""
    if device.type != "cuda":
        return _split(length, 2, max(16, unit))  # the interpreter: exercise the multi-segment path cheaply
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    wanted = triton.cdiv(4 * sms, max(1, programs_per_segment))
    return _split(length, max(1, min(wanted, 64, length // min_len)), unit)


def _split(length: int, wanted: int, unit: int = 16) -> tuple[int, int]:
    """Segments of a multiple of ``unit`` tokens (64: whole chunks for every config)."""
    seg_len = triton.cdiv(triton.cdiv(max(length, 1), max(1, wanted)), unit) * unit
    return seg_len, triton.cdiv(max(length, 1), seg_len)


def supported(num_features: int, head_dim: int, value_dim: int) -> bool:
    """Whether the kernels' register tiles fit these sizes (else use the C++ op)."""
    return num_features <= MAX_FEATURES and head_dim <= MAX_HEAD_DIM and value_dim <= MAX_HEAD_DIM


def _combine(states, zs, cs, causal: bool, launch=lambda kernel: kernel, reverse: bool = False,
             dtype=torch.float32):
    """One stabiliser per (batch*head [, segment]) for the partial states, by ``_combine_kernel``.

    states [BH, G, M_PAD, Dv], zs and cs [BH, G, M_PAD] float32 (cs: each feature row's
    stabiliser, a base-2 logit). Non-causal: the total state [BH, 1, ...] (its stabiliser
    cancels). Causal: the state entering each segment, the sum over the earlier segments
    g' < g (``reverse``: the later ones, g' > g), relative to their max c_g (-inf where
    nothing precedes), returned with it [BH, G]. The sum runs in a fixed order (deterministic),
    rescaling the running sum when the max grows. ``dtype``: the returned state's (z and c stay
    float32).
    """
    BH, G, M_PAD, DV = states.shape
    n_out = G if causal else 1
    state = states.new_empty(BH, n_out, M_PAD, DV, dtype=dtype)
    z = zs.new_empty(BH, n_out, M_PAD)
    c = cs.new_empty(BH, n_out)
    dv_pad = _pow2(DV)
    bf = min(M_PAD, max(16, 4096 // dv_pad))
    launch(_combine_kernel)[(triton.cdiv(M_PAD, bf), BH)](
        states, zs, cs, state, z, c, G, DV, CAUSAL=causal, REVERSE=reverse, M_PAD=M_PAD, BF=bf, DV_PAD=dv_pad,
    )  # Triton's default 4 warps
    return state, z, c


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


def key_states(pb: Problem, k, v, projection, causal: bool, seg_len: int, nseg: int, launch, config=None,
               dtype=torch.float32):
    """The key-value state of the keys, by ``_segment_state_kernel`` and ``_combine``.

    Non-causal: the total [BH, 1, M_PAD, DV], its normaliser and stabiliser [BH, 1]. Causal:
    the state entering each of ``nseg`` segments of ``seg_len`` keys. ``config``: one
    triton.Config instead of autotuning; ``dtype``: the returned state's.
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
    return _combine(states, zs, cs, causal, launch, dtype=dtype)


def _check_state_len(state_len: int, configs, name: str) -> None:
    for c in configs:
        if state_len % c.kwargs[name]:
            raise ValueError(f"favor_forward: state_len={state_len} must be a multiple of every {name} "
                             f"({c.kwargs[name]} in {c})")


def _walk(pb: Problem, k, v, projection, state_len: int, seg_len: int, nseg: int, state_dtype, launch, config=None):
    """Causal: the states every ``state_len`` keys of each segment, by ``_walk_kernel``, and the
    states entering each segment (``_combine`` of the segments' totals; none for one segment).

    Returns (st, sz, sc, e, ez, ec): st [BH, cdiv(S, state_len), M_PAD, DV] in ``state_dtype``,
    its normalisers sz [..., M_PAD] and stabilisers sc [BH, cdiv(S, state_len)] (float32),
    and the segments' entering states e, ez, ec [BH, nseg, ...] alike (st, sz, sc for one
    segment).
    """
    kernel, meta = (_walk_kernel, {}) if config is None else (_walk_kernel.fn, _config_meta(config))
    _check_state_len(state_len, WALK_CONFIGS if config is None else [config], "BLOCK_N")
    BH, S, M_PAD, DV = pb.BH, pb.S, pb.M_PAD, pb.DV
    nstate = triton.cdiv(S, state_len)
    f32 = dict(device=k.device, dtype=torch.float32)
    st = torch.empty(BH, nstate, M_PAD, DV, device=k.device, dtype=state_dtype)
    sz = torch.empty(BH, nstate, M_PAD, **f32)
    sc = torch.empty(BH, nstate, **f32)
    totals = nseg > 1
    if totals:
        tot = torch.empty(BH, nseg, M_PAD, DV, **f32)
        tz = torch.empty(BH, nseg, M_PAD, **f32)
        tc = torch.empty(BH, nseg, M_PAD, **f32)
    else:  # not written (separate tensors: a kernel's stored arguments must not alias under torch.compile)
        tot, tz, tc = (torch.empty(1, **f32) for _ in range(3))
    launch(kernel)[lambda meta: (triton.cdiv(DV, meta["BDV"]), nseg, BH)](
        k, v, projection, pb.keep, st, sz, sc, tot, tz, tc,
        pb.H, S, pb.D, DV, pb.M, seg_len, nseg, nstate, _bucket(BH * S), *pb.scalars,
        *k.stride(), *v.stride(), *projection.stride(),
        MASK_F=pb.M < pb.M_PAD, STATE_LEN=state_len, TOTALS=totals, **pb.common, **meta,
    )
    if not totals:
        return st, sz, sc, st, sz, sc
    return (st, sz, sc, *_combine(tot, tz, tc, True, launch, dtype=state_dtype))


def favor_forward(q, k, v, projection, kernel_fn: str, causal: bool, key_padding_mask=None, segments: int = 0,
                  state_len: int = 0, launch=lambda kernel: kernel, configs=None):
    """FAVOR+ attention forward with the Triton kernels; same math as the C++ op.

    ``segments``: sequence segments of the key pass (0 = enough to fill the device).
    ``state_len`` (causal): keys between two stored states (0 = ``STATE_LEN``), a multiple of
    the walk's BLOCK_N and the output kernel's CHUNK. ``launch`` wraps each kernel before
    launching (torch.library.wrap_triton inside a triton_op). ``configs`` = (keys, output)
    triton.Configs bypasses autotuning, for tests of every config: keys is the walk kernel's
    config (causal) or the state kernel's (non-causal).
    """
    pb = problem(q, k, v, projection, kernel_fn, key_padding_mask, "favor_forward")
    B, H, N, S, DV, M_PAD, BH = pb.B, pb.H, pb.N, pb.S, pb.DV, pb.M_PAD, pb.BH
    out = q.new_empty(B, H, N, DV)
    if out.numel() == 0:
        return out
    dev = q.device
    # products with the float32 state: bf16 for bf16 inputs (its rounding is the output's: the
    # state is stored in bf16), tf32 for fp16 (a long sequence's state can pass fp16's 65504),
    # IEEE in the interpreter
    precision = pb.common["DOT_PRECISION"]
    state_precision = precision if q.dtype == torch.float32 or dev.type != "cuda" else "tf32"
    state_bf16 = q.dtype == torch.bfloat16 and dev.type == "cuda"
    state_dtype = torch.bfloat16 if state_bf16 else torch.float32
    output_kernel, meta_o = _chunk_output_kernel, {}
    if configs is not None:
        if not _runs_in(configs[1], causal):
            mode = "causal" if causal else "non-causal"
            raise ValueError(f"favor_forward: output config {configs[1]} does not run {mode} attention "
                             "(Triton miscompiles it in that mode; see _GPU_OUTPUT_TABLE)")
        output_kernel, meta_o = _chunk_output_kernel.fn, _config_meta(configs[1])
    key_config = None if configs is None else configs[0]

    if causal:
        state_len = state_len or STATE_LEN
        _check_state_len(state_len, output_configs(True) if configs is None else [configs[1]], "CHUNK")
        if segments > 0:
            seg_len, nseg = _split(S, segments, state_len)
        else:  # the walk is the serial part: enough segments to fill the device, but at least 1024
            # keys each: a short sequence walks in one segment (no _combine launch, no entering state)
            seg_len, nseg = _segments(S, BH * triton.cdiv(DV, 64), dev, 1024, unit=state_len)
        states = _walk(pb, k, v, projection, state_len, seg_len, nseg, state_dtype, launch, key_config)
        nstate = states[0].shape[1]
    else:
        if segments > 0:
            seg_len, nseg = _split(S, segments)
        else:
            seg_len, nseg = _segments(S, BH * triton.cdiv(M_PAD, 64), dev, 256)
        state, z, c = key_states(pb, k, v, projection, False, seg_len, nseg, launch, key_config, dtype=state_dtype)
        states = (state, z, c, state, z, c)
        state_len, nstate, nseg = 1, 1, 1
    launch(output_kernel)[lambda meta: (triton.cdiv(N, meta["CHUNK"]), triton.cdiv(DV, meta["BDV"]), BH)](
        q, k, v, projection, pb.keep, *states, out,
        H, N, pb.D, DV, pb.M, seg_len, nstate, nseg, _bucket(BH * N), *pb.scalars,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *projection.stride(),
        CAUSAL=causal, STATE_PRECISION=state_precision, STATE_BF16=state_bf16, MASK_F=pb.M < pb.M_PAD,
        STATE_LEN=state_len, HAS_ENTRY=causal and nseg > 1, **pb.common, **meta_o,
    )
    return out
