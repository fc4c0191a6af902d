"""Turning dense weights into sketch factors (used by layers, the compile pass and export)."""

from .asvd import asvd_factors, conv_asvd_factors
from .conv import conv_sign_sketches, conv_sketch_factors, conv_svd_factors
from .linear import lowrank_pair, sketch_factors, svd_factors

__all__ = ["asvd_factors", "conv_asvd_factors", "conv_sign_sketches", "conv_sketch_factors", "conv_svd_factors",
           "lowrank_pair", "sketch_factors", "svd_factors"]
