"""Fused Triton kernel for y = alpha * (x A) B + b with a small rank r = A.shape[1].

One program owns BLOCK_M rows of x: it streams x once to form h = x A (BLOCK_M x r, kept
in registers), then writes y = alpha * h B + b tile by tile. x is read once and y written
once, which is the memory floor of the layer; A and B are small and stay in L2.
Accumulation is float32 whatever the input dtype; h is rounded to the input dtype before
the second product, as in the two-GEMM path, so both paths agree to rounding.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Largest rank the fused kernel keeps in registers; larger ranks use the two-GEMM op.
MAX_FUSED_RANK = 256


def _configs():
    if os.environ.get("TRITON_INTERPRET") == "1":
        return [triton.Config({"BLOCK_M": 16, "BLOCK_K": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bk, bn, w, s in (
            (32, 128, 128, 4, 4),
            (32, 256, 128, 4, 3),
            (64, 128, 128, 4, 4),
            (64, 128, 128, 8, 3),
            (64, 64, 256, 8, 3),
            (128, 64, 128, 8, 3),
            (16, 256, 128, 4, 4),
            (32, 64, 64, 4, 5),
        )
    ]


CONFIGS = _configs()
_SHARED_MEMORY_BUDGET = 160 * 1024  # bytes; Hopper has 227 KiB per block, leave headroom


def _fits_in_shared_memory(config, element_size: int, block_r: int) -> bool:
    """Pipelined x/A tiles and B tiles must fit; larger ranks need smaller tiles."""
    m, k, n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_K"], config.kwargs["BLOCK_N"]
    stages = max(config.num_stages, 1)
    return stages * (m * k + k * block_r + block_r * n) * element_size <= _SHARED_MEMORY_BUDGET


def _block_r(rank: int) -> int:
    return max(16, triton.next_power_of_2(rank))


def fused_supported(rank: int, dtype: torch.dtype) -> bool:
    """Whether some config of the fused kernel fits this rank and dtype."""
    element_size = torch.empty((), dtype=dtype).element_size()
    return rank <= MAX_FUSED_RANK and any(_fits_in_shared_memory(c, element_size, _block_r(rank)) for c in CONFIGS)


def _prune_configs(configs, named_args, **kwargs):
    block_r = kwargs.get("BLOCK_R", named_args.get("BLOCK_R"))
    element_size = named_args["x_ptr"].element_size()
    return [c for c in configs if _fits_in_shared_memory(c, element_size, block_r)]


# Keyed on the problem's shape with the row count bucketed to a power of two, so a new
# batch size does not re-tune (the earlier Panther re-tuned on every batch size).
@triton.autotune(
    configs=CONFIGS,
    key=["M_BUCKET", "K", "N", "BLOCK_R", "HAS_BIAS"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit
def _fused_lowrank_kernel(
    x_ptr, a_ptr, b_ptr, bias_ptr, y_ptr,
    M, K, N, R, M_BUCKET, alpha,
    stride_xm, stride_xk, stride_ak, stride_ar, stride_br, stride_bn, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    mask_m = offs_m < M
    mask_r = offs_r < R

    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :], other=0.0,
        )
        a = tl.load(
            a_ptr + offs_k[:, None] * stride_ak + offs_r[None, :] * stride_ar,
            mask=mask_k[:, None] & mask_r[None, :], other=0.0,
        )
        acc = tl.dot(x, a, acc, input_precision=DOT_PRECISION)
    h = (acc * alpha).to(y_ptr.dtype.element_ty)

    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        b = tl.load(
            b_ptr + offs_r[:, None] * stride_br + offs_n[None, :] * stride_bn,
            mask=mask_r[:, None] & mask_n[None, :], other=0.0,
        )
        out = tl.dot(h, b, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(
            y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
            out.to(y_ptr.dtype.element_ty),
            mask=mask_m[:, None] & mask_n[None, :],
        )


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def fused_lowrank_forward(x2, A, B, bias, alpha: float, launch=lambda kernel: kernel, config=None):
    """y = alpha * (x2 A) B + bias for 2-D x2 [M, K], A [K, R], B [R, N].

    ``launch`` wraps the kernel before launching (torch.library.wrap_triton inside a
    triton_op, so torch.compile sees the kernel); plain launch otherwise. ``config`` (a
    triton.Config from CONFIGS) bypasses autotuning, for tests of every config.
    """
    M, K = x2.shape
    R, N = B.shape
    if not fused_supported(R, x2.dtype):
        raise ValueError(f"fused_lowrank_forward: rank {R} in {x2.dtype} does not fit the fused kernel "
                         f"(MAX_FUSED_RANK={MAX_FUSED_RANK}); use torch.ops.panther.lowrank_linear")
    y = x2.new_empty((M, N))
    if M == 0:
        return y
    block_r = _block_r(R)
    m_bucket = triton.next_power_of_2(max(M, 1))

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]),)

    kernel, meta = _fused_lowrank_kernel, {}
    if config is not None:
        kernel = _fused_lowrank_kernel.fn
        meta = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    launch(kernel)[grid](
        x2, A, B, bias if bias is not None else y, y,
        M, K, N, R, m_bucket, alpha,
        x2.stride(0), x2.stride(1), A.stride(0), A.stride(1), B.stride(0), B.stride(1),
        y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, BLOCK_R=block_r, DOT_PRECISION=_dot_precision(x2.dtype), **meta,
    )
    return y
