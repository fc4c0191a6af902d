// Autograd for sketched_linear and lowrank_linear, in C++ (see autograd.h).
//
// A training step through a Python autograd formula (torch.library.register_autograd)
// paid for a Python Function, its setup_context and its backward on every call: on an
// H200 host a SKLinear forward+backward spent ~0.55 ms of CPU time against ~0.05-0.29 ms
// of GPU time (BENCHMARKS.md, fwd+bwd rows), so the layer ran at the speed of the
// interpreter. The formulas are the backward ops (lowrank_linear.cpp).

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "autograd.h"

namespace panther {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;
using Grads = std::tuple<OptTensor, OptTensor, OptTensor, OptTensor>;

using SketchedForward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, const OptTensor&);
using SketchedBackward = Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, std::array<bool, 4>);
using LowrankForward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&);
using LowrankBackward = Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              std::array<bool, 4>);

// The backward ops' output_mask: the gradients of x and the two learned factors (inputs 0-2),
// and of the bias (input bias_input) when the call had one.
std::array<bool, 4> grad_mask(AutogradContext* ctx, size_t bias_input) {
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2),
          ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(bias_input)};
}

// Inputs: x, S1s, S2s, U1s, U2s, bias. U1s and U2s are fixed sketches: never differentiated.
class SketchedLinearFunction : public torch::autograd::Function<SketchedLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& S1s,
                            const at::Tensor& S2s, const at::Tensor& U1s, const at::Tensor& U2s,
                            const OptTensor& bias) {
    static const auto op = find_op<SketchedForward>("panther::sketched_linear");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({x, S1s, S2s, U1s, U2s});
    ctx->saved_data["has_bias"] = bias.has_value();
    return op.call(x, S1s, S2s, U1s, U2s, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<SketchedBackward>("panther::sketched_linear_backward");
    const auto saved = ctx->get_saved_variables();
    const auto [dx, dS1s, dS2s, dbias] =
        op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], grad_mask(ctx, 5));
    return {or_undefined(dx), or_undefined(dS1s), or_undefined(dS2s), at::Tensor(), at::Tensor(),
            or_undefined(dbias)};
  }
};

// Inputs: x, A, B, bias; every one differentiable.
class LowrankLinearFunction : public torch::autograd::Function<LowrankLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                            const OptTensor& bias) {
    static const auto op = find_op<LowrankForward>("panther::lowrank_linear");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({x, A, B});
    ctx->saved_data["has_bias"] = bias.has_value();
    return op.call(x, A, B, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<LowrankBackward>("panther::lowrank_linear_backward");
    const auto saved = ctx->get_saved_variables();
    const auto [dx, dA, dB, dbias] = op.call(grads[0], saved[0], saved[1], saved[2], grad_mask(ctx, 3));
    return {or_undefined(dx), or_undefined(dA), or_undefined(dB), or_undefined(dbias)};
  }
};

at::Tensor sketched_linear_autograd(const at::Tensor& x, const at::Tensor& S1s, const at::Tensor& S2s,
                                    const at::Tensor& U1s, const at::Tensor& U2s, const OptTensor& bias) {
  return SketchedLinearFunction::apply(x, S1s, S2s, U1s, U2s, bias);
}

at::Tensor lowrank_linear_autograd(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                                   const OptTensor& bias) {
  return LowrankLinearFunction::apply(x, A, B, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(panther, Autograd, m) {
  m.impl("sketched_linear", &sketched_linear_autograd);
  m.impl("lowrank_linear", &lowrank_linear_autograd);
}

}  // namespace panther
