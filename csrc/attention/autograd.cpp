// Autograd for favor_attention, in C++ (see autograd.h): a training step of the C++ FAVOR+
// op stays in the dispatcher. The formula is favor_attention_backward (favor_attention.cpp).

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "autograd.h"

namespace panther {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

using FavorForward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                c10::string_view, bool, const OptTensor&, int64_t);
using FavorBackward = std::tuple<OptTensor, OptTensor, OptTensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
    bool, const OptTensor&, int64_t, std::array<bool, 3>);

// Inputs: q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size. Gradients for
// q, k and v; the projection is a fixed random matrix.
class FavorAttentionFunction : public torch::autograd::Function<FavorAttentionFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& projection, c10::string_view kernel_fn, bool causal,
                            const OptTensor& key_padding_mask, int64_t chunk_size) {
    static const auto op = find_op<FavorForward>("panther::favor_attention");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    // An absent mask is saved as an undefined tensor and handed back as "no mask".
    ctx->save_for_backward({q, k, v, projection, key_padding_mask.value_or(at::Tensor())});
    ctx->saved_data["kernel_fn"] = std::string(kernel_fn);
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["chunk_size"] = chunk_size;
    return op.call(q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<FavorBackward>("panther::favor_attention_backward");
    const auto saved = ctx->get_saved_variables();
    auto& data = ctx->saved_data;
    const OptTensor mask_tensor = saved[4].defined() ? OptTensor(saved[4]) : std::nullopt;
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    const auto [dq, dk, dv] = op.call(grads[0], saved[0], saved[1], saved[2], saved[3],
                                      data["kernel_fn"].toStringRef(), data["causal"].toBool(), mask_tensor,
                                      data["chunk_size"].toInt(), mask);
    return {or_undefined(dq), or_undefined(dk), or_undefined(dv), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor favor_attention_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& projection, c10::string_view kernel_fn, bool causal,
                                    const OptTensor& key_padding_mask, int64_t chunk_size) {
  return FavorAttentionFunction::apply(q, k, v, projection, kernel_fn, causal, key_padding_mask, chunk_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(panther, Autograd, m) { m.impl("favor_attention", &favor_attention_autograd); }

}  // namespace panther
