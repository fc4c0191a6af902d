"""Shape, dtype and device checks for the linear ops, used by the fake (meta) kernels.

The C++ kernels (csrc/linear/lowrank_linear.cpp) make the same checks with the same words,
so a bad call fails the same way in eager mode and under torch.compile / torch.export.
"""

from __future__ import annotations

import torch


def _fail(msg: str) -> None:
    raise RuntimeError(msg)


def check_dim(t: torch.Tensor, name: str, dim: int) -> None:
    if t.dim() != dim:
        _fail(f"{name} must be a {dim}-D tensor, got shape {list(t.shape)}")


def check_size(t: torch.Tensor, name: str, axis: int, expected: int, what: str) -> None:
    if t.shape[axis] != expected:
        _fail(f"{name} has shape {list(t.shape)}: expected size {expected} ({what}) at dim {axis}")


def check_like(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t.dtype != ref.dtype:
        _fail(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}: expected the same dtype")
    if t.device != ref.device:
        _fail(f"{name} is on {t.device} but {ref_name} is on {ref.device}: expected the same device")


def check_input(x: torch.Tensor, in_features: int, source: str) -> None:
    check_input_named(x, "x", in_features, f"in_features, from {source}")


def check_input_named(x: torch.Tensor, name: str, size: int, what: str) -> None:
    """x floating point with at least one dim, the last of ``size`` (``what`` says which size)."""
    if not x.dtype.is_floating_point:
        _fail(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1:
        _fail(f"{name} must have at least 1 dimension (..., {what.split(',')[0]}), got a scalar")
    if x.shape[-1] != size:
        _fail(f"{name} has shape {list(x.shape)}: expected last dim {size} ({what})")


def check_sketched(x, S1s, S2s, U1s, U2s) -> tuple[int, int, int, int]:
    """Returns (L, in, k, out) after checking every factor against the others."""
    check_dim(S1s, "S1s", 3)
    L, d_in, k = S1s.shape
    check_input(x, d_in, "S1s [L, in, k]")
    check_dim(S2s, "S2s", 3)
    d_out = S2s.shape[2]
    check_size(S2s, "S2s", 0, L, "num_terms, from S1s [L, in, k]")
    check_size(S2s, "S2s", 1, k, "low_rank, from S1s [L, in, k]")
    check_dim(U1s, "U1s", 3)
    check_size(U1s, "U1s", 0, L, "num_terms")
    check_size(U1s, "U1s", 1, k, "low_rank")
    check_size(U1s, "U1s", 2, d_out, "out_features, from S2s [L, k, out]")
    check_dim(U2s, "U2s", 3)
    check_size(U2s, "U2s", 0, L, "num_terms")
    check_size(U2s, "U2s", 1, d_in, "in_features")
    check_size(U2s, "U2s", 2, k, "low_rank")
    for t, name in ((S1s, "S1s"), (S2s, "S2s"), (U1s, "U1s"), (U2s, "U2s")):
        check_like(t, name, x, "x")
    return L, d_in, k, d_out


def check_lowrank(x, A, B) -> None:
    check_dim(A, "A", 2)
    check_dim(B, "B", 2)
    check_input(x, A.shape[0], "A [in, r]")
    check_size(B, "B", 0, A.shape[1], "rank, from A [in, r]")
    check_like(A, "A", x, "x")
    check_like(B, "B", x, "x")


def check_expand(h, B) -> None:
    check_dim(B, "B", 2)
    check_input(h, B.shape[0], "B [r, out]")
    check_like(B, "B", h, "h")


def check_expand_project(h, B, C) -> None:
    check_expand(h, B)
    check_dim(C, "C", 2)
    check_size(C, "C", 0, B.shape[1], "hidden features, from B [r1, hidden]")
    check_like(C, "C", h, "h")


def check_gated(h, B, hu, Bu, C) -> None:
    """The gated MLP middle's operands: h [..., r1], B [r1, hidden], hu [..., ru], Bu [ru, hidden], C [hidden, r2]."""
    check_expand_project(h, B, C)
    check_dim(Bu, "Bu", 2)
    if hu.dim() != h.dim() or hu.shape[:-1] != h.shape[:-1]:
        _fail(f"hu has shape {list(hu.shape)}: expected the leading dims of h {list(h.shape[:-1])}")
    check_size(Bu, "Bu", 0, hu.shape[-1], "rank, from hu [..., ru]")
    check_size(Bu, "Bu", 1, B.shape[1], "hidden features, from B [r1, hidden]")
    check_like(hu, "hu", h, "h")
    check_like(Bu, "Bu", h, "h")


def check_residual_addmm(residual, h, B, bias) -> None:
    """residual [..., out] + h [..., r] B [r, out] + bias [out]: one dtype and device."""
    check_dim(B, "B", 2)
    check_input_named(h, "h", B.shape[0], "rank, from B [r, out]")
    check_like(B, "B", h, "h")
    expected = [*h.shape[:-1], B.shape[1]]
    if list(residual.shape) != expected:
        _fail(f"residual has shape {list(residual.shape)}: expected {expected} "
              "(h's leading dims, out_features from B [r, out])")
    check_like(residual, "residual", h, "h")
    check_bias(bias, h, B.shape[1], ref_name="h")


def check_batched_expand(h, B, bias) -> None:
    """h [..., G r], B [G, r, N], bias [G, N] or None; one dtype and device."""
    check_dim(B, "B", 3)
    G, r, N = B.shape
    if G < 1:
        _fail(f"B has shape {list(B.shape)}: expected at least one member (G >= 1) at dim 0")
    check_input_named(h, "h", G * r, "G * rank, from B [G, r, N]")
    check_like(B, "B", h, "h")
    if bias is not None:
        check_dim(bias, "bias", 2)
        check_size(bias, "bias", 0, G, "G, from B [G, r, N]")
        check_size(bias, "bias", 1, N, "out_features, from B [G, r, N]")
        check_like(bias, "bias", h, "h")


def check_bias(bias, x: torch.Tensor, out_features: int, name: str = "bias", ref_name: str = "x") -> None:
    if bias is None:
        return
    check_dim(bias, name, 1)
    check_size(bias, name, 0, out_features, "out_features")
    check_like(bias, name, x, ref_name)


def check_grad(grad: torch.Tensor, x: torch.Tensor, out_features: int) -> None:
    check_like(grad, "grad", x, "x")
    expected = [*x.shape[:-1], out_features]
    if list(grad.shape) != expected:
        _fail(f"grad has shape {list(grad.shape)}: expected the output shape {expected}")
