"""Activation-aware SVD (ASVD) factors of SKLinear: truncation weighted by the inputs.

Plain truncated SVD minimises ‖W − W_r‖_F, treating every input direction alike. What a
layer must keep is its output on the inputs it actually sees: E‖(W − W_r) x‖² =
‖(W − W_r) C^{1/2}‖_F² with C = E[x xᵀ] the inputs' second moment. With C = R Rᵀ
(Cholesky), the best rank-r W_r is the truncated SVD of W R, multiplied back by R⁻¹.

In SKLinear's terms (Wᵀ ≈ 1/(2L) Σ S1_i U1_i + U2_i S2_i): ``svd_factors`` of W R give
factors of Rᵀ Wᵀ; multiplying S1_i and U2_i on the left by R⁻ᵀ turns them into factors of
Wᵀ. U1_i stay scaled orthonormal rows; U2_i become R⁻ᵀ times them (still fixed, no longer
signs), which the layer and the ops accept alike.
"""

from __future__ import annotations

import collections
import weakref

import torch

from .linear import _check_weight, _work_dtype, svd_factors, tensor_identity

# The tuner asks for ASVD factors of one layer at many ranks: keep the last few whitenings (R and
# W R; svd_factors then finds the SVD of the same W R in its own cache). An entry is valid only
# for the same weight (see ``tensor_identity``) and second-moment tensors, versions and damping.
_WHITE_CACHE: collections.OrderedDict = collections.OrderedDict()
_WHITE_CACHE_SIZE = 4


def _whitened(weight: torch.Tensor, second_moment: torch.Tensor, damping: float):
    """(R, W R) in float64, with C + damping·mean(diag C)·I = R Rᵀ (Cholesky; cached)."""
    owner, identity = tensor_identity(weight)
    key = (*identity, id(second_moment), second_moment._version, damping)
    hit = _WHITE_CACHE.get(key)
    if hit is not None and hit[0]() is owner and hit[1]() is second_moment:
        _WHITE_CACHE.move_to_end(key)
        return hit[2]
    d_in = weight.shape[1]
    # Cholesky in float64: second moments of activations are often badly conditioned
    C = second_moment.detach().to(device=weight.device, dtype=torch.float64)
    C = (C + C.T) / 2
    C = C + damping * (C.diagonal().mean().clamp_min(1e-12)) * torch.eye(d_in, dtype=C.dtype, device=C.device)
    R = torch.linalg.cholesky(C)  # C = R Rᵀ, R lower triangular
    value = (R, weight.detach().to(torch.float64) @ R)
    _WHITE_CACHE[key] = (weakref.ref(owner), weakref.ref(second_moment), value)
    while len(_WHITE_CACHE) > _WHITE_CACHE_SIZE:
        _WHITE_CACHE.popitem(last=False)
    return value


@torch.no_grad()
def asvd_factors(weight: torch.Tensor, num_terms: int, low_rank: int, second_moment: torch.Tensor, *,
                 generator=None, dtype=None, damping: float = 1e-4):
    """(S1s, S2s, U1s, U2s) of the best rank-2Lk approximation of ``weight`` [out, in]
    in the input-weighted norm given by ``second_moment`` [in, in] (E[x xᵀ] over calibration rows).

    ``damping`` (relative to the mean eigenvalue) is added to the diagonal so input
    directions never seen in calibration still get a little weight and R is invertible.
    """
    _check_weight(weight)
    d_in = weight.shape[1]
    if not isinstance(second_moment, torch.Tensor) or tuple(second_moment.shape) != (d_in, d_in):
        got = tuple(second_moment.shape) if isinstance(second_moment, torch.Tensor) else type(second_moment).__name__
        raise ValueError(f"second_moment must be a tensor [in_features, in_features] = [{d_in}, {d_in}], got {got}")
    if not 0 < damping < 1:
        raise ValueError(f"damping must be in (0, 1), got {damping!r}")
    dtype = dtype or weight.dtype
    work = _work_dtype(dtype)
    R, W_white = _whitened(weight, second_moment, damping)
    S1s, S2s, U1s, U2s = svd_factors(W_white, num_terms, low_rank, generator=generator, dtype=torch.float64)
    Rt = R.T  # S1_i <- R⁻ᵀ S1_i, U2_i <- R⁻ᵀ U2_i  (upper-triangular solves)
    S1s = torch.linalg.solve_triangular(Rt, S1s, upper=True)
    U2s = torch.linalg.solve_triangular(Rt, U2s, upper=True)
    return tuple(t.to(work).to(dtype).contiguous() for t in (S1s, S2s, U1s, U2s))
