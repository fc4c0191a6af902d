// Autocast for sketched_conv2d: like aten::conv2d, it runs in the autocast dtype
// (float16/bfloat16) inside an autocast region, with inputs cast through autocast's cache.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace panther {
namespace {

template <c10::DeviceType device>
at::Tensor sketched_conv2d_autocast(const at::Tensor& x, const at::Tensor& S1s, const at::Tensor& U1s,
                                    const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                    c10::string_view padding_mode) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("panther::sketched_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, int64_t, c10::string_view)>();
  const auto dt = at::autocast::get_autocast_dtype(device);
  using at::autocast::cached_cast;
  return op.call(cached_cast(dt, x, device), cached_cast(dt, S1s, device), cached_cast(dt, U1s, device),
                 cached_cast(dt, bias, device), stride, padding, dilation, groups, padding_mode);
}

}  // namespace

TORCH_LIBRARY_IMPL(panther, AutocastCPU, m) {
  m.impl("sketched_conv2d", &sketched_conv2d_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(panther, AutocastCUDA, m) {
  m.impl("sketched_conv2d", &sketched_conv2d_autocast<c10::DeviceType::CUDA>);
}

}  // namespace panther
