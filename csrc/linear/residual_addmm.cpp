// residual_addmm: y = residual + h B + bias, the expansion of a low-rank linear whose output feeds
// a residual connection (x + o(a) in a transformer block), as one GEMM.
//
//   h [..., r], B [r, out], bias [out] or None, residual [..., out] (h's leading dims)
//
// Unfused, the expansion writes its [M, out] output and the next kernel reads it back with the
// residual to write the sum: the output crosses memory three times. Here cuBLASLt reads the
// residual as the GEMM's C operand (beta = 1) and adds it, with the bias, in its float32
// epilogue before the one rounding to the output dtype (cublaslt_gemm.h). Elsewhere (CPU, or a
// layout cuBLASLt cannot read in place) it is ATen: residual + bias, then addmm_ into it.
//
// Operands share a dtype and a device (no autocast kernel: the compile backend fuses only adds
// whose operands and result already share one). Gradients for all four operands, with ATen ops
// in the backward (torch.compile traces them as they are).

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

using OptTensor = std::optional<at::Tensor>;

void check_residual_addmm(const at::Tensor& residual, const at::Tensor& h, const at::Tensor& B,
                          const OptTensor& bias) {
  check_floating(h, "h");
  TORCH_CHECK(h.dim() >= 1, "h must have at least 1 dimension (..., rank), got a scalar");
  check_dim(B, "B", 2);
  TORCH_CHECK(h.size(-1) == B.size(0), "h has shape ", h.sizes(), ": expected last dim ", B.size(0),
              " (rank, from B [r, out])");
  check_like(B, "B", h, "h");
  auto expected = h.sizes().vec();
  expected.back() = B.size(1);
  TORCH_CHECK(residual.sizes() == at::IntArrayRef(expected), "residual has shape ", residual.sizes(),
              ": expected ", at::IntArrayRef(expected), " (h's leading dims, out_features from B [r, out])");
  check_like(residual, "residual", h, "h");
  check_bias(bias, h, B.size(1), "h");
}

at::Tensor residual_addmm(const at::Tensor& residual, const at::Tensor& h, const at::Tensor& B,
                          const OptTensor& bias) {
  check_residual_addmm(residual, h, B, bias);
  const int64_t N = B.size(1);
  const auto h2 = h.reshape({-1, h.size(-1)});
  const auto r2 = residual.reshape({-1, N});
  if (h.is_cuda()) {
    auto out = at::empty({h2.size(0), N}, h.options());
    if (cublaslt_gemm(out, h2, B, bias, 1.0, /*split_k=*/false, &r2)) return out.view(residual.sizes());
  }
  auto out = bias.has_value() ? at::add(r2, *bias) : r2.clone(at::MemoryFormat::Contiguous);
  out.addmm_(h2, B);
  return out.view(residual.sizes());
}

// Inputs: residual, h, B, bias; every one differentiable.
class ResidualAddmmFunction : public torch::autograd::Function<ResidualAddmmFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& residual, const at::Tensor& h,
                            const at::Tensor& B, const OptTensor& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({h, B});
    ctx->saved_data["has_bias"] = bias.has_value();
    return op().call(residual, h, B, bias);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &h = saved[0], &B = saved[1];
    const auto g2 = grads[0].reshape({-1, B.size(1)});
    at::Tensor dh, dB, dbias;
    if (ctx->needs_input_grad(1)) dh = at::mm(g2, B.t()).view(h.sizes());
    if (ctx->needs_input_grad(2)) dB = at::mm(h.reshape({-1, h.size(-1)}).t(), g2);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(3)) dbias = g2.sum(0);
    return {ctx->needs_input_grad(0) ? grads[0] : at::Tensor(), dh, dB, dbias};
  }

  static c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const OptTensor&)>
  op() {
    static const auto handle = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                  const OptTensor&)>("panther::residual_addmm");
    return handle;
  }
};

at::Tensor residual_addmm_autograd(const at::Tensor& residual, const at::Tensor& h, const at::Tensor& B,
                                   const OptTensor& bias) {
  if (!needs_grad({residual, h, B}, bias)) {  // inference: no autograd node, straight to the kernel
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ResidualAddmmFunction::op().call(residual, h, B, bias);
  }
  return ResidualAddmmFunction::apply(residual, h, B, bias);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(panther, m) {
  m.def("residual_addmm(Tensor residual, Tensor h, Tensor B, Tensor? bias=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(panther, CPU, m) { m.impl("residual_addmm", &residual_addmm); }

#ifdef PANTHER_WITH_CUDA
TORCH_LIBRARY_IMPL(panther, CUDA, m) { m.impl("residual_addmm", &residual_addmm); }
#endif

TORCH_LIBRARY_IMPL(panther, Autograd, m) { m.impl("residual_addmm", &residual_addmm_autograd); }

}  // namespace panther
