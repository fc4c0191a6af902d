// out = alpha a b (+ bias) (+ residual) through cuBLASLt with an algorithm measured once per problem.
//
// Both GEMMs of a low-rank layer are bound by memory: the projection x A reads a large x into a
// narrow output, the expansion y = h B + b (K = rank, tens to hundreds) writes a large y.
// cuBLAS's default pick for the expansion (what at::addmm runs) wrote y at 2.5-2.6 TB/s on an
// H200; the fastest of the other candidates its own heuristic lists was 3-15% faster at
// 8192 x 8192 and 4096 x 4096 from ranks 32 and 128 (per-candidate times in the commit that
// added this file). So the first call of each problem (rows bucketed by powers of two) times
// the heuristic's candidates and keeps the fastest, cudnn.benchmark-style. A thread keeps each
// problem's descriptors: later calls neither build them nor ask the heuristic (ATen's GEMMs do
// both on every call), so the host time per call drops too.
//
// Deterministic mode (torch.use_deterministic_algorithms) keeps the heuristic's first pick, so
// results do not depend on a timing; a stream being captured into a CUDA graph is never timed
// (the heuristic's pick is used until an uncaptured call has measured the problem).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace panther {

// Writes alpha a b (+ bias broadcast over rows) into out [M, N] and returns true; returns
// false, touching nothing, where it does not apply (the caller then runs ATen): a build
// without CUDA, tensors not on CUDA, dtypes other than float16/bfloat16, layouts cuBLASLt
// cannot read in place (each matrix needs a unit stride in one dimension), empty problems.
// split_k admits algorithms that split the K axis (for long K and a narrow output, as the
// projection x A: there are too few output tiles to fill the GPU otherwise). residual, when
// given, is a [M, N] matrix read as the GEMM's C operand with beta = 1 (out = alpha a b + bias
// + residual in one pass: a residual connection added in the epilogue instead of by another
// kernel that reads both again); it needs a unit column stride and must not alias out.
// Batched: out [G, M, N], a [G, M, K], b [G, K, N], bias [G, N], residual [G, M, N], each
// matrix i at a fixed stride from matrix 0 (dim 0's), bias rows likewise (one strided GEMM).
bool cublaslt_gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias,
                   double alpha, bool split_k = false, const at::Tensor* residual = nullptr);

}  // namespace panther
