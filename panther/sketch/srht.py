"""Subsampled randomized Hadamard transform (SRHT) and the fast Walsh–Hadamard transform.

An SRHT S [d, n] is

    S x = √(N/d) · R · (H_N/√N) · D · pad(x)

pad: x ∈ R^n is padded with N − n zeros at the end to N = the next power of two >= n;
D: N independent random signs; H_N/√N: the orthonormal Walsh–Hadamard transform (``fwht``);
R: d of the N coordinates sampled uniformly without replacement. Since E[RᵀR] = (d/N)·I_N
and H_N D is orthogonal, E[SᵀS] = I_n: ‖Sx‖² = ‖x‖² in expectation. Applying it costs
N log2 N additions per vector (panther's fwht op: C++ on CPU, Triton on CUDA) instead of
d·n multiply-adds for a dense sketch. On CUDA along an axis that is not the last, only the d
sampled outputs are computed, by a two-level blocked Hadamard transform that reads A once (for
d up to about 512, in strips whose intermediate stays in a small scratch buffer; panther's
srht_apply op).
"""

from __future__ import annotations

import math

import torch

from .._validation import positive_int
from ..ops import sketch as _sk
from ._args import check_dim, check_tensor, random_signs, resolve


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal fast Walsh–Hadamard transform of the last axis: x H_n / √n.

    n = x.shape[-1] must be a power of two (pad with zeros first otherwise); any leading
    batch dimensions; float16/bfloat16 are transformed in float32. Self-inverse and
    differentiable (its backward is itself).
    """
    check_tensor(x, "x")
    return _sk.fwht(x)


def next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


class SRHT:
    """A subsampled randomized Hadamard transform S [d, n] (see the module docstring)."""

    def __init__(self, signs: torch.Tensor, index: torch.Tensor, n: int):
        self.signs, self.index, self.n = signs, index, n
        self.N = next_pow2(n)
        self.d = index.shape[0]
        self.scale = math.sqrt(self.N / self.d)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.d, self.n)

    def apply(self, A: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """S applied along axis ``dim`` of A (size n → d); ``S @ A`` for dim=0 of a matrix.
        Differentiable in A."""
        check_tensor(A, "A")
        wd = check_dim(dim, A.dim())
        if A.shape[wd] != self.n:
            raise ValueError(f"A has shape {list(A.shape)}: expected size {self.n} (the SRHT's n) at dim {dim}")
        return _sk.srht_apply(A, self.signs.to(device=A.device, dtype=A.dtype), self.index.to(A.device), wd)

    def to_dense(self) -> torch.Tensor:
        """The operator as a dense [d, n] tensor."""
        eye = torch.eye(self.n, dtype=self.signs.dtype, device=self.signs.device)
        return self.apply(eye, dim=0)

    def __repr__(self) -> str:
        return f"SRHT(shape={self.shape}, padded_to={self.N}, dtype={self.signs.dtype}, device={self.signs.device})"


def srht_operator(d, n, device=None, dtype=None, generator=None) -> SRHT:
    """A random SRHT S [d, n] with 1 <= d <= n. E[SᵀS] = I_n."""
    d, n = positive_int(d, "d"), positive_int(n, "n")
    if d > n:
        raise ValueError(f"d must be <= n (a sketch reduces the dimension), got d={d} > n={n}")
    device, dtype = resolve(device, dtype, generator)
    signs = random_signs((n,), device, dtype, generator)
    index = torch.randperm(next_pow2(n), generator=generator, device=device)[:d]
    return SRHT(signs, index, n)


def srht(x: torch.Tensor, m, generator=None) -> torch.Tensor:
    """SRHT sketch of the last axis of ``x`` (earlier API: ``srht(x, m)`` for a vector x).

    x [..., n] → [..., m] with 1 <= m <= n, any n (zero-padded to the next power of two) and
    any leading batch dimensions; the same operator is applied to every vector of the batch.
    Scaled so that E[‖S x‖²] = ‖x‖². Use ``srht_operator`` to keep and reuse the operator.
    """
    check_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dimension (..., n), got a scalar")
    m = positive_int(m, "m")
    n = x.shape[-1]
    if m > n:
        raise ValueError(f"m must be <= x.shape[-1] = {n} (a sketch reduces the dimension), got {m}")
    op = srht_operator(m, n, device=x.device, dtype=x.dtype, generator=generator)
    return op.apply(x, dim=-1)
