"""CQRRPT: randomized column-pivoted QR through a sketch and Cholesky QR.

Melnichenko, Balabanov, Murray, Demmel, Mahoney, Luszczek, "CholeskyQR with randomization
and pivoting for tall matrices" (arXiv 2311.08316). For M [m, n], m >= n:

1. sketch M̂ = S M with a sparse sign S [d, m], d = ⌈γ n⌉, ``sketch_nnz`` non-zeros per column
   (one streaming pass over M; panther's sparse-apply op, on M's device);
2. QR with column pivoting of the small d x n sketch (LAPACK geqp3 through scipy, on the
   host; only M̂ is copied): M̂[:, J] = Q̂ R̂; the rank k is the number of diagonal entries
   |R̂_ii| > tol·|R̂_00| (tol default: 2·√d·u, twice the rounding noise measured for a sketched
   QR of a rank-deficient matrix, far below what a full-rank sketch shows);
3. precondition A = M[:, J[:k]] R̂₁₁⁻¹ (κ(A) = O(1) because S is a subspace embedding) as one
   GEMM M·W, W = P_k R̂₁₁⁻¹ (the rows of the inverse scattered to the pivot positions: no column
   gather of M, and a GEMM instead of a triangular solve over the tall matrix);
4. one Cholesky QR pass of A with the Gram matrix accumulated in float64 and Q = A L⁻ᵀ as a
   second GEMM; R = Lᵀ R̂[:r, :] (r <= k: columns the Cholesky factor shows to be dependent
   are dropped).

Why the explicit inverses are safe. Column pivoting makes R̂ row-graded: R̂ = D U with
D = diag(R̂_ii) and |U_ij| <= 1 = U_ii (geqp3 keeps |R̂_ij| <= |R̂_ii|). The rounding errors of a
triangular inverse and of a product with it are bounded componentwise by u·|R̂⁻¹||R̂|, and
|R̂⁻¹||R̂| = |U⁻¹||U| does not depend on D: the error is governed by cond(U) (small for
rank-revealing pivots), not by κ(M), which may be 1e10 or more. So M·W reproduces
M[:, J[:k]] = A R̂₁₁ to O(cond(U)·u)·‖M‖ and the final reconstruction error is O(u)·‖M‖ as with
a triangular solve. The Cholesky factor L of AᵀA has κ(L) = κ(A) = O(1), so L⁻ᵀ is benign.

Precision. The Gram, Cholesky and all small factors are float64 on M's device, whatever
M's dtype: with a float64 Gram one pass leaves ‖QᵀQ − I‖ = O(κ(A)²·u₆₄ + κ(A)·u) where u is
M's unit roundoff, so a float32 input needs no second pass (the earlier float32 path ran two
float32 passes: two more GEMMs over the tall matrix). The GEMMs on the tall matrix run in M's
dtype (TF32 is never enabled here).

Cost: one sketch pass plus 3 GEMMs of 2·m·n·k flops (M·W, AᵀA, A·L⁻ᵀ), two host syncs
(the sketch to the host, the Cholesky rank back), no triangular solve on the tall matrix.

Batched input [..., m, n]: each matrix is factored on its own (its own sketch, pivots and
rank); see ``cqrrpt`` for how the outputs are padded.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ..sketch.sparse import sparse_sign
from .cholqr import cholqr_step


def _check(M, gamma, sketch_nnz, passes):
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"M must be a torch.Tensor, got {type(M).__name__}")
    if M.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"M must be float32 or float64, got {M.dtype}")
    if M.dim() < 2:
        raise ValueError(f"M must be a tensor [..., m, n] with at least 2 dimensions, got shape {list(M.shape)}")
    m, n = M.shape[-2:]
    if n < 1 or m < n:
        raise ValueError(
            f"M must be tall or square with at least one column (m >= n >= 1), got shape {list(M.shape)}"
        )
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not gamma >= 1.0:
        raise ValueError(f"gamma must be a real number >= 1 (sketch rows = ceil(gamma * n)), got {gamma!r}")
    if isinstance(sketch_nnz, bool) or not isinstance(sketch_nnz, numbers.Integral) or sketch_nnz < 1:
        raise ValueError(f"sketch_nnz must be a positive int, got {sketch_nnz!r}")
    if isinstance(passes, bool) or not isinstance(passes, numbers.Integral) or passes < 1:
        raise ValueError(f"passes must be a positive int (Cholesky QR passes), got {passes!r}")


def _qrcp_host(M_sk: torch.Tensor):
    """Column-pivoted QR (geqp3) of the small sketch on the host, in float64:
    (R [n, n] numpy float64, J numpy int64)."""
    from scipy.linalg import qr

    a = M_sk.detach().to("cpu", torch.float64).numpy()
    R, J = qr(a, mode="r", pivoting=True, overwrite_a=True, check_finite=False)
    n = a.shape[1]
    return R[:n], J.astype(np.int64)


def _cqrrpt_2d(M, gamma, sketch_nnz, rank_tol, passes, generator):
    m, n = M.shape
    eps = torch.finfo(M.dtype).eps  # rank decisions at the input's precision
    d = min(math.ceil(gamma * n), m)
    if d < m:
        S = sparse_sign(d, m, nnz=min(sketch_nnz, d), device=M.device, dtype=M.dtype, generator=generator)
        M_sk = S.apply(M, dim=0)
    else:  # no room to sketch: M itself is the "sketch" (S = I)
        M_sk = M
    R_sk_np, J_np = _qrcp_host(M_sk)
    diag = np.abs(np.diagonal(R_sk_np))
    tol = 2.0 * math.sqrt(d) * eps if rank_tol is None else float(rank_tol)
    keep = diag > tol * diag[0] if diag[0] > 0 else np.zeros_like(diag, dtype=bool)
    k = int(np.argmin(keep)) if not keep.all() else n
    J = torch.from_numpy(J_np).to(M.device)
    if k == 0:
        return M.new_zeros((m, 0)), M.new_zeros((0, n)), J
    R_sk = torch.from_numpy(R_sk_np[:k]).to(M.device)  # [k, n] float64
    W = R_sk.new_zeros((n, k))
    W[J[:k]] = torch.linalg.solve_triangular(R_sk[:, :k], torch.eye(k, dtype=R_sk.dtype, device=M.device), upper=True)
    Q = M @ W.to(M.dtype)  # the preconditioned A = M[:, J[:k]] R̂₁₁⁻¹ (see the module docstring)
    R = R_sk
    for _ in range(passes):
        Q, R_fac, r = cholqr_step(Q)
        R = R_fac @ R[:r]
    return Q, R.to(M.dtype), J


def cqrrpt(M: torch.Tensor, gamma: float = 1.25, *, sketch_nnz: int = 4, rank_tol: float | None = None,
           passes: int = 1, generator: torch.Generator | None = None, return_rank: bool = False):
    """Rank-revealing QR with column pivoting of a tall M [m, n]: ``(Q, R, J)`` with M[:, J] ≈ Q R.

    Q [m, r] has orthonormal columns, R [r, n] is upper trapezoidal, J [n] (int64, 0-based) is a
    permutation and r <= n the numerical rank (r = n for full-rank M, in float32 as in float64).
    ``gamma``: sketch rows per column (d = ⌈γ n⌉, at most m). ``rank_tol``: relative threshold on
    the sketch's pivoted diagonal (default 2·√d·u). ``passes``: Cholesky QR passes (one is enough
    in float32 and float64: the Gram is accumulated in float64). ``generator`` seeds the sketch.
    The large work (sketch, GEMMs) runs on M's device; only the d x n sketch visits the host.

    Batched M [..., m, n]: every matrix gets its own sketch, pivots and rank (drawn from
    ``generator`` in batch order, so the result equals unbatched calls made one after another).
    Q is [..., m, r] and R [..., r, n] with r the largest rank in the batch; a matrix of rank
    r_b < r has zero columns r_b.. in Q and zero rows r_b.. in R, so M[..., J] ≈ Q R still holds
    (``M.gather(-1, J[..., None, :].expand_as(M))``). ``return_rank=True`` appends the ranks: an
    int64 tensor of the batch shape (0-d for a single matrix).
    """
    _check(M, gamma, sketch_nnz, passes)
    if M.dim() == 2:
        Q, R, J = _cqrrpt_2d(M, gamma, sketch_nnz, rank_tol, passes, generator)
        return (Q, R, J, torch.tensor(Q.shape[1], device=M.device)) if return_rank else (Q, R, J)
    batch, (m, n) = M.shape[:-2], M.shape[-2:]
    parts = [_cqrrpt_2d(Mb, gamma, sketch_nnz, rank_tol, passes, generator) for Mb in M.reshape(-1, m, n)]
    r = max(Q.shape[1] for Q, _, _ in parts)
    Q = M.new_zeros((len(parts), m, r))
    R = M.new_zeros((len(parts), r, n))
    for b, (Qb, Rb, _) in enumerate(parts):
        Q[b, :, : Qb.shape[1]] = Qb
        R[b, : Rb.shape[0]] = Rb
    J = torch.stack([Jb for _, _, Jb in parts])
    out = (Q.reshape(*batch, m, r), R.reshape(*batch, r, n), J.reshape(*batch, n))
    if return_rank:
        ranks = torch.tensor([Qb.shape[1] for Qb, _, _ in parts], device=M.device).reshape(batch)
        return (*out, ranks)
    return out
