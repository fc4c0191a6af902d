// Sketched 2-D convolution (SKConv2d): a convolution with 2Lk output channels per group,
// followed by a channel mix with fixed random sketches.
//
//   t   = conv2d(pad(x), S1s, stride, dilation, groups)        S1s [G*2Lk, C_in/G, kh, kw]
//   y_o = 1/(2L) * sum_{j,r} U1s[j, r, o] * t[g(o)*2Lk + j*k + r] + b_o
//
// with U1s [2L, k, C_out] and g(o) the group of output channel o. For groups=1 this is the
// earlier Panther's layer; with groups each group is its own sketched convolution of rank
// 2Lk, so the grouped structure of a dense grouped convolution is kept. The effective
// dense kernel is W[o] = 1/(2L) sum_i U1s_flat[i, o] S1s[g(o)*2Lk + i].
//
// Padding is explicit (left, right, top, bottom), so "same" is exact for even kernels;
// non-zero padding modes (reflect, replicate, circular) gather x through an index map, and
// their backward scatters through the same map, so forward and backward agree by
// construction. When 2Lk is not much smaller than C_out the two-step form costs more than
// the dense convolution, and the kernel convolves with the effective kernel instead.
//
// ATen-only code: the same kernels serve CPU (oneDNN) and CUDA (cuDNN).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

#include "checks.h"

namespace panther {
namespace {

struct ConvShape {
  int64_t B, C_in, H, W, C_out, two_L, k, groups, kh, kw, H_out, W_out;
};

int64_t out_size(int64_t in, int64_t pad_a, int64_t pad_b, int64_t dil, int64_t kernel, int64_t stride) {
  const int64_t span = in + pad_a + pad_b - dil * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

ConvShape check_conv(const at::Tensor& x, const at::Tensor& S1s, const at::Tensor& U1s,
                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation, int64_t groups, const std::string& padding_mode) {
  check_floating(x, "x");
  check_dim(x, "x", 4);
  check_dim(S1s, "S1s", 4);
  check_dim(U1s, "U1s", 3);
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1,
              "stride must be 2 positive ints, got ", stride);
  TORCH_CHECK(dilation.size() == 2 && dilation[0] >= 1 && dilation[1] >= 1,
              "dilation must be 2 positive ints, got ", dilation);
  TORCH_CHECK(padding.size() == 4 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0,
              "padding must be 4 non-negative ints (left, right, top, bottom), got ", padding);
  TORCH_CHECK(groups >= 1, "groups must be a positive int, got ", groups);
  TORCH_CHECK(padding_mode == "zeros" || padding_mode == "reflect" || padding_mode == "replicate" ||
                  padding_mode == "circular",
              "padding_mode must be one of ['circular', 'reflect', 'replicate', 'zeros'], got '", padding_mode, "'");
  const int64_t two_L = U1s.size(0), k = U1s.size(1), C_out = U1s.size(2);
  const int64_t C_in = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(C_in % groups == 0, "x has ", C_in, " channels: expected a multiple of groups=", groups);
  TORCH_CHECK(C_out % groups == 0, "U1s has shape ", U1s.sizes(), ": expected out_channels (dim 2) to be a multiple of groups=", groups);
  check_size(S1s, "S1s", 0, groups * two_L * k, "groups * 2L * k, from U1s [2L, k, C_out]");
  check_size(S1s, "S1s", 1, C_in / groups, "in_channels / groups, from x [B, C_in, H, W]");
  check_like(S1s, "S1s", x, "x");
  check_like(U1s, "U1s", x, "x");
  if (bias.has_value()) {
    check_dim(*bias, "bias", 1);
    check_size(*bias, "bias", 0, C_out, "out_channels");
    check_like(*bias, "bias", x, "x");
  }
  if (padding_mode == "reflect") {
    TORCH_CHECK(padding[0] < W && padding[1] < W && padding[2] < H && padding[3] < H,
                "padding ", padding, " is too large for padding_mode='reflect' on input of size ", H, "x", W,
                ": expected each pad < the input size of its dimension");
  } else if (padding_mode == "circular") {
    TORCH_CHECK(padding[0] <= W && padding[1] <= W && padding[2] <= H && padding[3] <= H,
                "padding ", padding, " is too large for padding_mode='circular' on input of size ", H, "x", W,
                ": expected each pad <= the input size of its dimension");
  }
  const int64_t kh = S1s.size(2), kw = S1s.size(3);
  const int64_t H_out = out_size(H, padding[2], padding[3], dilation[0], kh, stride[0]);
  const int64_t W_out = out_size(W, padding[0], padding[1], dilation[1], kw, stride[1]);
  TORCH_CHECK(H_out >= 1 && W_out >= 1, "x has spatial size ", H, "x", W, ": too small for kernel ", kh, "x", kw,
              " with dilation ", dilation, " and padding ", padding, " (output would be ", H_out, "x", W_out, ")");
  return {x.size(0), C_in, H, W, C_out, two_L, k, groups, kh, kw, H_out, W_out};
}

// Outputs and input gradients are channels_last exactly when x is (and not also contiguous),
// whatever format the convolution backend picks; the fake kernels use the same rule.
at::MemoryFormat layout_of(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous() ? at::MemoryFormat::ChannelsLast
                                                                                : at::MemoryFormat::Contiguous;
}

bool is_zeros(const std::string& mode) { return mode == "zeros"; }

// Source index along one padded dimension for the non-zero padding modes.
at::Tensor pad_index(int64_t size, int64_t before, int64_t after, const std::string& mode, const at::Device& device) {
  auto i = at::arange(-before, size + after, at::TensorOptions().dtype(at::kLong).device(device));
  if (mode == "replicate") return i.clamp(0, size - 1);
  if (mode == "circular") return i.remainder(size);
  // reflect (without repeating the edge): -1 -> 1, size -> size - 2
  if (size == 1) return at::zeros_like(i);
  const int64_t period = 2 * (size - 1);
  auto m = i.remainder(period);
  return at::where(m >= size, period - m, m);
}

// The padding that the convolution itself applies (symmetric zeros only).
std::array<int64_t, 2> conv_padding(at::IntArrayRef p, const std::string& mode) {
  if (is_zeros(mode) && p[0] == p[1] && p[2] == p[3]) return {p[2], p[0]};
  return {0, 0};
}

at::Tensor pad_input(const at::Tensor& x, at::IntArrayRef p, const std::string& mode) {
  if (is_zeros(mode)) {
    if (p[0] == p[1] && p[2] == p[3]) return x;  // left to the convolution
    return at::constant_pad_nd(x, {p[0], p[1], p[2], p[3]}, 0);
  }
  const auto ih = pad_index(x.size(2), p[2], p[3], mode, x.device());
  const auto iw = pad_index(x.size(3), p[0], p[1], mode, x.device());
  return x.index_select(2, ih).index_select(3, iw);
}

// Adjoint of pad_input: gradient of x from the gradient of the padded input.
at::Tensor unpad_grad(const at::Tensor& gxp, const at::Tensor& x, at::IntArrayRef p, const std::string& mode) {
  if (is_zeros(mode)) {
    if (p[0] == p[1] && p[2] == p[3]) return gxp;
    return gxp.narrow(2, p[2], x.size(2)).narrow(3, p[0], x.size(3)).contiguous();
  }
  const auto ih = pad_index(x.size(2), p[2], p[3], mode, x.device());
  const auto iw = pad_index(x.size(3), p[0], p[1], mode, x.device());
  auto rows = at::zeros({gxp.size(0), gxp.size(1), x.size(2), gxp.size(3)}, gxp.options());
  rows.index_add_(2, ih, gxp);
  auto out = at::zeros(x.sizes(), gxp.options());
  out.index_add_(3, iw, rows);
  return out;
}

// Mix [G, C_out/G, 2Lk]: Mix[g, c, i] = U1s_flat[i, g*C_out/G + c] / (2L).
at::Tensor mix_matrix(const at::Tensor& U1s, int64_t groups) {
  const int64_t two_L = U1s.size(0), C_out = U1s.size(2);
  return U1s.reshape({-1, C_out}).t().mul(1.0 / static_cast<double>(two_L)).reshape({groups, C_out / groups, -1});
}

// The two-step form does G*2Lk*(C_in/G*kh*kw) + C_out*2Lk multiply-adds per output pixel,
// the dense form C_out*C_in/G*kh*kw; use the effective kernel when that is no more.
bool use_effective_kernel(const ConvShape& s) {
  const int64_t r = s.two_L * s.k;
  const int64_t patch = (s.C_in / s.groups) * s.kh * s.kw;
  return s.groups * r * patch + s.C_out * r >= s.C_out * patch;
}

// W_eff [C_out, C_in/G, kh, kw] = Mix_g @ S1s_g per group.
at::Tensor effective_kernel(const at::Tensor& S1s, const at::Tensor& mix, const ConvShape& s) {
  const auto S = S1s.reshape({s.groups, s.two_L * s.k, -1});
  return at::bmm(mix, S).reshape({s.C_out, s.C_in / s.groups, s.kh, s.kw});
}

at::Tensor sketched_conv2d(const at::Tensor& x, const at::Tensor& S1s, const at::Tensor& U1s,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups, c10::string_view padding_mode_sv) {
  const std::string padding_mode(padding_mode_sv);
  const auto s = check_conv(x, S1s, U1s, bias, stride, padding, dilation, groups, padding_mode);
  const auto xp = pad_input(x, padding, padding_mode);
  const auto cp = conv_padding(padding, padding_mode);
  const auto mix = mix_matrix(U1s, groups);
  if (use_effective_kernel(s)) {
    return at::conv2d(xp, effective_kernel(S1s, mix, s), bias, stride, cp, dilation, groups)
        .contiguous(layout_of(x));
  }
  const auto t = at::conv2d(xp, S1s, std::nullopt, stride, cp, dilation, groups);
  // Channel mix as a grouped 1x1 convolution: keeps the memory format (channels_last) of t.
  const auto w_mix = mix.reshape({s.C_out, s.two_L * s.k, 1, 1});
  const std::array<int64_t, 2> one = {1, 1}, zero = {0, 0};
  return at::conv2d(t, w_mix, bias, one, zero, one, groups).contiguous(layout_of(x));
}

using OptTensor = std::optional<at::Tensor>;
OptTensor defined_or_none(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// Gradients for (x, S1s, bias); U1s is a fixed sketch.
std::tuple<OptTensor, OptTensor, OptTensor> sketched_conv2d_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& S1s, const at::Tensor& U1s,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view padding_mode_sv, std::array<bool, 3> mask) {
  const std::string padding_mode(padding_mode_sv);
  const auto s = check_conv(x, S1s, U1s, std::nullopt, stride, padding, dilation, groups, padding_mode);
  check_like(grad, "grad", x, "x");
  const std::array<int64_t, 4> expected = {s.B, s.C_out, s.H_out, s.W_out};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(expected), "grad has shape ", grad.sizes(),
              ": expected the output shape ", at::IntArrayRef(expected));
  at::Tensor dx, dS1s, db;
  if (mask[2]) db = grad.sum({0, 2, 3});
  if (!mask[0] && !mask[1]) return {defined_or_none(dx), defined_or_none(dS1s), defined_or_none(db)};

  const auto xp = pad_input(x, padding, padding_mode);
  const auto cp = conv_padding(padding, padding_mode);
  const auto mix = mix_matrix(U1s, groups);
  const int64_t r = s.two_L * s.k;
  at::Tensor dxp;
  if (use_effective_kernel(s)) {
    const auto w = effective_kernel(S1s, mix, s);
    auto res = at::convolution_backward(grad, xp, w, std::nullopt, stride, cp, dilation, false, {0, 0}, groups,
                                        {mask[0], mask[1], false});
    dxp = std::get<0>(res);
    if (mask[1]) {
      const auto dW = std::get<1>(res).reshape({s.groups, s.C_out / s.groups, -1});
      dS1s = at::bmm(mix.transpose(1, 2), dW).reshape(S1s.sizes()).contiguous();
    }
  } else {
    // dt[b, g, i, p] = sum_c Mix[g, c, i] * grad[b, g, c, p]
    const auto g4 = grad.reshape({s.B, s.groups, s.C_out / s.groups, s.H_out * s.W_out});
    const auto dt = at::matmul(mix.transpose(1, 2), g4).reshape({s.B, s.groups * r, s.H_out, s.W_out});
    auto res = at::convolution_backward(dt, xp, S1s, std::nullopt, stride, cp, dilation, false, {0, 0}, groups,
                                        {mask[0], mask[1], false});
    dxp = std::get<0>(res);
    if (mask[1]) dS1s = std::get<1>(res).contiguous();
  }
  if (mask[0]) dx = unpad_grad(dxp, x, padding, padding_mode).contiguous(layout_of(x));
  return {defined_or_none(dx), defined_or_none(dS1s), defined_or_none(db)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(panther, m) {
  m.def(
      "sketched_conv2d(Tensor x, Tensor S1s, Tensor U1s, Tensor? bias, int[2] stride, int[4] padding,"
      " int[2] dilation, int groups, str padding_mode) -> Tensor");
  m.def(
      "sketched_conv2d_backward(Tensor grad, Tensor x, Tensor S1s, Tensor U1s, int[2] stride,"
      " int[4] padding, int[2] dilation, int groups, str padding_mode, bool[3] output_mask)"
      " -> (Tensor?, Tensor?, Tensor?)");
}

TORCH_LIBRARY_IMPL(panther, CPU, m) {
  m.impl("sketched_conv2d", &sketched_conv2d);
  m.impl("sketched_conv2d_backward", &sketched_conv2d_backward);
}

#ifdef PANTHER_WITH_CUDA
// cuDNN convolutions and cuBLAS GEMMs through the same ATen calls.
TORCH_LIBRARY_IMPL(panther, CUDA, m) {
  m.impl("sketched_conv2d", &sketched_conv2d);
  m.impl("sketched_conv2d_backward", &sketched_conv2d_backward);
}
#endif

}  // namespace panther
