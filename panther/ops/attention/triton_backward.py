"""Triton kernels for the FAVOR+ attention backward, non-causal and chunked causal.

Notation (base-2 logits and stabilisers as in triton_kernels.py): a_l = phi(q_l) with its
row max r_l taken out, b_s = phi(k_s), den_l = a_l . z_l, out_l = a_l S_l / den_l, g_l =
dout_l, delta_l = out_l . g_l, and Q_l = a_l / den_l, the normalised query features (every
per-query constant cancels in Q_l). Then

    d phi(q_l) = (S_l g_l - delta_l z_l) / den_l
    dS = sum_l Q_l g_l^T,  dz = -sum_l Q_l delta_l   (causal: over l >= s, for key s)
    dv_s = dS^T b_s,  d phi(k_s) = dS v_s + dz

chained through the feature maps: softmax dx = D^-1/4 (du P) - D^-1/2 sum(du) x with
du = d phi * phi (queries lose the second term: out_l is invariant to scaling a_l, so
sum(d phi(q_l) * a_l) = 0 exactly), relu du = d phi / sqrt(m) where x p > 0. Masked keys
have b_s = 0 and get zero gradients. A query that sees no key (causal, the first keys
masked: its output is 0/0) gets dq = 0 and adds nothing to dk, dv. Causal softmax: key s
reaches query l with weight exp2(c_s - M_l) (c_s: the key's row max, M_l = max_{s' <= l}
c_s', as in the forward), recomputed exactly as the forward computes it.

The kernels, each grid (value-dim blocks or feature blocks, segments, B*H), parallel over
segments with deterministic partial sums (no atomics):

1. the forward's key states (triton_kernels.key_states), recomputed.
2. ``_dq_kernel``: walks its segment's queries by chunks from the state entering the
   segment, as the forward's output kernel does (causal: the intra-chunk masked products
   and the running state), and gives dq, plus per query the log-normaliser
   lse_l = r_l + log2(den_l) (so Q_l = exp2(t_l - lse_l)), delta_l from the saved output,
   and M_l (causal softmax).
3. ``_query_state_kernel``: each segment's partial sum_l Q_l g_l^T and -sum_l Q_l delta_l
   over its queries, feature block by feature block (like the forward's state kernel);
   ``_combine`` sums them (non-causal: the total; causal, in reverse order: the sum over
   the later segments, entering each segment from the right). Causal softmax
   keeps it relative to the largest -M_l it holds: query l enters with weight
   exp2(-M_l - c') <= 1, key s reads it with weight exp2(c_s + c') <= 1 (c_s <= M_l).
4. ``_dkv_kernel``: walks its segment's keys by chunks, backwards when causal (intra-chunk
   products with the chunk's own queries, then the chunk's queries join the state), and
   gives dk and dv.

Value dims wider than one block (``value_block``, 64 on GPUs) run one program per block:
dv is per block; dq and dk are sums over the blocks (partials in float32, summed after).
Products of the inputs run in the input dtype; products with a float32 quantity of the
backward (states, normalised features, gradients of features) run in bf16 for bf16 inputs,
tf32 for fp16 inputs (those quantities can leave fp16's range) and as the forward's for
float32, all accumulating in float32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .triton_kernels import (
    _INTERPRET,
    _bucket,
    _causal_weights,
    _combine,
    _config_meta,
    _features,
    _features_of,
    _float32_scalars,
    _key_features,
    _lanes,
    _load_rows,
    _program,
    _query_features,
    _running_max,
    _segments,
    _split,
    _store_partial_state,
    _tuned,
    key_states,
    problem,
)

LN2 = tl.constexpr(math.log(2.0))  # kernels read globals only as constexprs

GPU_DQ_CONFIGS = [
    triton.Config({"CHUNK": c}, num_warps=w, num_stages=s)
    for c, w, s in ((32, 8, 2), (64, 8, 2), (16, 4, 2), (32, 4, 2), (64, 8, 1))
]
GPU_QUERY_STATE_CONFIGS = [
    triton.Config({"BF": bf, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bf, bn, w, s in ((64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3), (64, 64, 4, 2), (128, 128, 8, 2))
]
GPU_DKV_CONFIGS = [
    # no 64-key chunks: the causal kernel holds three [C, m] float32 tiles besides the state
    # (64 would spill heavily, and float32 inputs would need more shared memory than an H100 has)
    triton.Config({"CHUNK": c}, num_warps=w, num_stages=s)
    for c, w, s in ((32, 8, 2), (16, 8, 2), (32, 4, 2), (16, 4, 2), (16, 8, 1))
]
GPU_VALUE_BLOCK = 64  # value dims per program of the dq and dkv kernels
_INTERPRETER_CHUNK = [triton.Config({"CHUNK": 16}, num_warps=4, num_stages=1)]
DQ_CONFIGS = _INTERPRETER_CHUNK if _INTERPRET else GPU_DQ_CONFIGS
QUERY_STATE_CONFIGS = ([triton.Config({"BF": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)] if _INTERPRET
                       else GPU_QUERY_STATE_CONFIGS)
DKV_CONFIGS = _INTERPRETER_CHUNK if _INTERPRET else GPU_DKV_CONFIGS
VALUE_BLOCK = 16 if _INTERPRET else GPU_VALUE_BLOCK


@triton.jit
def _ddot(a, b, acc, DERIVED_BF16: tl.constexpr, DERIVED_PRECISION: tl.constexpr):
    """a b + acc where an operand is a float32 quantity of the backward: bf16 operands for
    bf16 inputs, else float32 operands at DERIVED_PRECISION."""
    if DERIVED_BF16:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=DERIVED_PRECISION)


@triton.autotune(configs=_tuned(DQ_CONFIGS),
                 key=["LEN_BUCKET", "M_PAD", "D_PAD", "DV", "CAUSAL", "SOFTMAX", "HAS_KEEP", "ELEMENT_SIZE"])
@triton.jit
def _dq_kernel(
    q_ptr, k_ptr, v_ptr, p_ptr, keep_ptr, g_ptr, o_ptr, state_ptr, z_ptr, c_ptr, dq_ptr, lse_ptr, mrow_ptr,
    delta_ptr,
    H, N, D, DV, M, SEG_LEN, NSTATE, LEN_BUCKET, logit_scale, norm_scale, inv_sqrt_m, eps,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sgb, sgh, sgn, sgd, sob, soh, son, sod,
    sdp, sdb, sdh, sdn, sdd, spm, spd,
    CAUSAL: tl.constexpr, HAS_KEEP: tl.constexpr, SOFTMAX: tl.constexpr, M_PAD: tl.constexpr,
    D_PAD: tl.constexpr, ELEMENT_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DERIVED_PRECISION: tl.constexpr, DERIVED_BF16: tl.constexpr, BDV: tl.constexpr, CHUNK: tl.constexpr,
):
    logit_scale, norm_scale, inv_sqrt_m, eps = _float32_scalars(logit_scale, norm_scale, inv_sqrt_m, eps)
    dvb, seg, bh, b, h = _program(H)
    first = dvb == 0  # the value block that adds the delta terms (and stores the per-query numbers)
    offs_m, offs_d, offs_v, m_ok, d_ok, v_ok = _lanes(0, dvb, M, D, DV, M_PAD, D_PAD, BDV)
    offs_c = tl.arange(0, CHUNK)
    offs_b = tl.arange(0, BDV)
    q_base = q_ptr + b * sqb + h * sqh
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    g_base = g_ptr + b * sgb + h * sgh
    o_base = o_ptr + b * sob + h * soh
    dq_base = dq_ptr + dvb.to(tl.int64) * sdp + b * sdb + h * sdh

    sidx = (bh * NSTATE + (seg if CAUSAL else 0)).to(tl.int64)
    state = tl.load(state_ptr + (sidx * M_PAD + offs_m[:, None]) * DV + offs_v[None, :], mask=v_ok[None, :],
                    other=0.0)
    z = tl.load(z_ptr + sidx * M_PAD + offs_m)
    c_state = tl.load(c_ptr + sidx)
    causal_mask = offs_c[None, :] <= offs_c[:, None]  # [query l, key s]: s <= l
    scale = logit_scale * LN2  # D^-1/4

    start = seg * SEG_LEN
    end = tl.minimum(start + SEG_LEN, N)
    for l0 in range(start, end, CHUNK):
        rows = (l0 + offs_c).to(tl.int64)
        r_ok = rows < end
        p = tl.load(p_ptr + offs_m[:, None] * spm + offs_d[None, :] * spd, mask=m_ok[:, None] & d_ok[None, :],
                    other=0.0)
        qq = _load_rows(q_base, rows, r_ok, sqn, offs_d, d_ok, sqd)
        a, r, uq = _query_features(qq, p, logit_scale, norm_scale, inv_sqrt_m, eps, m_ok[None, :], SOFTMAX,
                                   DOT_PRECISION)
        delta = tl.zeros((CHUNK,), dtype=tl.float32)  # out . dout over every value dim
        for v0 in range(0, DV, BDV):
            cols = v0 + offs_b
            ok = r_ok[:, None] & (cols < DV)[None, :]
            gg = tl.load(g_base + rows[:, None] * sgn + cols[None, :] * sgd, mask=ok, other=0.0)
            oo = tl.load(o_base + rows[:, None] * son + cols[None, :] * sod, mask=ok, other=0.0)
            delta += tl.sum(gg.to(tl.float32) * oo.to(tl.float32), 1)
        # a query that sees no key (causal, masked first keys) has output 0/0: NaN, which must not
        # reach the other gradients through delta (its own gets 0; its Q is 0, see lse below)
        delta = tl.where(delta == delta, delta, 0.0)
        dterm = tl.where(first, delta, 0.0)
        g = _load_rows(g_base, rows, r_ok, sgn, offs_v, v_ok, sgd)
        den = tl.sum(a * z[None, :], 1)
        # d phi(q) * den: S g - delta z, the inter-chunk part
        dphi = _ddot(g, tl.trans(state), tl.zeros((CHUNK, M_PAD), dtype=tl.float32), DERIVED_BF16,
                     DERIVED_PRECISION)
        dphi -= dterm[:, None] * z[None, :]
        m_row = tl.zeros((CHUNK,), dtype=tl.float32)
        if CAUSAL:
            kk = _load_rows(k_base, rows, r_ok, skn, offs_d, d_ok, skd)
            vv = _load_rows(v_base, rows, r_ok, svn, offs_v, v_ok, svd)
            valid = r_ok
            if HAS_KEEP:
                valid = valid & (tl.load(keep_ptr + b * N + rows, mask=r_ok, other=0) != 0)
            bk, ck, _ = _key_features(kk, p, logit_scale, norm_scale, inv_sqrt_m, eps, valid[:, None] & m_ok[None, :],
                                      SOFTMAX, DOT_PRECISION)
            if SOFTMAX:
                m_row, w_inter, w_intra = _causal_weights(ck, c_state, causal_mask)
                den = den * w_inter
                dphi = dphi * w_inter[:, None]
            else:
                w_intra = tl.where(causal_mask, 1.0, 0.0)
            # the forward's intra-chunk scores give den; (g.v_s - delta) w the intra part of d phi
            scores = tl.dot(a.to(vv.dtype), tl.trans(bk.to(vv.dtype)), input_precision=DOT_PRECISION) * w_intra
            den += tl.sum(scores, 1)
            gv = tl.dot(g, tl.trans(vv), input_precision=DOT_PRECISION)
            dphi = _ddot(w_intra * (gv - dterm[:, None]), bk, dphi, DERIVED_BF16, DERIVED_PRECISION)
            if SOFTMAX:  # the state absorbs the chunk as in the forward
                c_state, beta, w_keys = _running_max(c_state, ck)
                state = state * beta
                z = z * beta
                bk = bk * w_keys[:, None]
            state = tl.dot(tl.trans(bk.to(vv.dtype)), vv, state, input_precision=DOT_PRECISION)
            z += tl.sum(bk, 0)
        # den = 0 (a query that sees no key; its output is 0/0): no gradient, Q = 0 (lse = inf)
        seen = den > 0
        inv_den = tl.where(seen, 1.0 / tl.where(seen, den, 1.0), 0.0)
        log_den = tl.log2(tl.where(seen, den, 1.0))
        if SOFTMAX:
            du = dphi * (a * inv_den[:, None])
            lse = tl.where(seen, r + log_den, float("inf"))
        else:
            du = dphi * tl.where(uq > 0, inv_sqrt_m * inv_den[:, None], 0.0)
            lse = tl.where(seen, log_den, float("inf"))
        dq = _ddot(du, p, tl.zeros((CHUNK, D_PAD), dtype=tl.float32), DERIVED_BF16, DERIVED_PRECISION)
        if SOFTMAX:
            dq = dq * scale
        tl.store(dq_base + rows[:, None] * sdn + offs_d[None, :] * sdd, dq.to(dq_ptr.dtype.element_ty),
                 mask=r_ok[:, None] & d_ok[None, :])
        if first:
            stat = bh.to(tl.int64) * N + rows
            tl.store(lse_ptr + stat, lse, mask=r_ok)
            tl.store(delta_ptr + stat, delta, mask=r_ok)
            if CAUSAL and SOFTMAX:
                tl.store(mrow_ptr + stat, m_row, mask=r_ok)


@triton.jit
def _normalised_queries(t, lse, SOFTMAX: tl.constexpr):
    """Q = a / den from the query logits (softmax) or features (relu) t [R, F] and lse [R]."""
    if SOFTMAX:
        return tl.exp2(t - lse[:, None])
    return t * tl.exp2(-lse)[:, None]


@triton.autotune(configs=_tuned(QUERY_STATE_CONFIGS),
                 key=["LEN_BUCKET", "M_PAD", "D_PAD", "DV_PAD", "CAUSAL", "SOFTMAX", "ELEMENT_SIZE"])
@triton.jit
def _query_state_kernel(
    q_ptr, p_ptr, g_ptr, lse_ptr, mrow_ptr, delta_ptr, state_ptr, z_ptr, c_ptr,
    H, N, D, DV, M, SEG_LEN, NSEG, LEN_BUCKET, logit_scale, norm_scale, inv_sqrt_m, eps,
    sqb, sqh, sqn, sqd, sgb, sgh, sgn, sgd, spm, spd,
    CAUSAL: tl.constexpr, SOFTMAX: tl.constexpr, M_PAD: tl.constexpr, D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr, ELEMENT_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DERIVED_PRECISION: tl.constexpr, DERIVED_BF16: tl.constexpr, BF: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # One feature block of one segment's sum_l Q_l g_l^T [BF, DV] and -sum_l Q_l delta_l [BF].
    logit_scale, norm_scale, inv_sqrt_m, eps = _float32_scalars(logit_scale, norm_scale, inv_sqrt_m, eps)
    fb, seg, bh, b, h = _program(H)
    offs_f, offs_d, offs_v, f_ok, d_ok, v_ok = _lanes(fb, 0, M, D, DV, BF, D_PAD, DV_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    q_base = q_ptr + b * sqb + h * sqh
    g_base = g_ptr + b * sgb + h * sgh

    acc = tl.zeros((BF, DV_PAD), dtype=tl.float32)
    dz = tl.zeros((BF,), dtype=tl.float32)
    c_run = tl.max(tl.full((BLOCK_N,), float("-inf"), tl.float32), 0)
    start = seg * SEG_LEN
    end = tl.minimum(start + SEG_LEN, N)
    for l0 in range(start, end, BLOCK_N):
        rows = (l0 + offs_n).to(tl.int64)
        r_ok = rows < end
        qq = _load_rows(q_base, rows, r_ok, sqn, offs_d, d_ok, sqd)
        gg = _load_rows(g_base, rows, r_ok, sgn, offs_v, v_ok, sgd)
        p = tl.load(p_ptr + offs_f[:, None] * spm + offs_d[None, :] * spd, mask=f_ok[:, None] & d_ok[None, :],
                    other=0.0)
        stat = bh.to(tl.int64) * N + rows
        lse = tl.load(lse_ptr + stat, mask=r_ok, other=float("inf"))
        delta = tl.load(delta_ptr + stat, mask=r_ok, other=0.0)
        t = _features(qq, p, logit_scale, norm_scale, inv_sqrt_m, eps, r_ok[:, None] & f_ok[None, :], SOFTMAX, False,
                      DOT_PRECISION)
        qn = _normalised_queries(t, lse, SOFTMAX)
        if CAUSAL and SOFTMAX:
            # relative to the running max of -M_l; a query that sees no key (M_l = -inf) adds nothing
            m_row = tl.load(mrow_ptr + stat, mask=r_ok, other=float("-inf"))
            c_run, alpha, w = _running_max(c_run, tl.where(m_row == float("-inf"), float("-inf"), -m_row))
            acc = acc * alpha
            dz = dz * alpha
            qn = qn * w[:, None]
        acc = _ddot(tl.trans(qn), gg, acc, DERIVED_BF16, DERIVED_PRECISION)
        dz -= tl.sum(qn * delta[:, None], 0)

    # no stabiliser (non-causal, relu): 0
    _store_partial_state(state_ptr, z_ptr, c_ptr, acc, dz, c_run, bh, seg, NSEG, DV, offs_f, offs_v, v_ok, M_PAD, BF,
                         CAUSAL and SOFTMAX)


@triton.autotune(configs=_tuned(DKV_CONFIGS),
                 key=["LEN_BUCKET", "M_PAD", "D_PAD", "DV", "CAUSAL", "SOFTMAX", "HAS_KEEP", "ELEMENT_SIZE"])
@triton.jit
def _dkv_kernel(
    q_ptr, k_ptr, v_ptr, p_ptr, keep_ptr, g_ptr, lse_ptr, mrow_ptr, delta_ptr, state_ptr, z_ptr, c_ptr, ckey_ptr,
    dk_ptr, dv_ptr,
    H, S, D, DV, M, SEG_LEN, NSTATE, LEN_BUCKET, logit_scale, norm_scale, inv_sqrt_m, eps,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sgb, sgh, sgn, sgd,
    skp, sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd, spm, spd,
    CAUSAL: tl.constexpr, HAS_KEEP: tl.constexpr, SOFTMAX: tl.constexpr, M_PAD: tl.constexpr,
    D_PAD: tl.constexpr, ELEMENT_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DERIVED_PRECISION: tl.constexpr, DERIVED_BF16: tl.constexpr, BDV: tl.constexpr, CHUNK: tl.constexpr,
):
    logit_scale, norm_scale, inv_sqrt_m, eps = _float32_scalars(logit_scale, norm_scale, inv_sqrt_m, eps)
    dvb, seg, bh, b, h = _program(H)
    first = dvb == 0
    offs_m, offs_d, offs_v, m_ok, d_ok, v_ok = _lanes(0, dvb, M, D, DV, M_PAD, D_PAD, BDV)
    offs_c = tl.arange(0, CHUNK)
    q_base = q_ptr + b * sqb + h * sqh
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    g_base = g_ptr + b * sgb + h * sgh
    dk_base = dk_ptr + dvb.to(tl.int64) * skp + b * sdkb + h * sdkh
    dv_base = dv_ptr + b * sdvb + h * sdvh

    # dS (causal: over the queries after this segment, relative to c'), dz
    sidx = (bh * NSTATE + (seg if CAUSAL else 0)).to(tl.int64)
    dstate = tl.load(state_ptr + (sidx * M_PAD + offs_m[:, None]) * DV + offs_v[None, :], mask=v_ok[None, :],
                     other=0.0)
    dz = tl.load(z_ptr + sidx * M_PAD + offs_m)
    c_state = tl.load(c_ptr + sidx)
    c_key = tl.load(ckey_ptr + bh)  # non-causal softmax: the forward's stabiliser of every key
    c_key = tl.where(c_key == float("-inf"), 0.0, c_key)
    causal_mask = offs_c[None, :] <= offs_c[:, None]  # [query l, key s]: s <= l
    scale = logit_scale * LN2  # D^-1/4

    start = seg * SEG_LEN
    end = tl.minimum(start + SEG_LEN, S)
    n_chunks = tl.cdiv(end - start, CHUNK)
    for i in range(0, n_chunks):
        s0 = start + (n_chunks - 1 - i) * CHUNK  # causal: the later chunks first
        rows = (s0 + offs_c).to(tl.int64)
        r_ok = rows < end
        p = tl.load(p_ptr + offs_m[:, None] * spm + offs_d[None, :] * spd, mask=m_ok[:, None] & d_ok[None, :],
                    other=0.0)
        kk = _load_rows(k_base, rows, r_ok, skn, offs_d, d_ok, skd)
        vv = _load_rows(v_base, rows, r_ok, svn, offs_v, v_ok, svd)
        valid = r_ok
        if HAS_KEEP:
            valid = valid & (tl.load(keep_ptr + b * S + rows, mask=r_ok, other=0) != 0)
        ok = valid[:, None] & m_ok[None, :]
        # d phi(k) = dS v + dz and dv = dS^T phi(k), the part from the state
        db = _ddot(vv, tl.trans(dstate), tl.zeros((CHUNK, M_PAD), dtype=tl.float32), DERIVED_BF16,
                   DERIVED_PRECISION)
        db += tl.where(first, dz, 0.0)[None, :]
        if CAUSAL:
            bk, ck, uk = _key_features(kk, p, logit_scale, norm_scale, inv_sqrt_m, eps, ok, SOFTMAX, DOT_PRECISION)
            dv = _ddot(bk, dstate, tl.zeros((CHUNK, BDV), dtype=tl.float32), DERIVED_BF16, DERIVED_PRECISION)
            qq = _load_rows(q_base, rows, r_ok, sqn, offs_d, d_ok, sqd)
            g = _load_rows(g_base, rows, r_ok, sgn, offs_v, v_ok, sgd)
            stat = bh.to(tl.int64) * S + rows
            lse = tl.load(lse_ptr + stat, mask=r_ok, other=float("inf"))
            delta = tl.load(delta_ptr + stat, mask=r_ok, other=0.0)
            t = _features(qq, p, logit_scale, norm_scale, inv_sqrt_m, eps, m_ok[None, :], SOFTMAX, False, DOT_PRECISION)
            qn = _normalised_queries(t, lse, SOFTMAX)
            if SOFTMAX:
                m_row = tl.load(mrow_ptr + stat, mask=r_ok, other=float("-inf"))
                # key s reads the state with weight exp2(c_s + c') and query l with exp2(c_s - M_l)
                w_key = tl.exp2(ck + c_state)
                db = db * w_key[:, None]
                dv = dv * w_key[:, None]
                m_safe = tl.where(m_row == float("-inf"), 0.0, m_row)
                w_intra = tl.exp2(tl.where(causal_mask, ck[None, :] - m_safe[:, None], float("-inf")))
            else:
                w_intra = tl.where(causal_mask, 1.0, 0.0)
            scores = _ddot(qn, tl.trans(bk), tl.zeros((CHUNK, CHUNK), dtype=tl.float32), DERIVED_BF16,
                           DERIVED_PRECISION) * w_intra
            gv = tl.dot(g, tl.trans(vv), input_precision=DOT_PRECISION)
            pm = w_intra * (gv - tl.where(first, delta, 0.0)[:, None])
            db = _ddot(tl.trans(pm), qn, db, DERIVED_BF16, DERIVED_PRECISION)
            dv = _ddot(tl.trans(scores), g, dv, DERIVED_BF16, DERIVED_PRECISION)
            if SOFTMAX:  # the chunk's queries join the state, relative to the running max of -M_l
                c_state, beta, w_q = _running_max(c_state, tl.where(m_row == float("-inf"), float("-inf"), -m_row))
                dstate = dstate * beta
                dz = dz * beta
                qn = qn * w_q[:, None]
            dstate = _ddot(tl.trans(qn), g, dstate, DERIVED_BF16, DERIVED_PRECISION)
            dz -= tl.sum(qn * delta[:, None], 0)
        else:
            uk = tl.dot(kk, tl.trans(p), input_precision=DOT_PRECISION)
            bk = _features_of(uk, kk, logit_scale, norm_scale, inv_sqrt_m, eps, ok, SOFTMAX, True)
            if SOFTMAX:
                bk = tl.exp2(bk - c_key)
            dv = _ddot(bk, dstate, tl.zeros((CHUNK, BDV), dtype=tl.float32), DERIVED_BF16, DERIVED_PRECISION)
        if SOFTMAX:
            du = db * bk
            dk = _ddot(du, p, tl.zeros((CHUNK, D_PAD), dtype=tl.float32), DERIVED_BF16, DERIVED_PRECISION) * scale
            dk -= (tl.sum(du, 1) * (scale * scale))[:, None] * kk.to(tl.float32)
        else:
            du = db * tl.where((uk > 0) & ok, inv_sqrt_m, 0.0)
            dk = _ddot(du, p, tl.zeros((CHUNK, D_PAD), dtype=tl.float32), DERIVED_BF16, DERIVED_PRECISION)
        tl.store(dk_base + rows[:, None] * sdkn + offs_d[None, :] * sdkd, dk.to(dk_ptr.dtype.element_ty),
                 mask=r_ok[:, None] & d_ok[None, :])
        tl.store(dv_base + rows[:, None] * sdvn + offs_v[None, :] * sdvd, dv.to(dv_ptr.dtype.element_ty),
                 mask=r_ok[:, None] & v_ok[None, :])


def favor_backward(grad, q, k, v, projection, out, kernel_fn: str, causal: bool, key_padding_mask=None,
                   needs=(True, True, True), segments: int = 0, value_block: int = 0,
                   launch=lambda kernel: kernel, configs=None):
    """Gradients (dq, dk, dv) of FAVOR+ attention with the Triton kernels (None where not in ``needs``).

    ``out``: the forward's output (its row products with ``grad`` enter every gradient).
    ``segments``: sequence segments (0 = enough to fill the device); ``value_block``: value
    dims per program (0 = ``VALUE_BLOCK``); ``launch`` wraps each kernel before launching
    (torch.library.wrap_triton inside a triton_op); ``configs`` = (state, dq, query state,
    dkv) triton.Configs bypasses autotuning, for tests of every config.
    """
    pb = problem(q, k, v, projection, kernel_fn, key_padding_mask, "favor_backward")
    B, H, N, S, D, DV, BH, M_PAD = pb.B, pb.H, pb.N, pb.S, pb.D, pb.DV, pb.BH, pb.M_PAD
    need_q, need_k, need_v = (bool(n) for n in needs)
    if q.numel() == 0 or k.numel() == 0 or grad.numel() == 0 or not (need_q or need_k or need_v):
        zeros = [torch.zeros_like(t) if n else None for t, n in zip((q, k, v), (need_q, need_k, need_v))]
        return tuple(zeros)
    dev = q.device
    cuda = dev.type == "cuda"
    softmax = pb.softmax
    bdv = value_block or VALUE_BLOCK
    bdv = min(bdv, pb.DV_PAD)
    nvb = triton.cdiv(DV, bdv)
    precision = pb.common["DOT_PRECISION"]
    derived = dict(DERIVED_BF16=q.dtype == torch.bfloat16 and cuda,
                   DERIVED_PRECISION="tf32" if cuda and q.dtype == torch.float16 else precision)
    kernels = [_dq_kernel, _query_state_kernel, _dkv_kernel]
    metas = [{}, {}, {}]
    state_config = None
    if configs is not None:
        state_config = configs[0]
        kernels = [kern.fn for kern in kernels]
        metas = [_config_meta(c) for c in configs[1:]]
    dq_kernel, qs_kernel, dkv_kernel = kernels
    meta_dq, meta_qs, meta_dkv = metas

    if segments > 0:
        k_seg = q_seg = qs_seg = kv_seg = _split(N if causal else S, segments)
        if not causal:
            q_seg = qs_seg = _split(N, segments)
    elif causal:  # one segmentation for all: the dq and dkv kernels walk the same segments
        k_seg = q_seg = qs_seg = kv_seg = _segments(N, BH * nvb, dev, 256)
    else:
        k_seg = _segments(S, BH * triton.cdiv(M_PAD, 64), dev, 256)
        q_seg = _segments(N, BH * nvb, dev, 128)
        qs_seg = _segments(N, BH * triton.cdiv(M_PAD, 64), dev, 256)
        kv_seg = _segments(S, BH * nvb, dev, 128)

    # 1. the forward's key states
    state, z, c = key_states(pb, k, v, projection, causal, *k_seg, launch, state_config)

    # 2. dq and the per-query numbers
    f32 = dict(device=dev, dtype=torch.float32)
    lse = torch.empty(BH, N, **f32)
    delta = torch.empty(BH, N, **f32)
    mrow = torch.empty(BH, N, **f32) if causal and softmax else lse
    if nvb == 1:
        dq = torch.empty(B, H, N, D, device=dev, dtype=q.dtype)
        dq_part_stride = 0
    else:
        dq = torch.empty(nvb, B, H, N, D, **f32)
        dq_part_stride = dq.stride(0)
    dq_strides = dq.stride()[-4:]
    launch(dq_kernel)[(nvb, q_seg[1], BH)](
        q, k, v, projection, pb.keep, grad, out, state, z, c, dq, lse, mrow, delta,
        H, N, D, DV, pb.M, q_seg[0], state.shape[1], _bucket(BH * N), *pb.scalars,
        *q.stride(), *k.stride(), *v.stride(), *grad.stride(), *out.stride(),
        dq_part_stride, *dq_strides, *projection.stride(),
        CAUSAL=causal, BDV=bdv, **derived, **pb.common, **meta_dq,
    )
    if nvb > 1:
        dq = dq.sum(0).to(q.dtype)
    if not (need_k or need_v):
        return dq, None, None

    # 3. the query-side states: each segment's partial sums, combined
    qs_len, qs_n = qs_seg
    states = torch.empty(BH, qs_n, M_PAD, DV, **f32)
    zs = torch.empty(BH, qs_n, M_PAD, **f32)
    cs = torch.empty(BH, qs_n, M_PAD, **f32)
    launch(qs_kernel)[lambda meta: (triton.cdiv(M_PAD, meta["BF"]), qs_n, BH)](
        q, projection, grad, lse, mrow, delta, states, zs, cs,
        H, N, D, DV, pb.M, qs_len, qs_n, _bucket(BH * N), *pb.scalars,
        *q.stride(), *grad.stride(), *projection.stride(),
        CAUSAL=causal, SOFTMAX=softmax, M_PAD=M_PAD, D_PAD=pb.D_PAD, DV_PAD=pb.DV_PAD,
        ELEMENT_SIZE=q.element_size(), DOT_PRECISION=precision, **derived, **meta_qs,
    )
    # causal: the sum over the later segments (the reversed order)
    dstate, dz, dc = _combine(states, zs, cs, causal, launch, reverse=causal)

    # 4. dk and dv
    dv = torch.empty(B, H, S, DV, device=dev, dtype=v.dtype)
    if nvb == 1:
        dk = torch.empty(B, H, S, D, device=dev, dtype=k.dtype)
        dk_part_stride = 0
    else:
        dk = torch.empty(nvb, B, H, S, D, **f32)
        dk_part_stride = dk.stride(0)
    launch(dkv_kernel)[(nvb, kv_seg[1], BH)](
        q, k, v, projection, pb.keep, grad, lse, mrow, delta, dstate, dz, dc, c.reshape(BH, -1)[:, 0].contiguous(),
        dk, dv,
        H, S, D, DV, pb.M, kv_seg[0], dstate.shape[1], _bucket(BH * S), *pb.scalars,
        *q.stride(), *k.stride(), *v.stride(), *grad.stride(),
        dk_part_stride, *dk.stride()[-4:], *dv.stride(), *projection.stride(),
        CAUSAL=causal, BDV=bdv, **derived, **pb.common, **meta_dkv,
    )
    if nvb > 1:
        dk = dk.sum(0).to(k.dtype)
    return (dq if need_q else None, dk if need_k else None, dv if need_v else None)
