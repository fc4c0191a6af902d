"""Triton kernels for y = alpha * (x [P | Q]) [U; V] + b, the two-GEMM form of SKLinear.

SKLinear is y = alpha * (x A) B + b with A = [S1_1..S1_L  U2_1..U2_L] and
B = [U1_1; ..; U1_L; S2_1; ..; S2_L]. Both kernels read the factors in place through
(term, row, column) strides, so no concatenated copy of A or B is ever made.

* ``_project_kernel`` (h = x A): grid (row blocks, SPLIT). Each program reduces one
  slice of the in_features axis and stores a float32 partial [SPLIT, M, R]; splitting
  the long reduction keeps every SM streaming x even when M is small, and keeping the
  partials (instead of atomics) makes the result deterministic.
* ``_expand_kernel`` (y = alpha * h B + b): grid (row blocks, column groups). Each
  program sums its rows' partials once, rounds h to the input dtype (as a cuBLAS
  two-GEMM would), then writes several output tiles with bias and scale fused.

x is read once and y written once; the partials are M x 2Lk floats, small beside them.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .activation import check_activation

# Largest total rank 2Lk the kernels keep in registers; larger ranks use the C++ op.
MAX_RANK = 256
_SHARED_MEMORY_BUDGET = 160 * 1024  # bytes; Hopper allows 227 KiB per block, leave headroom
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _project_configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bm, bk, w, s in ((64, 128, 4, 4), (64, 256, 8, 3), (32, 128, 4, 4), (32, 256, 4, 3),
                             (128, 128, 8, 3), (16, 256, 4, 4), (64, 64, 4, 2))
    ]


def _expand_configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "N_TILES": 2}, num_warps=4, num_stages=1)]
    return [
        # Measured on an H200 (write bandwidth of y = h B at rank 32): [64, 128] tiles, 8 per
        # program, reach 3.4 TB/s where cuBLAS's GEMM writes at 3.0 TB/s.
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "N_TILES": t}, num_warps=w, num_stages=s)
        for bm, bn, t, w, s in ((64, 128, 8, 4, 2), (64, 128, 8, 8, 2), (64, 256, 4, 4, 2), (64, 128, 4, 4, 2),
                                (128, 128, 2, 8, 2), (32, 128, 8, 4, 2), (16, 128, 8, 4, 2))
    ]


PROJECT_CONFIGS = _project_configs()
EXPAND_CONFIGS = _expand_configs()


def project_smem(config, element_size: int, block_r: int) -> int:
    m, k = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_K"]
    return max(config.num_stages, 1) * (m * k + k * block_r) * element_size


def expand_smem(config, element_size: int, block_r: int) -> int:
    n = config.kwargs["BLOCK_N"]
    return max(config.num_stages, 1) * block_r * n * element_size


def _tuned(configs, smem, block_r: int = MAX_RANK // 2):
    """The configs the autotuner tries. PANTHER_TRITON_AUTOTUNE=0 keeps only the one with the
    smallest tiles at ``block_r`` (fits every supported rank), so GPU test runs do not compile
    every config; tests of each config pass them explicitly."""
    if os.environ.get("PANTHER_TRITON_AUTOTUNE", "1") == "0":
        return [min(configs, key=lambda c: smem(c, 4, block_r))]
    return configs


def _prune(smem):
    def prune(configs, named_args, **kwargs):
        block_r = kwargs.get("BLOCK_R", named_args.get("BLOCK_R"))
        element_size = kwargs.get("ELEMENT_SIZE", named_args.get("ELEMENT_SIZE"))
        return [c for c in configs if smem(c, element_size, block_r) <= _SHARED_MEMORY_BUDGET]

    return prune


@triton.jit
def _rank_offsets(offs_r, k, stride_term, stride_rank):
    """Element offsets of rank indices l*k + j in a factor stored as [L, ., .] with the rank
    index j along ``stride_rank``. Computed once per program: the integer division by the
    runtime k is too costly to repeat for every tile element."""
    return (offs_r // k) * stride_term + (offs_r % k) * stride_rank


# rcp.approx (one special-function op) where the kernels are compiled; Triton's CPU interpreter
# runs no inline PTX and divides.
_RCP_APPROX = tl.constexpr(not _INTERPRET)


@triton.jit
def _gelu_16bit(x):
    """Exact GELU x Phi(x) for results rounded to 16 bits: Phi from Abramowitz & Stegun 7.1.26
    (erfc(a) = poly(t) exp(-a^2), t = 1 / (1 + p a)), absolute error below 2.2e-7 against the
    float64 GELU, far under bf16/fp16 rounding. Where the kernels are compiled: two
    special-function ops and 12 FMA-pipe instructions (sm_90 SASS), where libdevice's erf costs
    ~40 (H200: the fused MLP middle at 8192 x 4096 spent 0.05 ms of its 0.078 in erf) and the
    plain division and a select tail 21. It runs once per hidden activation of a fused MLP, where
    its instruction count is the kernel's speed (H200, 8192 x 4096, ranks 128, against ReLU in
    the same run: 23 us slower with the division and select tail, 17 us slower with this form).
    Phi for x < 0 is erfc / 2 itself, so 1 + erf never cancels:
    x Phi(x) = relu(x) - |x| erfc(|x| / sqrt 2) / 2 for either sign."""
    ax = tl.abs(x)
    # a = |x| / sqrt(2); the constants fold 1/sqrt(2), the 1/2 of Phi = erfc/2 and log2(e) in.
    d = 1.0 + 0.2316418882663604 * ax  # 1 + p a, p = 0.3275911: >= 1, so rcp.approx is within 1 ulp
    if _RCP_APPROX:
        t = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [d], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        t = 1.0 / d
    half_poly = t * (0.127414796 + t * (-0.142248368 + t * (0.7107068705 + t * (-0.7265760135 + t * 0.5307027145))))
    half_erfc = half_poly * tl.exp2(x * x * -0.72134752044448170)  # exp(-a^2) = 2^(-x^2 log2(e) / 2)
    return tl.maximum(x, 0.0) - ax * half_erfc


@triton.jit
def _activate(out, ACTIVATION: tl.constexpr, EXACT_GELU: tl.constexpr = True):
    """The epilogue activation on float32 values (ACTIVATIONS gives the codes). EXACT_GELU
    False: the GELU for 16-bit results (``_gelu_16bit``), otherwise libdevice's erf."""
    if ACTIVATION == 1:  # relu
        out = tl.maximum(out, 0.0)
    elif ACTIVATION == 2 and not EXACT_GELU:
        out = _gelu_16bit(out)
    elif ACTIVATION == 2:  # gelu, exact (erf)
        out = 0.5 * out * (1.0 + tl.math.erf(out * 0.7071067811865476))
    elif ACTIVATION == 3:  # gelu, tanh approximation: tanh(u) = 2 sigmoid(2u) - 1
        u = 0.7978845608028654 * (out + 0.044715 * out * out * out)
        out = out * tl.sigmoid(2.0 * u)
    elif ACTIVATION == 4:  # silu
        out = out * tl.sigmoid(out)
    return out


@triton.autotune(configs=_tuned(PROJECT_CONFIGS, project_smem), key=["M_BUCKET", "K", "BLOCK_R", "SPLIT", "ELEMENT_SIZE"],
                 prune_configs_by={"early_config_prune": _prune(project_smem)})
@triton.jit
def _project_kernel(
    x_ptr, p_ptr, q_ptr, part_ptr,
    M, K, RANK, RANK_Q, k, k_per_split, M_BUCKET,
    stride_xm, stride_xk, p_st, p_si, p_sj, q_st, q_si, q_sj,
    SPLIT: tl.constexpr, BLOCK_R: tl.constexpr, ELEMENT_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # h[:, :RANK] = x P and h[:, RANK:] = x Q for one row block and one slice of K.
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    mask_m = offs_m < M
    mask_p = offs_r < RANK
    mask_q = offs_r < RANK_Q
    rows = offs_m.to(tl.int64)  # x may hold more than 2**31 elements
    p_cols = _rank_offsets(offs_r, k, p_st, p_sj)
    q_cols = _rank_offsets(offs_r, k, q_st, q_sj)
    acc_p = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    acc_q = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    k_begin = pid_s * k_per_split
    for k0 in range(k_begin, tl.minimum(k_begin + k_per_split, K), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        p = tl.load(p_ptr + offs_k[:, None] * p_si + p_cols[None, :], mask=mask_k[:, None] & mask_p[None, :], other=0.0)
        q = tl.load(q_ptr + offs_k[:, None] * q_si + q_cols[None, :], mask=mask_k[:, None] & mask_q[None, :], other=0.0)
        acc_p = tl.dot(x, p, acc_p, input_precision=DOT_PRECISION)
        acc_q = tl.dot(x, q, acc_q, input_precision=DOT_PRECISION)
    # partials [SPLIT, M, 2, BLOCK_R] float32
    base = part_ptr + pid_s * M * 2 * BLOCK_R + rows[:, None] * 2 * BLOCK_R + offs_r[None, :]
    tl.store(base, acc_p, mask=mask_m[:, None])
    tl.store(base + BLOCK_R, acc_q, mask=mask_m[:, None])


@triton.autotune(configs=_tuned(EXPAND_CONFIGS, expand_smem),
                 key=["M_BUCKET", "N", "BLOCK_R", "SPLIT", "HAS_BIAS", "ELEMENT_SIZE", "ACTIVATION"],
                 prune_configs_by={"early_config_prune": _prune(expand_smem)})
@triton.jit
def _expand_kernel(
    h_ptr, u_ptr, v_ptr, bias_ptr, y_ptr,
    M, N, RANK, RANK_Q, k, M_BUCKET, alpha, stride_hs, stride_hm, stride_hr, h_q_offset,
    u_st, u_si, u_sj, v_st, v_si, v_sj, stride_ym, stride_yn,
    SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, BLOCK_R: tl.constexpr,
    ELEMENT_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_TILES: tl.constexpr,
):
    # y = act(alpha * (h_p U + h_q V) + b) for one row block and N_TILES column tiles.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    mask_m = offs_m < M
    mask_u = offs_r < RANK
    mask_v = offs_r < RANK_Q
    rows = offs_m.to(tl.int64)  # y may hold more than 2**31 elements
    u_rows = _rank_offsets(offs_r, k, u_st, u_si)
    v_rows = _rank_offsets(offs_r, k, v_st, v_si)
    h_p = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    h_q = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    # h is either the projection's float32 partials [SPLIT, M, 2, BLOCK_R] or a given [M, r]
    # matrix (SPLIT = 1, any strides and dtype); its second half starts h_q_offset further.
    base = h_ptr + rows[:, None] * stride_hm + offs_r[None, :] * stride_hr
    for s in range(SPLIT):
        h_p += tl.load(base + s * stride_hs, mask=mask_m[:, None] & mask_u[None, :], other=0.0).to(tl.float32)
        h_q += tl.load(base + s * stride_hs + h_q_offset, mask=mask_m[:, None] & mask_v[None, :],
                       other=0.0).to(tl.float32)
    # (Inductor passes alpha as a float64 scalar; the products are rounded to the input dtype here.)
    h_p = (h_p * alpha).to(y_ptr.dtype.element_ty)
    h_q = (h_q * alpha).to(y_ptr.dtype.element_ty)
    for t in range(N_TILES):
        offs_n = (pid_n * N_TILES + t) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        u = tl.load(u_ptr + u_rows[:, None] + offs_n[None, :] * u_sj, mask=mask_u[:, None] & mask_n[None, :], other=0.0)
        v = tl.load(v_ptr + v_rows[:, None] + offs_n[None, :] * v_sj, mask=mask_v[:, None] & mask_n[None, :], other=0.0)
        out = tl.dot(h_p, u, input_precision=DOT_PRECISION)
        out = tl.dot(h_q, v, out, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        out = _activate(out, ACTIVATION, ELEMENT_SIZE == 4)
        # y is written once and never read here: streaming stores (evict first) keep the
        # factors and partials in L2.
        tl.store(y_ptr + rows[:, None] * stride_ym + offs_n[None, :] * stride_yn,
                 out.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :], cache_modifier=".cs")


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def block_r(rank: int) -> int:
    return max(16, triton.next_power_of_2(rank))


# Host time of one eager call of a Triton linear op (two autotuned launches through
# triton_op): 0.10-0.15 ms on the H200 machines (torch 2.11, Triton 3.6), against 0.05 ms for
# the C++ op. Eagerly, the kernels win only where the GPU time is well above it.
EAGER_MIN_BYTES = 1 << 31


def preferred(M: int, rank: int, dtype: torch.dtype, *, n_in: int, n_out: int, compiled: bool) -> bool:
    """Whether the Triton kernels beat the C++ op (cuBLAS) for M rows, ``rank`` per half
    (L*k for SKLinear), ``n_in`` -> ``n_out`` features (n_in = 0: the expansion alone).

    Measured on an H200 (BENCHMARKS.md): under torch.compile (no Python launch cost) the
    kernels win for L*k <= 16 at M >= 8192 rows; launch costs dominate at small M, and at larger ranks
    cuBLAS's tensor-core tiles beat the two register-resident products. Eagerly the Python
    launch cost comes on top, so they run only for problems moving EAGER_MIN_BYTES or more.
    """
    # Sizes may be SymInts when traced with dynamic shapes: compare first (a guard), then
    # hand ``supported`` (cached) a plain int.
    if M < 8192 or rank > 16 or not supported(int(rank), dtype):
        return False
    return compiled or M * (n_in + n_out) * dtype.itemsize >= EAGER_MIN_BYTES


@functools.lru_cache(maxsize=None)
def supported(rank: int, dtype: torch.dtype) -> bool:
    """Whether both kernels have a config whose tiles fit this rank (= L*k) and dtype."""
    size, br = dtype.itemsize, block_r(rank)
    return (2 * rank <= MAX_RANK
            and any(project_smem(c, size, br) <= _SHARED_MEMORY_BUDGET for c in PROJECT_CONFIGS)
            and any(expand_smem(c, size, br) <= _SHARED_MEMORY_BUDGET for c in EXPAND_CONFIGS))


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_splits(M: int, K: int, device: torch.device, min_slice: int = 512, max_splits: int = 32) -> int:
    """Slices of the K axis (each at least ``min_slice`` long) so that row blocks (of 64) x slices
    fill the GPU about 4 times over."""
    if device.type != "cuda":
        return 1 if K <= 64 else 2  # the interpreter: exercise the split path cheaply
    target_programs = 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    row_blocks = triton.cdiv(max(M, 1), 64)
    return max(1, min(triton.cdiv(target_programs, row_blocks), K // min_slice, max_splits))


def _strides(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2)


def _rank_halves(B):
    """[U; V] = B [r, out] as one-term [1, ., .] factors (views), U with ceil(r/2) ranks: the
    kernels' two products then serve any rank r."""
    half = (B.shape[0] + 1) // 2
    return (B[:half].unsqueeze(0), B[half:].unsqueeze(0)), half


def _halves(A, B):
    """[P | Q] = A [in, r] and [U; V] = B [r, out], split as by ``_rank_halves``."""
    UV, half = _rank_halves(B)
    return (A[:, :half].unsqueeze(0), A[:, half:].unsqueeze(0)), UV, half


def sketched_forward(x2, S1s, S2s, U1s, U2s, bias, launch=lambda kernel: kernel, configs=None):
    """y = 1/(2L) * (x2 [S1 | U2]) [U1; S2] + bias for 2-D x2 [M, in] and the [L, ., .] factors.

    ``launch`` wraps each kernel before launching (torch.library.wrap_triton inside a
    triton_op, so torch.compile sees the kernels). ``configs`` = (project, expand)
    triton.Configs bypasses autotuning, for tests of every config.
    """
    L, k, N = U1s.shape
    return _two_gemm(x2, (S1s, U2s), (U1s, S2s), k, L * k, L * k, N, 1.0 / (2 * L), bias, "none", launch, configs)


def lowrank_forward(x2, A, B, bias, activation: str = "none", launch=lambda kernel: kernel, configs=None):
    """y = act(x2 A B + bias) for 2-D x2 [M, in], A [in, r], B [r, out] (factors read in place)."""
    PQ, UV, half = _halves(A, B)
    return _two_gemm(x2, PQ, UV, half, half, A.shape[1] - half, B.shape[1], 1.0, bias, activation, launch, configs)


def lowrank_expand(h, B, bias, activation: str = "none", launch=lambda kernel: kernel, config=None):
    """y = act(h B + bias) for 2-D h [M, r] (any strides: e.g. a slice of a shared projection)
    and B [r, out]: the expansion kernel alone, h rounded to B's dtype first."""
    code = check_activation(activation)
    (U, V), half = _rank_halves(B)
    y = _output(h, B.shape[1], half, B.dtype)
    if h.shape[0]:
        rank_q = B.shape[0] - half
        _launch_expand(launch, config, h, (h.stride(0), h.stride(1), half * h.stride(1)), 1, U, V, half, half,
                       rank_q, 1.0, bias, code, y)
    return y


def _output(a, N, rank, dtype):
    if not supported(rank, dtype):
        raise ValueError(f"rank {rank} per half in {dtype} does not fit the Triton kernels "
                         f"(total rank at most {MAX_RANK}); use the C++ op")
    return a.new_empty((a.shape[0], N), dtype=dtype)


def _meta(config) -> dict:
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def _launch_expand(launch, config, h, h_strides, split, U, V, k, rank, rank_q, alpha, bias, activation_code, y):
    """y = act(alpha * (h_p U + h_q V) + bias), act by its kernel code; h_strides = (row, rank, offset of the second half),
    summed over ``split`` slices M*2*BLOCK_R apart (the projection's partials)."""
    M, N = y.shape
    br = block_r(rank)
    kernel, meta = (_expand_kernel, {}) if config is None else (_expand_kernel.fn, _meta(config))
    launch(kernel)[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"] * meta["N_TILES"]))](
        h, U, V, bias if bias is not None else y, y, M, N, rank, rank_q, k, triton.next_power_of_2(M), alpha,
        M * 2 * br, *h_strides, *_strides(U), *_strides(V), y.stride(0), y.stride(1),
        SPLIT=split, HAS_BIAS=bias is not None, ACTIVATION=activation_code, BLOCK_R=br,
        ELEMENT_SIZE=y.element_size(), DOT_PRECISION=_dot_precision(y.dtype), **meta,
    )


def _two_gemm(x2, PQ, UV, k, rank, rank_q, N, alpha, bias, activation, launch, configs):
    M, K = x2.shape
    code = check_activation(activation)
    y = _output(x2, N, rank, x2.dtype)
    if M == 0:
        return y
    br, split = block_r(rank), num_splits(M, K, x2.device)
    partials = x2.new_empty((split, M, 2, br), dtype=torch.float32)
    project, meta_p = (_project_kernel, {}) if configs is None else (_project_kernel.fn, _meta(configs[0]))
    k_per_split = triton.cdiv(triton.cdiv(K, split), 256) * 256  # whole BLOCK_K steps per slice
    (P, Q), (U, V) = PQ, UV
    launch(project)[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), split)](
        x2, P, Q, partials, M, K, rank, rank_q, k, k_per_split, triton.next_power_of_2(M),
        x2.stride(0), x2.stride(1), *_strides(P), *_strides(Q),
        BLOCK_R=br, ELEMENT_SIZE=x2.element_size(), SPLIT=split, DOT_PRECISION=_dot_precision(x2.dtype), **meta_p,
    )
    _launch_expand(launch, None if configs is None else configs[1], partials, (2 * br, 1, br), split, U, V, k, rank,
                   rank_q, alpha, bias, code, y)
    return y
