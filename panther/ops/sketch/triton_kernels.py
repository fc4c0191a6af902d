"""Triton kernels for applying sketches on the GPU (also run by Triton's CPU interpreter in CI).

sparse_scatter: out = S A along one axis, S [d, m] sparse with s non-zeros per column.
    The input is viewed as [pre, m, post]; each program loads one tile of A once and
    atomically adds its s signed copies into the output rows they hash to. The output
    (d x post per pre index) is small and stays in L2, so the kernel streams A once: the
    memory floor of a sketch. Accumulation is float32 (float64 for float64 inputs).
sparse_segment_sum: out = S A along one axis when A's rows along it are wide (post >= 16):
    the non-zeros are sorted at operator creation by (chunk, output row) (``bucket_order``:
    ``order``, flat indices into rows/vals, and ``offsets``, segment starts), the input rows
    cut into chunks of R rows (SEGMENT_CHUNK_ROWS, about 16 MB of 512-byte column tiles); one
    program sums one segment (output row r, chunk c) x column tile: no atomics, deterministic
    (narrower rows fall back to sparse_scatter and its atomics). The d programs of one chunk
    have consecutive ids and run side by side, so the s programs that gather one input row ask
    for it while its chunk is in L2: HBM should see about one read of A even for s > 1 (without
    chunks nothing keeps the d programs together over a long A, and on the H200 an SJLT with
    s = 4 took 4.1x the copy time of A). Several chunks give
    per-chunk partial sums [pre, chunks, d, post] (d/R of A's size), summed in a fixed order
    by a second kernel; with one chunk the programs write the output.
sparse_gather: out = Sᵀ G (the adjoint): each output tile gathers s rows of G, no atomics.
fwht: orthonormal Walsh–Hadamard transform of rows of power-of-two length n <= MAX_FWHT_N,
    one read and one write per row: the butterfly runs in registers, stage h pairing
    entries j and j + h by a reshape to [.., n/2h, 2, h] and a split of the size-2 axis.
    Longer rows are split as H_n = H_a ⊗ H_b (two passes, see fwht()).
srht_sampled: y = R H_N D x along an axis that is not the last (only the d sampled outputs),
    reading A once and writing only partial sums of d/strip rows: see srht_sampled().
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
def _grid_split(MID, INNER):
    # (outer, mid, inner) coordinates of this program in a flat grid of outer x MID x INNER
    # programs, inner fastest. Grids are flat because the third grid axis is limited to 65535
    # on CUDA; the order also decides which programs run side by side (consecutive ids).
    pid = tl.program_id(0)
    return pid // (INNER * MID), (pid // INNER) % MID, pid % INNER


@triton.jit
def _pre_i_post_tile(PRE, M, POST, TILES_I, TILES_Q,
                     BLOCK_P: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_Q: tl.constexpr):
    # This program's (p, i, q) tile of a [PRE, M, POST] view: int64 offsets, the mask of i and
    # the tile's mask.
    tp, ti, tq = _grid_split(TILES_I, TILES_Q)
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
    M, POST, D, S, CHUNKS, TILES_Q,
    BLOCK_T: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # Program (p, c, q, r), r fastest: segment c * D + r (the non-zeros of output row r whose
    # input rows lie in chunk c) for column tile q of pre index p, written to out[p, c, r, q]
    # ([PRE, CHUNKS, D, POST]; the output itself when CHUNKS == 1). The D programs of one
    # (p, c, q) have consecutive ids, so they run side by side over the same chunk.
    pc, tq, r = _grid_split(TILES_Q, D)
    p = (pc // CHUNKS).to(tl.int64)
    seg = (pc % CHUNKS) * D + r
    offs_q = (tq * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    mask_q = offs_q < POST
    start = tl.load(offsets_ptr + seg)
    end = tl.load(offsets_ptr + seg + 1)
    acc = tl.zeros((BLOCK_Q,), dtype=tl.float64 if a_ptr.dtype.element_ty == tl.float64 else tl.float32)
    a_base = a_ptr + p * M * POST
    for t0 in range(start, end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < end
        e = tl.load(order_ptr + offs_t, mask=mask_t, other=0).to(tl.int64)  # flat index into rows/vals
        v = tl.load(vals_ptr + e, mask=mask_t, other=0.0).to(acc.dtype)
        a = tl.load(a_base + (e // S)[:, None] * POST + offs_q[None, :],
                    mask=mask_t[:, None] & mask_q[None, :], other=0.0).to(acc.dtype)
        acc += tl.sum(a * v[:, None], axis=0)
    tl.store(out_ptr + (pc.to(tl.int64) * D + r) * POST + offs_q, acc.to(out_ptr.dtype.element_ty), mask=mask_q)


@triton.jit
def _chunk_sum_kernel(part_ptr, out_ptr, CHUNKS, INNER, TILES, BLOCK_C: tl.constexpr, BLOCK: tl.constexpr):
    # out[p, j] = sum over c of part[p, c, j] ([PRE, CHUNKS, INNER] -> [PRE, INNER]), in the
    # accumulator's precision; the same additions in the same order on every run.
    p, _, t = _grid_split(1, TILES)
    offs = (t * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = offs < INNER
    base = part_ptr + p.to(tl.int64) * CHUNKS * INNER
    acc = tl.zeros((BLOCK,), dtype=part_ptr.dtype.element_ty)
    for c0 in range(0, CHUNKS, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        x = tl.load(base + offs_c.to(tl.int64)[:, None] * INNER + offs[None, :],
                    mask=(offs_c < CHUNKS)[:, None] & mask[None, :], other=0.0)
        acc += tl.sum(x, axis=0)
    tl.store(out_ptr + p.to(tl.int64) * INNER + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _sum_chunks(part, out, launch):
    """out [pre, ...] = part [pre, chunks, ...] summed over the chunks (deterministic)."""
    pre, chunks = part.shape[0], part.shape[1]
    inner = part[0, 0].numel()
    block = min(triton.next_power_of_2(inner), 128 if _INTERPRET else 256)
    tiles = triton.cdiv(inner, block)
    launch(_chunk_sum_kernel)[(pre * tiles,)](
        part, out, chunks, inner, tiles, BLOCK_C=min(triton.next_power_of_2(chunks), 8), BLOCK=block, num_warps=4,
    )
    return out


SEGMENT_MIN_POST = 16  # narrower rows (< 64 bytes in float32) read too little per gather: scatter
SEGMENT_TILE = 4096  # elements of A one program gathers per step (BLOCK_T rows x BLOCK_Q columns;
# H200, 2^21 x 128 float32 by SJLT nnz=4: 1.19 ms against 1.55 at 2048 and 2.79 at 1024)
SEGMENT_TILE_BYTES = 512  # widest column tile (bytes of a row) a program reads: 128 float32 columns


def sparse_segment_sum(A, rows, vals, order, offsets, d: int, dim: int, launch=lambda kernel: kernel):
    """S A along ``dim`` (already wrapped) through the bucket-sorted non-zeros (see the module
    docstring); falls back to ``sparse_scatter`` when the rows along ``dim`` are narrow.

    ``offsets`` has chunks * d + 1 entries (``bucket_order``): with one chunk every program sums
    one output row's segment into the output; with several, into a partial sum per chunk
    [pre, chunks, d, post] (float32, or float64 for float64 A), summed over the chunks after."""
    pre, m, post = _layout(A.shape, dim)
    if post < SEGMENT_MIN_POST:
        return sparse_scatter(A, rows, vals, d, dim, launch)
    A = A.contiguous()
    out_shape = list(A.shape)
    out_shape[dim] = d
    out = torch.empty(out_shape, dtype=A.dtype, device=A.device)
    if out.numel() == 0:
        return out
    chunks = (offsets.shape[0] - 1) // d
    dst = out if chunks == 1 else torch.empty((pre, chunks, d, post), dtype=_acc_dtype(A.dtype), device=A.device)
    # Small tiles (2048 elements: ~60 registers a thread) so that many programs are resident at
    # once: the L2 reuse needs the programs of one chunk to run side by side. A column tile is at
    # most SEGMENT_TILE_BYTES wide, which bounds the bytes of a chunk that one tile's programs read.
    bq = min(triton.next_power_of_2(post), 128, SEGMENT_TILE_BYTES // A.element_size())
    bt = max(1, (1024 if _INTERPRET else SEGMENT_TILE) // bq)
    tiles_q = triton.cdiv(post, bq)
    launch(_segment_sum_kernel)[(pre * chunks * tiles_q * d,)](
        A, order.contiguous(), vals.contiguous(), offsets.contiguous(), dst, m, post, d, rows.shape[1], chunks,
        tiles_q, BLOCK_T=bt, BLOCK_Q=bq, num_warps=4,
    )
    return out if chunks == 1 else _sum_chunks(dst, out, launch)


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
def _hadamard_rows(x, B: tl.constexpr, LOG_B: tl.constexpr, BLOCK_Q: tl.constexpr):
    # H_B (unnormalised) along axis 0 of a [B, BLOCK_Q] tile in registers: the butterfly of
    # _fwht_kernel, stage h = 2^st pairing rows j and j + h through a [B/2h, 2, h, BLOCK_Q] view.
    for st in tl.static_range(LOG_B):
        x4 = tl.permute(tl.reshape(x, (B // (2 << st), 2, 1 << st, BLOCK_Q)), (0, 2, 3, 1))
        lo, hi = tl.split(x4)
        x = tl.reshape(tl.permute(tl.join(lo + hi, lo - hi), (0, 3, 1, 2)), (B, BLOCK_Q))
    return x


@triton.jit
def _hadamard_sign(k, i, dtype: tl.constexpr):
    # H[k, i] = (-1)^popcount(k & i) (Sylvester ordering) for 32-bit k, i, as 1.0 or -1.0.
    par = k & i
    par = par ^ (par >> 16)
    par = par ^ (par >> 8)
    par = par ^ (par >> 4)
    par = par ^ (par >> 2)
    par = par ^ (par >> 1)
    return (1 - 2 * (par & 1)).to(dtype)


@triton.jit
def _srht_load(a_base, row0, end, POST, offs_q, mask_q, B: tl.constexpr):
    # The block of B consecutive rows from row0 (int64) of A, BLOCK_Q columns; rows from end
    # on are zeros (end <= n: rows past n are the zero padding to N).
    rows = row0 + tl.arange(0, B)
    return tl.load(a_base + rows[:, None] * POST + offs_q[None, :], mask=(rows < end)[:, None] & mask_q[None, :],
                   other=0.0)


@triton.jit
def _srht_transform(x, signs_ptr, row0, N_IN, acc_ty: tl.constexpr, B: tl.constexpr, LOG_B: tl.constexpr,
                    BLOCK_Q: tl.constexpr):
    # H_B D x for the block that _srht_load read from row0.
    rows = row0 + tl.arange(0, B)
    sg = tl.load(signs_ptr + rows, mask=rows < N_IN, other=0.0).to(acc_ty)
    return _hadamard_rows(x.to(acc_ty) * sg[:, None], B, LOG_B, BLOCK_Q)


@triton.jit
def _srht_strip_kernel(
    a_ptr, signs_ptr, dest_ptr, slot_ptr, ka_ptr, u_ptr, out_ptr,
    N_IN, POST, NBLK, STRIP, STRIPS, C, D, TILES_Q,
    B: tl.constexpr, LOG_B: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_Q: tl.constexpr, PREFETCH: tl.constexpr,
):
    # Program (p, strip, q), q fastest: blocks [strip * STRIP, strip * STRIP + STRIP) of B rows
    # x BLOCK_Q columns, one after the other: D and H_B in registers; the rows k_b that some
    # sampled output s = k_a * B + k_b needs go to this program's C x BLOCK_Q slice of u (a
    # scratch buffer rewritten for every block, so it stays in L2); each output then
    # reads its row back and adds it with the sign H_a[k_a, block] into acc [BLOCK_S >= D,
    # BLOCK_Q]. (tl.gather from registers would do the exchange without memory, but it
    # compiles to about one shuffle per register of the tile per gathered element.)
    # Writes acc / sqrt(D) to out[p, strip]. PREFETCH: the next block's load is issued before
    # this block's transform (one program fills an SM's registers: nothing else hides the load).
    p, st, tq = _grid_split(STRIPS, TILES_Q)
    p = p.to(tl.int64)
    offs_q = (tq * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    mask_q = offs_q < POST
    cols = tl.arange(0, BLOCK_Q)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < D
    acc_ty: tl.constexpr = tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros((BLOCK_S, BLOCK_Q), dtype=acc_ty)
    a_base = a_ptr + p * N_IN * POST
    u_base = u_ptr + tl.program_id(0).to(tl.int64) * C * BLOCK_Q
    blk0 = st * STRIP
    row0 = blk0.to(tl.int64) * B
    nb = tl.minimum(STRIP, NBLK - blk0)
    end = tl.minimum(row0 + nb * B, N_IN)  # the strip's last row + 1 (the prefetch past it reads nothing)
    if PREFETCH:
        x_next = _srht_load(a_base, row0, end, POST, offs_q, mask_q, B)
    for j in range(0, nb):
        if PREFETCH:
            x_raw = x_next
            x_next = _srht_load(a_base, row0 + (j + 1) * B, end, POST, offs_q, mask_q, B)
        else:
            x_raw = _srht_load(a_base, row0 + j * B, end, POST, offs_q, mask_q, B)
        x = _srht_transform(x_raw, signs_ptr, row0 + j * B, N_IN, acc_ty, B, LOG_B, BLOCK_Q)
        # The small index vectors are loaded (from L1) for every block: kept live across the loop,
        # they and the addresses made of them take more registers than the tile itself.
        dest = tl.load(dest_ptr + tl.arange(0, B))  # u row of inner index k_b, or -1
        slot = tl.load(slot_ptr + offs_s, mask=mask_s, other=0)
        ka = tl.load(ka_ptr + offs_s, mask=mask_s, other=0)
        tl.store(u_base + dest[:, None] * BLOCK_Q + cols[None, :], x, mask=(dest >= 0)[:, None])
        tl.debug_barrier()  # u is written by the whole program before any of it is read
        y = tl.load(u_base + slot[:, None] * BLOCK_Q + cols[None, :], mask=mask_s[:, None], other=0.0)
        tl.debug_barrier()  # and read before the next block overwrites it
        acc += y * _hadamard_sign(ka, blk0 + j, acc_ty)[:, None]
    # 1/sqrt(D) in acc's precision: a Python float kernel argument would be a float32 scalar on
    # CUDA (float64 outputs were off by 3e-8 relative).
    scale = 1.0 / tl.sqrt(tl.zeros((1,), acc_ty) + D)
    tl.store(out_ptr + ((p * STRIPS + st) * D + offs_s)[:, None] * POST + offs_q[None, :],
             (acc * scale[:, None]).to(out_ptr.dtype.element_ty), mask=mask_s[:, None] & mask_q[None, :])


@triton.jit
def _srht_level1_kernel(
    a_ptr, signs_ptr, dest_ptr, u_ptr,
    N_IN, POST, NBLK, C, TILES_Q,
    B: tl.constexpr, LOG_B: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # One block of B consecutive rows x BLOCK_Q columns: D, then H_B along the rows in registers,
    # then only the rows some sample needs are stored.
    p, blk, tq = _grid_split(NBLK, TILES_Q)
    p = p.to(tl.int64)
    offs_q = (tq * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    mask_q = offs_q < POST
    acc_ty: tl.constexpr = tl.float64 if u_ptr.dtype.element_ty == tl.float64 else tl.float32
    row0 = blk.to(tl.int64) * B
    x = _srht_load(a_ptr + p * N_IN * POST, row0, N_IN, POST, offs_q, mask_q, B)
    x = _srht_transform(x, signs_ptr, row0, N_IN, acc_ty, B, LOG_B, BLOCK_Q)
    dest = tl.load(dest_ptr + tl.arange(0, B)).to(tl.int64)  # compact slot of inner index k_b, or -1
    u_rows = (p * NBLK + blk) * C + dest
    tl.store(u_ptr + u_rows[:, None] * POST + offs_q[None, :], x,
             mask=(dest >= 0)[:, None] & mask_q[None, :])


@triton.jit
def _srht_level2_kernel(
    u_ptr, ka_ptr, slot_ptr, out_ptr,
    POST, NBLK, C, D, TILES_Q,
    BLOCK_A: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # Output row s = k_a * B + k_b: sum over blocks i_a of H_a[k_a, i_a] u[i_a, slot(k_b)].
    p, s, tq = _grid_split(D, TILES_Q)
    p = p.to(tl.int64)
    offs_q = (tq * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    mask_q = offs_q < POST
    ka = tl.load(ka_ptr + s)
    slot = tl.load(slot_ptr + s).to(tl.int64)
    acc = tl.zeros((BLOCK_Q,), dtype=tl.float64 if u_ptr.dtype.element_ty == tl.float64 else tl.float32)
    scale = 1.0 / tl.sqrt(tl.zeros((1,), acc.dtype) + D)  # see _srht_strip_kernel
    for a0 in range(0, NBLK, BLOCK_A):
        ia = a0 + tl.arange(0, BLOCK_A)
        u = tl.load(u_ptr + ((p * NBLK + ia.to(tl.int64)) * C + slot)[:, None] * POST + offs_q[None, :],
                    mask=(ia < NBLK)[:, None] & mask_q[None, :], other=0.0)
        acc += tl.sum(u * _hadamard_sign(ka, ia, acc.dtype)[:, None], axis=0)
    tl.store(out_ptr + p * D * POST + s * POST + offs_q, (acc * scale).to(out_ptr.dtype.element_ty), mask=mask_q)


SRHT_BLOCK = 1024  # rows per first-level block (B x 8 float32 columns stay in registers)
SRHT_STRIP_ROWS = 1 << 14  # rows of A one strip program transforms (a multiple of the block)
SRHT_MAX_ACC = 4096  # largest d x column-tile accumulator of a strip program (else two levels)
SRHT_STRIP_WARPS = 4  # H200, 2^21 x 128 float32 to d = 512: 0.80 ms against 0.97 at 8 warps
SRHT_PREFETCH = True  # strip kernel: load block j + 1 while transforming block j


def _srht_tile_q(B: int, post: int, acc: torch.dtype) -> int:
    # Register tile of B x bq elements: 8192 (float32) compiles for sm_90 to ~100 registers a thread
    # at 8 warps, so two programs share an SM and one's loads overlap the other's butterflies.
    budget = 4096 if _INTERPRET or acc == torch.float64 else 8192
    return min(triton.next_power_of_2(post), max(1, budget // B))


def srht_sampled(A, signs, index, dim: int, launch=lambda kernel: kernel, block: int = SRHT_BLOCK,
                 strip_rows: int | None = SRHT_STRIP_ROWS, max_acc: int = SRHT_MAX_ACC):
    """y = √(N/d) R (H_N/√N) D pad(A) along ``dim`` (wrapped; not the last axis), d = len(index).

    Only the d sampled rows of H_N D A are needed. With N = a·B, row i = i_a·B + i_b and
    H_N = H_a ⊗ H_B, sampled row k = k_a·B + k_b is Σ_{i_a} H_a[k_a, i_a] (H_B D A_{i_a})[k_b],
    A_{i_a} the block of B consecutive rows i_a·B .. i_a·B + B - 1.

    Strips (when d x the column tile fits ``max_acc`` accumulators): every program transforms
    the blocks of a strip of ``strip_rows`` rows one by one (D, then H_B in registers), puts the
    rows k_b that some sample needs into its own small slice of a scratch buffer (C x column
    tile, rewritten for every block: it stays in L2) and adds each sample's row back, signed
    by H_a[k_a, i_a], into its d accumulators; the per-strip partial sums [pre, strips, d, post]
    are summed after (one strip: straight into the output). A is read once; besides the output
    only the partials (d/strip_rows of A's size) and the scratch (one slice per program, about
    C/strip_rows of A's size) are written.
    Two levels (larger d, or ``strip_rows=None``): (1) each block is transformed and only the
    rows k_b that some sampled index ends in are written (at most C = min(B, d) of B: u [pre, a,
    C, post]); (2) each sampled output sums its column of u over the a blocks with the signs of
    H_a. A is read once; u is written once and read about once, a fraction ≈ C/B of A's size
    (about 0.4 each way at B = 1024, d = 512): that traffic is what the strips avoid. Reading u
    back from L2 alone would not remove it: a freshly written u still goes to HBM when evicted.
    """
    A = A.contiguous()
    pre, n, post = _layout(A.shape, dim)
    N = 1 << (n - 1).bit_length()
    B = min(N, block)
    nblk = N // B
    d = index.shape[0]
    acc = _acc_dtype(A.dtype)
    out_shape = list(A.shape)
    out_shape[dim] = d
    out = torch.empty(out_shape, dtype=A.dtype, device=A.device)
    if out.numel() == 0:
        return out
    bq = _srht_tile_q(B, post, acc)
    tiles_q = triton.cdiv(post, bq)
    # Compact slots for the needed inner indices, computed on the device without a host sync:
    # slot(k_b) = rank of k_b among the needed ones; C = min(B, d) bounds their number.
    kb, ka = index % B, index // B
    needed = torch.zeros(B, dtype=torch.int32, device=A.device).index_fill_(0, kb, 1)
    pos = torch.cumsum(needed, 0, dtype=torch.int32) - 1
    dest = torch.where(needed > 0, pos, torch.full_like(pos, -1))
    slot = pos[kb]
    C = min(B, d)
    block_s = triton.next_power_of_2(d)
    if strip_rows is not None and block_s * bq <= max_acc:
        strip = max(1, strip_rows // B)
        strips = triton.cdiv(nblk, strip)
        grid = pre * strips * tiles_q
        dst = out if strips == 1 else torch.empty((pre, strips, d, post), dtype=acc, device=A.device)
        u = torch.empty((grid, C, bq), dtype=acc, device=A.device)  # one slice per program
        launch(_srht_strip_kernel)[(grid,)](
            A, signs.to(acc).contiguous(), dest, slot.contiguous(), ka.to(torch.int32).contiguous(), u, dst,
            n, post, nblk, strip, strips, C, d, tiles_q, B=B, LOG_B=B.bit_length() - 1, BLOCK_S=block_s,
            BLOCK_Q=bq, PREFETCH=SRHT_PREFETCH, num_warps=SRHT_STRIP_WARPS,
        )
        return out if strips == 1 else _sum_chunks(dst, out, launch)
    u = torch.empty((pre, nblk, C, post), dtype=acc, device=A.device)
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
