"""Fake kernels for torch.ops.panther.sketched_conv2d (csrc/conv/; its autograd is C++: csrc/conv/autograd.cpp).

torch.ops.panther.sketched_conv2d(x, S1s, U1s, bias, stride, padding, dilation, groups, padding_mode)
    x [B, C_in, H, W], S1s [G*2Lk, C_in/G, kh, kw], U1s [2L, k, C_out], bias [C_out] or None;
    padding is (left, right, top, bottom); padding_mode is one of nn.Conv2d's.
    y = conv2d(pad(x), S1s) mixed per group by U1s / (2L), plus bias.
    Gradients flow to x, S1s and bias; U1s is a fixed sketch.
"""

from __future__ import annotations

import torch

from . import checks


def _out_memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


@torch.library.register_fake("panther::sketched_conv2d")
def _sketched_conv2d_fake(x, S1s, U1s, bias, stride, padding, dilation, groups, padding_mode):
    shape = checks.check_conv(x, S1s, U1s, bias, stride, padding, dilation, groups, padding_mode)
    return x.new_empty(shape).contiguous(memory_format=_out_memory_format(x))


@torch.library.register_fake("panther::sketched_conv2d_backward")
def _sketched_conv2d_backward_fake(grad, x, S1s, U1s, stride, padding, dilation, groups, padding_mode, output_mask):
    shape = checks.check_conv(x, S1s, U1s, None, stride, padding, dilation, groups, padding_mode)
    checks.check_grad(grad, x, shape)
    return (
        x.new_empty(x.shape).contiguous(memory_format=_out_memory_format(x)) if output_mask[0] else None,
        S1s.new_empty(S1s.shape) if output_mask[1] else None,
        x.new_empty((shape[1],)) if output_mask[2] else None,
    )
