"""Random feature matrices for FAVOR+ (positive orthogonal random features)."""

from __future__ import annotations

import torch

from ..._validation import positive_int


def orthogonal_random_features(num_features, dim, *, generator=None, device=None, dtype=None,
                               scaling: str = "chi") -> torch.Tensor:
    """A [num_features, dim] matrix of orthogonal Gaussian features (Choromanski et al. 2021).

    Rows come in blocks of ``dim`` mutually orthogonal unit directions (QR of a Gaussian
    matrix, sign-corrected so the directions are Haar-distributed), the last block cut to
    size. ``scaling="chi"`` gives each row the norm of an independent Gaussian vector, so
    every row is marginally N(0, I) (unbiased softmax-kernel estimates with lower variance
    than i.i.d. rows); ``scaling="sqrt_d"`` gives every row norm √dim.

    Draws come from ``generator`` (never from a reset global seed), in float32 on the
    generator's device; the QR runs in float64 on CPU and the result is then cast and
    moved, so a seed gives the same matrix on every device.
    """
    m = positive_int(num_features, "num_features")
    d = positive_int(dim, "dim")
    if scaling not in ("chi", "sqrt_d"):
        raise ValueError(f"scaling must be one of ['chi', 'sqrt_d'], got {scaling!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    n_blocks = (m + d - 1) // d
    g = torch.randn(n_blocks, d, d, generator=generator, device=gen_device, dtype=torch.float32)
    Q, R = torch.linalg.qr(g.cpu().double())  # float64 QR: orthogonal to rounding of the output dtype
    signs = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    Q = Q * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None, :]
    W = Q.transpose(1, 2).reshape(n_blocks * d, d)[:m]  # each block's rows orthonormal
    if scaling == "chi":
        norms = torch.randn(m, d, generator=generator, device=gen_device, dtype=torch.float32).cpu().double().norm(dim=1)
    else:
        norms = torch.full((m,), d ** 0.5, dtype=torch.float64)
    return (W * norms[:, None]).to(device=device, dtype=dtype or torch.get_default_dtype())
