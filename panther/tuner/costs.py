"""What a plan node costs under a spec (``None`` = dense): multiply-adds, weight memory, latency.

:func:`flops_cost` and :func:`memory_cost` are counts. :class:`LatencyCost` times the ops the
rewrite really emits, at the node's shapes, on the device, and caches the result per
(device, dtype, kind, shapes, spec) for the whole process:

* linear: ``F.linear(x, W)`` vs ``panther.lowrank_linear(x, A, B)``, x [rows, in];
* conv2d: ``F.conv2d`` vs ``panther.sketched_conv2d`` on an input of the node's ``input_shape``
  with its stride, padding (left, right, top, bottom), dilation and groups;
* attention: ``F.scaled_dot_product_attention`` vs ``panther.favor_attention`` (the Triton op on
  CUDA, as the rewrite emits it) on q [batch, heads, q_len, head_dim], k and v
  [batch, heads, k_len, head_dim].

Where timing is impossible — a ``meta`` device, or a node whose sizes lack the shapes needed to
build inputs (a conv2d without ``input_shape``) — the cost is modelled: :func:`flops_cost` times
the seconds per multiply-add of a dense 256×512×512 linear measured on the same device (on
``meta``, a nominal ``NOMINAL_SECONDS_PER_FLOP``). ``LatencyCost.measurable(node)`` says which
of the two a node gets.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .._validation import positive_int
from ..plan import SketchSpec

NOMINAL_SECONDS_PER_FLOP = 1e-11  # 100 G multiply-adds per second: only where nothing can be timed
_PROBE = (256, 512, 512)  # rows, in, out of the linear whose rate scales modelled costs


def flops_cost(node, spec: SketchSpec | None) -> float:
    """Multiply-adds of one call of the node (dense when ``spec`` is None)."""
    s = node.sizes
    if node.kind == "linear":
        rows, d_in, d_out = s.get("rows", 1), s["in_features"], s["out_features"]
        return float(rows * (d_in * d_out if spec is None else spec.rank * (d_in + d_out)))
    if node.kind == "conv2d":
        kh, kw = s["kernel_size"]
        groups = s.get("groups", 1)
        patch = s["in_channels"] // groups * kh * kw
        per_pixel = s["out_channels"] * patch if spec is None else groups * spec.rank * patch + spec.rank * s["out_channels"]
        return float(s.get("pixels", 1) * per_pixel)
    heads, n, m, d = s.get("batch", 1) * s.get("heads", 1), s["q_len"], s["k_len"], s["head_dim"]
    if spec is None:
        return float(heads * 2 * n * m * d)
    f = spec.low_rank
    return float(heads * (f * d * (n + m) + f * (m + n) * (d + 1)))


def memory_cost(node, spec: SketchSpec | None) -> float:
    """Weight elements held by the node (learned factors only for a sketch)."""
    s = node.sizes
    if node.kind == "linear":
        d_in, d_out = s["in_features"], s["out_features"]
        return float(d_in * d_out if spec is None else spec.rank * (d_in + d_out) / 2)
    if node.kind == "conv2d":
        kh, kw = s["kernel_size"]
        patch = s["in_channels"] // s.get("groups", 1) * kh * kw
        return float(s["out_channels"] * patch if spec is None else spec.rank * patch)
    return 0.0 if spec is None else float(spec.low_rank * s["head_dim"])


def shape_key(node) -> tuple | None:
    """The shapes that determine the node's latency, or None where they are not known."""
    s = node.sizes
    if node.kind == "linear":
        return max(1, int(s.get("rows", 1))), int(s["in_features"]), int(s["out_features"])
    if node.kind == "conv2d":
        if "input_shape" not in s:
            return None
        return (tuple(int(v) for v in s["input_shape"]), int(s["out_channels"]), tuple(s["kernel_size"]),
                tuple(s.get("stride", (1, 1))), tuple(s.get("padding", (0, 0, 0, 0))),
                tuple(s.get("dilation", (1, 1))), int(s.get("groups", 1)))
    return (int(s.get("batch", 1)), int(s.get("heads", 1)), int(s["q_len"]), int(s["k_len"]), int(s["head_dim"]),
            bool(s.get("causal", False)))


def _linear_call(shape, spec, make):
    rows, d_in, d_out = shape
    x = make(rows, d_in)
    if spec is None:
        w = make(d_out, d_in)
        return lambda: F.linear(x, w)
    a, b = make(d_in, spec.rank), make(spec.rank, d_out)
    return lambda: torch.ops.panther.lowrank_linear(x, a, b, None)


def _conv_call(shape, spec, make):
    (batch, c_in, h, w), c_out, (kh, kw), stride, pad, dilation, groups = shape
    x = make(batch, c_in, h, w)
    if spec is None:
        weight = make(c_out, c_in // groups, kh, kw)
        left, right, top, bottom = pad
        if left == right and top == bottom:
            return lambda: F.conv2d(x, weight, None, stride, (top, left), dilation, groups)
        return lambda: F.conv2d(F.pad(x, pad), weight, None, stride, 0, dilation, groups)
    S1s = make(groups * spec.rank, c_in // groups, kh, kw)
    U1s = make(2 * spec.num_terms, spec.low_rank, c_out)
    return lambda: torch.ops.panther.sketched_conv2d(x, S1s, U1s, None, list(stride), list(pad), list(dilation),
                                                     groups, "zeros")


def _attention_call(shape, spec, make):
    from ..ops.attention import orthogonal_random_features
    from ..passes.rewrite import favor_op

    batch, heads, n, m, d, causal = shape
    q, k, v = make(batch, heads, n, d), make(batch, heads, m, d), make(batch, heads, m, d)
    if spec is None:
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    projection = orthogonal_random_features(spec.low_rank, d, generator=torch.Generator().manual_seed(0),
                                            device=q.device, dtype=q.dtype)
    op = favor_op(q.device)
    return lambda: op(q, k, v, projection, "softmax", causal, None, 0)


_CALLS = {"linear": _linear_call, "conv2d": _conv_call, "attention": _attention_call}


class LatencyCost:
    """Measured seconds of one call of the node's op at its shapes on ``device`` (see the module
    docstring; median of up to ``repeats`` timed calls after warm-up, at most about
    ``max_seconds`` of timing per measurement, cached per shapes and spec)."""

    _cache: dict = {}

    def __init__(self, device="cpu", dtype=None, repeats: int = 15, max_seconds: float = 1.0):
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.repeats = positive_int(repeats, "repeats")
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds > 0:
            raise ValueError(f"max_seconds must be a number > 0, got {max_seconds!r}")
        self.max_seconds = float(max_seconds)

    def measurable(self, node) -> bool:
        """Whether the node's cost is timed (True) or modelled from its FLOPs (False)."""
        return self.device.type != "meta" and shape_key(node) is not None

    def key(self, node, spec: SketchSpec | None) -> tuple:
        shapes = shape_key(node)
        spec_key = None if spec is None else (spec.num_terms, spec.low_rank)
        return str(self.device), str(self.dtype), node.kind, shapes if shapes is not None else node.name, spec_key

    def __call__(self, node, spec: SketchSpec | None) -> float:
        key = self.key(node, spec)
        if key in self._cache:
            return self._cache[key]
        if self.measurable(node):
            value = self._time(_CALLS[node.kind](shape_key(node), spec, self._maker()))
        else:
            value = flops_cost(node, spec) * self.seconds_per_flop()
        self._cache[key] = value
        return value

    def seconds_per_flop(self) -> float:
        """Seconds per multiply-add of a dense linear on this device (nominal on ``meta``)."""
        if self.device.type == "meta":
            return NOMINAL_SECONDS_PER_FLOP
        key = (str(self.device), str(self.dtype), "probe")
        if key not in self._cache:
            rows, d_in, d_out = _PROBE
            self._cache[key] = self._time(_linear_call(_PROBE, None, self._maker())) / (rows * d_in * d_out)
        return self._cache[key]

    def _maker(self):
        g = torch.Generator(device="cpu").manual_seed(0)
        return lambda *shape: torch.randn(*shape, generator=g).to(self.device, self.dtype)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _time(self, fn) -> float:
        with torch.no_grad():
            for _ in range(2):
                fn()
            times, start = [], time.perf_counter()
            while len(times) < self.repeats and (len(times) < 3 or time.perf_counter() - start < self.max_seconds):
                self._sync()
                t = time.perf_counter()
                fn()
                self._sync()
                times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]
