// Pieces shared by the C++ autograd kernels of panther's ops (csrc/*/autograd.cpp).
//
// Each op's autograd is a torch::autograd::Function whose forward redispatches to the op
// below autograd and whose backward calls the op's registered *_backward op through the
// dispatcher: eager training never enters Python, and torch.compile / torch.export trace the
// same two ops (their fake kernels) into forward and backward graphs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>

#include <initializer_list>

#include <optional>

namespace panther {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Whether autograd must record a call: grad mode on and some input requiring grad. Where it
// need not, an op's autograd kernel calls the op directly: building a torch::autograd::Function
// node costs host time on every inference call.
inline bool needs_grad(std::initializer_list<at::Tensor> tensors, const std::optional<at::Tensor>& extra) {
  if (!at::GradMode::is_enabled()) return false;
  for (const auto& t : tensors) {
    if (t.requires_grad()) return true;
  }
  return extra.has_value() && extra->requires_grad();
}

// An optional gradient as autograd wants it: undefined when not computed.
inline at::Tensor or_undefined(const std::optional<at::Tensor>& t) { return t.value_or(at::Tensor()); }

}  // namespace panther
