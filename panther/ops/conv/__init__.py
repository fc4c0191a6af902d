"""Sketched 2-D convolution op: C++ kernels (csrc/conv/) with fakes and autograd."""

from . import op  # noqa: F401  (registers fakes and autograd)
from .checks import conv_output_size, same_padding
from .reference import sketched_conv2d_reference

__all__ = ["conv_output_size", "same_padding", "sketched_conv2d_reference"]
