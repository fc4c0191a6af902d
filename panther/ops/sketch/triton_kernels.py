"""Triton kernels for applying sketches on the GPU (also run by Triton's CPU interpreter in CI).

sparse_scatter: out = S A along one axis, S [d, m] sparse with s non-zeros per column.
    The input is viewed as [pre, m, post]; each program loads one tile of A once and
    atomically adds its s signed copies into the output rows they hash to. The output
    (d x post per pre index) is small and stays in L2, so the kernel streams A once: the
    memory floor of a sketch. Accumulation is float32 (float64 for float64 inputs).
sparse_segment_sum: out = S A along one axis when A's rows along it are wide (post >= 16):
    the non-zeros are bucket-sorted by output row at operator creation (``order``: flat
    indices into rows/vals in output-row order, ``offsets``: segment starts), so one program
    owns one output row x column tile and sums its segment of input rows: no atomics,
    deterministic (narrower rows fall back to sparse_scatter and its atomics). Within a segment the input rows ascend (a stable sort), and the d x tiles
    programs are resident together, so they sweep A front to back at about the same pace:
    an input row read by one of its s output segments is still in L2 when the others ask,
    and HBM sees about one read of A even for s > 1.
sparse_gather: out = Sᵀ G (the adjoint): each output tile gathers s rows of G, no atomics.
fwht: orthonormal Walsh–Hadamard transform of rows of power-of-two length n <= MAX_FWHT_N,
    one read and one write per row: the butterfly runs in registers, stage h pairing
    entries j and j + h by a reshape to [.., n/2h, 2, h] and a split of the size-2 axis.
    Longer rows are split as H_n = H_a ⊗ H_b (two passes, see fwht()).
srht_sampled: y = R H_N D x along an axis that is not the last (only the d sampled outputs),
    reading A about once: see srht_sampled().
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

MAX_FWHT_N = 1 << 13  # longest row one program transforms in registers
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@triton.jit
def _pre_i_post_tile(PRE, M, POST, TILES_I, TILES_Q,
                     BLOCK_P: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_Q: tl.constexpr):
    # This program's (p, i, q) tile of a [PRE, M, POST] view, from a flat grid (the third grid
    # axis is limited to 65535 on CUDA): int64 offsets, the mask of i and the tile's mask.
    pid = tl.program_id(0)
    tq = pid % TILES_Q
    ti = (pid // TILES_Q) % TILES_I
    tp = pid // (TILES_Q * TILES_I)
    offs_p = (tp * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    offs_i = (ti * BLOCK_I + tl.arange(0, BLOCK_I)).to(tl.int64)
    offs_q = (tq * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    mask_i = offs_i < M
    mask = (offs_p < PRE)[:, None, None] & mask_i[None, :, None] & (offs_q < POST)[None, None, :]
    return offs_p, offs_i, offs_q, mask_i, mask


@triton.jit
def _sparse_scatter_kernel(
    a_ptr, rows_ptr, vals_ptr, out_ptr,
    PRE, M, POST, D, S, TILES_I, TILES_Q,
    BLOCK_P: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    offs_p, offs_i, offs_q, mask_i, mask = _pre_i_post_tile(PRE, M, POST, TILES_I, TILES_Q, BLOCK_P, BLOCK_I, BLOCK_Q)
    a = tl.load(
        a_ptr + offs_p[:, None, None] * (M * POST) + offs_i[None, :, None] * POST + offs_q[None, None, :],
        mask=mask, other=0.0,
    ).to(out_ptr.dtype.element_ty)
    out_base = out_ptr + offs_p[:, None, None] * (D * POST) + offs_q[None, None, :]
    for j in range(S):
        r = tl.load(rows_ptr + offs_i * S + j, mask=mask_i, other=0)
        v = tl.load(vals_ptr + offs_i * S + j, mask=mask_i, other=0.0).to(out_ptr.dtype.element_ty)
        tl.atomic_add(out_base + r[None, :, None] * POST, a * v[None, :, None], mask=mask)


@triton.jit
def _sparse_gather_kernel(
    g_ptr, rows_ptr, vals_ptr, out_ptr,
    PRE, M, POST, D, S, TILES_I, TILES_Q,
    BLOCK_P: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    offs_p, offs_i, offs_q, mask_i, mask = _pre_i_post_tile(PRE, M, POST, TILES_I, TILES_Q, BLOCK_P, BLOCK_I, BLOCK_Q)
    acc = tl.zeros((BLOCK_P, BLOCK_I, BLOCK_Q), dtype=tl.float64 if g_ptr.dtype.element_ty == tl.float64 else tl.float32)
    g_base = g_ptr + offs_p[:, None, None] * (D * POST) + offs_q[None, None, :]
    for j in range(S):
        r = tl.load(rows_ptr + offs_i * S + j, mask=mask_i, other=0)
        v = tl.load(vals_ptr + offs_i * S + j, mask=mask_i, other=0.0).to(acc.dtype)
        g = tl.load(g_base + r[None, :, None] * POST, mask=mask, other=0.0).to(acc.dtype)
        acc += g * v[None, :, None]
    tl.store(
        out_ptr + offs_p[:, None, None] * (M * POST) + offs_i[None, :, None] * POST + offs_q[None, None, :],
        acc.to(out_ptr.dtype.element_ty), mask=mask,
    )


@triton.jit
def _segment_sum_kernel(
    a_ptr, order_ptr, vals_ptr, offsets_ptr, out_ptr,
    M, POST, D, S, TILES_Q,
    BLOCK_T: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    pid = tl.program_id(0)
    tq = pid % TILES_Q
    r = (pid // TILES_Q) % D
    p = (pid // (TILES_Q * D)).to(tl.int64)
    offs_q = (tq * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    mask_q = offs_q < POST
    start = tl.load(offsets_ptr + r)
    end = tl.load(offsets_ptr + r + 1)
    acc = tl.zeros((BLOCK_Q,), dtype=tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32)
    a_base = a_ptr + p * M * POST
    for t0 in range(start, end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < end
        e = tl.load(order_ptr + offs_t, mask=mask_t, other=0).to(tl.int64)  # flat index into rows/vals
        v = tl.load(vals_ptr + e, mask=mask_t, other=0.0).to(acc.dtype)
        a = tl.load(a_base + (e // S)[:, None] * POST + offs_q[None, :],
                    mask=mask_t[:, None] & mask_q[None, :], other=0.0).to(acc.dtype)
        acc += tl.sum(a * v[:, None], axis=0)
    tl.store(out_ptr + p * D * POST + r * POST + offs_q, acc.to(out_ptr.dtype.element_ty), mask=mask_q)


SEGMENT_MIN_POST = 16  # narrower rows (< 64 bytes in float32) read too little per gather: scatter


def sparse_segment_sum(A, rows, vals, order, offsets, d: int, dim: int, launch=lambda kernel: kernel):
    """S A along ``dim`` (already wrapped) through the bucket-sorted non-zeros (see the module
    docstring); falls back to ``sparse_scatter`` when the rows along ``dim`` are narrow."""
    pre, m, post = _layout(A.shape, dim)
    if post < SEGMENT_MIN_POST:
        return sparse_scatter(A, rows, vals, d, dim, launch)
    A = A.contiguous()
    out_shape = list(A.shape)
    out_shape[dim] = d
    out = torch.empty(out_shape, dtype=A.dtype, device=A.device)
    if out.numel() == 0:
        return out
    # Small tiles (2048 elements: ~60 registers a thread) so that every program of the grid is
    # resident at once on a large GPU: the L2 reuse of the sweep needs them to run side by side.
    bq = min(triton.next_power_of_2(post), 128)
    bt = max(1, (1024 if _INTERPRET else 2048) // bq)
    tiles_q = triton.cdiv(post, bq)
    launch(_segment_sum_kernel)[(pre * d * tiles_q,)](
        A, order.contiguous(), vals.contiguous(), offsets.contiguous(), out, m, post, d, rows.shape[1], tiles_q,
        BLOCK_T=bt, BLOCK_Q=bq, num_warps=4,
    )
    return out


def _tiles(pre: int, mid: int, post: int) -> tuple[int, int, int]:
    """Tile sizes (BLOCK_P, BLOCK_I, BLOCK_Q) of about 4096 elements, widest along post."""
    budget = 1024 if _INTERPRET else 4096
    bq = min(triton.next_power_of_2(post), 256)
    bi = min(triton.next_power_of_2(mid), max(1, budget // bq))
    bp = min(triton.next_power_of_2(pre), max(1, budget // (bq * bi)))
    return bp, bi, bq


def _launch_tiled(kernel, src, rows, vals, out, pre, mid, post, d, launch):
    bp, bi, bq = _tiles(pre, mid, post)
    tiles_p, tiles_i, tiles_q = triton.cdiv(pre, bp), triton.cdiv(mid, bi), triton.cdiv(post, bq)
    launch(kernel)[(tiles_p * tiles_i * tiles_q,)](
        src, rows, vals, out, pre, mid, post, d, rows.shape[1], tiles_i, tiles_q,
        BLOCK_P=bp, BLOCK_I=bi, BLOCK_Q=bq, num_warps=4,
    )


def _layout(shape, dim: int) -> tuple[int, int, int]:
    pre = 1
    for s in shape[:dim]:
        pre *= s
    post = 1
    for s in shape[dim + 1:]:
        post *= s
    return pre, shape[dim], post


def sparse_scatter(A, rows, vals, d: int, dim: int, launch=lambda kernel: kernel):
    """S A along ``dim`` (already wrapped to [0, A.dim())); A.shape[dim] == rows.shape[0]."""
    A = A.contiguous()
    pre, m, post = _layout(A.shape, dim)
    out_shape = list(A.shape)
    out_shape[dim] = d
    out = torch.zeros(out_shape, dtype=_acc_dtype(A.dtype), device=A.device)
    if out.numel() and A.numel():
        _launch_tiled(_sparse_scatter_kernel, A, rows.contiguous(), vals.contiguous(), out, pre, m, post, d, launch)
    return out.to(A.dtype)


def sparse_gather(G, rows, vals, d: int, dim: int, launch=lambda kernel: kernel):
    """Sᵀ G along ``dim`` (already wrapped); G.shape[dim] == d, output size rows.shape[0]."""
    G = G.contiguous()
    pre, _, post = _layout(G.shape, dim)
    m = rows.shape[0]
    out_shape = list(G.shape)
    out_shape[dim] = m
    out = torch.empty(out_shape, dtype=G.dtype, device=G.device)
    if out.numel():
        _launch_tiled(_sparse_gather_kernel, G, rows.contiguous(), vals.contiguous(), out, pre, m, post, d, launch)
    return out


@triton.jit
def _fwht_kernel(x_ptr, y_ptr, ROWS, N: tl.constexpr, LOG_N: tl.constexpr, BLOCK_B: tl.constexpr):
    pid = tl.program_id(0)
    offs_b = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    offs_n = tl.arange(0, N)
    mask = (offs_b < ROWS)[:, None]
    ptrs = offs_b[:, None] * N + offs_n[None, :]
    acc_ty = tl.float64 if y_ptr.dtype.element_ty == tl.float64 else tl.float32
    # 1/sqrt(N) in the accumulator's precision: a Python float kernel argument would be a float32
    # scalar on CUDA, and a float64 transform would carry its rounding (relative 3e-8).
    scale = 1.0 / tl.sqrt(tl.zeros((1,), acc_ty) + N)
    x = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(acc_ty)
    for s in tl.static_range(LOG_N):
        # Stage h = 2^s: view each row as [N/2h, 2, h]; the pairs (j, j + h) are the two
        # halves of the size-2 axis, moved last so tl.split can take them apart.
        x4 = tl.permute(tl.reshape(x, (BLOCK_B, N // (2 << s), 2, 1 << s)), (0, 1, 3, 2))
        lo, hi = tl.split(x4)
        x = tl.reshape(tl.permute(tl.join(lo + hi, lo - hi), (0, 1, 3, 2)), (BLOCK_B, N))
    tl.store(y_ptr + ptrs, (x * scale).to(y_ptr.dtype.element_ty), mask=mask)


def _fwht_rows(x2, launch):
    """Orthonormal FWHT of the rows of a contiguous [rows, n] tensor, n <= MAX_FWHT_N."""
    rows, n = x2.shape
    y = torch.empty_like(x2)
    if rows == 0:
        return y
    block_b = max(1, min(triton.next_power_of_2(rows), (1024 if _INTERPRET else 4096) // n))
    num_warps = 4 if n * block_b <= 4096 else 8
    launch(_fwht_kernel)[(triton.cdiv(rows, block_b),)](
        x2, y, rows, N=n, LOG_N=n.bit_length() - 1, BLOCK_B=block_b, num_warps=num_warps,
    )
    return y


def fwht(x, launch=lambda kernel: kernel, max_n: int = MAX_FWHT_N):
    """Orthonormal FWHT of the last axis (power-of-two length n, checked by the caller).

    n <= max_n: one kernel pass. Larger n = a * b with b = max_n: H_n = H_a ⊗ H_b, so the
    transform is FWHT over the last b entries of the [.., a, b] view, then over the a axis
    (transposed to last), each pass scaled by its own 1/sqrt(length).
    """
    n = x.shape[-1]
    x2 = x.reshape(-1, n).contiguous()
    if n <= max_n:
        return _fwht_rows(x2, launch).view(x.shape)
    b = max_n
    a = n // b
    y = _fwht_rows(x2.view(-1, b), launch).view(-1, a, b)
    y = fwht(y.transpose(1, 2), launch, max_n)  # [rows, b, a]: transforms the a axis
    return y.transpose(1, 2).reshape(x.shape)


@triton.jit
def _srht_level1_kernel(
    a_ptr, signs_ptr, dest_ptr, u_ptr,
    N_IN, POST, NBLK, C, TILES_Q,
    B: tl.constexpr, LOG_B: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # One block of B consecutive rows x BLOCK_Q columns: D, then H_B along the rows in registers
    # (the butterfly of _fwht_kernel on axis 0), then only the rows some sample needs are stored.
    pid = tl.program_id(0)
    tq = pid % TILES_Q
    blk = (pid // TILES_Q) % NBLK
    p = (pid // (TILES_Q * NBLK)).to(tl.int64)
    offs_b = tl.arange(0, B)
    rows = blk.to(tl.int64) * B + offs_b
    offs_q = (tq * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    mask_q = offs_q < POST
    mask_r = rows < N_IN  # rows past n are the zero padding to N
    x = tl.load(a_ptr + p * N_IN * POST + rows[:, None] * POST + offs_q[None, :],
                mask=mask_r[:, None] & mask_q[None, :], other=0.0)
    acc_ty = tl.float64 if u_ptr.dtype.element_ty == tl.float64 else tl.float32
    sg = tl.load(signs_ptr + rows, mask=mask_r, other=0.0).to(acc_ty)
    x = x.to(acc_ty) * sg[:, None]
    for st in tl.static_range(LOG_B):
        x4 = tl.permute(tl.reshape(x, (B // (2 << st), 2, 1 << st, BLOCK_Q)), (0, 2, 3, 1))
        lo, hi = tl.split(x4)
        x = tl.reshape(tl.permute(tl.join(lo + hi, lo - hi), (0, 3, 1, 2)), (B, BLOCK_Q))
    dest = tl.load(dest_ptr + offs_b).to(tl.int64)  # compact slot of inner index k_b, or -1
    u_rows = (p * NBLK + blk) * C + dest
    tl.store(u_ptr + u_rows[:, None] * POST + offs_q[None, :], x,
             mask=(dest >= 0)[:, None] & mask_q[None, :])


@triton.jit
def _srht_level2_kernel(
    u_ptr, ka_ptr, slot_ptr, out_ptr,
    POST, NBLK, C, D, TILES_Q,
    BLOCK_A: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # Output row s = k_a * B + k_b: sum over blocks i_a of H_a[k_a, i_a] u[i_a, slot(k_b)], with
    # H_a[k, i] = (-1)^popcount(k & i) (Sylvester ordering).
    pid = tl.program_id(0)
    tq = pid % TILES_Q
    s = (pid // TILES_Q) % D
    p = (pid // (TILES_Q * D)).to(tl.int64)
    offs_q = (tq * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    mask_q = offs_q < POST
    ka = tl.load(ka_ptr + s)
    slot = tl.load(slot_ptr + s).to(tl.int64)
    acc = tl.zeros((BLOCK_Q,), dtype=tl.float64 if u_ptr.dtype.element_ty == tl.float64 else tl.float32)
    # 1/sqrt(d) computed here in acc's precision: passed as a Python float it would be a float32
    # scalar on CUDA (the float64 outputs were off by 3e-8 relative).
    scale = 1.0 / tl.sqrt(tl.zeros((1,), acc.dtype) + D)
    for a0 in range(0, NBLK, BLOCK_A):
        ia = a0 + tl.arange(0, BLOCK_A)
        par = ka & ia
        par = par ^ (par >> 16)
        par = par ^ (par >> 8)
        par = par ^ (par >> 4)
        par = par ^ (par >> 2)
        par = par ^ (par >> 1)
        sign = (1 - 2 * (par & 1)).to(acc.dtype)
        u = tl.load(u_ptr + ((p * NBLK + ia.to(tl.int64)) * C + slot)[:, None] * POST + offs_q[None, :],
                    mask=(ia < NBLK)[:, None] & mask_q[None, :], other=0.0)
        acc += tl.sum(u * sign[:, None], axis=0)
    tl.store(out_ptr + p * D * POST + s * POST + offs_q, (acc * scale).to(out_ptr.dtype.element_ty), mask=mask_q)


SRHT_BLOCK = 1024  # rows per first-level block (B x 8 float32 columns stay in registers)


def srht_sampled(A, signs, index, dim: int, launch=lambda kernel: kernel, block: int = SRHT_BLOCK):
    """y = √(N/d) R (H_N/√N) D pad(A) along ``dim`` (wrapped; not the last axis), d = len(index).

    Only the d sampled rows of H_N D A are needed. With N = a·B, row i = i_a·B + i_b and
    H_N = H_a ⊗ H_B: (1) every block of B consecutive rows is multiplied by D and transformed by
    H_B in registers, and only the rows k_b that some sampled index k = k_a·B + k_b ends in are
    written (at most min(B, d) of B: u [pre, a, C, post]); (2) each sampled output sums its
    column of u over the a blocks with the signs of H_a. A is read once; u is written once and
    read about once, a fraction ≈ C/B of A's size.
    """
    A = A.contiguous()
    pre, n, post = _layout(A.shape, dim)
    N = 1 << (n - 1).bit_length()
    B = min(N, block)
    nblk = N // B
    d = index.shape[0]
    # Compact slots for the needed inner indices, computed on the device without a host sync:
    # slot(k_b) = rank of k_b among the needed ones; C = min(B, d) bounds their number.
    kb, ka = index % B, index // B
    needed = torch.zeros(B, dtype=torch.int32, device=A.device).index_fill_(0, kb, 1)
    pos = torch.cumsum(needed, 0, dtype=torch.int32) - 1
    dest = torch.where(needed > 0, pos, torch.full_like(pos, -1))
    slot = pos[kb]
    C = min(B, d)
    acc = _acc_dtype(A.dtype)
    u = torch.empty((pre, nblk, C, post), dtype=acc, device=A.device)
    out_shape = list(A.shape)
    out_shape[dim] = d
    out = torch.empty(out_shape, dtype=A.dtype, device=A.device)
    if out.numel() == 0:
        return out
    # Register tile of B x bq elements: 8192 (float32) compiles for sm_90 to ~100 registers a thread
    # at 8 warps, so two programs share an SM and one's loads overlap the other's butterflies.
    budget = 4096 if _INTERPRET or acc == torch.float64 else 8192
    bq = min(triton.next_power_of_2(post), max(1, budget // B))
    tiles_q = triton.cdiv(post, bq)
    launch(_srht_level1_kernel)[(pre * nblk * tiles_q,)](
        A, signs.to(acc).contiguous(), dest, u, n, post, nblk, C, tiles_q,
        B=B, LOG_B=B.bit_length() - 1, BLOCK_Q=bq, num_warps=8,
    )
    bq2 = min(triton.next_power_of_2(post), 128)
    tiles_q2 = triton.cdiv(post, bq2)
    launch(_srht_level2_kernel)[(pre * d * tiles_q2,)](
        u, ka.to(torch.int32).contiguous(), slot.contiguous(), out, post, nblk, C, d, tiles_q2,
        BLOCK_A=max(1, min(triton.next_power_of_2(nblk), 4096 // bq2)), BLOCK_Q=bq2, num_warps=4,
    )
    return out

