"""Turning dense weights into sketch factors (used by layers, the compile pass and export)."""

from .conv import conv_sign_sketches, conv_sketch_factors, conv_svd_factors
from .linear import sketch_factors, svd_factors

__all__ = ["conv_sign_sketches", "conv_sketch_factors", "conv_svd_factors", "sketch_factors", "svd_factors"]
