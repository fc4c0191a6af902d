"""Turning dense weights into sketch factors (used by layers, the compile pass and export)."""

from .linear import sketch_factors, svd_factors

__all__ = ["sketch_factors", "svd_factors"]
