// Argument checks shared by panther's C++ kernels. Messages name the argument and the
// expected value, in the same words as the Python fake implementations.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

namespace panther {

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, name, " must be a ", dim, "-D tensor, got shape ", t.sizes());
}

inline void check_size(const at::Tensor& t, const char* name, int64_t axis, int64_t expected,
                       const char* what) {
  TORCH_CHECK(t.size(axis) == expected, name, " has shape ", t.sizes(), ": expected size ", expected,
              " (", what, ") at dim ", axis);
}

inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(),
              " but ", ref_name, " has dtype ", ref.scalar_type(), ": expected the same dtype");
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device(), ": expected the same device");
}

// An optional bias: 1-D [out] in ref's dtype and on its device (ref_name: how messages call ref).
inline void check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& ref, int64_t out,
                       const char* ref_name = "x") {
  if (!bias.has_value()) return;
  check_dim(*bias, "bias", 1);
  check_size(*bias, "bias", 0, out, "out_features");
  check_like(*bias, "bias", ref, ref_name);
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor, got ",
              t.scalar_type());
}

}  // namespace panther
