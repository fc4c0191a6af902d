"""Cholesky QR pieces shared by CQRRPT and the randomized SVD.

CholeskyQR of a tall X [m, k]: G = XᵀX = LLᵀ, Q = X L⁻ᵀ, R = Lᵀ. It is all BLAS-3 (one
Gram product, one Cholesky of a k x k matrix, one triangular solve), but loses
orthogonality like κ(X)²·u, so it is only used on matrices preconditioned to κ = O(1)
by a sketch (``sketch_precondition``), where one pass gives ‖QᵀQ − I‖ = O(κ²u) and a
second pass brings it to O(u).
"""

from __future__ import annotations

import math

import torch

from ..sketch.sparse import sparse_sign


def gram(X: torch.Tensor) -> torch.Tensor:
    """XᵀX as a GEMM (measured faster than scipy's syrk on the CPU, and what cuBLAS does best)."""
    return X.mT @ X


def cholesky_rank(L: torch.Tensor, info: int, k: int) -> int:
    """Columns of X kept after a Cholesky of XᵀX that failed at ``info`` (1-based, 0 = success)
    or whose diagonal collapses: L_ii < √u · max_j L_jj means X's column i is, to working
    precision, in the span of the previous ones (CholeskyQR cannot orthogonalise it)."""
    r = k if info == 0 else info - 1
    if r == 0:
        return 0
    diag = L.diagonal()[:r]
    eps = torch.finfo(L.dtype).eps
    bad = (diag <= math.sqrt(eps) * diag.max()) | ~torch.isfinite(diag)
    first = int(torch.argmax(bad.to(torch.int8))) if bool(bad.any()) else r
    return first


def cholqr_step(X: torch.Tensor):
    """One CholeskyQR pass with rank truncation: (Q [m, r], Rfac [r, r] upper, r)."""
    k = X.shape[1]
    L, info = torch.linalg.cholesky_ex(gram(X))
    r = cholesky_rank(L, int(info), k)
    Lr = L[:r, :r]
    Q = torch.linalg.solve_triangular(Lr.mT, X[:, :r], upper=True, left=False)
    return Q, Lr.mT, r


def default_passes(dtype: torch.dtype) -> int:
    """CholeskyQR passes after sketch preconditioning: one in float64 (κ² u ≈ 1e-13 for the
    κ ≈ 20 that a d = 1.25n sketch leaves), two in float32 (one would leave ≈ 1e-5)."""
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
