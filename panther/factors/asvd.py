"""Activation-aware SVD (ASVD) factors of SKLinear and SKConv2d: truncation weighted by the inputs.

Plain truncated SVD minimises ‖W − W_r‖_F, treating every input direction alike. What a
layer must keep is its output on the inputs it actually sees: E‖(W − W_r) x‖² =
‖(W − W_r) C^{1/2}‖_F² with C = E[x xᵀ] the inputs' second moment. With C = R Rᵀ
(Cholesky), the best rank-r W_r is the truncated SVD of W R, multiplied back by R⁻¹.
One whitening (``_whitened``) serves both layers; each then reuses its own SVD init:

* SKLinear (Wᵀ ≈ 1/(2L) Σ S1_i U1_i + U2_i S2_i): ``svd_factors`` of W R give factors of
  Rᵀ Wᵀ; multiplying S1_i and U2_i on the left by R⁻ᵀ turns them into factors of Wᵀ. U1_i
  stay scaled orthonormal rows; U2_i become R⁻ᵀ times them (still fixed, no longer signs),
  which the layer and the ops accept alike.
* SKConv2d: a kernel [C_out, C_in/G, kh, kw] is, per group g, a matrix W_g [C_out/G, P]
  (P = C_in/G·kh·kw) acting on the input's im2col patches, so x above is a patch p_g and
  C_g = E[p_g p_gᵀ], the diagonal block g of E[p pᵀ] over the unfolded patches
  (``torch.nn.functional.unfold`` with the conv's geometry, after its padding;
  ``panther.passes.calibration`` collects it). ``conv_svd_factors`` of the W_g R_g give U1s
  (kept) and S1s rows of W_g R_g's factorisation; multiplying those rows on the right by
  R_g⁻¹ gives factors of W_g. Per group, as ``conv_svd_factors`` truncates per group.
"""

from __future__ import annotations

import collections
import weakref

import torch

from .._validation import positive_int
from .conv import _check as _check_conv
from .conv import conv_svd_factors
from .linear import _check_weight, _work_dtype, svd_factors, tensor_identity

# The tuner asks for ASVD factors of one layer at many ranks: keep the last few whitenings (R and
# W R; svd_factors then finds the SVD of the same W R in its own cache). An entry is valid only
# for the same weight (see ``tensor_identity``), groups, second-moment tensor, version and damping.
_WHITE_CACHE: collections.OrderedDict = collections.OrderedDict()
_WHITE_CACHE_SIZE = 4


def _group_blocks(C: torch.Tensor, groups: int, size: int) -> torch.Tensor:
    """[G, P, P] per-group moments from [G, P, P] as given, or the diagonal blocks of [G·P, G·P]."""
    if C.dim() == 3:
        return C
    return torch.stack([C[g * size:(g + 1) * size, g * size:(g + 1) * size] for g in range(groups)])


def _whitened(weight: torch.Tensor, second_moment: torch.Tensor, damping: float, groups: int | None = None):
    """(R, W R) in float64, with C + damping·mean(diag C)·I = R Rᵀ (Cholesky; cached).

    W is ``weight`` [out, in] (groups None), or for a conv kernel (``groups`` given) the
    per-group matrices [G, C_out/G, P] with C the per-group moments [G, P, P].
    """
    owner, identity = tensor_identity(weight)
    key = (*identity, id(second_moment), second_moment._version, damping, groups)
    hit = _WHITE_CACHE.get(key)
    if hit is not None and hit[0]() is owner and hit[1]() is second_moment:
        _WHITE_CACHE.move_to_end(key)
        return hit[2]
    W = weight.detach().to(torch.float64)
    # Cholesky in float64: second moments of activations are often badly conditioned
    C = second_moment.detach().to(device=weight.device, dtype=torch.float64)
    if groups is not None:
        W = W.reshape(groups, W.shape[0] // groups, -1)
        C = _group_blocks(C, groups, W.shape[-1])
    C = (C + C.mT) / 2
    scale = C.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)[..., None, None]
    C = C + damping * scale * torch.eye(C.shape[-1], dtype=C.dtype, device=C.device)
    R = torch.linalg.cholesky(C)  # C = R Rᵀ, R lower triangular (per group)
    value = (R, W @ R)
    _WHITE_CACHE[key] = (weakref.ref(owner), weakref.ref(second_moment), value)
    while len(_WHITE_CACHE) > _WHITE_CACHE_SIZE:
        _WHITE_CACHE.popitem(last=False)
    return value


def _check_damping(damping: float) -> None:
    if not 0 < damping < 1:
        raise ValueError(f"damping must be in (0, 1), got {damping!r}")


def _shape_of(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


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
        raise ValueError(f"second_moment must be a tensor [in_features, in_features] = [{d_in}, {d_in}], "
                         f"got {_shape_of(second_moment)}")
    _check_damping(damping)
    dtype = dtype or weight.dtype
    work = _work_dtype(dtype)
    R, W_white = _whitened(weight, second_moment, damping)
    S1s, S2s, U1s, U2s = svd_factors(W_white, num_terms, low_rank, generator=generator, dtype=torch.float64)
    Rt = R.T  # S1_i <- R⁻ᵀ S1_i, U2_i <- R⁻ᵀ U2_i  (upper-triangular solves)
    S1s = torch.linalg.solve_triangular(Rt, S1s, upper=True)
    U2s = torch.linalg.solve_triangular(Rt, U2s, upper=True)
    return tuple(t.to(work).to(dtype).contiguous() for t in (S1s, S2s, U1s, U2s))


def check_conv_moment(weight: torch.Tensor, second_moment, groups: int) -> None:
    """Raises a ValueError naming ``second_moment`` and the shapes it may have for this kernel."""
    C_in, patch = weight.shape[1] * groups, weight[0].numel()
    full = (C_in * weight.shape[2] * weight.shape[3],) * 2
    shapes = [full] if groups == 1 else [full, (groups, patch, patch)]
    if not isinstance(second_moment, torch.Tensor) or tuple(second_moment.shape) not in shapes:
        per_group = "" if groups == 1 else f", or per group [groups, C_in/groups·kh·kw, …] = {list(shapes[1])}"
        raise ValueError(f"second_moment must be a tensor E[p pᵀ] of the unfolded input patches, "
                         f"[C_in·kh·kw, C_in·kh·kw] = {list(full)}{per_group}, got {_shape_of(second_moment)}")


@torch.no_grad()
def conv_asvd_factors(weight: torch.Tensor, num_terms: int, low_rank: int, second_moment: torch.Tensor,
                      groups: int = 1, *, generator=None, dtype=None, damping: float = 1e-4):
    """(S1s, U1s) of SKConv2d holding, per group, the best rank-2Lk approximation of the kernel
    ``weight`` [C_out, C_in/G, kh, kw] in the patch-weighted norm given by ``second_moment``:
    E[p pᵀ] of the conv's unfolded input patches, [C_in·kh·kw, C_in·kh·kw] (only its diagonal
    blocks, one per group, are used), or those blocks [G, C_in/G·kh·kw, C_in/G·kh·kw].

    ``generator`` draws what ``conv_svd_factors`` draws (the surplus sketch rows); ``damping``
    as for :func:`asvd_factors`.
    """
    _check_conv(weight, groups)
    G = positive_int(groups, "groups")
    check_conv_moment(weight, second_moment, G)
    _check_damping(damping)
    dtype = dtype or weight.dtype
    work = _work_dtype(dtype)
    R, W_white = _whitened(weight, second_moment, damping, G)  # [G, P, P], [G, C_out/G, P]
    S1s, U1s = conv_svd_factors(W_white.reshape(weight.shape), num_terms, low_rank, G, generator=generator,
                                dtype=torch.float64)
    S = S1s.reshape(G, -1, R.shape[-1])  # per group, rows of W_g R_g's factorisation
    S = torch.linalg.solve_triangular(R, S, upper=False, left=False)  # S <- S R⁻¹
    return tuple(t.to(work).to(dtype).contiguous() for t in (S.reshape(S1s.shape), U1s))
