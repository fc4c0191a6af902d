"""Sketched linear layers: thin modules over torch.ops.panther.sketched_linear(_triton)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from .._validation import one_of, positive_int
from ..factors import lowrank_pair, sketch_factors, svd_factors
from ..factors.asvd import asvd_factors
from ..ops.linear import triton_available, triton_op


class SKLinear(nn.Module):
    r"""Sketched replacement for :class:`torch.nn.Linear`.

    .. math::
        y = \frac{1}{2L}\sum_{i=1}^{L} \left(x S_{1,i} U_{1,i} + x U_{2,i} S_{2,i}\right) + b

    with learned ``S1s [L, in, k]``, ``S2s [L, k, out]`` and fixed random ±1/√k sketches
    ``U1s [L, k, out]``, ``U2s [L, in, k]`` (buffers). It runs as two GEMMs whatever L is:
    FLOPs and bytes scale with 2Lk(in + out) instead of in·out.

    Args:
        in_features, out_features: sizes of the input and output features.
        num_terms (L), low_rank (k): number of sketch terms and rank of each.
        W_init: optional dense weight ``[out_features, in_features]`` to sketch from;
            a fresh ``nn.Linear``-style (Kaiming-uniform) weight otherwise.
        bias: learn an additive bias.
        generator: torch.Generator for every random draw (the global RNG otherwise).

    Input ``[..., in_features]``, output ``[..., out_features]``; float32, float16,
    bfloat16 (and float64 on CPU), under autocast too.
    """

    __constants__ = ["in_features", "out_features", "num_terms", "low_rank"]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_terms: int,
        low_rank: int,
        W_init: torch.Tensor | None = None,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.num_terms = positive_int(num_terms, "num_terms")
        self.low_rank = positive_int(low_rank, "low_rank")
        if W_init is not None and (not isinstance(W_init, torch.Tensor) or tuple(W_init.shape) != (out_features, in_features)):
            got = tuple(W_init.shape) if isinstance(W_init, torch.Tensor) else type(W_init).__name__
            raise ValueError(f"W_init must be a tensor of shape (out_features, in_features) = "
                             f"({out_features}, {in_features}), got {got}")
        L, k = self.num_terms, self.low_rank
        if 2 * L * k * (in_features + out_features) > in_features * out_features:
            warnings.warn(
                f"SKLinear({in_features}, {out_features}, num_terms={L}, low_rank={k}) holds "
                f"2·L·k·(in+out) = {2 * L * k * (in_features + out_features):,} sketch values (S and U), "
                f"more than the {in_features * out_features:,} of a dense weight: it saves neither memory "
                f"nor time. Lower num_terms or low_rank.",
                UserWarning,
                stacklevel=2,
            )
        factory = {"dtype": dtype, "device": device}
        self.S1s = nn.Parameter(torch.empty(L, in_features, k, **factory))
        self.S2s = nn.Parameter(torch.empty(L, k, out_features, **factory))
        self.register_buffer("U1s", torch.empty(L, k, out_features, **factory))
        self.register_buffer("U2s", torch.empty(L, in_features, k, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(W_init, generator=generator)

    @torch.no_grad()
    def reset_parameters(self, W_init: torch.Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """Draws new sketches and sets S1s, S2s from ``W_init`` (or a fresh dense weight)."""
        if self.S1s.device.type == "meta":
            return
        if W_init is None:
            W_init = torch.empty(self.out_features, self.in_features, device=self.S1s.device)
            bound = 1.0 / math.sqrt(self.in_features)  # nn.Linear's kaiming_uniform_(a=√5)
            W_init.uniform_(-bound, bound, generator=generator)
        self._set_factors(sketch_factors(W_init, self.num_terms, self.low_rank, generator=generator,
                                         dtype=self.S1s.dtype))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            self.bias.uniform_(-bound, bound, generator=generator)

    def _set_factors(self, factors) -> None:
        for name, value in zip(("S1s", "S2s", "U1s", "U2s"), factors):
            getattr(self, name).copy_(value)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        num_terms: int,
        low_rank: int,
        init: str = "sketch",
        generator: torch.Generator | None = None,
        second_moment: torch.Tensor | None = None,
    ):
        """A sketched layer approximating ``linear`` (weights and bias copied).

        ``init="sketch"``: random sketches of the weight (unbiased, noisy; train after).
        ``init="svd"``: the best rank-2·num_terms·low_rank approximation (truncated SVD),
        for pretrained layers that must keep their outputs without training.
        ``init="asvd"``: activation-aware SVD, the best rank-2Lk approximation on the inputs
        the layer sees: give ``second_moment`` = E[x xᵀ] [in, in] over calibration inputs
        (``panther.sketch_model(..., calibration=...)`` collects it for every layer).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        one_of(init, "init", {"sketch", "svd", "asvd"})
        if init == "asvd" and second_moment is None:
            raise ValueError("init='asvd' needs second_moment = E[x xᵀ] [in_features, in_features] of the layer's "
                             "calibration inputs")
        if init != "asvd" and second_moment is not None:
            raise ValueError(f"second_moment is used by init='asvd' only, got init={init!r}")
        weight = linear.weight  # not detached (the factor functions run without grad): the SVD cache knows it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the caller chose the sizes; from_linear is explicit
            layer = cls(linear.in_features, linear.out_features, num_terms, low_rank,
                        bias=linear.bias is not None, dtype=weight.dtype, device=weight.device,
                        generator=generator)
        if init == "asvd":
            factors = asvd_factors(weight, layer.num_terms, layer.low_rank, second_moment, generator=generator)
        else:
            make = sketch_factors if init == "sketch" else svd_factors
            factors = make(weight, layer.num_terms, layer.low_rank, generator=generator)
        with torch.no_grad():
            layer._set_factors(factors)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._inference_call(x):
            return torch.ops.panther.lowrank_linear(x, *self._stacked_factors(), self.bias)
        return torch.ops.panther.sketched_linear(x, self.S1s, self.S2s, self.U1s, self.U2s, self.bias)

    def _inference_call(self, x) -> bool:
        """Whether this call can use the stacked factors of :meth:`_stacked_factors`: an eager
        call (not traced: graphs keep ``sketched_linear``, whose gradients reach S1s and S2s) on
        plain tensors that autograd does not record."""
        if type(x) is not torch.Tensor or torch.compiler.is_compiling():
            return False  # traced (Dynamo, export's fake tensors) or a tensor subclass
        if not torch.is_grad_enabled():
            return True
        return not (x.requires_grad or any(p.requires_grad for p in self.parameters(recurse=False)))

    def _stacked_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [in, 2Lk], B [2Lk, out]) of ``lowrank_pair``, kept while the factors stay the same.

        ``sketched_linear`` stacks the four factor tensors into these two matrices on every call:
        two concatenations (their kernels and ~30-70 us of host time each on an H200 host) in
        a forward whose two GEMMs take ~0.02-0.09 ms. Inference reuses them. They are rebuilt
        when any factor changes: an in-place update (optimizer step, ``load_state_dict``,
        ``reset_parameters``) bumps its version counter, ``.to()`` / ``.data =`` replace its
        storage. The copies cost as much memory as the factors themselves.
        """
        factors = (self.S1s, self.S2s, self.U1s, self.U2s)
        if any(t.is_inference() for t in factors):  # no version counter to tell a change: never kept
            with torch.no_grad():
                return lowrank_pair(*factors)
        key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in factors)
        cached = self.__dict__.get("_stacked")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, *lowrank_pair(*factors))
            self.__dict__["_stacked"] = cached
        return cached[1], cached[2]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_terms={self.num_terms}, low_rank={self.low_rank}, bias={self.bias is not None}")


class SKLinear_triton(SKLinear):
    """:class:`SKLinear` with Triton forward kernels on CUDA.

    Same signature, parameters, buffers and numbers as SKLinear (a state_dict moves
    between the two). On CUDA the forward runs Triton kernels (a split-K projection, then
    a fused scale-and-bias expansion) where they measured faster than cuBLAS: under
    torch.compile at least 8192 rows and num_terms·low_rank ≤ 16; eagerly only for
    problems moving 2 GiB or more, because launching Triton kernels from Python costs
    ~0.1 ms a call (see ``ops.linear.triton_kernels.preferred``). Elsewhere, and on other
    devices, it runs SKLinear's two-GEMM op, called directly (not through the Triton op's
    Python wrapper) when running eagerly. When autograd records the call (training) it
    runs SKLinear's op too: the Triton op's Python autograd path measured up to 1.8x slower
    for forward+backward (BENCHMARKS.md), so the Triton kernels serve inference. Traced by
    torch.compile or torch.export, the graph holds the Triton op, which picks per shape.
    """

    def __init__(self, *args, **kwargs) -> None:
        if not triton_available:
            raise ImportError("SKLinear_triton needs Triton (`pip install triton`); use pr.nn.SKLinear without it.")
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (x, self.S1s, self.S2s, self.U1s, self.U2s, self.bias)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
            return torch.ops.panther.sketched_linear(*args)
        if not (self._triton_runs_eagerly(x) or triton_op.traced(x)):  # traced: the graph keeps the Triton op
            # The Triton op would only hand the call to the C++ op, after its Python wrapper:
            # host time that made this layer up to 1.8x slower than SKLinear on small inputs.
            return super().forward(x)
        return torch.ops.panther.sketched_linear_triton(*args)

    def _triton_runs_eagerly(self, x: torch.Tensor) -> bool:
        """Whether the Triton op would run its kernels for this (eager) call (``triton_op.use_triton``)."""
        if x.shape[-1:] != (self.in_features,):
            return False  # a wrong shape, which the C++ op reports
        return triton_op.use_triton(x, x.numel() // self.in_features, self.num_terms * self.low_rank,
                                    self.in_features, self.out_features)
