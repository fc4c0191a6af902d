"""Sketch-apply ops: sparse sign sketches (CountSketch/SJLT/SASO) and the Walsh–Hadamard transform.

``sparse_apply``, ``sparse_apply_t`` and ``fwht`` are the entry points the rest of panther
uses: the Triton ops where triton is installed (Triton kernels on CUDA, the C++ op on
other devices), the C++ ops otherwise.
"""

import torch

from . import op  # noqa: F401  (registers fakes and autograd)
from .triton_op import fwht_triton, sparse_sketch_apply_t_triton, sparse_sketch_apply_triton, triton_available

_ops = torch.ops.panther


def sparse_apply(A, rows, vals, d: int, dim: int):
    """S A along ``dim`` for the sparse operator S [d, m] given column-wise by (rows, vals) [m, s]."""
    if triton_available:
        return sparse_sketch_apply_triton(A, rows, vals, d, dim)
    return _ops.sparse_sketch_apply(A, rows, vals, d, dim)


def sparse_apply_t(G, rows, vals, d: int, dim: int):
    """Sᵀ G along ``dim`` (size d -> m): the adjoint of ``sparse_apply``."""
    if triton_available:
        return sparse_sketch_apply_t_triton(G, rows, vals, d, dim)
    return _ops.sparse_sketch_apply_t(G, rows, vals, d, dim)


def fwht(x):
    """Orthonormal fast Walsh–Hadamard transform of the last axis (power-of-two length)."""
    if triton_available:
        return fwht_triton(x)
    return _ops.fwht(x)


__all__ = ["fwht", "sparse_apply", "sparse_apply_t", "triton_available"]
