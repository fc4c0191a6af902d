// Pieces shared by the C++ autograd kernels of panther's ops (csrc/*/autograd.cpp).
//
// Each op's autograd is a torch::autograd::Function whose forward redispatches to the op
// below autograd and whose backward calls the op's registered *_backward op through the
// dispatcher: eager training never enters Python, and torch.compile / torch.export trace the
// same two ops (their fake kernels) into forward and backward graphs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace panther {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// An optional gradient as autograd wants it: undefined when not computed.
inline at::Tensor or_undefined(const std::optional<at::Tensor>& t) { return t.value_or(at::Tensor()); }

}  // namespace panther
