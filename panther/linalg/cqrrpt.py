"""CQRRPT: randomized column-pivoted QR through a sketch and Cholesky QR.

Melnichenko, Balabanov, Murray, Demmel, Mahoney, Luszczek, "CholeskyQR with randomization
and pivoting for tall matrices" (arXiv 2311.08316). For M [m, n], m >= n:

1. sketch M̂ = S M with a sparse sign S [d, m], d = ⌈γ n⌉, ``sketch_nnz`` non-zeros per column
   (one streaming pass over M; panther's sparse_sketch_apply op, on M's device);
2. QR with column pivoting of the small d x n sketch (LAPACK geqp3 through scipy, on the
   host; only M̂ is copied): M̂[:, J] = Q̂ R̂; the rank k is the number of diagonal entries
   |R̂_ii| > tol·|R̂_00| (tol default: 2·√d·u, twice the rounding noise measured for a sketched
   QR of a rank-deficient matrix, far below what a full-rank sketch shows);
3. precondition M_pre = M[:, J[:k]] R̂[:k, :k]⁻¹ (κ(M_pre) = O(1) because S is a subspace embedding),
   computed as one GEMM with the scattered triangular inverse;
4. Cholesky QR of M_pre (one pass in float64, two in float32), dropping columns the Cholesky
   factor shows to be dependent; R = R_chol R̂[:r, :].

Cost ≈ 3mn² flops (5mn² with two passes), all BLAS-3, plus one pass of the sketch.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ..sketch.sparse import sparse_sign
from .cholqr import cholqr_step, default_passes


def _check(M, gamma, sketch_nnz):
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"M must be a torch.Tensor, got {type(M).__name__}")
    if M.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"M must be float32 or float64, got {M.dtype}")
    if M.dim() != 2:
        raise ValueError(f"M must be a 2-D tensor [m, n], got shape {list(M.shape)}")
    m, n = M.shape
    if n < 1 or m < n:
        raise ValueError(f"M must be tall or square with at least one column (m >= n >= 1), got shape {[m, n]}")
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not gamma >= 1.0:
        raise ValueError(f"gamma must be a real number >= 1 (sketch rows = ceil(gamma * n)), got {gamma!r}")
    if isinstance(sketch_nnz, bool) or not isinstance(sketch_nnz, numbers.Integral) or sketch_nnz < 1:
        raise ValueError(f"sketch_nnz must be a positive int, got {sketch_nnz!r}")


def _qrcp_host(M_sk: torch.Tensor):
    """Column-pivoted QR (geqp3) of the small sketch on the host: (R [n, n] numpy, J numpy int64)."""
    from scipy.linalg import qr

    a = M_sk.detach().to("cpu").numpy()
    R, J = qr(a, mode="r", pivoting=True, overwrite_a=True, check_finite=False)
    n = a.shape[1]
    return R[:n], J.astype(np.int64)


def cqrrpt(M: torch.Tensor, gamma: float = 1.25, *, sketch_nnz: int = 4, rank_tol: float | None = None,
           passes: int | None = None, generator: torch.Generator | None = None):
    """Rank-revealing QR with column pivoting of a tall M [m, n]: ``(Q, R, J)`` with M[:, J] ≈ Q R.

    Q [m, r] has orthonormal columns, R [r, n] is upper trapezoidal, J [n] (int64, 0-based) is a
    permutation and r <= n the numerical rank (r = n for full-rank M, in float32 as in float64).
    ``gamma``: sketch rows per column (d = ⌈γ n⌉, at most m). ``rank_tol``: relative threshold on
    the sketch's pivoted diagonal (default 2·√d·u). ``passes``: Cholesky QR passes (default 1
    for float64, 2 for float32). ``generator`` seeds the sketch. The large work (sketch,
    triangular solves, Gram matrices) runs on M's device; only the d x n sketch visits the host.
    """
    _check(M, gamma, sketch_nnz)
    m, n = M.shape
    eps = torch.finfo(M.dtype).eps
    d = min(math.ceil(gamma * n), m)
    if d < m:
        S = sparse_sign(d, m, nnz=min(sketch_nnz, d), device=M.device, dtype=M.dtype, generator=generator)
        M_sk = S.apply(M, dim=0)
    else:  # no room to sketch: M itself is the "sketch" (S = I)
        M_sk = M.clone()
    R_sk_np, J_np = _qrcp_host(M_sk)
    diag = np.abs(np.diagonal(R_sk_np))
    tol = 2.0 * math.sqrt(d) * eps if rank_tol is None else float(rank_tol)
    keep = diag > tol * diag[0] if diag[0] > 0 else np.zeros_like(diag, dtype=bool)
    k = int(np.argmin(keep)) if not keep.all() else n
    J = torch.from_numpy(J_np).to(M.device)
    R_sk = torch.from_numpy(R_sk_np).to(M.device)
    if k == 0:
        return M.new_zeros((m, 0)), M.new_zeros((0, n)), J
    # M_pre = M[:, J[:k]] R̂₁₁⁻¹ as one GEMM M·W with W = P_k R̂₁₁⁻¹ (the rows of R̂₁₁⁻¹ scattered to
    # the pivot positions): no column gather of M, and a GEMM runs faster than a TRSM of that size.
    W = M.new_zeros((n, k))
    eye = torch.eye(k, dtype=M.dtype, device=M.device)
    W[J[:k]] = torch.linalg.solve_triangular(R_sk[:k, :k], eye, upper=True)
    M_pre = M @ W
    R = R_sk[:k]
    Q = M_pre
    for _ in range(passes or default_passes(M.dtype)):
        Q, R_fac, r = cholqr_step(Q)
        R = R_fac @ R[:r]
    return Q, R, J
