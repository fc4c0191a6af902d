// Sketched and low-rank linear layers as two GEMMs.
//
//   lowrank_linear:  y = (x A) B + b                       A [in, r], B [r, out]
//   sketched_linear: y = 1/(2L) sum_i (x S1_i U1_i + x U2_i S2_i) + b
//                      = (x A) B + b  with  A = [S1_1 .. S1_L  U2_1 .. U2_L]          [in, 2Lk]
//                                           B = [U1_1; ..; U1_L; S2_1; ..; S2_L]/(2L) [2Lk, out]
//
// Whatever L is, the layer is two GEMMs over x (never 4L products). The kernels are ATen
// calls, so the same code serves CPU (oneDNN/BLAS) and CUDA (cuBLAS), except the forward's
// two GEMMs and the backward's dx, which run through cuBLASLt on CUDA with an algorithm
// measured per shape (gemm, cublaslt_gemm.h). GEMMs of float16/bfloat16 accumulate in
// float32 everywhere.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <utility>

#include "checks.h"
#include "linear/cublaslt_gemm.h"

namespace panther {
namespace {

struct SketchShape {
  int64_t L, in, k, out;
};

SketchShape check_sketched(const at::Tensor& x, const at::Tensor& S1s, const at::Tensor& S2s,
                           const at::Tensor& U1s, const at::Tensor& U2s) {
  check_floating(x, "x");
  TORCH_CHECK(x.dim() >= 1, "x must have at least 1 dimension (..., in_features), got a scalar");
  check_dim(S1s, "S1s", 3);
  const int64_t L = S1s.size(0), in = S1s.size(1), k = S1s.size(2);
  check_dim(S2s, "S2s", 3);
  const int64_t out = S2s.size(2);
  TORCH_CHECK(x.size(-1) == in, "x has shape ", x.sizes(), ": expected last dim ", in,
              " (in_features, from S1s [L, in, k])");
  check_size(S2s, "S2s", 0, L, "num_terms, from S1s [L, in, k]");
  check_size(S2s, "S2s", 1, k, "low_rank, from S1s [L, in, k]");
  check_dim(U1s, "U1s", 3);
  check_size(U1s, "U1s", 0, L, "num_terms");
  check_size(U1s, "U1s", 1, k, "low_rank");
  check_size(U1s, "U1s", 2, out, "out_features, from S2s [L, k, out]");
  check_dim(U2s, "U2s", 3);
  check_size(U2s, "U2s", 0, L, "num_terms");
  check_size(U2s, "U2s", 1, in, "in_features");
  check_size(U2s, "U2s", 2, k, "low_rank");
  check_like(S1s, "S1s", x, "x");
  check_like(S2s, "S2s", x, "x");
  check_like(U1s, "U1s", x, "x");
  check_like(U2s, "U2s", x, "x");
  return {L, in, k, out};
}

void check_lowrank(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B) {
  check_floating(x, "x");
  TORCH_CHECK(x.dim() >= 1, "x must have at least 1 dimension (..., in_features), got a scalar");
  check_dim(A, "A", 2);
  check_dim(B, "B", 2);
  TORCH_CHECK(x.size(-1) == A.size(0), "x has shape ", x.sizes(), ": expected last dim ", A.size(0),
              " (in_features, from A [in, r])");
  check_size(B, "B", 0, A.size(1), "rank, from A [in, r]");
  check_like(A, "A", x, "x");
  check_like(B, "B", x, "x");
}

// A = [S1_1 .. S1_L  U2_1 .. U2_L] as one [in, 2Lk] matrix (a copy of the small factors).
at::Tensor stack_left(const at::Tensor& S1s, const at::Tensor& U2s) {
  const int64_t in = S1s.size(1);
  return at::cat({S1s.permute({1, 0, 2}), U2s.permute({1, 0, 2})}, 1).reshape({in, -1});
}

// B = [U1_1; ..; U1_L; S2_1; ..; S2_L] as one [2Lk, out] matrix; the 1/(2L) is applied
// by the GEMM (alpha) or to the small [M, 2Lk] intermediate, never to a big tensor.
at::Tensor stack_right(const at::Tensor& U1s, const at::Tensor& S2s) {
  return at::cat({U1s, S2s}, 0).reshape({-1, U1s.size(2)});
}

double term_scale(int64_t L) { return 1.0 / (2.0 * static_cast<double>(L)); }

std::vector<int64_t> out_shape(const at::Tensor& x, int64_t out) {
  auto shape = x.sizes().vec();
  shape.back() = out;
  return shape;
}

// alpha a b in one GEMM launch (cuBLAS/BLAS apply alpha; beta = 0 ignores out's contents).
at::Tensor scaled_mm(const at::Tensor& a, const at::Tensor& b, double alpha) {
  auto out = at::empty({a.size(0), b.size(1)}, a.options());
  return at::addmm_out(out, out, a, b, 0.0, alpha);
}

// alpha a b (+ bias): on CUDA through cuBLASLt with a measured algorithm (cublaslt_gemm.h),
// else (or where it does not apply) ATen. Both GEMMs of the layer are bound by memory: the
// expansion to a wide output by writing it, the projection x A by reading x, whose narrow
// [M, r] output has too few tiles for the GPU unless K is split (split_k).
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias, double alpha,
                bool split_k = false) {
  if (a.is_cuda()) {
    auto out = at::empty({a.size(0), b.size(1)}, a.options());
    if (cublaslt_gemm(out, a, b, bias, alpha, split_k)) return out;
  }
  if (bias.has_value()) return at::addmm(*bias, a, b, 1.0, alpha);
  return scaled_mm(a, b, alpha);
}

// y = alpha (x A) B + b, with x of any leading shape.
at::Tensor two_gemm(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                    const std::optional<at::Tensor>& bias, double alpha) {
  const auto x2 = x.reshape({-1, x.size(-1)});
  return gemm(gemm(x2, A, std::nullopt, 1.0, /*split_k=*/true), B, bias, alpha).view(out_shape(x, B.size(1)));
}

at::Tensor lowrank_linear(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                          const std::optional<at::Tensor>& bias) {
  check_lowrank(x, A, B);
  check_bias(bias, x, B.size(1));
  return two_gemm(x, A, B, bias, 1.0);
}

at::Tensor sketched_linear(const at::Tensor& x, const at::Tensor& S1s, const at::Tensor& S2s,
                           const at::Tensor& U1s, const at::Tensor& U2s,
                           const std::optional<at::Tensor>& bias) {
  const auto s = check_sketched(x, S1s, S2s, U1s, U2s);
  check_bias(bias, x, s.out);
  return two_gemm(x, stack_left(S1s, U2s), stack_right(U1s, S2s), bias, term_scale(s.L));
}

at::Tensor bias_grad(const at::Tensor& g2) { return g2.sum(0); }

// The weight gradient (alpha x2 P)^T g2 [r, out] and, when with_bias, the bias gradient
// 1^T g2 [out] (undefined otherwise). With a bias both come from one GEMM over
// t = [alpha x2 P | 1 .. 1]: g2, the backward's largest operand, is read once instead of a
// second time by a separate column sum (45 us of a 0.29 ms step at 8192 x 8192, H200).
// t's width is padded to a multiple of 8 (all ones) to keep its rows 16-byte aligned; the
// bias gradient is copied out because an op's outputs must not alias.
std::pair<at::Tensor, at::Tensor> weight_and_bias_grads(const at::Tensor& x2, const at::Tensor& P,
                                                        const at::Tensor& g2, double alpha, bool with_bias) {
  if (!with_bias) return {at::mm(scaled_mm(x2, P, alpha).t(), g2), at::Tensor()};
  const int64_t r = P.size(1);
  auto t = at::empty({x2.size(0), (r / 8 + 1) * 8}, x2.options());
  auto head = t.narrow(1, 0, r);
  at::addmm_out(head, head, x2, P, 0.0, alpha);
  t.narrow(1, r, t.size(1) - r).fill_(1);
  const auto product = at::mm(t.t(), g2);
  return {product.narrow(0, 0, r), product.select(0, r).clone()};
}

// Gradients in input order; those not asked for in output_mask are None.
using OptTensor = std::optional<at::Tensor>;
using Grads = std::tuple<OptTensor, OptTensor, OptTensor, OptTensor>;

OptTensor defined_or_none(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

Grads as_grads(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, const at::Tensor& d) {
  return {defined_or_none(a), defined_or_none(b), defined_or_none(c), defined_or_none(d)};
}

// Gradients of y = (x A) B + b.
Grads lowrank_linear_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
    std::array<bool, 4> mask) {
  check_lowrank(x, A, B);
  check_like(grad, "grad", x, "x");
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(out_shape(x, B.size(1))), "grad has shape ",
              grad.sizes(), ": expected the output shape ", at::IntArrayRef(out_shape(x, B.size(1))));
  const auto x2 = x.reshape({-1, x.size(-1)});
  const auto g2 = grad.reshape({-1, B.size(1)});
  at::Tensor dx, dA, dB, db;
  if (mask[0] || mask[1]) {
    const auto gh = at::mm(g2, B.t());  // [M, r]
    if (mask[0]) dx = gemm(gh, A.t(), std::nullopt, 1.0).view(x.sizes());
    if (mask[1]) dA = at::mm(x2.t(), gh);
  }
  if (mask[2]) {
    std::tie(dB, db) = weight_and_bias_grads(x2, A, g2, 1.0, mask[3]);
  } else if (mask[3]) {
    db = bias_grad(g2);
  }
  return as_grads(dx, dA, dB, db);
}

// Gradients of sketched_linear for x, S1s, S2s and bias (U1s, U2s are fixed).
//   g' = g/(2L);  dS1_i = x^T (g' U1_i^T);  dS2_i = (x U2_i)^T g';  dx = (g' B^T) A^T
Grads sketched_linear_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& S1s, const at::Tensor& S2s,
    const at::Tensor& U1s, const at::Tensor& U2s, std::array<bool, 4> mask) {
  const auto s = check_sketched(x, S1s, S2s, U1s, U2s);
  check_like(grad, "grad", x, "x");
  const auto expected = out_shape(x, s.out);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(expected), "grad has shape ", grad.sizes(),
              ": expected the output shape ", at::IntArrayRef(expected));
  const int64_t Lk = s.L * s.k;
  const auto x2 = x.reshape({-1, s.in});
  const auto g2 = grad.reshape({-1, s.out});
  const double alpha = term_scale(s.L);
  const auto B = stack_right(U1s, S2s);  // [2Lk, out]
  at::Tensor dx, dS1, dS2, db;
  if (mask[0]) {
    const auto gh = scaled_mm(g2, B.t(), alpha);  // [M, 2Lk]
    dx = gemm(gh, stack_left(S1s, U2s).t(), std::nullopt, 1.0).view(x.sizes());
    if (mask[1]) {
      dS1 = at::mm(x2.t(), gh.narrow(1, 0, Lk)).view({s.in, s.L, s.k}).permute({1, 0, 2}).contiguous();
    }
  } else if (mask[1]) {
    const auto gh1 = scaled_mm(g2, B.narrow(0, 0, Lk).t(), alpha);  // [M, Lk]
    dS1 = at::mm(x2.t(), gh1).view({s.in, s.L, s.k}).permute({1, 0, 2}).contiguous();
  }
  if (mask[2]) {
    // (x U2)^T g / (2L): the scale goes on the small [M, Lk] product, not the [Lk, out] result.
    const auto u2 = U2s.permute({1, 0, 2}).reshape({s.in, Lk});
    std::tie(dS2, db) = weight_and_bias_grads(x2, u2, g2, alpha, mask[3]);
    dS2 = dS2.view({s.L, s.k, s.out});
  } else if (mask[3]) {
    db = bias_grad(g2);
  }
  return as_grads(dx, dS1, dS2, db);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(panther, m) {
  m.def("lowrank_linear(Tensor x, Tensor A, Tensor B, Tensor? bias=None) -> Tensor");
  m.def(
      "lowrank_linear_backward(Tensor grad, Tensor x, Tensor A, Tensor B, bool[4] output_mask)"
      " -> (Tensor?, Tensor?, Tensor?, Tensor?)");
  m.def(
      "sketched_linear(Tensor x, Tensor S1s, Tensor S2s, Tensor U1s, Tensor U2s, Tensor? bias=None)"
      " -> Tensor");
  m.def(
      "sketched_linear_backward(Tensor grad, Tensor x, Tensor S1s, Tensor S2s, Tensor U1s,"
      " Tensor U2s, bool[4] output_mask) -> (Tensor?, Tensor?, Tensor?, Tensor?)");
}

TORCH_LIBRARY_IMPL(panther, CPU, m) {
  m.impl("lowrank_linear", &lowrank_linear);
  m.impl("lowrank_linear_backward", &lowrank_linear_backward);
  m.impl("sketched_linear", &sketched_linear);
  m.impl("sketched_linear_backward", &sketched_linear_backward);
}

#ifdef PANTHER_WITH_CUDA
// Same code on CUDA: the GEMMs run in cuBLAS (and cuBLASLt, see gemm), within
// the factors of the memory floor recorded in BENCHMARKS.md.
TORCH_LIBRARY_IMPL(panther, CUDA, m) {
  m.impl("lowrank_linear", &lowrank_linear);
  m.impl("lowrank_linear_backward", &lowrank_linear_backward);
  m.impl("sketched_linear", &sketched_linear);
  m.impl("sketched_linear_backward", &sketched_linear_backward);
}
#endif

}  // namespace panther
