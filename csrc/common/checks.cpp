// What every op checks and lays out (checks.h), whatever the norm and the device.
#include "checks.h"

#include <cmath>
#include <string>

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

Tensor as_acc(const Tensor& t, const Tensor& input) {
  const auto acc = acc_type_of(input);
  // Checking first: Tensor::to dispatches a host op even when it has nothing to do.
  if (t.scalar_type() == acc && t.is_contiguous()) return t;
  return t.to(acc).contiguous();
}

void check_eps_momentum(double eps, double momentum, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op, ": eps must be a finite value >= 0, got ", eps);
  TORCH_CHECK_VALUE(std::isfinite(momentum) && momentum >= 0.0, op,
                    ": momentum must be a finite value >= 0, got ", momentum);
}

}  // namespace pyfusedbn
