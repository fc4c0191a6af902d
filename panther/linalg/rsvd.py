"""Randomized SVD (Halko, Martinsson, Tropp 2011; blocked adaptive QB after Martinsson & Voronin 2016).

Fixed rank (tol=None): the cost structure of ``torch.svd_lowrank`` (HMT Algorithms 4.4 and 5.1):
l = k + oversampling Gaussian test vectors, Y = A Ω (one GEMM), ``power_iters`` rounds of
Y ← A·basis(Aᵀ·basis(Y)), then Q = qr(Y) (Householder, on the m x l panel), B = QᵀA,
B = Ũ Σ Vᵀ, U = Q Ũ. Every product is re-normalised: without it the columns of (AAᵀ)^q AΩ
align with the top singular vectors and the ones below σ₁·u^{1/(2q+1)} are lost to rounding.
Inside the power iterations the basis only has to span range(Y) and be well conditioned, not
be orthonormal (the next product and the final Householder QR see the same subspace), so
``_basis`` uses one shifted Cholesky QR with a float64 Gram: two thin GEMMs and an l x l
Cholesky, no host sync, where svd_lowrank runs a Householder QR (geqrf + orgqr) every time. Expected error ≲ (1 + 4√(k+p)/(p−1)·√min(m,n))^{1/(2q+1)} σ_{k+1}
(HMT Cor. 10.10 with q power iterations). Leading batch dimensions are handled by the
batched GEMM/QR/SVD, each matrix with its own test vectors.

Adaptive (tol given): blocks of ``block_size`` basis vectors are added to a QB factorisation of
A, each from the residual A − QB, until the relative Frobenius error estimate
√(‖A‖² − ‖B‖²)/‖A‖ is at most tol or k + oversampling columns are reached; the returned rank
r <= k is the smallest whose estimated relative error √(‖A − QB‖² + Σ_{i>r} σ_i²)/‖A‖ is at most tol.
The estimate subtracts squared norms, so it cannot resolve errors below about √u·‖A‖
(1e-8 in float64, 3e-4 in float32): tol is raised to that floor.
"""

from __future__ import annotations

import math
import numbers

import torch

from .._validation import float_matrices, positive_int
from ..sketch.sparse import sparse_sign
from .cholqr import orthonormalize


def _check(A, k, tol, oversampling, power_iters, block_size):
    float_matrices(A, "A")
    k = positive_int(k, "k")
    if k > min(A.shape[-2:]):
        raise ValueError(f"k must be <= min(m, n) = {min(A.shape[-2:])}, got {k}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < 1):
        raise ValueError(f"tol must be None or a relative error in (0, 1), got {tol!r}")
    for value, name in ((oversampling, "oversampling"), (power_iters, "power_iters")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if block_size is not None:
        positive_int(block_size, "block_size")
    return k


def _range_sketch(A, l, generator):
    """Y = A Ωᵀ for a sparse sign Ω [l, n] (8 non-zeros per column, or l if smaller)."""
    omega = sparse_sign(l, A.shape[1], nnz=min(8, l), device=A.device, dtype=A.dtype, generator=generator)
    return omega.apply(A, dim=1)


def _svd_of_qb(Q, B, r):
    Ub, S, Vh = torch.linalg.svd(B, full_matrices=False)
    return Q @ Ub[..., :r], S[..., :r], Vh[..., :r, :].mT


def _basis(Y: torch.Tensor) -> torch.Tensor:
    """A well-conditioned basis Y L⁻ᵀ of range(Y) for the power iterations (shifted CholeskyQR).

    G = YᵀY is formed in float64, so its rounding error is ≲ l·u₆₄·‖Y‖²_F, and L = chol(G + sI)
    with s = 16·l·u₆₄·‖Y‖²_F (> 0 even for Y = 0) exists without a check (no host sync). L is
    invertible, so Y L⁻ᵀ spans exactly range(Y): directions of Y with σ_i² ≫ s come out
    orthonormal, weaker ones are damped by σ_i/√s but kept (they stay far above the rounding of
    the float32/float64 products that follow). Exactly rank-deficient Y keeps its zero directions.
    """
    Yd = Y.double()
    G = Yd.mT @ Yd
    l = G.shape[-1]
    eye = torch.eye(l, dtype=G.dtype, device=G.device)
    shift = 16 * l * torch.finfo(torch.float64).eps * G.diagonal(dim1=-2, dim2=-1).sum(-1) + torch.finfo(G.dtype).tiny
    L, _ = torch.linalg.cholesky_ex(G + shift[..., None, None] * eye)
    Linv_t = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False).mT
    return (Yd @ Linv_t).to(Y.dtype)


def _fixed_rank(A, k, oversampling, power_iters, generator):
    m, n = A.shape[-2:]
    if m < n:  # work on the tall Aᵀ: the panel QRs and the SVD of B are then on the smaller side
        V, S, U = _fixed_rank(A.mT, k, oversampling, power_iters, generator)
        return U, S, V
    l = min(k + oversampling, m, n)
    omega = torch.randn((*A.shape[:-2], n, l), generator=generator, device=A.device, dtype=A.dtype)
    Y = A @ omega
    for _ in range(power_iters):
        Y = A @ _basis(A.mT @ _basis(Y))
    Q = torch.linalg.qr(Y).Q
    return _svd_of_qb(Q, Q.mT @ A, k)


def _adaptive(A, k, tol, oversampling, power_iters, block_size, generator):
    m, n = A.shape
    cap = min(k + oversampling, m, n)
    b = block_size or min(max(8, k // 4), 64)
    norm2 = float(torch.linalg.matrix_norm(A).double() ** 2)
    tol = max(tol, 2.0 * math.sqrt(torch.finfo(A.dtype).eps))
    Q, B = A.new_zeros((m, 0)), A.new_zeros((0, n))
    captured2 = 0.0
    while Q.shape[1] < cap:
        bi = min(b, cap - Q.shape[1])
        Y = _range_sketch(A, bi, generator)
        Y = Y - Q @ (Q.mT @ Y)
        for _ in range(power_iters):
            Z = orthonormalize(A.mT @ Y - B.mT @ (Q.mT @ Y), generator)  # (A - QB)ᵀ Y
            Y = A @ Z - Q @ (B @ Z)  # (A - QB) Z
        for _ in range(2):  # block Gram-Schmidt, twice is enough
            Y = Y - Q @ (Q.mT @ Y)
        Qi = orthonormalize(Y, generator)
        Bi = Qi.mT @ A - (Qi.mT @ Q) @ B
        Q, B = torch.cat([Q, Qi], 1), torch.cat([B, Bi], 0)
        captured2 += float(torch.linalg.matrix_norm(Bi).double() ** 2)
        if norm2 == 0 or math.sqrt(max(norm2 - captured2, 0.0) / norm2) <= tol:
            break
    U, S, V = _svd_of_qb(Q, B, min(k, Q.shape[1]))
    if norm2 == 0:
        return U[:, :1], S[:1], V[:, :1]
    resid2 = max(norm2 - captured2, 0.0)
    s2 = (S.double() ** 2).flip(0).cumsum(0).flip(0)  # s2[r] = sum_{i >= r} σ_i²
    tail = torch.cat([s2[1:], s2.new_zeros(1)])  # error of keeping r + 1 values
    ok = ((resid2 + tail) / norm2).sqrt() <= tol
    r = int(torch.argmax(ok.to(torch.int8))) + 1 if bool(ok.any()) else S.shape[0]
    return U[:, :r], S[:r], V[:, :r]


def randomized_svd(A: torch.Tensor, k: int, tol: float | None = None, oversampling: int = 10,
                   power_iters: int = 2, *, block_size: int | None = None, generator: torch.Generator | None = None,
                   return_rank: bool = False):
    """Rank-k randomized SVD A ≈ U diag(S) Vᵀ: ``(U [m, r], S [r], V [n, r])``, S descending.

    r = k when ``tol`` is None; with a relative Frobenius-error target ``tol`` (blocked adaptive
    mode) r <= k is the smallest rank meeting it (k if none does). ``oversampling`` extra test
    vectors (default 10) and ``power_iters`` power iterations (default 2), each followed by
    re-orthonormalisation. V is returned n x r (not transposed), as in the earlier Panther.
    Float32 or float64, on A's device; ``generator`` seeds the test matrices.

    Batched A [..., m, n]: U [..., m, r], S [..., r], V [..., n, r], every matrix with its own test
    vectors. With ``tol`` each matrix gets its own rank r_b and r is the largest; entries of S past
    r_b are zero, as are the matching columns of U and V. ``return_rank=True`` appends the ranks:
    an int64 tensor of the batch shape (0-d for a single matrix; all k without ``tol``).
    """
    k = _check(A, k, tol, oversampling, power_iters, block_size)
    batch = A.shape[:-2]
    if tol is None:
        U, S, V = _fixed_rank(A, k, oversampling, power_iters, generator)
        ranks = torch.full(batch, k, dtype=torch.int64, device=A.device)
    elif A.dim() == 2:
        U, S, V = _adaptive(A, k, float(tol), oversampling, power_iters, block_size, generator)
        ranks = torch.tensor(S.shape[0], device=A.device)
    else:
        m, n = A.shape[-2:]
        parts = [_adaptive(Ab, k, float(tol), oversampling, power_iters, block_size, generator)
                 for Ab in A.reshape(-1, m, n)]
        r = max(Sb.shape[0] for _, Sb, _ in parts)
        U, S, V = A.new_zeros((len(parts), m, r)), A.new_zeros((len(parts), r)), A.new_zeros((len(parts), n, r))
        for b, (Ub, Sb, Vb) in enumerate(parts):
            rb = Sb.shape[0]
            U[b, :, :rb], S[b, :rb], V[b, :, :rb] = Ub, Sb, Vb
        U, S, V = U.reshape(*batch, m, r), S.reshape(*batch, r), V.reshape(*batch, n, r)
        ranks = torch.tensor([Sb.shape[0] for _, Sb, _ in parts], device=A.device).reshape(batch)
    return (U, S, V, ranks) if return_rank else (U, S, V)
