"""Triton kernel for u = act(h B + b) C: the middle of a low-rank MLP, hidden layer never stored.

A sketched MLP  y = act(x A1 B1 + b1) A2 B2 + b2  runs as two thin GEMMs at its ends
(t = x A1 and y = u B2 + b2, cuBLAS) and this kernel in between. Unfused, the hidden
activation [M, hidden] is written by the expansion, read and written by the activation and
read again by the next projection: four passes over the largest tensor of the block. Here each
program keeps a row block of h [BLOCK_M, r1] and its output accumulator [BLOCK_M, r2] in
registers and walks the hidden axis in BLOCK_N columns: z = h B[:, n] + b[n] (float32),
a = act(z) rounded to the input dtype (as the unfused graph rounds its stored hidden), and
acc += a C[n, :]. Only h, the factors and u are read or written.

Gated (SwiGLU-style, ``gated_expand_project``): u = (act(h B + b) * (h_u B_u + b_u)) C, the gate
and up projections' expansions side by side in the same loop (Llama's MLP: down(silu(gate(x)) *
up(x))); the two hidden activations and their product are never stored either.

Grid (row blocks, SPLIT): when the row blocks alone would leave SMs idle, SPLIT programs share
one row block's hidden axis and store float32 partials [SPLIT, M, r2], summed afterwards
(deterministic, no atomics).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .activation import check_activation
from .triton_kernels import _INTERPRET, _SHARED_MEMORY_BUDGET, _activate, _dot_precision, block_r
from .triton_kernels import num_splits as linear_num_splits

# Largest rank (r1 or r2) whose tiles the kernel keeps in registers; larger ranks use cuBLAS.
MAX_RANK = 256


def _configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in ((64, 64, 4, 3), (64, 32, 4, 2), (64, 32, 4, 1), (128, 64, 8, 3))
    ]


# The kernel's configs, in order of preference for ranks up to 64 (``config_for``).
CONFIGS = _configs()


def smem(config, element_size: int, block_r: int, gated: bool = False) -> int:
    """Shared memory of one program (an estimate): the pipelined B [r1, BLOCK_N] (and B_u) and
    C [BLOCK_N, r2] tiles (every rank taken as ``block_r``, the largest), h (and h_u), and the
    activation tile staged for the second product."""
    m, n, factors = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], 3 if gated else 2
    return (max(config.num_stages, 1) * factors * block_r * n + (factors - 1) * m * block_r + m * n) * element_size


@functools.lru_cache(maxsize=None)
def config_for(block_r: int, element_size: int, gated: bool = False):
    """The config for ranks padded to ``block_r``, or None where none fits shared memory.

    Chosen, not autotuned: an autotuned kernel compiles every config the first time it meets
    a shape (seconds of torch.compile time each), and between configs this close the choice
    followed timing noise (the 24-layer benchmark model ran in 6.2 or 6.7 ms by the pick).
    H200, M = 8192, hidden 4096, bf16 GELU, 4 hidden slices (ms; sweep of 17 configs):
    ranks 64: (64, 64, 4, 3) 0.0559, (64, 64, 4, 2) 0.0564, (128, 64, 8, 3) 0.0596,
    (64, 32, 4, 2) > 0.064; ranks 128: (128, 32, 8, 2) 0.0735, (64, 32, 4, 2) 0.0739,
    (64, 128, 4, 1) 0.0817, (64, 64, 4, 3) 0.0902. Larger ranks take the narrower hidden blocks.
    Gated (SiLU, three factor tiles a step), ranks 64: (128, 64, 8, 3) 0.0548 (M = 32768: 0.194),
    (64, 32, 4, 2) 0.0614 (0.223), (64, 64, 4, 3) 0.0844 (0.320); ranks 128, where the first does
    not fit: (64, 32, 4, 1) 0.133, (64, 32, 4, 2) 0.140.
    """
    if gated:  # the largest row blocks first (three factor tiles a step, reused over more rows)
        order = sorted(CONFIGS, key=lambda c: (-c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]))
    else:
        order = CONFIGS if block_r <= 64 else sorted(CONFIGS, key=lambda c: c.kwargs["BLOCK_N"])
    return next((c for c in order if smem(c, element_size, block_r, gated) <= _SHARED_MEMORY_BUDGET), None)


@triton.jit
def _expand_project_kernel(
    h_ptr, b_ptr, bias_ptr, hu_ptr, bu_ptr, bias_u_ptr, c_ptr, out_ptr,
    M, N, R1, RU, R2, N_PER_SPLIT,
    stride_hm, stride_hr, stride_bk, stride_bn, stride_um, stride_ur, stride_buk, stride_bun,
    stride_cn, stride_cr, stride_os, stride_om, stride_or,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, GATED: tl.constexpr, HAS_BIAS_U: tl.constexpr,
    BLOCK_R1: tl.constexpr, BLOCK_RU: tl.constexpr, BLOCK_R2: tl.constexpr, ELEMENT_SIZE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_R1)
    offs_r = tl.arange(0, BLOCK_R2)
    mask_m = offs_m < M
    mask_k = offs_k < R1
    mask_r = offs_r < R2
    rows = offs_m.to(tl.int64)
    h = tl.load(h_ptr + rows[:, None] * stride_hm + offs_k[None, :] * stride_hr,
                mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(c_ptr.dtype.element_ty)
    if GATED:
        offs_u = tl.arange(0, BLOCK_RU)
        mask_u = offs_u < RU
        hu = tl.load(hu_ptr + rows[:, None] * stride_um + offs_u[None, :] * stride_ur,
                     mask=mask_m[:, None] & mask_u[None, :], other=0.0).to(c_ptr.dtype.element_ty)
    acc = tl.zeros((BLOCK_M, BLOCK_R2), dtype=tl.float32)
    n_begin = pid_s * N_PER_SPLIT
    for n0 in range(n_begin, tl.minimum(n_begin + N_PER_SPLIT, N), BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        b = tl.load(b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        z = tl.dot(h, b, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            z += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        # Columns past N have z = 0 and act(0) = 0 for every activation; their C rows load as 0 too.
        a = _activate(z, ACTIVATION, ELEMENT_SIZE == 4)
        if GATED:
            bu = tl.load(bu_ptr + offs_u[:, None] * stride_buk + offs_n[None, :] * stride_bun,
                         mask=mask_u[:, None] & mask_n[None, :], other=0.0)
            zu = tl.dot(hu, bu, input_precision=DOT_PRECISION)
            if HAS_BIAS_U:
                zu += tl.load(bias_u_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            a = a * zu
        a = a.to(c_ptr.dtype.element_ty)
        c = tl.load(c_ptr + offs_n[:, None] * stride_cn + offs_r[None, :] * stride_cr,
                    mask=mask_n[:, None] & mask_r[None, :], other=0.0)
        acc = tl.dot(a, c, acc, input_precision=DOT_PRECISION)
    tl.store(out_ptr + pid_s * stride_os + rows[:, None] * stride_om + offs_r[None, :] * stride_or,
             acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_r[None, :])


@functools.lru_cache(maxsize=None)
def supported(r1: int, r2: int, dtype: torch.dtype, ru: int = 0) -> bool:
    """Whether a config's tiles fit the ranks (``ru``: the up projection's, gated) in shared memory
    (and registers: ranks <= MAX_RANK)."""
    if max(r1, r2, ru) > MAX_RANK or dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    return config_for(max(block_r(r1), block_r(r2), block_r(ru)), dtype.itemsize, ru > 0) is not None


# Eagerly a Triton op call costs 0.10-0.15 ms of host time (H200 machines, triton_op), against
# ~0.01 ms per cuBLAS/ATen launch: the fused kernel runs eagerly only where the hidden
# activation it saves writing is large.
EAGER_MIN_HIDDEN_BYTES = 1 << 28


def preferred(M: int, N: int, r1: int, r2: int, dtype: torch.dtype, *, compiled: bool, ru: int = 0) -> bool:
    """Whether ``lowrank_expand_project`` (``ru`` > 0: the gated op) runs this kernel: M rows,
    N hidden features."""
    if not supported(int(r1), int(r2), dtype, int(ru)):
        return False
    return compiled or M * N * dtype.itemsize >= EAGER_MIN_HIDDEN_BYTES


def _size_hint(n, fallback: int = 8192) -> int:
    """A size's value, also for a SymInt traced with dynamic shapes (its example value, read
    without adding a guard: the split only tunes speed, so a graph traced at one M serves every M)."""
    if isinstance(n, torch.SymInt):
        hint = n.node.hint
        return int(hint) if isinstance(hint, int) else fallback
    return int(n)


def num_splits(M: int, N: int, device: torch.device) -> int:
    """Slices of the hidden axis (at least 256 wide, at most 16) so that row blocks x slices
    cover the SMs about 4 times (H200, M = 8192, hidden 4096, ranks 64: 1 / 2 / 4 slices
    0.080 / 0.077 / 0.071 ms)."""
    return linear_num_splits(M, N, device, min_slice=256, max_splits=16)


def expand_project(h, B, bias, activation: str, C, launch=lambda kernel: kernel, config=None):
    """u = act(h B + bias) C for 2-D h [M, r1] (any strides), B [r1, N], bias [N] or None,
    C [N, r2]; h is rounded to B's dtype first. ``config``: a triton.Config instead of ``config_for``'s (tests)."""
    return _expand_project(h, B, bias, activation, None, C, launch, config)


def gated_expand_project(h, B, bias, activation: str, hu, Bu, bias_u, C, launch=lambda kernel: kernel, config=None):
    """u = (act(h B + bias) * (hu Bu + bias_u)) C for 2-D h [M, r1] and hu [M, ru] (any strides),
    B [r1, N], Bu [ru, N], biases [N] or None, C [N, r2]."""
    return _expand_project(h, B, bias, activation, (hu, Bu, bias_u), C, launch, config)


def _expand_project(h, B, bias, activation, up, C, launch, config):
    code = check_activation(activation)
    # ranks as ints (a guard): sizes are SymInts when traced with dynamic shapes
    M, N, r1, r2 = h.shape[0], int(B.shape[1]), int(B.shape[0]), int(C.shape[1])
    hu, Bu, bias_u = up if up is not None else (h, B, None)
    ru = int(Bu.shape[0]) if up is not None else 0
    if not supported(r1, r2, B.dtype, ru):
        raise ValueError(f"ranks {r1} -> {r2} (up projection: {ru}) in {B.dtype} do not fit the fused MLP kernel "
                         f"(each rank at most {MAX_RANK}); use the unfused ops")
    out = h.new_empty((M, r2), dtype=B.dtype)
    if M == 0 or r2 == 0:
        return out
    if N == 0:  # an empty hidden axis sums to zero
        return out.zero_()
    split = num_splits(_size_hint(M), N, h.device)
    n_per_split = triton.cdiv(triton.cdiv(N, split), 256) * 256  # whole BLOCK_N steps per slice
    split = triton.cdiv(N, n_per_split)
    dest = out.unsqueeze(0) if split == 1 else h.new_empty((split, M, r2), dtype=torch.float32)
    br = (block_r(r1), block_r(ru) if up is not None else 16, block_r(r2))
    config = config or config_for(max(br), B.element_size(), up is not None)
    launch(_expand_project_kernel)[(triton.cdiv(M, config.kwargs["BLOCK_M"]), split)](
        h, B, bias if bias is not None else B, hu, Bu, bias_u if bias_u is not None else B, C, dest,
        M, N, r1, ru, r2, n_per_split,
        h.stride(0), h.stride(1), B.stride(0), B.stride(1), hu.stride(0), hu.stride(1), Bu.stride(0), Bu.stride(1),
        C.stride(0), C.stride(1), dest.stride(0), dest.stride(1), dest.stride(2),
        HAS_BIAS=bias is not None, ACTIVATION=code, GATED=up is not None, HAS_BIAS_U=bias_u is not None,
        BLOCK_R1=br[0], BLOCK_RU=br[1], BLOCK_R2=br[2], ELEMENT_SIZE=B.element_size(),
        DOT_PRECISION=_dot_precision(B.dtype), **config.kwargs, num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out if split == 1 else dest.sum(0).to(B.dtype)
