// Autocast for favor_attention: inside an autocast region q, k, v and the projection run in
// the autocast dtype (the kernel accumulates in float32 whatever that is).

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace panther {
namespace {

template <c10::DeviceType device>
at::Tensor favor_attention_autocast(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& projection, c10::string_view kernel_fn, bool causal,
                                    const std::optional<at::Tensor>& key_padding_mask, int64_t chunk_size) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("panther::favor_attention", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         c10::string_view, bool, const std::optional<at::Tensor>&, int64_t)>();
  const auto dt = at::autocast::get_autocast_dtype(device);
  using at::autocast::cached_cast;
  return op.call(cached_cast(dt, q, device), cached_cast(dt, k, device), cached_cast(dt, v, device),
                 cached_cast(dt, projection, device), kernel_fn, causal, key_padding_mask, chunk_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(panther, AutocastCPU, m) {
  m.impl("favor_attention", &favor_attention_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(panther, AutocastCUDA, m) {
  m.impl("favor_attention", &favor_attention_autocast<c10::DeviceType::CUDA>);
}

}  // namespace panther
