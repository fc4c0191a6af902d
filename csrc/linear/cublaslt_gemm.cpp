// See cublaslt_gemm.h.

#include "linear/cublaslt_gemm.h"

#ifndef PANTHER_WITH_CUDA

namespace panther {
bool cublaslt_gemm(at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, bool,
                   const at::Tensor*) {
  return false;
}
}  // namespace panther

#else

#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublasLt.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace panther {
namespace {

constexpr int kCandidates = 8;           // heuristic results timed on a problem's first call
constexpr int kTimedRuns = 5;            // runs per candidate (after one warm-up run)
constexpr size_t kWorkspace = 1u << 20;         // bytes, without split-K: little is needed
constexpr size_t kSplitKWorkspace = 16u << 20;  // with split-K: partial sums of the output

// A row-major [rows, cols] tensor read in place as a column-major cuBLASLt operand of its
// transpose: with unit column stride its memory is the column-major transpose (op N);
// with unit row stride it is the matrix itself in column-major order (op T).
struct Operand {
  cublasOperation_t op;
  uint64_t rows, cols;  // of the stored column-major matrix
  int64_t ld;
};

// The matrix is t's last two dims (a batch's matrices when t is 3-D).
std::optional<Operand> as_operand(const at::Tensor& t) {
  const int64_t rows = t.size(-2), cols = t.size(-1);
  if (t.stride(-1) == 1 && t.stride(-2) >= std::max<int64_t>(cols, 1)) {
    return Operand{CUBLAS_OP_N, static_cast<uint64_t>(cols), static_cast<uint64_t>(rows), t.stride(-2)};
  }
  if (t.stride(-2) == 1 && t.stride(-1) >= std::max<int64_t>(rows, 1)) {
    return Operand{CUBLAS_OP_T, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), t.stride(-1)};
  }
  return std::nullopt;
}

// A batched problem's count and the element stride between consecutive matrices of each operand
// (c: the residual's; bias: between its rows). A 2-D problem: count 1, strides 0.
struct Batch {
  int64_t count = 1, a = 0, b = 0, out = 0, c = 0, bias = 0;
};

// Largest power of two (up to 256) dividing the address and, batched, the byte stride between
// matrices (every matrix's start): cuBLASLt's algorithms may assume the alignment a preference
// allows, so the real one is declared.
uint32_t alignment(const void* ptr, int64_t batch_stride_bytes = 0) {
  const auto address = reinterpret_cast<uintptr_t>(ptr) | static_cast<uintptr_t>(batch_stride_bytes);
  uint32_t bytes = 1;
  while (bytes < 256 && address % (2 * bytes) == 0) bytes *= 2;
  return bytes;
}

// The cuBLASLt descriptors of one problem, owned (destroyed with it, never copied).
struct Problem {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;  // c: the residual's
  cublasLtMatmulPreference_t preference = nullptr;
  bool ok = true;

  Problem() = default;
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;

  ~Problem() {
    if (preference) cublasLtMatmulPreferenceDestroy(preference);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
  void check(cublasStatus_t status) { ok = ok && status == CUBLAS_STATUS_SUCCESS; }
  template <typename T>
  void set(cublasLtMatmulDescAttributes_t attribute, const T& value) {
    if (ok) check(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(value)));
  }
  template <typename T>
  void prefer(cublasLtMatmulPreferenceAttributes_t attribute, const T& value) {
    if (ok) check(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof(value)));
  }
};

struct Choice {
  cublasLtMatmulAlgo_t algo;
  bool workspace;  // whether the algorithm needs a workspace (the heuristic's figure): most need none
  bool measured;     // false: the heuristic's first pick, kept only until a call may time
};

// Everything a problem's descriptors and algorithm depend on; the last field is its row count
// (an Entry's key) or the row count's bucket (a Choice's key). Integers, not a string: a key is
// built on every call.
using Key = std::array<int64_t, 23>;

struct KeyHash {
  size_t operator()(const Key& key) const noexcept {
    size_t h = 0;
    for (const int64_t v : key) h = h * 1000003u ^ std::hash<int64_t>{}(v);
    return h;
  }
};

// Measured choices, shared by all threads, keyed by the problem with its rows bucketed.
std::mutex choices_mutex;
std::unordered_map<Key, Choice, KeyHash>& choices() {
  static std::unordered_map<Key, Choice, KeyHash> measured;
  return measured;
}

// A problem's descriptors and algorithm, built on its first call in a thread and reused: the
// per-call host work is then a key and one launch (ATen's addmm creates descriptors and asks
// the heuristic on every call). Thread-local because the bias pointer is set per call.
struct Entry {
  Problem problem;
  Key choice_key;
  Choice choice{};
  bool final = false;  // the choice is measured (or deterministic mode's pick): never revisited
};

std::unordered_map<Key, std::unique_ptr<Entry>, KeyHash>& entries() {
  thread_local std::unordered_map<Key, std::unique_ptr<Entry>, KeyHash> cached;
  return cached;
}

// Problems are keyed by the next power of two of their row count: a layer meeting many token
// counts (serving) measures once per bucket, not once per count. A choice that cannot run
// another count of its bucket makes cublasLtMatmul fail, and that call falls back to ATen.
int64_t row_bucket(int64_t rows) {
  int64_t bucket = 1;
  while (bucket < rows) bucket *= 2;
  return bucket;
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone;
}

void set_batch(Problem& p, cublasLtMatrixLayout_t layout, int64_t count, int64_t stride) {
  const auto count32 = static_cast<int32_t>(count);
  if (p.ok) p.check(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count32,
                                                     sizeof(count32)));
  if (p.ok) p.check(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                     sizeof(stride)));
}

// The descriptors of out^T [N, M] = alpha b^T [N, K] a^T [K, M] (+ residual^T, leading dimension ldc > 0)
// in column-major terms, for each of batch.count matrices, or false. align: of b, a, the residual
// (or out) and out.
bool describe(Problem& p, cudaDataType_t type, const Operand& lhs, const Operand& rhs, int64_t N, int64_t M,
              int64_t ldd, int64_t ldc, const Batch& batch, bool with_bias, bool split_k, size_t workspace_bytes,
              const uint32_t align[4]) {
  p.check(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  p.set(CUBLASLT_MATMUL_DESC_TRANSA, lhs.op);
  p.set(CUBLASLT_MATMUL_DESC_TRANSB, rhs.op);
  if (with_bias) {
    p.set(CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    p.set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, type);
  }
  if (p.ok) p.check(cublasLtMatrixLayoutCreate(&p.a, type, lhs.rows, lhs.cols, lhs.ld));
  if (p.ok) p.check(cublasLtMatrixLayoutCreate(&p.b, type, rhs.rows, rhs.cols, rhs.ld));
  if (p.ok) p.check(cublasLtMatrixLayoutCreate(&p.d, type, N, M, ldd));
  if (p.ok && ldc > 0) p.check(cublasLtMatrixLayoutCreate(&p.c, type, N, M, ldc));
  if (batch.count > 1) {
    set_batch(p, p.a, batch.count, batch.b);  // p.a describes b (see above), p.b describes a
    set_batch(p, p.b, batch.count, batch.a);
    set_batch(p, p.d, batch.count, batch.out);
    if (ldc > 0) set_batch(p, p.c, batch.count, batch.c);
    if (with_bias) p.set(CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, batch.bias);
  }
  if (p.ok) p.check(cublasLtMatmulPreferenceCreate(&p.preference));
  p.prefer(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, workspace_bytes);
  // Every reduction scheme cuBLASLt offers sums the K slices in a fixed order (a result depends
  // only on the algorithm); without split-K no candidate needs more than a little workspace.
  p.prefer(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
           static_cast<uint32_t>(split_k ? CUBLASLT_REDUCTION_SCHEME_MASK : CUBLASLT_REDUCTION_SCHEME_NONE));
  p.prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align[0]);
  p.prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align[1]);
  p.prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align[2]);
  p.prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align[3]);
  return p.ok;
}

}  // namespace

bool cublaslt_gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias,
                   double alpha, bool split_k, const at::Tensor* residual) {
  const auto dtype = out.scalar_type();
  if (!out.is_cuda() || (dtype != at::kHalf && dtype != at::kBFloat16)) return false;
  const bool batched = out.dim() == 3;
  const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  if (M == 0 || N == 0 || K == 0 || out.stride(-1) != 1 || out.stride(-2) < N) return false;
  if (bias.has_value() && bias->size(-1) > 1 && bias->stride(-1) != 1) return false;
  if (residual && (residual->stride(-1) != 1 || residual->stride(-2) < N)) return false;
  const auto lhs = as_operand(b), rhs = as_operand(a);
  if (!lhs || !rhs) return false;
  Batch batch;
  if (batched) {
    batch = Batch{out.size(0), a.stride(0), b.stride(0), out.stride(0), residual ? residual->stride(0) : 0,
                  bias.has_value() ? bias->stride(0) : 0};
    if (batch.count == 0 || batch.count > std::numeric_limits<int32_t>::max()) return false;
  }
  const int64_t bytes = out.element_size();

  c10::cuda::CUDAGuard guard(out.device());
  const int64_t ldc = residual ? residual->stride(-2) : 0;
  const uint32_t align[4] = {alignment(b.data_ptr(), batch.b * bytes), alignment(a.data_ptr(), batch.a * bytes),
                             residual ? alignment(residual->data_ptr(), batch.c * bytes)
                                      : alignment(out.data_ptr(), batch.out * bytes),
                             alignment(out.data_ptr(), batch.out * bytes)};
  if (bias.has_value() && alignment(bias->data_ptr(), batch.bias * bytes) < 16) return false;
  const size_t workspace_bytes = split_k ? kSplitKWorkspace : kWorkspace;
  const Key key{static_cast<int64_t>(out.device().index()),
                static_cast<int64_t>(dtype),
                N,
                K,
                static_cast<int64_t>(lhs->op),
                static_cast<int64_t>(rhs->op),
                lhs->ld,
                rhs->ld,
                out.stride(-2),
                ldc,
                batch.count,
                batch.a,
                batch.b,
                batch.out,
                batch.c,
                batch.bias,
                static_cast<int64_t>(align[0]),
                static_cast<int64_t>(align[1]),
                static_cast<int64_t>(align[2]),
                static_cast<int64_t>(align[3]),
                static_cast<int64_t>(bias.has_value()),
                static_cast<int64_t>(split_k),
                M};
  auto& slot = entries()[key];
  if (!slot) {
    auto entry = std::make_unique<Entry>();
    const cudaDataType_t type = dtype == at::kHalf ? CUDA_R_16F : CUDA_R_16BF;
    if (!describe(entry->problem, type, *lhs, *rhs, N, M, out.stride(-2), ldc, batch, bias.has_value(), split_k,
                  workspace_bytes, align)) {
      entries().erase(key);
      return false;
    }
    entry->choice_key = key;
    entry->choice_key.back() = row_bucket(M);
    slot = std::move(entry);
  }
  Entry& e = *slot;
  Problem& p = e.problem;
  if (bias.has_value()) {
    const void* bias_ptr = bias->data_ptr();
    p.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias_ptr);
    if (!p.ok) return false;
  }

  const auto handle = at::cuda::getCurrentCUDABlasLtHandle();
  const auto stream = at::cuda::getCurrentCUDAStream(out.device().index()).stream();
  const float scale = static_cast<float>(alpha), beta = residual ? 1.0f : 0.0f;
  // C: the residual (read, never written: timing runs below may repeat) or, with beta = 0, out.
  const void* c_ptr = residual ? residual->data_ptr() : out.data_ptr();
  const cublasLtMatrixLayout_t c_layout = residual ? p.c : p.d;
  // The workspace comes from the caching allocator on each call, and only for an algorithm that
  // needs one (most need none: an allocation on every call is host time). It is the whole
  // preference's size, which every row count of the choice's bucket fits.
  auto run = [&](const cublasLtMatmulAlgo_t& algo, bool needs_workspace) {
    const size_t bytes = needs_workspace ? workspace_bytes : 0;
    const auto workspace = bytes ? at::empty({static_cast<int64_t>(bytes)}, out.options().dtype(at::kByte))
                                 : at::Tensor();
    return cublasLtMatmul(handle, p.desc, &scale, b.data_ptr(), p.a, a.data_ptr(), p.b, &beta, c_ptr, c_layout,
                          out.data_ptr(), p.d, &algo, bytes ? workspace.data_ptr() : nullptr, bytes, stream);
  };
  if (!e.final) {
    const bool deterministic = at::globalContext().deterministicAlgorithms();
    const bool captured = capturing(stream);
    bool known = false;
    {
      std::lock_guard<std::mutex> lock(choices_mutex);
      const auto found = choices().find(e.choice_key);
      if (found != choices().end() && (found->second.measured || deterministic || captured)) {
        e.choice = found->second;
        known = true;
      }
    }
    if (!known) {
      cublasLtMatmulHeuristicResult_t results[kCandidates];
      int count = 0;
      if (cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.a, p.b, c_layout, p.d, p.preference, kCandidates,
                                         results, &count) != CUBLAS_STATUS_SUCCESS ||
          count == 0) {
        return false;
      }
      // one candidate: nothing to measure
      e.choice = Choice{results[0].algo, results[0].workspaceSize > 0, /*measured=*/count == 1};
      if (!deterministic && !captured && count > 1) {
        // Time each candidate on the real operands (out is overwritten by the final run below).
        cudaEvent_t start, stop;
        cudaEventCreate(&start);
        cudaEventCreate(&stop);
        float best = std::numeric_limits<float>::infinity();
        for (int i = 0; i < count; ++i) {
          const bool needs_workspace = results[i].workspaceSize > 0;
          if (run(results[i].algo, needs_workspace) != CUBLAS_STATUS_SUCCESS) continue;
          cudaEventRecord(start, stream);
          for (int r = 0; r < kTimedRuns; ++r) run(results[i].algo, needs_workspace);
          cudaEventRecord(stop, stream);
          float ms = 0.0f;
          if (cudaEventSynchronize(stop) == cudaSuccess && cudaEventElapsedTime(&ms, start, stop) == cudaSuccess &&
              ms < best) {
            best = ms;
            e.choice.algo = results[i].algo;
            e.choice.workspace = needs_workspace;
          }
        }
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
        e.choice.measured = true;
      }
      std::lock_guard<std::mutex> lock(choices_mutex);
      choices()[e.choice_key] = e.choice;
    }
    e.final = e.choice.measured || deterministic;
  }
  // Another row count of the bucket may need a workspace where the measured one needed none: the
  // call is refused before launching, so it is retried with one.
  return run(e.choice.algo, e.choice.workspace) == CUBLAS_STATUS_SUCCESS ||
         (!e.choice.workspace && run(e.choice.algo, true) == CUBLAS_STATUS_SUCCESS);
}

}  // namespace panther

#endif  // PANTHER_WITH_CUDA
