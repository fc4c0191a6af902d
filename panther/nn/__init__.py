"""Sketched layers (``pr.nn``)."""

from .linear import SKLinear, SKLinear_triton

__all__ = ["SKLinear", "SKLinear_triton"]
