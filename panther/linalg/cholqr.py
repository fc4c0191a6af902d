"""Cholesky QR pieces shared by CQRRPT and the randomized SVD.

CholeskyQR of a tall X [m, k]: G = XᵀX = LLᵀ, Q = X L⁻ᵀ, R = Lᵀ. It is all BLAS-3 (one
Gram GEMM, one Cholesky of a k x k matrix, one GEMM with L⁻ᵀ), but loses orthogonality
like κ(X)²·u, so it is only used on matrices preconditioned to κ = O(1) by a sketch. The
small k x k work (Gram accumulation, Cholesky, inverse) is float64 on X's device.
"""

from __future__ import annotations

import math

import torch

from ..sketch.sparse import sparse_sign


def gram(X: torch.Tensor) -> torch.Tensor:
    """XᵀX in float64 as one GEMM (cuBLAS has no faster syrk path in torch; a float32 X is
    widened first, so the Gram's rounding error is u₆₄-sized and one Cholesky QR pass leaves
    ‖QᵀQ − I‖ = O(κ(X)·u) of X's precision instead of O(κ(X)²·u))."""
    Xd = X.double()
    return Xd.mT @ Xd


def cholesky_rank(L: torch.Tensor, info: torch.Tensor, eps: float) -> int:
    """Columns of X kept after a Cholesky of XᵀX (``cholesky_ex``'s L and info: 0 = success, else
    the 1-based order of the first non-positive pivot) or whose diagonal collapses:
    L_ii < √eps · max_j L_jj (eps: the unit roundoff of X's dtype) means X's column i is, to X's
    precision, in the span of the previous ones (CholeskyQR cannot orthogonalise it).
    Evaluated on L's device; one host sync for the result."""
    k = L.shape[-1]
    diag = L.diagonal()
    valid = torch.arange(k, device=L.device) < torch.where(info == 0, k, info - 1)
    valid &= torch.isfinite(diag)
    top = torch.where(valid, diag, torch.zeros_like(diag)).max()
    good = valid & (diag > math.sqrt(eps) * top)
    return int(good.to(torch.int32).cumprod(0).sum())  # length of the leading run of good columns


def cholqr_step(X: torch.Tensor):
    """One CholeskyQR pass with rank truncation: (Q [m, r] in X's dtype, Rfac [r, r] upper in
    float64, r). One host sync (the rank).

    Q = X L⁻ᵀ is computed as a GEMM with the explicit inverse of the small factor, not a
    triangular solve over the tall X (a TRSM of that shape runs far below GEMM speed). This is
    as accurate here because X is preconditioned: κ(L) = κ(X) = O(1), so the inverse is
    computed to O(κ(L)·u) and the product's rounding error is O(κ(L)·u) per row as well.
    """
    L, info = torch.linalg.cholesky_ex(gram(X))
    r = cholesky_rank(L, info, torch.finfo(X.dtype).eps)
    Lr = L[:r, :r]
    Linv_t = torch.linalg.solve_triangular(Lr, torch.eye(r, dtype=L.dtype, device=L.device), upper=False).mT
    return X[:, :r] @ Linv_t.to(X.dtype), Lr.mT, r


def default_passes(dtype: torch.dtype) -> int:
    """CholeskyQR passes after sketch preconditioning: one in float64 (κ² u ≈ 1e-13 for the
    κ ≈ 20 that a d = 1.25n sketch leaves), two in float32 (one leaves O(κ·u₃₂) ≈ 1e-6 from
    rounding the product in float32; the second brings it to O(u₃₂))."""
    return 1 if dtype == torch.float64 else 2


def orthonormalize(Y: torch.Tensor, generator=None, gamma: float = 2.0, passes: int | None = None) -> torch.Tensor:
    """An orthonormal basis Q [m, l] of range(Y) for tall Y [m, l] (randomized CholeskyQR).

    Sketch Ŷ = SY (sparse sign, d = ⌈γ l⌉ rows), R̂ = qr(Ŷ).R, precondition Y R̂⁻¹ (κ = O(1)),
    then CholeskyQR. Falls back to Householder QR when Y is too small to sketch or numerically
    rank-deficient (a basis with exactly l columns is then still returned).
    """
    m, l = Y.shape
    d = math.ceil(gamma * l)
    if d >= m or l == 0:
        return torch.linalg.qr(Y).Q
    S = sparse_sign(d, m, nnz=min(4, d), device=Y.device, dtype=Y.dtype, generator=generator)
    R_sk = torch.linalg.qr(S.apply(Y, dim=0), mode="r").R
    diag = R_sk.diagonal().abs()
    if not bool((diag > math.sqrt(torch.finfo(Y.dtype).eps) * diag.max()).all()):
        return torch.linalg.qr(Y).Q
    Q = torch.linalg.solve_triangular(R_sk, Y, upper=True, left=False)
    for _ in range(passes or default_passes(Y.dtype)):
        Q, _, r = cholqr_step(Q)
        if r < l:
            return torch.linalg.qr(Y).Q
    return Q
