// Fast Walsh–Hadamard transform along the last dimension.
//
//   fwht(x) = x H_n / sqrt(n)     for x [..., n], n a power of two, H_n the Sylvester Hadamard
//                                 matrix (H_1 = [1], H_2k = [[H_k, H_k], [H_k, -H_k]]).
//
// With the 1/sqrt(n) scaling the transform is orthonormal and symmetric, hence its own
// inverse and its own adjoint: the backward of fwht is fwht of the gradient.
// n log2(n) additions per row instead of the n^2 multiply-adds of a dense product.
//
// CPU: every row is transformed in place in a private copy by the iterative butterfly
// (stage h pairs entries j and j + h inside blocks of 2h); rows run in parallel. The inner
// loop runs over h contiguous entries, so the compiler vectorises it once h >= the vector width.
// CUDA (fallback when Triton is not used): log2(n) ATen passes over the tensor.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"

namespace panther {
namespace {

void check_fwht(const at::Tensor& x) {
  check_floating(x, "x");
  TORCH_CHECK(x.dim() >= 1, "x must have at least 1 dimension (..., n), got a scalar");
  const int64_t n = x.size(-1);
  TORCH_CHECK(n >= 1 && (n & (n - 1)) == 0, "x has shape ", x.sizes(),
              ": expected the last dim to be a power of two (pad with zeros to the next power of two, "
              "as panther.sketch.srht does), got ", n);
}

template <typename T>
void fwht_rows(T* data, int64_t rows, int64_t n) {
  const T scale = T(1) / std::sqrt(static_cast<T>(n));
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* x = data + r * n;
      for (int64_t h = 1; h < n; h <<= 1) {
        for (int64_t b = 0; b < n; b += 2 * h) {
          T* lo = x + b;
          T* hi = x + b + h;
          for (int64_t j = 0; j < h; ++j) {
            const T u = lo[j], v = hi[j];
            lo[j] = u + v;
            hi[j] = u - v;
          }
        }
      }
      for (int64_t j = 0; j < n; ++j) x[j] *= scale;
    }
  });
}

at::Tensor fwht_cpu(const at::Tensor& x) {
  check_fwht(x);
  const bool low = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  // A fresh contiguous buffer (never aliases x), in float32 for half types.
  auto y = low ? x.to(at::kFloat).contiguous() : x.contiguous().clone();
  if (y.numel() > 0) {
    const int64_t n = x.size(-1);
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fwht", [&] {
      fwht_rows<scalar_t>(y.mutable_data_ptr<scalar_t>(), y.numel() / n, n);
    });
  }
  return low ? y.to(x.scalar_type()) : y;
}

#ifdef PANTHER_WITH_CUDA
at::Tensor fwht_aten(const at::Tensor& x) {
  check_fwht(x);
  const int64_t n = x.size(-1);
  const bool low = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  auto y = (low ? x.to(at::kFloat) : x).reshape({-1, n});
  const int64_t rows = y.size(0);
  for (int64_t h = 1; h < n; h <<= 1) {
    auto v = y.view({rows, n / (2 * h), 2, h});
    auto a = v.select(2, 0), b = v.select(2, 1);
    y = at::stack({a + b, a - b}, 2).view({rows, n});
  }
  y = y.mul(1.0 / std::sqrt(static_cast<double>(n))).view(x.sizes());
  return low ? y.to(x.scalar_type()) : y.contiguous();
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(panther, m) { m.def("fwht(Tensor x) -> Tensor"); }

TORCH_LIBRARY_IMPL(panther, CPU, m) { m.impl("fwht", &fwht_cpu); }

#ifdef PANTHER_WITH_CUDA
TORCH_LIBRARY_IMPL(panther, CUDA, m) { m.impl("fwht", &fwht_aten); }
#endif

}  // namespace panther
