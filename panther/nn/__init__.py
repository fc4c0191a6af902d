"""Sketched layers (``pr.nn``)."""

from .attention import RandMultiHeadAttention, make_performer
from .conv import SKConv2d
from .linear import SKLinear, SKLinear_triton

__all__ = ["RandMultiHeadAttention", "SKConv2d", "SKLinear", "SKLinear_triton", "make_performer"]
