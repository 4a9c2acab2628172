// Device-independent pieces of the ops: argument checks, layout, the dtype classes of
// per-channel tensors (batch_norm/args.h) and the host-side fallbacks for unusual dtype mixes.
#include <cmath>
#include <string>

#include "../batch_norm/backward_ops.h"

namespace pyfusedbn {

ActKind parse_activation(const std::string& name) {
  for (int i = 0; i < kNumActivations; ++i) {
    if (name == kActivationNames[i]) return static_cast<ActKind>(i);
  }
  std::string valid;
  for (int i = 0; i < kNumActivations; ++i) valid += (i ? ", " : "") + std::string(kActivationNames[i]);
  // A throw statement, not TORCH_CHECK_VALUE(false, ...): no path falls off the end of this
  // non-void function, whatever a compiler makes of the macro's condition.
  C10_THROW_ERROR(ValueError, c10::str("pyfusedbn: unknown activation '", name, "'; expected one of: ", valid));
}

void check_input(const Tensor& input, const char* op) {
  TORCH_CHECK_VALUE(input.dim() >= 2 && input.dim() <= 5, op,
                    ": expected input of rank 2 to 5 (N, C, ...), got rank ", input.dim(),
                    " with shape ", input.sizes());
  const auto dtype = input.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                       dtype == at::kBFloat16,
                   op, ": input must be float32, float64, float16 or bfloat16, got ", dtype);
}

LaidOut lay_out_input(const Tensor& input, const char* op) {
  check_input(input, op);
  const auto memory_format = input.suggest_memory_format();
  LaidOut x{input.contiguous(memory_format), memory_format, {}};
  const int64_t batch = input.size(0);
  const int64_t channels = input.size(1);
  int64_t spatial = 1;
  for (int64_t d = 2; d < input.dim(); ++d) spatial *= input.size(d);
  // A single spatial position is the same memory as NHWC: one row of C values per sample.
  const bool channels_last = memory_format != at::MemoryFormat::Contiguous || spatial == 1;
  x.shape = BnShape{batch, channels, spatial, channels_last};
  return x;
}

void check_per_channel(const OptTensor& t, const char* name, const Tensor& input, const char* op) {
  if (!t.has_value()) return;
  check_input(input, op);
  const int64_t channels = input.size(1);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->numel() == channels, op, ": ", name,
                    " must be a 1-D tensor with one value per channel (", channels,
                    " values, from input of shape ", input.sizes(), "), got shape ", t->sizes());
  TORCH_CHECK(t->device() == input.device(), op, ": ", name, " is on ", t->device(),
              " but input is on ", input.device(), "; expected all tensors on one device");
  TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), op, ": ", name,
                   " must be a floating-point tensor, got ", t->scalar_type());
}

Tensor lay_out_like(const Tensor& t, const char* name, const LaidOut& x, const char* op) {
  TORCH_CHECK_VALUE(t.sizes() == x.input.sizes(), op, ": ", name, " must have the input's shape ",
                    x.input.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.input.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", x.input.device(), "; expected all tensors on one device");
  TORCH_CHECK_TYPE(t.scalar_type() == x.input.scalar_type(), op, ": ", name, " must have the input's dtype ",
                   x.input.scalar_type(), ", got ", t.scalar_type());
  return t.contiguous(x.memory_format);
}

OptTensor lay_out_like(const OptTensor& t, const char* name, const LaidOut& x, const char* op) {
  if (!t.has_value()) return c10::nullopt;
  return lay_out_like(*t, name, x, op);
}

Tensor empty_like_input(const LaidOut& x) {
  // at::empty, not empty_like: one host op (empty_like also dispatches empty_strided).
  return at::empty(x.input.sizes(), x.input.options().memory_format(x.memory_format));
}

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

Tensor as_acc(const Tensor& t, const Tensor& input) {
  const auto acc = acc_type_of(input);
  // Checking first: Tensor::to dispatches a host op even when it has nothing to do.
  if (t.scalar_type() == acc && t.is_contiguous()) return t;
  return t.to(acc).contiguous();
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

void check_eps_momentum(double eps, double momentum, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op, ": eps must be a finite value >= 0, got ", eps);
  TORCH_CHECK_VALUE(std::isfinite(momentum) && momentum >= 0.0, op,
                    ": momentum must be a finite value >= 0, got ", momentum);
}

}  // namespace pyfusedbn
