// batched_expand: the expansions of G low-rank linears that share one projection, as one GEMM.
//
//   h [..., G r] (the shared x [A_1 .. A_G]), B [G, r, N], bias [G, N] or None
//   out[g] = h[..., g r : (g + 1) r] B[g] + bias[g]        out [G, ..., N]
//
// Attention's q/k/v projections read one input: once sketched, x A_i is one GEMM (the
// compile backend's horizontal fusion) and the three expansions are the same shape. Run as
// three GEMMs they cost three launches, each also a Python call in Inductor's generated code
// (the host, not the GPU, bounds a 24-layer model's forward at 8192 tokens on an H200). Here
// they are one strided batched cuBLASLt GEMM whose epilogue adds each member's bias row;
// elsewhere ATen's baddbmm on the same strided view. The biases come stacked ([G, N]): the
// compile backend stacks the members' bias parameters once, not on every call.
//
// Operands share a dtype and a device. Gradients for h, B and bias, with ATen ops.

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "autograd.h"
#include "checks.h"
#include "linear/cublaslt_gemm.h"

namespace panther {
namespace {

void check_batched_expand(const at::Tensor& h, const at::Tensor& B, const std::optional<at::Tensor>& bias) {
  check_floating(h, "h");
  TORCH_CHECK(h.dim() >= 1, "h must have at least 1 dimension (..., G * rank), got a scalar");
  check_dim(B, "B", 3);
  const int64_t G = B.size(0), r = B.size(1), N = B.size(2);
  TORCH_CHECK(G >= 1, "B has shape ", B.sizes(), ": expected at least one member (G >= 1) at dim 0");
  TORCH_CHECK(h.size(-1) == G * r, "h has shape ", h.sizes(), ": expected last dim ", G * r,
              " (G * rank, from B [G, r, N])");
  check_like(B, "B", h, "h");
  if (bias.has_value()) {
    check_dim(*bias, "bias", 2);
    check_size(*bias, "bias", 0, G, "G, from B [G, r, N]");
    check_size(*bias, "bias", 1, N, "out_features, from B [G, r, N]");
    check_like(*bias, "bias", h, "h");
  }
}

int64_t rows(const at::Tensor& h) {
  int64_t M = 1;
  for (int64_t d = 0; d + 1 < h.dim(); ++d) M *= h.size(d);
  return M;
}

// h's M rows as G strided matrices [G, M, r] (a view: member g's columns of every row).
at::Tensor member_view(const at::Tensor& h, int64_t G) {
  const int64_t M = rows(h);
  return h.reshape({M, h.size(-1)}).view({M, G, h.size(-1) / G}).transpose(0, 1);
}

std::vector<int64_t> out_shape(const at::Tensor& h, int64_t G, int64_t N) {
  std::vector<int64_t> shape{G};
  for (int64_t d = 0; d + 1 < h.dim(); ++d) shape.push_back(h.size(d));
  shape.push_back(N);
  return shape;
}

at::Tensor batched_expand(const at::Tensor& h, const at::Tensor& B, const std::optional<at::Tensor>& bias) {
  check_batched_expand(h, B, bias);
  const int64_t G = B.size(0), N = B.size(2);
  const auto h3 = member_view(h, G);
  if (h.is_cuda()) {
    auto out = at::empty({G, h3.size(1), N}, h.options());
    if (cublaslt_gemm(out, h3, B, bias, 1.0)) return out.view(out_shape(h, G, N));
  }
  const auto out = bias.has_value() ? at::baddbmm(bias->unsqueeze(1), h3, B) : at::bmm(h3, B);
  return out.view(out_shape(h, G, N));
}

// Inputs: h, B, bias; every one differentiable.
class BatchedExpandFunction : public torch::autograd::Function<BatchedExpandFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h, const at::Tensor& B,
                            const std::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({h, B});
    ctx->saved_data["has_bias"] = bias.has_value();
    return op().call(h, B, bias);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &h = saved[0], &B = saved[1];
    const int64_t G = B.size(0), N = B.size(2);
    const auto g3 = grads[0].reshape({G, rows(h), N});
    torch::autograd::variable_list out(3);
    if (ctx->needs_input_grad(0)) out[0] = at::bmm(g3, B.transpose(1, 2)).transpose(0, 1).reshape(h.sizes());
    if (ctx->needs_input_grad(1)) out[1] = at::bmm(member_view(h, G).transpose(1, 2), g3);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) out[2] = g3.sum(1);
    return out;
  }

  static c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>
  op() {
    static const auto handle = find_op<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                  const std::optional<at::Tensor>&)>("panther::batched_expand");
    return handle;
  }
};

at::Tensor batched_expand_autograd(const at::Tensor& h, const at::Tensor& B, const std::optional<at::Tensor>& bias) {
  if (!needs_grad({h, B}, bias)) {  // inference: no autograd node, straight to the kernel
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return BatchedExpandFunction::op().call(h, B, bias);
  }
  return BatchedExpandFunction::apply(h, B, bias);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(panther, m) { m.def("batched_expand(Tensor h, Tensor B, Tensor? bias=None) -> Tensor"); }

TORCH_LIBRARY_IMPL(panther, CPU, m) { m.impl("batched_expand", &batched_expand); }

#ifdef PANTHER_WITH_CUDA
TORCH_LIBRARY_IMPL(panther, CUDA, m) { m.impl("batched_expand", &batched_expand); }
#endif

TORCH_LIBRARY_IMPL(panther, Autograd, m) { m.impl("batched_expand", &batched_expand_autograd); }

}  // namespace panther
