"""CQRRPT: randomized column-pivoted QR through a sketch and Cholesky QR.

Melnichenko, Balabanov, Murray, Demmel, Mahoney, Luszczek, "CholeskyQR with randomization
and pivoting for tall matrices" (arXiv 2311.08316). For M [m, n], m >= n:

1. sketch M̂ = S M with a sparse sign S [d, m], d = ⌈γ n⌉, ``sketch_nnz`` non-zeros per column
   (one streaming pass over M; panther's sparse-apply op, on M's device);
2. QR with column pivoting of the small d x n sketch (LAPACK geqp3 through scipy, on the
   host; only M̂ is copied): M̂[:, J] = Q̂ R̂; the rank k is the number of diagonal entries
   |R̂_ii| > tol·|R̂_00| (tol default: 2·√d·u, twice the rounding noise measured for a sketched
   QR of a rank-deficient matrix, far below what a full-rank sketch shows);
3. (unless the direct path below applies) precondition A = M[:, J[:k]] R̂₁₁⁻¹ (κ(A) = O(1) because S is a subspace embedding) as one
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

Direct path. On a GPU, while the host factors the sketch, the device computes the float64 Gram
MᵀM (queued behind the sketch's copy to pinned memory, so the two overlap); on a CPU, where
nothing would overlap, the Gram is formed after the QRCP and only when the rank is full. Once the pivots are
known, if M has full rank and a Gershgorin bound on the column-normalised Gram of M[:, J] proves
κ(M D⁻¹)² <= 3 (D: column norms), M needs no preconditioning: Cholesky QR of M[:, J] itself is
then more accurate than of the preconditioned A (κ(A) ≈ 10-20), and Q = M·(P L⁻ᵀ) is the only
GEMM left. Otherwise the Gram is dropped and the preconditioned path runs.

Cost: one sketch pass and the Gram of M (overlapped with the host QRCP on a GPU), then 1 GEMM
(direct path) or 3 GEMMs (preconditioned path: M·W, AᵀA, A·L⁻ᵀ) of 2·m·n·k flops; three host
syncs (the sketch to the host, the direct-path decision, the Cholesky rank); no triangular
solve on the tall matrix.

Batched input [..., m, n]: each matrix is factored on its own (its own sketch, pivots and
rank); see ``cqrrpt`` for how the outputs are padded.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .._validation import float_matrices
from ..sketch.sparse import sparse_sign
from .cholqr import cholqr_step, gram


def _check(M, gamma, sketch_nnz, passes):
    float_matrices(M, "M")
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


def _copy_to_host(M_sk: torch.Tensor):
    """Starts the copy of the small sketch to the host; returns a function that waits for it and
    gives the float64 numpy array. The sketch is widened to float64 where it lives: on a GPU no
    tensor op then runs on the host (converting the pinned copy there measured 9 ms on an H200
    machine: a CPU op wakes the intra-op thread pool). On CUDA the copy goes to pinned memory
    behind an event, so work queued after this call (the speculative Gram) runs on the GPU while
    the host factors."""
    sketch = M_sk.detach().to(torch.float64)
    if sketch.device.type != "cuda":
        return lambda: sketch.numpy()
    buf = torch.empty(sketch.shape, dtype=torch.float64, pin_memory=True)
    buf.copy_(sketch, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def wait():
        done.synchronize()
        return buf.numpy()

    return wait


def _qrcp(a: np.ndarray):
    """Column-pivoted QR (LAPACK geqp3 through scipy) of the small sketch: (R [n, n], J int64)."""
    from scipy.linalg import qr

    R, J = qr(a, mode="r", pivoting=True, check_finite=False)  # a may be the caller's M (no sketch)
    return R[: a.shape[1]], J.astype(np.int64)


# Gershgorin radius bound for the direct path: the column-normalised Gram C of M[:, J] has its
# eigenvalues in [1 - ρ, 1 + ρ], ρ = max_i Σ_{j≠i} |C_ij|, so ρ <= 1/2 proves κ(M D⁻¹)² <= 3: M is
# already better conditioned than the sketch-preconditioned matrix (κ ≈ 10-20) would be.
DIRECT_RADIUS = 0.5


def _direct(M, G, J, exact=False):
    """Cholesky QR of M[:, J] itself from its float64 Gram G (computed before the pivots were known),
    when a Gershgorin bound certifies that M is well conditioned up to column scaling (Cholesky
    QR's rounding does not see column scaling). With ``exact`` (on a CPU, where a small symmetric
    eigensolve costs little beside the GEMMs) a refused bound is retried with the eigenvalues of
    the column-normalised Gram themselves: Gershgorin's radius grows with n (about √n · n/√m for
    a Gaussian M), so wide well-conditioned matrices fail it. Both accept κ(M D⁻¹)² <= 3.
    Returns (Q, R [n, n] float64) or None. One sync (two with the eigensolve)."""
    Gp = G[J][:, J]
    scale = Gp.diagonal().rsqrt()
    C = Gp * scale[:, None] * scale[None, :]
    radius = (C.abs().sum(1) - C.diagonal().abs()).max()
    L, info = torch.linalg.cholesky_ex(Gp)
    if not bool((info == 0) & (radius <= DIRECT_RADIUS) & torch.isfinite(radius)):
        if not exact or not bool(info == 0):
            return None
        eig = torch.linalg.eigvalsh(C)
        if not bool((eig[0] > 0) & (eig[-1] <= (1 + DIRECT_RADIUS) / (1 - DIRECT_RADIUS) * eig[0])):
            return None
    n = L.shape[0]
    X = torch.zeros_like(L)
    X[J] = torch.linalg.solve_triangular(L, torch.eye(n, dtype=L.dtype, device=L.device), upper=False).mT
    return M @ X.to(M.dtype), L.mT  # Q = M[:, J] L⁻ᵀ as one GEMM with the rows scattered


def _cqrrpt_2d(M, gamma, sketch_nnz, rank_tol, passes, generator):
    m, n = M.shape
    eps = torch.finfo(M.dtype).eps  # rank decisions at the input's precision
    d = min(math.ceil(gamma * n), m)
    if d < m:
        S = sparse_sign(d, m, nnz=min(sketch_nnz, d), device=M.device, dtype=M.dtype, generator=generator)
        M_sk = S.apply(M, dim=0)
    else:  # no room to sketch: M itself is the "sketch" (S = I)
        M_sk = M
    sketch_on_host = _copy_to_host(M_sk)
    on_gpu = M.device.type == "cuda"
    G = gram(M) if on_gpu else None  # speculative on a GPU: overlaps the host QRCP below
    R_sk_np, J_np = _qrcp(sketch_on_host())
    diag = np.abs(np.diagonal(R_sk_np))
    tol = 2.0 * math.sqrt(d) * eps if rank_tol is None else float(rank_tol)
    keep = diag > tol * diag[0] if diag[0] > 0 else np.zeros_like(diag, dtype=bool)
    k = int(np.argmin(keep)) if not keep.all() else n
    J = torch.from_numpy(J_np).to(M.device)
    if k == 0:
        return M.new_zeros((m, 0)), M.new_zeros((0, n)), J
    if k == n and G is None:
        G = gram(M)  # on a CPU nothing overlaps: the Gram only once the rank is known to be full
    direct = _direct(M, G, J, exact=not on_gpu) if k == n else None
    del G
    if direct is not None:
        Q, R = direct
        passes -= 1
    else:
        R = torch.from_numpy(R_sk_np[:k]).to(M.device)  # [k, n] float64
        W = R.new_zeros((n, k))
        W[J[:k]] = torch.linalg.solve_triangular(R[:, :k], torch.eye(k, dtype=R.dtype, device=M.device), upper=True)
        Q = M @ W.to(M.dtype)  # the preconditioned A = M[:, J[:k]] R̂₁₁⁻¹ (see the module docstring)
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
