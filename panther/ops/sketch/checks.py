"""Argument checks for the sketch ops, used by the fake (meta) kernels and Triton ops.

The C++ kernels (csrc/sketch/) make the same checks with the same words, so a bad call
fails the same way eagerly and under torch.compile / torch.export.
"""

from __future__ import annotations

import torch


def _fail(msg: str) -> None:
    raise RuntimeError(msg)


def wrap_dim(dim: int, ndim: int, tensor_name: str) -> int:
    if ndim < 1:
        _fail(f"{tensor_name} must have at least 1 dimension, got a scalar")
    if not -ndim <= dim < ndim:
        _fail(f"dim must be in [{-ndim}, {ndim - 1}] for {tensor_name} of {ndim} dimensions, got {dim}")
    return dim % ndim


def check_sketch_args(t: torch.Tensor, tname: str, rows: torch.Tensor, vals: torch.Tensor, dim: int, d: int) -> int:
    """Checks for sparse_sketch_apply(_t); returns the wrapped dim."""
    if not t.dtype.is_floating_point:
        _fail(f"{tname} must be a floating-point tensor, got {t.dtype}")
    wd = wrap_dim(dim, t.dim(), tname)
    if rows.dim() != 2:
        _fail(f"rows must be a 2-D tensor, got shape {list(rows.shape)}")
    if rows.dtype != torch.int64:
        _fail(f"rows must be an int64 tensor, got {rows.dtype}")
    if rows.device != t.device:
        _fail(f"rows is on {rows.device} but {tname} is on {t.device}: expected the same device")
    if vals.dim() != 2:
        _fail(f"vals must be a 2-D tensor, got shape {list(vals.shape)}")
    if vals.shape != rows.shape:
        _fail(f"vals has shape {list(vals.shape)}: expected the shape of rows {list(rows.shape)}")
    if vals.dtype != t.dtype:
        _fail(f"vals has dtype {vals.dtype} but {tname} has dtype {t.dtype}: expected the same dtype")
    if vals.device != t.device:
        _fail(f"vals is on {vals.device} but {tname} is on {t.device}: expected the same device")
    if d < 1:
        _fail(f"d must be a positive int (the sketch size), got {d}")
    return wd


def check_apply(A, rows, vals, d: int, dim: int) -> int:
    wd = check_sketch_args(A, "A", rows, vals, dim, d)
    if A.shape[wd] != rows.shape[0]:
        _fail(
            f"A has shape {list(A.shape)}: expected size {rows.shape[0]} at dim {dim} "
            "(the operator's m, rows.shape[0])"
        )
    return wd


def check_sorted(A, rows, vals, order, offsets, d: int, dim: int) -> int:
    """check_apply plus the (chunk, output row)-sorted index (``bucket_order``): shapes, dtypes, device."""
    wd = check_apply(A, rows, vals, d, dim)
    if order.dim() != 1 or order.dtype not in (torch.int32, torch.int64) or order.numel() != rows.numel():
        _fail(f"order must be a 1-D int32/int64 tensor of rows.numel() = {rows.numel()} entries, "
              f"got {order.dtype} {list(order.shape)}")
    if offsets.dim() != 1 or offsets.dtype != torch.int64 or offsets.numel() < d + 1 or (offsets.numel() - 1) % d:
        _fail(f"offsets must be a 1-D int64 tensor of d * chunks + 1 entries (d = {d}, chunks >= 1), "
              f"got {offsets.dtype} {list(offsets.shape)}")
    for t, name in ((order, "order"), (offsets, "offsets")):
        if t.device != A.device:
            _fail(f"{name} is on {t.device} but A is on {A.device}: expected the same device")
    return wd


def check_srht(A, signs, index, dim: int) -> int:
    """Checks for srht_apply: A [..., n, ...] along dim, signs [n], index [d] of distinct rows of
    the padded length N = next power of two >= n. Returns the wrapped dim."""
    if not A.dtype.is_floating_point:
        _fail(f"A must be a floating-point tensor, got {A.dtype}")
    wd = wrap_dim(dim, A.dim(), "A")
    n = A.shape[wd]
    if signs.dim() != 1 or signs.shape[0] != n:
        _fail(f"signs must be a 1-D tensor of A.shape[dim] = {n} entries, got shape {list(signs.shape)}")
    if signs.dtype != A.dtype or signs.device != A.device:
        _fail(f"signs is {signs.dtype} on {signs.device} but A is {A.dtype} on {A.device}: expected the same")
    N = 1 << (n - 1).bit_length() if n > 0 else 1
    if index.dim() != 1 or index.dtype != torch.int64 or not 1 <= index.shape[0] <= N:
        _fail(f"index must be a 1-D int64 tensor of 1 to N = {N} entries (N = next power of two >= n), "
              f"got {index.dtype} {list(index.shape)}")
    if index.device != A.device:
        _fail(f"index is on {index.device} but A is on {A.device}: expected the same device")
    return wd


def check_apply_t(G, rows, vals, d: int, dim: int) -> int:
    wd = check_sketch_args(G, "G", rows, vals, dim, d)
    if G.shape[wd] != d:
        _fail(f"G has shape {list(G.shape)}: expected size {d} at dim {dim} (the sketch size d)")
    return wd


def check_fwht(x: torch.Tensor) -> int:
    if not x.dtype.is_floating_point:
        _fail(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1:
        _fail("x must have at least 1 dimension (..., n), got a scalar")
    n = x.shape[-1]
    if n < 1 or (n & (n - 1)) != 0:
        _fail(
            f"x has shape {list(x.shape)}: expected the last dim to be a power of two (pad with zeros to "
            f"the next power of two, as panther.sketch.srht does), got {n}"
        )
    return n


def replaced(shape, dim: int, value: int) -> list[int]:
    out = list(shape)
    out[dim] = value
    return out
