"""Factors of SKConv2d from a dense convolution weight W [C_out, C_in/G, kh, kw].

SKConv2d's effective kernel is, per group g (output channels O_g) and term/rank index
i = j*k + r:

    W_eff[o] = 1/(2L) * sum_i U1s_flat[i, o] * S1s[g(o)*2Lk + i],   U1s_flat = U1s.reshape(2Lk, C_out)

with S1s [G*2Lk, C_in/G, kh, kw] learned and U1s [2L, k, C_out] fixed. Two ways to set them:

* ``conv_sketch_factors``: U1s are ±1/√k sign sketches, S1s[g*2Lk + i] = sum_{o in O_g}
  U1s_flat[i, o] W[o]. Unbiased for W (E[sum_r U[j,r,o] U[j,r,o']] = δ_oo') but noisy: an
  initialisation to train from.
* ``conv_svd_factors``: per group, the best rank-2Lk approximation of W_g reshaped to
  [C_out/G, C_in/G*kh*kw] (truncated SVD): U1s hold the left singular vectors scaled to
  the sketches' magnitude, S1s the scaled right ones. Keeps a pretrained layer's outputs
  as well as any rank-2Lk kernel can.
"""

from __future__ import annotations

import torch

from .._validation import positive_int
from ..sketch import scaled_sign_sketch


def _check(weight, groups: int) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 4-D tensor [out_channels, in_channels/groups, kh, kw], got {got}")
    if weight.shape[0] % groups != 0:
        raise ValueError(f"weight has {weight.shape[0]} output channels: expected a multiple of groups={groups}")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def conv_sign_sketches(num_terms, low_rank, out_channels, *, device=None, dtype=None, generator=None):
    """U1s [2L, k, C_out]: 2L independent ±1/√k sign sketches."""
    return torch.stack([
        scaled_sign_sketch(low_rank, out_channels, device=device, dtype=dtype, generator=generator)
        for _ in range(2 * num_terms)
    ])


@torch.no_grad()
def conv_sketch_factors(weight, num_terms: int, low_rank: int, groups: int = 1, *, generator=None, dtype=None):
    """(S1s, U1s) from random sign sketches of the dense ``weight``."""
    _check(weight, groups)
    L, k, G = positive_int(num_terms, "num_terms"), positive_int(low_rank, "low_rank"), positive_int(groups, "groups")
    dtype = dtype or weight.dtype
    work = _work_dtype(dtype)
    C_out = weight.shape[0]
    U1s = conv_sign_sketches(L, k, C_out, device=weight.device, dtype=work, generator=generator)
    Wg = weight.detach().to(work).reshape(G, C_out // G, -1)  # [G, C_og, patch]
    Ug = U1s.reshape(2 * L * k, G, C_out // G).transpose(0, 1)  # [G, 2Lk, C_og]
    S1s = torch.bmm(Ug, Wg).reshape(G * 2 * L * k, *weight.shape[1:])
    return S1s.to(dtype).contiguous(), U1s.to(dtype).contiguous()


@torch.no_grad()
def conv_svd_factors(weight, num_terms: int, low_rank: int, groups: int = 1, *, generator=None, dtype=None):
    """(S1s, U1s) holding, per group, the truncated SVD of rank min(2Lk, rank of W_g).

    Where 2Lk exceeds the available rank, the surplus U1s rows stay random sign sketches
    and the matching S1s channels are zero, so the layer equals the truncated SVD exactly
    and still has directions to train.
    """
    _check(weight, groups)
    L, k, G = positive_int(num_terms, "num_terms"), positive_int(low_rank, "low_rank"), positive_int(groups, "groups")
    dtype = dtype or weight.dtype
    work = _work_dtype(dtype)
    C_out = weight.shape[0]
    C_og, r_max = C_out // G, 2 * L * k
    U1s = conv_sign_sketches(L, k, C_out, device=weight.device, dtype=work, generator=generator)
    U = U1s.reshape(r_max, G, C_og)  # views into U1s
    S = torch.zeros(G, r_max, weight[0].numel(), dtype=work, device=weight.device)
    Wg = weight.detach().to(work).reshape(G, C_og, -1)
    P, s, Qh = torch.linalg.svd(Wg, full_matrices=False)  # W_g = P diag(s) Qh
    n = min(r_max, s.shape[-1])
    c = (C_og / k) ** 0.5  # unit singular vectors scaled to entries ~1/√k, like the sketches
    # W_eff_g = 1/(2L) U_gᵀ S_g = 1/(2L) (c P_n)(2L/c diag(s_n) Qh_n) = P_n diag(s_n) Qh_n
    U[:n] = c * P[:, :, :n].permute(2, 0, 1)
    S[:, :n] = (2 * L / c) * s[:, :n, None] * Qh[:, :n]
    S1s = S.reshape(G * r_max, *weight.shape[1:])
    return S1s.to(dtype).contiguous(), U1s.to(dtype).contiguous()
