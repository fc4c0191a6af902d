"""Checks for torch.ops.panther.sketched_conv2d, used by its fake (meta) kernels.

Same checks and words as csrc/conv/sketched_conv2d.cpp, so a bad call fails alike in eager
mode and under torch.compile / torch.export.
"""

from __future__ import annotations

import torch

from ..linear.checks import _fail, check_dim, check_like, check_size

PADDING_MODES = ("circular", "reflect", "replicate", "zeros")


def conv_output_size(size: int, pad_before: int, pad_after: int, dilation: int, kernel: int, stride: int) -> int:
    """Output length of a convolution along one dimension (0 when the kernel does not fit)."""
    span = size + pad_before + pad_after - dilation * (kernel - 1) - 1
    return 0 if span < 0 else span // stride + 1


def same_padding(kernel: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding that keeps the size at stride 1, as nn.Conv2d's padding='same'.

    The total dilation*(kernel-1) is split with the extra element after, so even kernels
    are exact (the earlier Panther used (k-1)//2 on both sides and lost a row and column).
    """
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2


def check_conv(x, S1s, U1s, bias, stride, padding, dilation, groups, padding_mode):
    """Returns the output shape [B, C_out, H_out, W_out] after checking every argument."""
    if not x.dtype.is_floating_point:
        _fail(f"x must be a floating-point tensor, got {x.dtype}")
    check_dim(x, "x", 4)
    check_dim(S1s, "S1s", 4)
    check_dim(U1s, "U1s", 3)
    if len(stride) != 2 or min(stride) < 1:
        _fail(f"stride must be 2 positive ints, got {list(stride)}")
    if len(dilation) != 2 or min(dilation) < 1:
        _fail(f"dilation must be 2 positive ints, got {list(dilation)}")
    if len(padding) != 4 or min(padding) < 0:
        _fail(f"padding must be 4 non-negative ints (left, right, top, bottom), got {list(padding)}")
    if groups < 1:
        _fail(f"groups must be a positive int, got {groups}")
    if padding_mode not in PADDING_MODES:
        _fail(f"padding_mode must be one of {list(PADDING_MODES)}, got '{padding_mode}'")
    two_L, k, C_out = U1s.shape
    B, C_in, H, W = x.shape
    if C_in % groups != 0:
        _fail(f"x has {C_in} channels: expected a multiple of groups={groups}")
    if C_out % groups != 0:
        _fail(f"U1s has shape {list(U1s.shape)}: expected out_channels (dim 2) to be a multiple of groups={groups}")
    check_size(S1s, "S1s", 0, groups * two_L * k, "groups * 2L * k, from U1s [2L, k, C_out]")
    check_size(S1s, "S1s", 1, C_in // groups, "in_channels / groups, from x [B, C_in, H, W]")
    check_like(S1s, "S1s", x, "x")
    check_like(U1s, "U1s", x, "x")
    if bias is not None:
        check_dim(bias, "bias", 1)
        check_size(bias, "bias", 0, C_out, "out_channels")
        check_like(bias, "bias", x, "x")
    left, right, top, bottom = padding
    if padding_mode == "reflect" and not (left < W and right < W and top < H and bottom < H):
        _fail(f"padding {list(padding)} is too large for padding_mode='reflect' on input of size {H}x{W}: "
              "expected each pad < the input size of its dimension")
    if padding_mode == "circular" and not (left <= W and right <= W and top <= H and bottom <= H):
        _fail(f"padding {list(padding)} is too large for padding_mode='circular' on input of size {H}x{W}: "
              "expected each pad <= the input size of its dimension")
    kh, kw = S1s.shape[2], S1s.shape[3]
    H_out = conv_output_size(H, top, bottom, dilation[0], kh, stride[0])
    W_out = conv_output_size(W, left, right, dilation[1], kw, stride[1])
    if H_out < 1 or W_out < 1:
        _fail(f"x has spatial size {H}x{W}: too small for kernel {kh}x{kw} with dilation {list(dilation)} "
              f"and padding {list(padding)} (output would be {H_out}x{W_out})")
    return [B, C_out, H_out, W_out]


def check_grad(grad: torch.Tensor, x: torch.Tensor, expected) -> None:
    check_like(grad, "grad", x, "x")
    if list(grad.shape) != list(expected):
        _fail(f"grad has shape {list(grad.shape)}: expected the output shape {list(expected)}")
