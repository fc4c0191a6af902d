"""SKConv2d: a sketched nn.Conv2d, a thin module over torch.ops.panther.sketched_conv2d."""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import nn

from .._validation import one_of, positive_int
from ..factors import conv_asvd_factors, conv_sketch_factors, conv_svd_factors
from ..factors.asvd import check_conv_moment
from ..ops.conv import same_padding
from ..ops.conv.checks import PADDING_MODES


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a tuple of two ints."""
    items = (value, value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if (not isinstance(items, (tuple, list)) or len(items) != 2
            or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in items)):
        raise TypeError(f"{name} must be an int or a tuple of 2 ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in each dimension, got {value!r}")
    return int(items[0]), int(items[1])


def resolve_padding(padding, kernel_size, stride, dilation) -> tuple[int, int, int, int]:
    """nn.Conv2d's padding argument as explicit (left, right, top, bottom).

    Accepts an int, a pair (pad_h, pad_w), a 4-tuple (left, right, top, bottom), "valid"
    (no padding) or "same" (output size = input size; stride 1 only, like nn.Conv2d;
    exact for even kernels, with the extra row/column after).
    """
    if isinstance(padding, str):
        one_of(padding, "padding", {"same", "valid"})
        if padding == "valid":
            return 0, 0, 0, 0
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1 (as in nn.Conv2d), got stride={stride}")
        top, bottom = same_padding(kernel_size[0], dilation[0])
        left, right = same_padding(kernel_size[1], dilation[1])
        return left, right, top, bottom
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in padding):
            raise ValueError(f"padding as 4 values must be non-negative ints (left, right, top, bottom), got {padding!r}")
        return tuple(int(v) for v in padding)
    try:
        ph, pw = _pair(padding, "padding", 0)
    except TypeError:
        raise ValueError(
            f"padding must be an int, a tuple of 2 or 4 non-negative ints, 'same' or 'valid', got {padding!r}"
        ) from None
    return pw, pw, ph, ph


class SKConv2d(nn.Module):
    r"""Sketched replacement for :class:`torch.nn.Conv2d` (output-channel sketch).

    .. math::
        y = \frac{1}{2L}\sum_{j=1}^{2L} U_j^\top \left(S_j \star x\right) + b

    ``S1s [2Lk, C_in/groups, kh, kw]`` is a learned convolution kernel with 2Lk output
    channels (per group) and ``U1s [2L, k, C_out]`` fixed random ±1/√k sketches (a buffer)
    that mix them into C_out channels. Cost per output pixel: 2Lk·(C_in·kh·kw/groups +
    C_out/…) multiply-adds instead of C_out·C_in·kh·kw/groups.

    Args:
        in_channels, out_channels, kernel_size, stride, bias: as in nn.Conv2d.
        padding: int, (pad_h, pad_w), (left, right, top, bottom), ``"same"`` (exact, also
            for even kernels; stride 1) or ``"valid"``.
        num_terms (L), low_rank (k): 2L sketch terms of rank k.
        layer: an nn.Conv2d whose weight (and bias) to sketch; a fresh nn.Conv2d-style
            (Kaiming-uniform) weight otherwise.
        dilation, groups, padding_mode: as in nn.Conv2d (``"zeros"``, ``"reflect"``,
            ``"replicate"``, ``"circular"``). With groups, each group is its own sketched
            convolution of rank 2Lk, so S1s has groups·2Lk output channels.
        generator: torch.Generator for every random draw (the global RNG otherwise).

    Input ``[B, C_in, H, W]`` (or unbatched ``[C_in, H, W]``); float32/float16/bfloat16
    (float64 on CPU); channels_last inputs give channels_last outputs.
    """

    __constants__ = ["in_channels", "out_channels", "kernel_size", "stride", "dilation", "groups",
                     "padding_mode", "num_terms", "low_rank"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=(3, 3),
        stride=(1, 1),
        padding=(1, 1),
        bias: bool = True,
        num_terms: int = 6,
        low_rank: int = 8,
        layer: nn.Conv2d | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        *,
        dilation=1,
        groups: int = 1,
        padding_mode: str = "zeros",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.dilation = _pair(dilation, "dilation", 1)
        self.groups = positive_int(groups, "groups")
        self.num_terms = positive_int(num_terms, "num_terms")
        self.low_rank = positive_int(low_rank, "low_rank")
        self.padding_mode = one_of(padding_mode, "padding_mode", set(PADDING_MODES))
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.padding = padding
        self._pad = resolve_padding(padding, self.kernel_size, self.stride, self.dilation)
        if layer is not None:
            self._check_layer(layer)
        G, L, k = self.groups, self.num_terms, self.low_rank
        patch = in_channels // G * self.kernel_size[0] * self.kernel_size[1]
        if G * 2 * L * k * patch + out_channels * 2 * L * k >= out_channels * patch:
            warnings.warn(
                f"SKConv2d({in_channels}, {out_channels}, kernel_size={self.kernel_size}, num_terms={L}, "
                f"low_rank={k}) costs at least as much as the dense convolution (2·L·k = {2 * L * k} sketch "
                f"channels for {out_channels} output channels); it then runs as one dense convolution with "
                f"the effective kernel. Lower num_terms or low_rank to save time.",
                UserWarning, stacklevel=2)
        factory = {"dtype": dtype, "device": device}
        self.S1s = nn.Parameter(torch.empty(G * 2 * L * k, in_channels // G, *self.kernel_size, **factory))
        self.register_buffer("U1s", torch.empty(2 * L, k, out_channels, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters(layer, generator=generator)

    def _check_layer(self, layer) -> None:
        if not isinstance(layer, nn.Conv2d):
            raise ValueError(f"layer must be a torch.nn.Conv2d or None, got {type(layer).__name__}")
        expected = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        if tuple(layer.weight.shape) != expected:
            raise ValueError(f"layer.weight has shape {tuple(layer.weight.shape)}: expected {expected} "
                             "(out_channels, in_channels/groups, kh, kw) for this SKConv2d")

    @torch.no_grad()
    def reset_parameters(self, layer: nn.Conv2d | None = None, generator: torch.Generator | None = None) -> None:
        """Draws new sketches and sets S1s from ``layer``'s weight (or a fresh dense weight)."""
        if self.S1s.device.type == "meta":
            return
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)  # nn.Conv2d's kaiming_uniform_(a=√5) bound
        if layer is None:
            weight = torch.empty(self.out_channels, self.in_channels // self.groups, *self.kernel_size,
                                 device=self.S1s.device)
            weight.uniform_(-bound, bound, generator=generator)
        else:
            weight = layer.weight.detach()
        self._set_factors(conv_sketch_factors(weight, self.num_terms, self.low_rank, self.groups,
                                              generator=generator, dtype=self.S1s.dtype))
        if self.bias is not None:
            if layer is not None and layer.bias is not None:
                self.bias.copy_(layer.bias)
            elif layer is not None:
                self.bias.zero_()
            else:
                self.bias.uniform_(-bound, bound, generator=generator)

    def _set_factors(self, factors) -> None:
        S1s, U1s = factors
        self.S1s.copy_(S1s)
        self.U1s.copy_(U1s)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, num_terms: int, low_rank: int, init: str = "sketch",
                  generator: torch.Generator | None = None, second_moment: torch.Tensor | None = None) -> "SKConv2d":
        """A sketched layer with ``conv``'s geometry, weights and bias.

        ``init="sketch"``: random sketches of the weight (unbiased, noisy; train after).
        ``init="svd"``: per group the best rank-2·num_terms·low_rank approximation of the
        kernel (truncated SVD), for pretrained layers that must keep their outputs.
        ``init="asvd"``: activation-aware SVD, per group the best rank-2Lk kernel on the input
        patches the layer sees: give ``second_moment`` = E[p pᵀ] [C_in·kh·kw, C_in·kh·kw] over
        the calibration inputs' patches p (``F.unfold`` with the conv's kernel_size, dilation and
        stride, after its padding; with groups, per-group blocks [groups, C_in/groups·kh·kw, …]
        also do). ``panther.sketch_model(..., calibration=...)`` collects it for every layer.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        one_of(init, "init", {"sketch", "svd", "asvd"})
        weight = conv.weight  # not detached (the factor functions run without grad): the whitening cache knows it
        if init == "asvd":
            if second_moment is None:
                n = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
                raise ValueError(f"init='asvd' needs second_moment = E[p pᵀ] [C_in·kh·kw, C_in·kh·kw] = "
                                 f"[{n}, {n}] of the conv's unfolded calibration input patches")
            check_conv_moment(weight, second_moment, conv.groups)  # before any work
        elif second_moment is not None:
            raise ValueError(f"second_moment is used by init='asvd' only, got init={init!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the caller chose the sizes; from_conv is explicit
            layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        bias=conv.bias is not None, num_terms=num_terms, low_rank=low_rank,
                        dtype=weight.dtype, device=weight.device, dilation=conv.dilation, groups=conv.groups,
                        padding_mode=conv.padding_mode, generator=generator)
        L, k, G = layer.num_terms, layer.low_rank, layer.groups
        if init == "asvd":
            factors = conv_asvd_factors(weight, L, k, second_moment, G, generator=generator)
        else:
            make = conv_sketch_factors if init == "sketch" else conv_svd_factors
            factors = make(weight, L, k, G, generator=generator)
        with torch.no_grad():
            layer._set_factors(factors)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    @staticmethod
    def fromTorch(layer: nn.Conv2d, num_terms: int, low_rank: int) -> "SKConv2d":  # noqa: N802 (earlier API)
        """The earlier Panther's name for ``from_conv(layer, num_terms, low_rank)``."""
        return SKConv2d.from_conv(layer, num_terms, low_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        y = torch.ops.panther.sketched_conv2d(x, self.S1s, self.U1s, self.bias, list(self.stride), list(self._pad),
                                              list(self.dilation), self.groups, self.padding_mode)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, num_terms={self.num_terms}, low_rank={self.low_rank}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + f", bias={self.bias is not None}"
