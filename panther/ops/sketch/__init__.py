"""Sketch-apply ops: sparse sign sketches (CountSketch/SJLT/SASO) and the Walsh–Hadamard transform.

``sparse_apply``, ``sparse_apply_t`` and ``fwht`` are the entry points the rest of panther
uses: the Triton ops where triton is installed (Triton kernels on CUDA, the C++ op on
other devices), the C++ ops otherwise.
"""

import torch

from . import op  # noqa: F401  (registers fakes and autograd)
from .op import srht_composite
from .triton_op import (
    fwht_triton,
    sparse_sketch_apply_sorted_triton,
    sparse_sketch_apply_t_triton,
    sparse_sketch_apply_triton,
    srht_apply_triton,
    triton_available,
)

_ops = torch.ops.panther


SEGMENT_CHUNK_ROWS = 1 << 15  # input rows of one chunk of the sorted index (see bucket_order)
SEGMENT_MAX_CHUNK_SHARE = 8  # chunk only while the d partial rows per chunk are <= 1/8 of its rows


def segment_chunk_rows(m: int, d: int, chunk_rows: int = SEGMENT_CHUNK_ROWS) -> int:
    """Rows per chunk for ``bucket_order`` of a [d, m] operator: ``chunk_rows``, or m (one
    chunk) when there is a single chunk anyway or when the per-chunk partial sums (d rows per
    chunk, written and read once more) would exceed 1/SEGMENT_MAX_CHUNK_SHARE of the chunk."""
    if m <= chunk_rows or d * SEGMENT_MAX_CHUNK_SHARE > chunk_rows:
        return max(m, 1)
    return chunk_rows


def bucket_order(rows, d: int, chunk_rows: int | None = None):
    """The non-zeros of S [d, m] (rows [m, s]) sorted by (chunk, output row), for the segmented
    sum: ``order`` (flat indices into rows/vals; ascending input row within each segment: a
    stable sort; int32 when it fits) and ``offsets`` [chunks * d + 1] (segment c * d + r, the
    non-zeros of output row r whose input rows lie in chunk c = [c * R, c * R + R), is
    order[offsets[c * d + r]:offsets[c * d + r + 1]]).

    R = ``chunk_rows`` (default: ``segment_chunk_rows(m, d)``; R >= m gives one chunk, the plain
    bucket sort by output row). On the GPU the d programs of one chunk run side by side, so the
    s gathers of an input row can be served by L2 while the chunk (R rows of a column tile, at
    most SEGMENT_CHUNK_ROWS x 512 bytes) is there, so that A is read from memory about once even
    for s > 1 (H200 probe, 2^21 x 128 float32 sketched to 512 rows with s = 4: 1.55 ms in
    chunks of 2^15 rows against 2.05 ms as one chunk; 2^14 to 2^17 rows within 5%).

    The keys c * d + r are sorted in the narrowest integer type that holds them (a radix sort
    makes one pass per key byte: 2 for int16 instead of 8 for int64; up to 2^16 keys fit int16
    shifted by -2^15), and the offsets are found in the sorted keys on the device (bincount
    would wait for the device to size its output)."""
    m = rows.shape[0]
    R = segment_chunk_rows(m, d) if chunk_rows is None else max(1, min(int(chunk_rows), max(m, 1)))
    nkeys = -(-max(m, 1) // R) * d
    key = rows if nkeys == d else rows + (torch.arange(m, device=rows.device) // R * d)[:, None]
    flat = key.reshape(-1)
    if nkeys <= 1 << 16:
        key_dtype, bias = torch.int16, -(1 << 15)
    else:
        key_dtype, bias = (torch.int32 if nkeys < 2**31 else torch.int64), 0
    keys, order = torch.sort((flat + bias).to(key_dtype), stable=True)
    # Segment k starts at the first key >= k; the end of the last one is the number of non-zeros
    # (bias + nkeys itself may not fit the key type).
    starts = torch.searchsorted(keys, torch.arange(nkeys, device=rows.device).add_(bias).to(key_dtype))
    offsets = torch.cat([starts, starts.new_full((1,), flat.numel())])
    return (order.to(torch.int32) if flat.numel() < 2**31 else order), offsets


def sparse_apply(A, rows, vals, d: int, dim: int, sorted_index=None):
    """S A along ``dim`` for the sparse operator S [d, m] given column-wise by (rows, vals) [m, s].
    ``sorted_index``: (order, offsets) from ``bucket_order``, for the segmented-sum GPU kernel."""
    if triton_available and sorted_index is not None:
        return sparse_sketch_apply_sorted_triton(A, rows, vals, *sorted_index, d, dim)
    if triton_available:
        return sparse_sketch_apply_triton(A, rows, vals, d, dim)
    return _ops.sparse_sketch_apply(A, rows, vals, d, dim)


def sparse_apply_t(G, rows, vals, d: int, dim: int):
    """Sᵀ G along ``dim`` (size d -> m): the adjoint of ``sparse_apply``."""
    if triton_available:
        return sparse_sketch_apply_t_triton(G, rows, vals, d, dim)
    return _ops.sparse_sketch_apply_t(G, rows, vals, d, dim)


def srht_apply(A, signs, index, dim: int):
    """The SRHT √(N/d)·R·(H_N/√N)·D·pad(A) along ``dim`` (wrapped), d = len(index)."""
    if triton_available:
        return srht_apply_triton(A, signs, index, dim)
    return srht_composite(A, signs, index, dim)


def fwht(x):
    """Orthonormal fast Walsh–Hadamard transform of the last axis (power-of-two length)."""
    if triton_available:
        return fwht_triton(x)
    return _ops.fwht(x)


__all__ = [
    "SEGMENT_CHUNK_ROWS", "bucket_order", "fwht", "segment_chunk_rows", "sparse_apply", "sparse_apply_t", "srht_apply",
    "triton_available",
]
