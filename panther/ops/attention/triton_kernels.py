"""Triton kernels for FAVOR+ attention (forward), non-causal and chunked causal.

Two kernels, flash-linear-attention style, with the feature maps fused in (phi(q), phi(k)
never reach memory):

1. ``_key_state_kernel``: grid (B*H, segments, Dv blocks). Each program streams the keys
   of one segment chunk by chunk and accumulates its key-value state
   sum_s phi(k_s) v_s^T [m, Dv] and normaliser sum_s phi(k_s) [m] in float32 registers.
   The softmax stabiliser is a running max over the segment (the state is rescaled when
   it grows), stored with the state.
2. ``_favor_output_kernel``: grid (B*H, segments, Dv blocks). Each program starts from a
   state (non-causal: the total; causal: the sum of the earlier segments) and, per chunk
   of C queries, adds phi(Q_c) S (inter-chunk) and, when causal, tril(phi(Q_c) phi(K_c)^T) V_c
   (intra-chunk) before updating S with the chunk's keys. Only O(segments) states touch
   memory; the sequence is split into segments so that B*H*segments*Dv-blocks programs
   fill the GPU.

Between them a few small torch ops rescale the segment states to one stabiliser per
(batch, head) and take their (exclusive) sums. Products use tensor cores in the input
dtype (bf16/fp16) with float32 accumulation; the running state stays float32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

RELU_EPS = 1e-6  # same epsilon as the C++ kernel's relu features


@triton.jit
def _softmax_logits(x, p, scale_in, m_ok, DOT_PRECISION: tl.constexpr):
    """x' P^T - |x'|^2 / 2 for a tile x [C, D_PAD] (float32 out), padded features -inf."""
    # Inductor passes Python floats as float64 scalars: keep the arithmetic in float32.
    xs = (x.to(tl.float32) * scale_in).to(tl.float32)
    u = tl.dot(xs.to(p.dtype), tl.trans(p), input_precision=DOT_PRECISION)
    t = u - 0.5 * tl.sum(xs * xs, 1)[:, None]
    return tl.where(m_ok[None, :], t, float("-inf"))


@triton.jit
def _relu_features(x, p, inv_sqrt_m, eps, ok, DOT_PRECISION: tl.constexpr):
    u = tl.dot(x.to(p.dtype), tl.trans(p), input_precision=DOT_PRECISION)
    return tl.where(ok, (tl.maximum(u, 0.0) * inv_sqrt_m + eps).to(tl.float32), 0.0)


@triton.jit
def _key_state_kernel(
    k_ptr, v_ptr, p_ptr, keep_ptr, state_ptr, z_ptr, c_ptr,
    H, S, D, DV, M, SEG_LEN, NSEG, scale_in, inv_sqrt_m, eps,
    skb, skh, skn, skd, svb, svh, svn, svd, spm, spd,
    HAS_KEEP: tl.constexpr, SOFTMAX: tl.constexpr, CHUNK: tl.constexpr, M_PAD: tl.constexpr,
    D_PAD: tl.constexpr, BDV: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    bh = tl.program_id(0)
    seg = tl.program_id(1)
    dvb = tl.program_id(2)
    b = bh // H
    h = bh % H
    offs_m = tl.arange(0, M_PAD)
    offs_d = tl.arange(0, D_PAD)
    offs_c = tl.arange(0, CHUNK)
    offs_v = dvb * BDV + tl.arange(0, BDV)
    m_ok = offs_m < M
    d_ok = offs_d < D
    v_ok = offs_v < DV
    p = tl.load(p_ptr + offs_m[:, None] * spm + offs_d[None, :] * spd, mask=m_ok[:, None] & d_ok[None, :], other=0.0)

    acc = tl.zeros((M_PAD, BDV), dtype=tl.float32)
    z = tl.zeros((M_PAD,), dtype=tl.float32)
    c_run = tl.max(tl.full((CHUNK,), float("-inf"), tl.float32), 0)
    start = seg * SEG_LEN
    end = tl.minimum(start + SEG_LEN, S)
    for s0 in range(start, end, CHUNK):
        rows = s0 + offs_c
        r_ok = rows < end
        kk = tl.load(k_ptr + b * skb + h * skh + rows[:, None] * skn + offs_d[None, :] * skd,
                     mask=r_ok[:, None] & d_ok[None, :], other=0.0)
        vv = tl.load(v_ptr + b * svb + h * svh + rows[:, None] * svn + offs_v[None, :] * svd,
                     mask=r_ok[:, None] & v_ok[None, :], other=0.0)
        valid = r_ok
        if HAS_KEEP:
            valid = valid & (tl.load(keep_ptr + b * S + rows, mask=r_ok, other=0) != 0)
        ok = valid[:, None] & m_ok[None, :]
        if SOFTMAX:
            t = tl.where(ok, _softmax_logits(kk, p, scale_in, m_ok, DOT_PRECISION), float("-inf"))
            c_new = tl.maximum(c_run, tl.max(tl.max(t, 1), 0))
            c_safe = tl.where(c_new == float("-inf"), 0.0, c_new)
            alpha = tl.exp(c_run - c_safe)  # rescale the state to the new stabiliser
            acc = acc * alpha
            z = z * alpha
            c_run = c_new
            phi = tl.exp(t - c_safe)
        else:
            phi = _relu_features(kk, p, inv_sqrt_m, eps, ok, DOT_PRECISION)
        acc = tl.dot(tl.trans(phi.to(vv.dtype)), vv, acc, input_precision=DOT_PRECISION)
        z += tl.sum(phi, 0)

    base = bh * NSEG + seg
    tl.store(state_ptr + (base * M_PAD + offs_m[:, None]) * DV + offs_v[None, :], acc, mask=v_ok[None, :])
    if dvb == 0:
        tl.store(z_ptr + base * M_PAD + offs_m, z)
        tl.store(c_ptr + base, c_run)


@triton.jit
def _favor_output_kernel(
    q_ptr, k_ptr, v_ptr, p_ptr, keep_ptr, state_ptr, z_ptr, c_ptr, o_ptr,
    H, N, D, DV, M, SEG_LEN, NSTATE, scale_in, inv_sqrt_m, eps,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, spm, spd,
    CAUSAL: tl.constexpr, HAS_KEEP: tl.constexpr, SOFTMAX: tl.constexpr, CHUNK: tl.constexpr,
    M_PAD: tl.constexpr, D_PAD: tl.constexpr, BDV: tl.constexpr, DOT_PRECISION: tl.constexpr,
    STATE_PRECISION: tl.constexpr,
):
    bh = tl.program_id(0)
    seg = tl.program_id(1)
    dvb = tl.program_id(2)
    b = bh // H
    h = bh % H
    offs_m = tl.arange(0, M_PAD)
    offs_d = tl.arange(0, D_PAD)
    offs_c = tl.arange(0, CHUNK)
    offs_v = dvb * BDV + tl.arange(0, BDV)
    m_ok = offs_m < M
    d_ok = offs_d < D
    v_ok = offs_v < DV
    p = tl.load(p_ptr + offs_m[:, None] * spm + offs_d[None, :] * spd, mask=m_ok[:, None] & d_ok[None, :], other=0.0)

    sidx = bh * NSTATE + (seg if CAUSAL else 0)
    state = tl.load(state_ptr + (sidx * M_PAD + offs_m[:, None]) * DV + offs_v[None, :], mask=v_ok[None, :], other=0.0)
    z = tl.load(z_ptr + sidx * M_PAD + offs_m)
    c_key = 0.0
    if CAUSAL and SOFTMAX:
        c_key = tl.load(c_ptr + bh)
    causal_mask = offs_c[None, :] <= offs_c[:, None]

    start = seg * SEG_LEN
    end = tl.minimum(start + SEG_LEN, N)
    for l0 in range(start, end, CHUNK):
        rows = l0 + offs_c
        r_ok = rows < end
        qq = tl.load(q_ptr + b * sqb + h * sqh + rows[:, None] * sqn + offs_d[None, :] * sqd,
                     mask=r_ok[:, None] & d_ok[None, :], other=0.0)
        if SOFTMAX:
            t = _softmax_logits(qq, p, scale_in, m_ok, DOT_PRECISION)
            a = tl.exp(t - tl.max(t, 1)[:, None])  # per-row stabiliser: cancels in num / den
        else:
            a = _relu_features(qq, p, inv_sqrt_m, eps, m_ok[None, :], DOT_PRECISION)
        num = tl.dot(a, state, input_precision=STATE_PRECISION)
        den = tl.sum(a * z[None, :], 1)
        if CAUSAL:
            kk = tl.load(k_ptr + b * skb + h * skh + rows[:, None] * skn + offs_d[None, :] * skd,
                         mask=r_ok[:, None] & d_ok[None, :], other=0.0)
            vv = tl.load(v_ptr + b * svb + h * svh + rows[:, None] * svn + offs_v[None, :] * svd,
                         mask=r_ok[:, None] & v_ok[None, :], other=0.0)
            valid = r_ok
            if HAS_KEEP:
                valid = valid & (tl.load(keep_ptr + b * N + rows, mask=r_ok, other=0) != 0)
            ok = valid[:, None] & m_ok[None, :]
            if SOFTMAX:
                tk = _softmax_logits(kk, p, scale_in, m_ok, DOT_PRECISION)
                phi = tl.where(ok, tl.exp(tk - c_key), 0.0)
            else:
                phi = _relu_features(kk, p, inv_sqrt_m, eps, ok, DOT_PRECISION)
            phi_lp = phi.to(vv.dtype)
            scores = tl.dot(a.to(vv.dtype), tl.trans(phi_lp), input_precision=DOT_PRECISION)
            scores = tl.where(causal_mask, scores, 0.0)
            num = tl.dot(scores.to(vv.dtype), vv, num, input_precision=DOT_PRECISION)
            den += tl.sum(scores, 1)
            state = tl.dot(tl.trans(phi_lp), vv, state, input_precision=DOT_PRECISION)
            z += tl.sum(phi, 0)
        out = num / den[:, None]
        tl.store(o_ptr + b * sob + h * soh + rows[:, None] * son + offs_v[None, :] * sod,
                 out.to(o_ptr.dtype.element_ty), mask=r_ok[:, None] & v_ok[None, :])


def _pow2(n: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(n))


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _segments(length: int, chunk: int, programs_per_segment: int, wanted: int, device) -> tuple[int, int]:
    """(segment length, number of segments): enough programs to fill the device twice."""
    n_chunks = triton.cdiv(max(length, 1), chunk)
    if wanted <= 0:
        wanted = triton.cdiv(2 * _num_sms(device), programs_per_segment)
    per_segment = triton.cdiv(n_chunks, max(1, min(wanted, n_chunks)))
    seg_len = per_segment * chunk
    return seg_len, triton.cdiv(max(length, 1), seg_len)


def favor_forward(q, k, v, projection, kernel_fn: str, causal: bool, key_padding_mask=None,
                  chunk: int = 0, segments: int = 0, launch=lambda kernel: kernel):
    """FAVOR+ attention forward with the Triton kernels; same math as the C++ op.

    ``chunk``: tokens per chunk (rounded up to a power of two >= 16; 0 = by feature count).
    ``segments``: sequence segments (0 = enough to fill the device). ``launch`` wraps each
    kernel before launching (torch.library.wrap_triton inside a triton_op).
    """
    B, H, N, D = q.shape
    S, DV, M = k.shape[2], v.shape[3], projection.shape[0]
    M_PAD, D_PAD = _pow2(M), _pow2(D)
    BDV = min(_pow2(DV), 64)
    while M_PAD * BDV > 8192 and BDV > 16:  # keep the float32 state tile within registers
        BDV //= 2
    CHUNK = _pow2(chunk) if chunk > 0 else (64 if M_PAD <= 128 else 32)
    num_warps = 4 if M_PAD * BDV <= 4096 else 8
    NDV = triton.cdiv(DV, BDV)
    BH = B * H
    softmax = kernel_fn == "softmax"
    dev = q.device
    keep = (~key_padding_mask).to(torch.int8).contiguous() if key_padding_mask is not None else q
    common = dict(scale_in=float(D) ** -0.25, inv_sqrt_m=1.0 / math.sqrt(M), eps=RELU_EPS)
    precision = _dot_precision(q.dtype)
    state_precision = "ieee" if q.dtype == torch.float32 and precision == "ieee" else "tf32"
    if dev.type != "cuda":
        state_precision = "ieee"

    seg_len, nseg = _segments(S, CHUNK, BH * NDV, segments, dev)
    states = torch.empty(BH, nseg, M_PAD, DV, device=dev, dtype=torch.float32)
    zs = torch.empty(BH, nseg, M_PAD, device=dev, dtype=torch.float32)
    cs = torch.empty(BH, nseg, device=dev, dtype=torch.float32)
    launch(_key_state_kernel)[(BH, nseg, NDV)](
        k, v, projection, keep, states, zs, cs,
        H, S, D, DV, M, seg_len, nseg, common["scale_in"], common["inv_sqrt_m"], common["eps"],
        *k.stride(), *v.stride(), *projection.stride(),
        HAS_KEEP=key_padding_mask is not None, SOFTMAX=softmax, CHUNK=CHUNK, M_PAD=M_PAD, D_PAD=D_PAD, BDV=BDV,
        DOT_PRECISION=precision, num_warps=num_warps,
    )
    # One stabiliser per (batch, head): rescale every segment's state to it.
    c_key = cs.amax(1, keepdim=True)
    c_key = torch.where(torch.isfinite(c_key), c_key, torch.zeros_like(c_key))
    if softmax:
        w = torch.exp(cs - c_key)
        states = states * w[:, :, None, None]
        zs = zs * w[:, :, None]
    if causal:
        states = states.cumsum(1) - states  # state entering each segment
        zs = zs.cumsum(1) - zs
        q_seg_len, q_nseg, nstate = seg_len, nseg, nseg
    else:
        states = states.sum(1, keepdim=True)
        zs = zs.sum(1, keepdim=True)
        q_seg_len, q_nseg = _segments(N, CHUNK, BH * NDV, 0 if segments <= 0 else segments, dev)
        nstate = 1
    states = states.contiguous()
    zs = zs.contiguous()
    c_key = c_key.reshape(BH).contiguous()
    out = q.new_empty(B, H, N, DV)
    launch(_favor_output_kernel)[(BH, q_nseg, NDV)](
        q, k, v, projection, keep, states, zs, c_key, out,
        H, N, D, DV, M, q_seg_len, nstate, common["scale_in"], common["inv_sqrt_m"], common["eps"],
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *projection.stride(),
        CAUSAL=causal, HAS_KEEP=key_padding_mask is not None, SOFTMAX=softmax, CHUNK=CHUNK, M_PAD=M_PAD,
        D_PAD=D_PAD, BDV=BDV, DOT_PRECISION=precision, STATE_PRECISION=state_precision, num_warps=num_warps,
    )
    return out
