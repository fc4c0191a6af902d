"""Dense random sketching matrices.

Every operator here is scaled so that E[SᵀS] = I for S [m, n]: ‖Sx‖² = ‖x‖² in
expectation for any x ∈ Rⁿ. Random draws come from ``generator`` (or torch's global
generator for the device), so ``torch.manual_seed`` reproduces them. ``device``/``dtype``
default to torch's current defaults (the device follows ``generator`` when given).
"""

from __future__ import annotations

import math

import torch

from .._validation import positive_int
from ._args import resolve
from .enums import DistributionFamily


def scaled_sign_sketch(m, n, device=None, dtype=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """An ``[m, n]`` matrix of independent ±1/√m entries (Rademacher, scaled).

    Scaling: E[SᵀS] = I_n, so ‖Sx‖² = ‖x‖² in expectation for any x ∈ Rⁿ.
    Random draws come from ``generator`` (or torch's global generator for ``device``),
    so ``torch.manual_seed`` reproduces the matrix. ``device``/``dtype`` default to
    torch's current defaults.
    """
    m = positive_int(m, "m")
    n = positive_int(n, "n")
    dtype = dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    signs = torch.randint(0, 2, (m, n), generator=generator, device=device, dtype=torch.int8)
    return (signs.to(dtype) * 2 - 1) * (m ** -0.5)


def gaussian_skop(m, d, device=None, dtype=None, generator=None) -> torch.Tensor:
    """A Gaussian sketch [m, d] with N(0, 1/m) entries: E[SᵀS] = I_d."""
    m, d = positive_int(m, "m"), positive_int(d, "d")
    device, dtype = resolve(device, dtype, generator)
    return torch.randn((m, d), generator=generator, device=device, dtype=dtype).mul_(1.0 / math.sqrt(m))


def dense_sketch_operator(m, n, distribution, device=None, dtype=None, generator=None) -> torch.Tensor:
    """A dense sketch [m, n] with iid entries of variance 1/m: E[SᵀS] = I_n.

    ``distribution``: ``DistributionFamily.Gaussian`` (N(0, 1/m)) or ``DistributionFamily.Uniform``
    (uniform on [-√(3/m), √(3/m)]). Unlike the earlier Panther (unit-variance entries) the
    entries are scaled by 1/√m so the operator is norm-preserving in expectation.
    """
    m, n = positive_int(m, "m"), positive_int(n, "n")
    distribution = DistributionFamily.parse(distribution, "distribution")
    device, dtype = resolve(device, dtype, generator)
    if distribution is DistributionFamily.Gaussian:
        return gaussian_skop(m, n, device=device, dtype=dtype, generator=generator)
    u = torch.rand((m, n), generator=generator, device=device, dtype=dtype)
    return u.sub_(0.5).mul_(2.0 * math.sqrt(3.0 / m))

