"""Sketching operators (``pr.sketch``).

Scaling convention: every operator S [d, n] here satisfies E[SᵀS] = I_n, so ‖Sx‖² = ‖x‖² in
expectation (the exceptions say so: a tall sparse operator of ``sparse_sketch_operator``).
Randomness comes from ``generator=`` or torch's global generator (``torch.manual_seed``);
nothing resets the global seed.

Dense matrices (earlier API): ``scaled_sign_sketch``, ``gaussian_skop``, ``dense_sketch_operator``,
``count_skop``, ``sjlt_skop``; ``sparse_sketch_operator`` (torch sparse COO); ``sketch_tensor``;
``srht`` (a sketched vector/batch).
Operators applied without materialising (panther ops, C++ on CPU, Triton on CUDA):
``SparseSketch`` (``sparse_sign``, ``count_sketch``) and ``SRHT`` (``srht_operator``), each with
``apply(A, dim)``; ``fwht``.
"""

from .dense import dense_sketch_operator, gaussian_skop, scaled_sign_sketch
from .enums import Axis, DistributionFamily
from .sparse import SparseSketch, count_sketch, count_skop, sjlt_skop, sparse_sign, sparse_sketch_operator
from .srht import SRHT, fwht, srht, srht_operator
from .tensor import sketch_tensor

__all__ = [
    "Axis",
    "DistributionFamily",
    "SRHT",
    "SparseSketch",
    "count_sketch",
    "count_skop",
    "dense_sketch_operator",
    "fwht",
    "gaussian_skop",
    "scaled_sign_sketch",
    "sjlt_skop",
    "sketch_tensor",
    "sparse_sign",
    "sparse_sketch_operator",
    "srht",
    "srht_operator",
]
