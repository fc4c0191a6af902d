"""Randomized decompositions (``pr.linalg``): ``cqrrpt`` (pivoted QR) and ``randomized_svd``."""

from .cholqr import orthonormalize
from .cqrrpt import cqrrpt
from .rsvd import randomized_svd

__all__ = ["cqrrpt", "orthonormalize", "randomized_svd"]
