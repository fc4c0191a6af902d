// Autograd for sketched_conv2d, in C++ (see autograd.h): a training step of SKConv2d stays
// in the dispatcher. The formula is sketched_conv2d_backward (sketched_conv2d.cpp).

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "autograd.h"

namespace panther {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

using ConvForward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                               at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, c10::string_view);
using ConvBackward = std::tuple<OptTensor, OptTensor, OptTensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
    at::IntArrayRef, int64_t, c10::string_view, std::array<bool, 3>);

// Inputs: x, S1s, U1s, bias, stride, padding, dilation, groups, padding_mode. U1s is a fixed
// sketch: never differentiated.
class SketchedConv2dFunction : public torch::autograd::Function<SketchedConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& S1s,
                            const at::Tensor& U1s, const OptTensor& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            c10::string_view padding_mode) {
    static const auto op = find_op<ConvForward>("panther::sketched_conv2d");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({x, S1s, U1s});
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["padding_mode"] = std::string(padding_mode);
    return op.call(x, S1s, U1s, bias, stride, padding, dilation, groups, padding_mode);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<ConvBackward>("panther::sketched_conv2d_backward");
    const auto saved = ctx->get_saved_variables();
    auto& data = ctx->saved_data;
    const bool has_bias = data["has_bias"].toBool();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   has_bias && ctx->needs_input_grad(3)};
    const auto stride = data["stride"].toIntVector();
    const auto padding = data["padding"].toIntVector();
    const auto dilation = data["dilation"].toIntVector();
    const auto padding_mode = data["padding_mode"].toStringRef();
    const auto [dx, dS1s, dbias] = op.call(grads[0], saved[0], saved[1], saved[2], stride, padding, dilation,
                                           data["groups"].toInt(), padding_mode, mask);
    return {or_undefined(dx), or_undefined(dS1s), at::Tensor(), or_undefined(dbias),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor sketched_conv2d_autograd(const at::Tensor& x, const at::Tensor& S1s, const at::Tensor& U1s,
                                    const OptTensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t groups, c10::string_view padding_mode) {
  return SketchedConv2dFunction::apply(x, S1s, U1s, bias, stride, padding, dilation, groups, padding_mode);
}

}  // namespace

TORCH_LIBRARY_IMPL(panther, Autograd, m) { m.impl("sketched_conv2d", &sketched_conv2d_autograd); }

}  // namespace panther
