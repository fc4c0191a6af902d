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


def bucket_order(rows, d: int):
    """The non-zeros of S [d, m] (rows [m, s]) bucket-sorted by output row: ``order`` (flat
    indices into rows/vals, ascending input row within each bucket: a stable sort; int32 when
    it fits) and ``offsets`` [d + 1] (bucket r is order[offsets[r]:offsets[r + 1]]).

    The keys are sorted in the narrowest integer type that holds d (a radix sort makes one pass
    per key byte: 2 for int16 instead of 8 for int64), and the offsets are found in the sorted
    keys on the device (bincount would wait for the device to size its output)."""
    flat = rows.reshape(-1)
    key_dtype = torch.int16 if d <= torch.iinfo(torch.int16).max else torch.int32 if d < 2**31 else torch.int64
    keys, order = torch.sort(flat.to(key_dtype), stable=True)
    offsets = torch.searchsorted(keys, torch.arange(d + 1, dtype=key_dtype, device=rows.device))
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


__all__ = ["bucket_order", "fwht", "sparse_apply", "sparse_apply_t", "srht_apply", "triton_available"]
