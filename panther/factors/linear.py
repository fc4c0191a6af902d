"""Factors of SKLinear from a dense weight W (torch layout [out, in]).

SKLinear computes y = 1/(2L) Σ_i (x S1_i U1_i + x U2_i S2_i) + b with S1s [L, in, k],
S2s [L, k, out] learned and U1s [L, k, out], U2s [L, in, k] fixed. Two ways to set them:

* ``sketch_factors``: U's are random ±1/√k sign sketches and S1_i = Wᵀ U1_iᵀ,
  S2_i = U2_iᵀ Wᵀ. Unbiased for xWᵀ but noisy (relative error ≈ √(d/(2Lk))): an
  initialisation to train from.
* ``svd_factors``: the best rank-2Lk approximation of W (truncated SVD). Term 1 carries
  the top Lk singular triplets, term 2 the next Lk. The U's are the singular vectors
  scaled to the sign sketches' magnitude (entries ~1/√k), so training behaves alike.
"""

from __future__ import annotations

import collections
import weakref

import torch

from ..sketch import scaled_sign_sketch


def _check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 2-D tensor [out_features, in_features], got {got}")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# The tuner asks for factors of the same weight at many ranks: keep the last few SVDs. An entry
# is valid only for the same tensor (weak reference to it, or to the tensor it is a view of),
# version, place and work dtype. Pass the weight itself, not ``weight.detach()`` (a new tensor
# each time, so never found again).
_SVD_CACHE: collections.OrderedDict = collections.OrderedDict()
_SVD_CACHE_SIZE = 4


def tensor_identity(tensor: torch.Tensor):
    """(owner, key) identifying ``tensor``'s values for a cache: the owner is the tensor a view was
    taken from (a transposed weight is a fresh view each time, of the same parameter); the key
    holds the owner's id and version counter and the view's place and layout. Keep a weak
    reference to the owner beside the entry and check it, as ids are reused."""
    owner = tensor._base if tensor._base is not None else tensor
    return owner, (id(owner), owner._version, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()),
                   str(tensor.device))


def _thin_svd(weight: torch.Tensor, work: torch.dtype):
    """P, s, Qh of weightᵀ [in, out] in ``work`` precision (cached)."""
    owner, identity = tensor_identity(weight)
    key = (*identity, work)
    hit = _SVD_CACHE.get(key)
    if hit is not None and hit[0]() is owner:
        _SVD_CACHE.move_to_end(key)
        return hit[1]
    factors = torch.linalg.svd(weight.detach().to(work).T, full_matrices=False)
    _SVD_CACHE[key] = (weakref.ref(owner), factors)
    while len(_SVD_CACHE) > _SVD_CACHE_SIZE:
        _SVD_CACHE.popitem(last=False)
    return factors


def random_sketches(num_terms, low_rank, in_features, out_features, *, device=None, dtype=None, generator=None):
    """U1s [L, k, out] and U2s [L, in, k], independent ±1/√k sign sketches."""
    U1s = torch.stack(
        [scaled_sign_sketch(low_rank, out_features, device=device, dtype=dtype, generator=generator)
         for _ in range(num_terms)]
    )
    U2s = torch.stack(
        [scaled_sign_sketch(low_rank, in_features, device=device, dtype=dtype, generator=generator).T
         for _ in range(num_terms)]
    )
    return U1s, U2s


@torch.no_grad()
def sketch_factors(weight: torch.Tensor, num_terms: int, low_rank: int, *, generator=None, dtype=None):
    """(S1s, S2s, U1s, U2s) from random sign sketches of ``weight`` [out, in]."""
    _check_weight(weight)
    dtype = dtype or weight.dtype
    d_out, d_in = weight.shape
    work = _work_dtype(dtype)
    U1s, U2s = random_sketches(num_terms, low_rank, d_in, d_out, device=weight.device, dtype=work,
                               generator=generator)
    Wt = weight.detach().to(work).T  # [in, out]
    S1s = torch.matmul(Wt, U1s.transpose(1, 2))  # [L, in, k]
    S2s = torch.matmul(U2s.transpose(1, 2), Wt)  # [L, k, out]
    return tuple(t.to(dtype).contiguous() for t in (S1s, S2s, U1s, U2s))


@torch.no_grad()
def svd_factors(weight: torch.Tensor, num_terms: int, low_rank: int, *, generator=None, dtype=None):
    """(S1s, S2s, U1s, U2s) holding the best rank-2Lk approximation of ``weight`` [out, in].

    Where 2Lk exceeds the rank available (min(in, out)), the surplus U rows/columns are
    random sign sketches and the matching S entries are zero, so the layer still equals
    the truncated SVD exactly and has valid directions to train.
    """
    _check_weight(weight)
    dtype = dtype or weight.dtype
    d_out, d_in = weight.shape
    L, k = num_terms, low_rank
    Lk = L * k
    work = _work_dtype(dtype)
    P, s, Qh = _thin_svd(weight, work)  # weightᵀ [in, out] = P diag(s) Qᵀ
    rank = s.shape[0]
    U1s, U2s = random_sketches(L, k, d_in, d_out, device=weight.device, dtype=work, generator=generator)
    U1 = U1s.reshape(Lk, d_out)  # term-1 rows, grouped by term
    U2 = U2s.permute(1, 0, 2).reshape(d_in, Lk)  # term-2 columns, grouped by term
    S1 = torch.zeros(d_in, Lk, dtype=work, device=weight.device)
    S2 = torch.zeros(Lk, d_out, dtype=work, device=weight.device)
    c1, c2 = (d_out / k) ** 0.5, (d_in / k) ** 0.5  # singular vectors scaled to entries ~1/√k
    n1 = min(Lk, rank)
    n2 = min(Lk, rank - n1)
    # term 1: S1 U1 / (2L) = Wt Q1 Q1ᵀ  with U1 = c1 Q1ᵀ, S1 = 2L/c1 · Wt Q1 = 2L/c1 · P1 diag(s1)
    U1[:n1] = c1 * Qh[:n1]
    S1[:, :n1] = (2 * L / c1) * P[:, :n1] * s[:n1]
    # term 2: U2 S2 / (2L) = P2 P2ᵀ Wt  with U2 = c2 P2, S2 = 2L/c2 · diag(s2) Q2ᵀ
    U2[:, :n2] = c2 * P[:, n1:n1 + n2]
    S2[:n2] = (2 * L / c2) * s[n1:n1 + n2, None] * Qh[n1:n1 + n2]
    S1s = S1.reshape(d_in, L, k).permute(1, 0, 2)
    U2s = U2.reshape(d_in, L, k).permute(1, 0, 2)
    S2s = S2.reshape(L, k, d_out)
    U1s = U1.reshape(L, k, d_out)
    return tuple(t.to(dtype).contiguous() for t in (S1s, S2s, U1s, U2s))


def lowrank_pair(S1s, S2s, U1s, U2s):
    """(A [in, 2Lk], B [2Lk, out]) with x A B = 1/(2L) Σ (x S1_i U1_i + x U2_i S2_i), stacked as the
    ops stack them (A = [S1_1 .. S1_L U2_1 .. U2_L], B = [U1_1; ..; U1_L; S2_1; ..; S2_L] / (2L),
    the scale rounded once into B's dtype)."""
    L, d_in, _ = S1s.shape
    A = torch.cat([S1s.permute(1, 0, 2), U2s.permute(1, 0, 2)], dim=1).reshape(d_in, -1)
    B = torch.cat([U1s, S2s], dim=0).reshape(-1, U1s.shape[2]) / (2 * L)
    return A.contiguous(), B.contiguous()
