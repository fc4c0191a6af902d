"""Sketched / low-rank linear ops: C++ two-GEMM kernels and fused Triton forwards (bias and activation epilogues)."""

from . import op  # noqa: F401  (registers the fake kernels)
from .reference import lowrank_linear_reference, sketched_linear_reference
from .triton_op import (lowrank_expand, lowrank_expand_project, lowrank_gated_expand_project, lowrank_linear_triton,
                       sketched_linear_triton, triton_available)

__all__ = [
    "lowrank_expand",
    "lowrank_expand_project",
    "lowrank_gated_expand_project",
    "lowrank_linear_reference",
    "lowrank_linear_triton",
    "sketched_linear_reference",
    "sketched_linear_triton",
    "triton_available",
]
