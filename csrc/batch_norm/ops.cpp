// BatchNorm's host-side pieces, device-independent: the dtype classes of weight, bias and the
// running buffers (args.h), the host-side fallbacks for unusual dtype mixes, and the checks only
// BatchNorm's arguments need.
#include <string>

#include "backward_ops.h"

namespace pyfusedbn {

// Kept as is (no host op) when contiguous and of `dtype`.
static bool usable_as(const OptTensor& t, at::ScalarType dtype) {
  return !t.has_value() || (t->scalar_type() == dtype && t->is_contiguous());
}

ChannelParams channel_params(const OptTensor& weight, const OptTensor& bias, const Tensor& input) {
  const auto acc = acc_type_of(input);
  const auto dtype = weight.has_value() ? weight->scalar_type() : bias.has_value() ? bias->scalar_type() : acc;
  if ((dtype == acc || dtype == input.scalar_type()) && usable_as(weight, dtype) && usable_as(bias, dtype))
    return {weight, bias, dtype == acc};
  auto converted = [&](const OptTensor& t) -> OptTensor {
    if (!t.has_value()) return c10::nullopt;
    return t->to(acc).contiguous();
  };
  return {converted(weight), converted(bias), true};
}

RunningBuffers running_buffers(const OptTensor& running_mean, const OptTensor& running_var, const Tensor& input) {
  if (!running_mean.has_value() || !running_var.has_value()) return {};
  const auto acc = acc_type_of(input);
  const auto dtype = running_mean->scalar_type();
  if ((dtype != acc && dtype != input.scalar_type()) || !usable_as(running_var, dtype) ||
      !running_mean->is_contiguous())
    return {};
  return {running_mean->data_ptr(), running_var->data_ptr(), dtype == acc};
}

void check_from_output(ActKind act, double activation_param, const char* op) {
  bool invertible = false;
  dispatch_activation(act, [&](auto activation) { invertible = decltype(activation)::kInvertible; });
  const bool param_ok = (act != ActKind::LeakyRelu && act != ActKind::Elu) || activation_param > 0.0;
  TORCH_CHECK_VALUE(invertible && param_ok, op, ": from_output (memory-saving backward) needs an "
                    "invertible activation: identity, leaky_relu with negative_slope > 0 or elu with "
                    "alpha > 0; got ", kActivationNames[static_cast<int>(act)], " with parameter ",
                    activation_param);
}

void update_running_stats(const OptTensor& running_mean, const OptTensor& running_var,
                          const Tensor& mean, const Tensor& var, int64_t count, double momentum) {
  // The host-side update, for running buffers the finalize step cannot update in place (an
  // unusual dtype or layout).
  if (!running_mean.has_value()) return;
  // torch stores the unbiased variance in running_var (Bessel's correction over N * spatial).
  const double bessel = static_cast<double>(count) / static_cast<double>(count - 1);
  // In place, so module buffers (and anything aliasing them) see the update.
  auto update = [&](const Tensor& running, const Tensor& batch, double weight) {
    if (running.scalar_type() == batch.scalar_type()) {
      running.mul_(1.0 - momentum).add_(batch, weight);
    } else {  // half/bfloat16 buffers: update in the accumulate type, round once
      running.copy_(running.to(batch.scalar_type()).mul_(1.0 - momentum).add_(batch, weight));
    }
  };
  update(*running_mean, mean, momentum);
  update(*running_var, var, momentum * bessel);
}

void check_batches_tracked(const OptTensor& t, const Tensor& input, const char* op) {
  if (!t.has_value()) return;
  TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, op, ": num_batches_tracked must be int64, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->numel() == 1, op, ": num_batches_tracked must hold one value, got shape ", t->sizes());
  TORCH_CHECK(t->device() == input.device(), op, ": num_batches_tracked is on ", t->device(), " but input is on ",
              input.device(), "; expected all tensors on one device");
}

}  // namespace pyfusedbn
