"""Linear ops with Triton kernels on CUDA (triton_kernels.py), entered through
torch.library.triton_op so that torch.compile sees the kernels.

torch.ops.panther.sketched_linear_triton(x, S1s, S2s, U1s, U2s, bias=None)
    SKLinear: same math, schema and gradients as torch.ops.panther.sketched_linear.
torch.ops.panther.lowrank_linear_triton(x, A, B, bias=None, activation="none")
    act(x A B + bias), the activation fused into the expansion's epilogue.
torch.ops.panther.lowrank_expand(h, B, bias=None, activation="none")
    act(h B + bias) for a thin h [..., r] (r <= 256), e.g. one slice of a projection
    shared by several linears: the expansion kernel alone.
torch.ops.panther.lowrank_expand_project(h, B, C, bias=None, activation="none")
    act(h B + bias) C for thin h [..., r1] and C [hidden, r2]: the middle of a low-rank MLP
    (mlp_kernels.py), its hidden activation never stored.
torch.ops.panther.lowrank_gated_expand_project(h, B, hu, Bu, C, bias=None, bias_u=None, activation="silu")
    (act(h B + bias) * (hu Bu + bias_u)) C: the middle of a low-rank gated MLP (SwiGLU, GeGLU).

On CUDA each op runs its Triton kernels where ``triton_kernels.preferred`` says they win
(measured); elsewhere, and on every other device (CPU in CI), the same op runs the C++
two-GEMM op (plus the PyTorch activation) inside it. Backwards run the C++ backward
ops / cuBLAS, recomputing the pre-activation when there is one.
"""

from __future__ import annotations

import torch

from .._triton import triton_available
from . import checks
from .activation import activate, activation_backward, check_activation

sketched_linear_triton = lowrank_linear_triton = lowrank_expand = lowrank_expand_project = None
lowrank_gated_expand_project = use_triton = None
_ops = torch.ops.panther


def traced(x: torch.Tensor) -> bool:
    """Whether the op body is being traced (torch.compile / export) rather than run eagerly."""
    from torch._subclasses.fake_tensor import is_fake

    return torch.compiler.is_compiling() or is_fake(x)


def _with_defaults(inputs, required: int, defaults: tuple):
    """The op's inputs with the trailing optional ones (bias, activation) filled in."""
    return (*inputs, *defaults[len(inputs) - required:])


def _saving_setup(required: int, defaults: tuple):
    """setup_context of an op whose inputs are tensors then ``activation`` (``required`` given,
    the rest ``defaults``): saves the tensors for the backward and the activation on ctx."""

    def setup(ctx, inputs, output):
        *tensors, activation = _with_defaults(inputs, required, defaults)
        ctx.save_for_backward(*tensors)
        ctx.activation = activation

    return setup


def _mask(ctx, *indices: int) -> list[bool]:
    needs = ctx.needs_input_grad
    return [i < len(needs) and bool(needs[i]) for i in indices]


def _setup_sketched(ctx, inputs, output):
    x, S1s, S2s, U1s, U2s, bias = _with_defaults(inputs, 5, (None,))
    ctx.save_for_backward(x, S1s, S2s, U1s, U2s)
    ctx.has_bias = bias is not None


def _sketched_backward(ctx, grad):
    """The C++ backward op of sketched_linear, for the inputs whose ``ctx.needs_input_grad`` is set."""
    x, S1s, S2s, U1s, U2s = ctx.saved_tensors
    mask = _mask(ctx, 0, 1, 2, 5)
    mask[3] = mask[3] and ctx.has_bias
    dx, dS1s, dS2s, dbias = _ops.sketched_linear_backward(grad, x, S1s, S2s, U1s, U2s, mask)
    return dx, dS1s, dS2s, None, None, dbias


def _lowrank_grads(ctx, grad, x, A, B, has_bias: bool):
    """Gradients of (x A) B + bias for the inputs (x, A, B, bias) whose ``ctx.needs_input_grad`` is set."""
    mask = _mask(ctx, 0, 1, 2, 3)
    mask[3] = mask[3] and has_bias
    return _ops.lowrank_linear_backward(grad, x, A, B, mask)


def _expand_rows(h: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """h B + bias computed on the rows of h (a view where h's leading dims merge, e.g. a column
    slice): a ``linear`` on a non-contiguous 3-D h decomposes into a batched matmul plus a
    separate bias pass under torch.compile."""
    rows = h.reshape(-1, B.shape[0])
    y = torch.addmm(bias, rows, B) if bias is not None else rows @ B
    return y.view(*h.shape[:-1], B.shape[1])


def _expand_project_rows(h, B, C, bias, activation: str, up=None) -> torch.Tensor:
    """act(h B + bias) C on the rows of h, the hidden activation stored (the unfused graph);
    ``up`` = (hu, Bu, bias_u): the gated form, act(...) * (hu Bu + bias_u)."""
    a = activate(_expand_rows(h, B, bias), activation)
    if up is not None:
        a = a * _expand_rows(*up)
    return (a.reshape(-1, C.shape[0]) @ C).view(*h.shape[:-1], C.shape[1])


if triton_available:
    from . import mlp_kernels, triton_kernels

    def use_triton(x, rows, rank, n_in, n_out) -> bool:
        """Whether the two-GEMM Triton kernels run for this call (``triton_kernels.preferred``;
        ``rank`` = L*k): the op's choice, and SKLinear_triton's for calling the op at all."""
        return x.device.type == "cuda" and triton_kernels.preferred(
            rows, rank, x.dtype, n_in=n_in, n_out=n_out, compiled=traced(x))

    @torch.library.triton_op("panther::sketched_linear_triton", mutates_args=())
    def sketched_linear_triton(
        x: torch.Tensor,
        S1s: torch.Tensor,
        S2s: torch.Tensor,
        U1s: torch.Tensor,
        U2s: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        L, d_in, k, d_out = checks.check_sketched(x, S1s, S2s, U1s, U2s)
        checks.check_bias(bias, x, d_out)
        # The body runs for every device: eagerly, and when torch.compile decomposes the
        # op into it. Other devices, and shapes where cuBLAS wins, take the C++ op.
        if not use_triton(x, x.numel() // d_in, L * k, d_in, d_out):
            return _ops.sketched_linear(x, S1s, S2s, U1s, U2s, bias)
        y = triton_kernels.sketched_forward(x.reshape(-1, d_in), S1s, S2s, U1s, U2s, bias,
                                            launch=torch.library.wrap_triton)
        return y.view(*x.shape[:-1], d_out)

    sketched_linear_triton.register_autograd(_sketched_backward, setup_context=_setup_sketched)

    @torch.library.triton_op("panther::lowrank_linear_triton", mutates_args=())
    def lowrank_linear_triton(
        x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None = None,
        activation: str = "none",
    ) -> torch.Tensor:
        checks.check_lowrank(x, A, B)
        d_in, r, d_out = A.shape[0], A.shape[1], B.shape[1]
        checks.check_bias(bias, x, d_out)
        check_activation(activation)
        if not use_triton(x, x.numel() // max(d_in, 1), (r + 1) // 2, d_in, d_out):
            return activate(_ops.lowrank_linear(x, A, B, bias), activation)
        y = triton_kernels.lowrank_forward(x.reshape(-1, d_in), A, B, bias, activation,
                                           launch=torch.library.wrap_triton)
        return y.view(*x.shape[:-1], d_out)

    def _lowrank_backward(ctx, grad):
        x, A, B, bias = ctx.saved_tensors
        if ctx.activation != "none":  # the pre-activation, recomputed
            grad = activation_backward(grad, _ops.lowrank_linear(x, A, B, bias), ctx.activation)
        return (*_lowrank_grads(ctx, grad, x, A, B, bias is not None), None)

    lowrank_linear_triton.register_autograd(_lowrank_backward, setup_context=_saving_setup(3, (None, "none")))

    @torch.library.triton_op("panther::lowrank_expand", mutates_args=())
    def lowrank_expand(
        h: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None = None, activation: str = "none",
    ) -> torch.Tensor:
        checks.check_expand(h, B)
        r, d_out = B.shape
        checks.check_bias(bias, h, d_out)
        check_activation(activation)
        if not use_triton(h, h.numel() // max(r, 1), (r + 1) // 2, 0, d_out):
            return activate(_expand_rows(h, B, bias), activation)
        y = triton_kernels.lowrank_expand(h.reshape(-1, r), B, bias, activation, launch=torch.library.wrap_triton)
        return y.view(*h.shape[:-1], d_out)

    def _expand_backward(ctx, grad):
        h, B, bias = ctx.saved_tensors
        if ctx.activation != "none":
            grad = activation_backward(grad, _expand_rows(h, B, bias), ctx.activation)
        needs = ctx.needs_input_grad
        g2, h2 = grad.reshape(-1, grad.shape[-1]), h.reshape(-1, h.shape[-1])
        dh = (grad @ B.t()) if needs[0] else None
        dB = (h2.t() @ g2) if needs[1] else None
        dbias = g2.sum(0) if bias is not None and needs[2] else None
        return dh, dB, dbias, None

    lowrank_expand.register_autograd(_expand_backward, setup_context=_saving_setup(2, (None, "none")))

    def _run_expand_project(h, B, C, bias, activation, up=None):
        """The body of both MLP-middle ops (``up`` = (hu, Bu, bias_u): the gated one)."""
        r1, hidden = B.shape
        ru = up[1].shape[0] if up is not None else 0
        if not (h.device.type == "cuda" and mlp_kernels.preferred(h.numel() // max(r1, 1), hidden, r1, C.shape[1],
                                                                   h.dtype, compiled=traced(h), ru=ru)):
            return _expand_project_rows(h, B, C, bias, activation, up)
        h2, launch = h.reshape(-1, r1), torch.library.wrap_triton
        if up is None:
            u = mlp_kernels.expand_project(h2, B, bias, activation, C, launch=launch)
        else:
            hu, Bu, bias_u = up
            u = mlp_kernels.gated_expand_project(h2, B, bias, activation, hu.reshape(-1, ru), Bu, bias_u, C,
                                                 launch=launch)
        return u.view(*h.shape[:-1], C.shape[1])

    def _expand_project_grads(ctx, grad, h, B, C, bias, up, needs):
        """Gradients of act(h B + b) [* (hu Bu + bu)] C for (h, B, C, bias[, hu, Bu, bias_u]) as
        ``needs`` asks; the hidden activations are recomputed (the forward never stored them)."""
        h2, g2 = h.reshape(-1, B.shape[0]), grad.reshape(-1, C.shape[1])
        z = _expand_rows(h2, B, bias)
        a = activate(z, ctx.activation)
        dp = g2 @ C.t()
        if up is None:
            p, dz, grads_up = a, activation_backward(dp, z, ctx.activation), ()
        else:
            hu, Bu, bias_u = up
            hu2 = hu.reshape(-1, Bu.shape[0])
            zu = _expand_rows(hu2, Bu, bias_u)
            p, dz, dzu = a * zu, activation_backward(dp * zu, z, ctx.activation), dp * a
            grads_up = ((dzu @ Bu.t()).view(hu.shape) if needs[4] else None,
                        (hu2.t() @ dzu) if needs[5] else None,
                        dzu.sum(0) if bias_u is not None and needs[6] else None)
        return ((dz @ B.t()).view(h.shape) if needs[0] else None,
                (h2.t() @ dz) if needs[1] else None,
                (p.t() @ g2) if needs[2] else None,
                dz.sum(0) if bias is not None and needs[3] else None, *grads_up)

    @torch.library.triton_op("panther::lowrank_expand_project", mutates_args=())
    def lowrank_expand_project(
        h: torch.Tensor, B: torch.Tensor, C: torch.Tensor, bias: torch.Tensor | None = None,
        activation: str = "none",
    ) -> torch.Tensor:
        checks.check_expand_project(h, B, C)
        checks.check_bias(bias, h, B.shape[1])
        check_activation(activation)
        return _run_expand_project(h, B, C, bias, activation)

    def _expand_project_backward(ctx, grad):
        h, B, C, bias = ctx.saved_tensors
        needs = (*ctx.needs_input_grad, *(False,) * 4)  # omitted inputs need none
        return (*_expand_project_grads(ctx, grad, h, B, C, bias, None, needs), None)

    lowrank_expand_project.register_autograd(_expand_project_backward, setup_context=_saving_setup(3, (None, "none")))

    @torch.library.triton_op("panther::lowrank_gated_expand_project", mutates_args=())
    def lowrank_gated_expand_project(
        h: torch.Tensor, B: torch.Tensor, hu: torch.Tensor, Bu: torch.Tensor, C: torch.Tensor,
        bias: torch.Tensor | None = None, bias_u: torch.Tensor | None = None, activation: str = "silu",
    ) -> torch.Tensor:
        checks.check_gated(h, B, hu, Bu, C)
        checks.check_bias(bias, h, B.shape[1])
        checks.check_bias(bias_u, h, B.shape[1], "bias_u")
        check_activation(activation)
        return _run_expand_project(h, B, C, bias, activation, (hu, Bu, bias_u))

    def _gated_backward(ctx, grad):
        h, B, hu, Bu, C, bias, bias_u = ctx.saved_tensors
        # op order (h, B, hu, Bu, C, bias, bias_u) -> (h, B, C, bias, hu, Bu, bias_u); omitted inputs need none
        n = (*ctx.needs_input_grad, *(False,) * 7)
        dh, dB, dC, dbias, dhu, dBu, dbias_u = _expand_project_grads(
            ctx, grad, h, B, C, bias, (hu, Bu, bias_u), (n[0], n[1], n[4], n[5], n[2], n[3], n[6]))
        return dh, dB, dhu, dBu, dC, dbias, dbias_u, None

    lowrank_gated_expand_project.register_autograd(_gated_backward,
                                                   setup_context=_saving_setup(5, (None, None, "silu")))
