// Autocast for the linear ops: like aten::linear, they run in the autocast dtype
// (float16/bfloat16) inside an autocast region, with inputs cast through autocast's cache.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace panther {
namespace {

template <c10::DeviceType device>
at::Tensor sketched_linear_autocast(const at::Tensor& x, const at::Tensor& S1s, const at::Tensor& S2s,
                                    const at::Tensor& U1s, const at::Tensor& U2s,
                                    const std::optional<at::Tensor>& bias) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("panther::sketched_linear", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&)>();
  const auto dt = at::autocast::get_autocast_dtype(device);
  using at::autocast::cached_cast;
  return op.call(cached_cast(dt, x, device), cached_cast(dt, S1s, device), cached_cast(dt, S2s, device),
                 cached_cast(dt, U1s, device), cached_cast(dt, U2s, device), cached_cast(dt, bias, device));
}

template <c10::DeviceType device>
at::Tensor lowrank_linear_autocast(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                                   const std::optional<at::Tensor>& bias) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("panther::lowrank_linear", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&)>();
  const auto dt = at::autocast::get_autocast_dtype(device);
  using at::autocast::cached_cast;
  return op.call(cached_cast(dt, x, device), cached_cast(dt, A, device), cached_cast(dt, B, device),
                 cached_cast(dt, bias, device));
}

}  // namespace

TORCH_LIBRARY_IMPL(panther, AutocastCPU, m) {
  m.impl("sketched_linear", &sketched_linear_autocast<c10::DeviceType::CPU>);
  m.impl("lowrank_linear", &lowrank_linear_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(panther, AutocastCUDA, m) {
  m.impl("sketched_linear", &sketched_linear_autocast<c10::DeviceType::CUDA>);
  m.impl("lowrank_linear", &lowrank_linear_autocast<c10::DeviceType::CUDA>);
}

}  // namespace panther
