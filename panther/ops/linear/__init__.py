"""Sketched / low-rank linear ops: C++ two-GEMM kernels and a fused Triton forward."""

from . import op  # noqa: F401  (registers fakes and autograd)
from .reference import lowrank_linear_reference, sketched_linear_reference
from .triton_op import sketched_linear_triton, triton_available

__all__ = [
    "lowrank_linear_reference",
    "sketched_linear_reference",
    "sketched_linear_triton",
    "triton_available",
]
