"""Dense random sketching matrices."""

from __future__ import annotations

import torch

from .._validation import positive_int


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
