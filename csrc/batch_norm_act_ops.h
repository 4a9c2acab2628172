// The op implementations, written once for every device. A Backend supplies the four kernels
// (stats, apply, backward_reduce, backward_elemt) on tensors already checked and laid out; this
// file does the argument checks, the memory-format handling and the per-channel algebra
// (invstd, folded affine coefficients, running statistics, backward coefficients).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <string>
#include <tuple>

#include "activations.h"
#include "kernel_args.h"

namespace pyfusedbn {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

ActKind parse_activation(const std::string& name);

// Accumulate dtype of the kernels and of per-channel results: float32 for half, bfloat16 and
// float32 input, float64 for float64 input.
inline at::ScalarType acc_type_of(const Tensor& t) { return at::toOpMathType(t.scalar_type()); }

// Input layout the kernels accept: contiguous in torch's suggested memory format.
struct LaidOut {
  Tensor input;
  at::MemoryFormat memory_format;
  BnShape shape;
};
LaidOut lay_out_input(const Tensor& input, const char* op);

// Per-channel tensor (weight, bias, running stats, saved mean/invstd): C values on input's device.
void check_per_channel(const OptTensor& t, const char* name, const Tensor& input, const char* op);
// Residual and grad_out: same shape, dtype and device as input; returned in input's layout.
Tensor lay_out_like(const Tensor& t, const char* name, const LaidOut& x, const char* op);
OptTensor lay_out_like(const OptTensor& t, const char* name, const LaidOut& x, const char* op);

// weight * invstd and bias - mean * weight * invstd, in the accumulate dtype.
std::tuple<Tensor, Tensor> affine_coefficients(const Tensor& mean, const Tensor& invstd,
                                               const OptTensor& weight, const OptTensor& bias,
                                               at::ScalarType acc);

void update_running_stats(const OptTensor& running_mean, const OptTensor& running_var,
                          const Tensor& mean, const Tensor& var, int64_t count, double momentum);

void check_eps_momentum(double eps, double momentum, const char* op);

template <typename Backend>
std::tuple<Tensor, Tensor> batch_norm_stats(const Tensor& input) {
  const char* op = "batch_norm_stats";
  const LaidOut x = lay_out_input(input, op);
  const auto options = input.options().dtype(acc_type_of(input));
  Tensor mean = at::zeros({x.shape.channels}, options);
  Tensor var = at::zeros({x.shape.channels}, options);
  if (x.shape.numel() > 0) Backend::stats(x.input, x.shape, mean, var);
  return {mean, var};
}

template <typename Backend>
Tensor batch_norm_act_apply(const Tensor& input, const Tensor& mean, const Tensor& invstd,
                            const OptTensor& weight, const OptTensor& bias, const OptTensor& residual,
                            const std::string& activation, double activation_param) {
  const char* op = "batch_norm_act_apply";
  const ActKind act = parse_activation(activation);
  const LaidOut x = lay_out_input(input, op);
  check_per_channel(mean, "mean", input, op);
  check_per_channel(invstd, "invstd", input, op);
  check_per_channel(weight, "weight", input, op);
  check_per_channel(bias, "bias", input, op);
  const OptTensor res = lay_out_like(residual, "residual", x, op);
  auto [scale, shift] = affine_coefficients(mean, invstd, weight, bias, acc_type_of(input));
  Tensor out = at::empty_like(x.input);
  if (x.shape.numel() > 0) Backend::apply(x.input, res, scale, shift, act, activation_param, out, x.shape);
  return out;
}

template <typename Backend>
std::tuple<Tensor, Tensor, Tensor> batch_norm_act_train(
    const Tensor& input, const OptTensor& weight, const OptTensor& bias, const OptTensor& residual,
    const OptTensor& running_mean, const OptTensor& running_var, double momentum, double eps,
    const std::string& activation, double activation_param) {
  const char* op = "batch_norm_act_train";
  const ActKind act = parse_activation(activation);
  check_eps_momentum(eps, momentum, op);
  const LaidOut x = lay_out_input(input, op);
  check_per_channel(weight, "weight", input, op);
  check_per_channel(bias, "bias", input, op);
  check_per_channel(running_mean, "running_mean", input, op);
  check_per_channel(running_var, "running_var", input, op);
  TORCH_CHECK_VALUE(running_mean.has_value() == running_var.has_value(), op,
                    ": running_mean and running_var must both be given or both be None");
  const OptTensor res = lay_out_like(residual, "residual", x, op);
  const int64_t count = x.shape.reduce_size();
  // torch's own check (F.batch_norm / _verify_batch_size), same type and wording.
  TORCH_CHECK_VALUE(count != 1, "Expected more than 1 value per channel when training, got input size ",
                    input.sizes());

  const auto options = input.options().dtype(acc_type_of(input));
  Tensor out = at::empty_like(x.input);
  if (x.shape.numel() == 0) {
    // An empty batch (or no channels) leaves the running statistics untouched, as torch does.
    return {out, at::zeros({x.shape.channels}, options), at::zeros({x.shape.channels}, options)};
  }
  // The stats kernel writes every channel.
  Tensor mean = at::empty({x.shape.channels}, options);
  Tensor var = at::empty({x.shape.channels}, options);
  Backend::stats(x.input, x.shape, mean, var);
  Tensor invstd = (var + eps).rsqrt_();
  update_running_stats(running_mean, running_var, mean, var, count, momentum);
  auto [scale, shift] = affine_coefficients(mean, invstd, weight, bias, acc_type_of(input));
  Backend::apply(x.input, res, scale, shift, act, activation_param, out, x.shape);
  return {out, mean, invstd};
}

template <typename Backend>
Tensor batch_norm_act_eval(const Tensor& input, const Tensor& running_mean, const Tensor& running_var,
                           const OptTensor& weight, const OptTensor& bias, const OptTensor& residual,
                           double eps, const std::string& activation, double activation_param) {
  const char* op = "batch_norm_act_eval";
  check_eps_momentum(eps, 0.0, op);
  check_per_channel(running_mean, "running_mean", input, op);
  check_per_channel(running_var, "running_var", input, op);
  const auto acc = acc_type_of(input);
  const Tensor invstd = (running_var.to(acc) + eps).rsqrt_();
  return batch_norm_act_apply<Backend>(input, running_mean.to(acc), invstd, weight, bias, residual,
                                       activation, activation_param);
}

// Per-channel inputs of both backward passes: mean, scale = weight * invstd and the bias (zeros
// without affine), in the accumulate dtype.
struct BackwardCoefficients {
  Tensor mean, scale, bias;
};
BackwardCoefficients backward_coefficients(const Tensor& input, const Tensor& mean, const Tensor& invstd,
                                           const OptTensor& weight, const OptTensor& bias,
                                           ActKind act, double activation_param, bool from_output,
                                           const char* op);

// `saved` is the forward's input, or its output when from_output (memory-saving mode).
template <typename Backend>
std::tuple<Tensor, Tensor> batch_norm_act_backward_reduce(
    const Tensor& grad_out, const Tensor& saved, const Tensor& mean, const Tensor& invstd,
    const OptTensor& weight, const OptTensor& bias, const OptTensor& residual,
    const std::string& activation, double activation_param, bool from_output) {
  const char* op = "batch_norm_act_backward_reduce";
  const ActKind act = parse_activation(activation);
  const LaidOut x = lay_out_input(saved, op);
  const Tensor dy = lay_out_like(grad_out, "grad_out", x, op);
  const OptTensor res = lay_out_like(residual, "residual", x, op);
  const BackwardCoefficients k =
      backward_coefficients(saved, mean, invstd, weight, bias, act, activation_param, from_output, op);
  Tensor sum_g = at::zeros_like(k.scale);
  Tensor sum_g_xc = at::zeros_like(k.scale);
  if (x.shape.numel() > 0)
    Backend::backward_reduce(dy, x.input, res, k, act, activation_param, from_output, sum_g, sum_g_xc,
                             x.shape);
  // sum(g * x_hat) = invstd * sum(g * (x - mean)): this is grad_weight.
  return {sum_g, sum_g_xc.mul_(invstd.to(sum_g_xc.scalar_type()))};
}

// mean_g / mean_g_xhat are sum_g / count and sum_g_xhat / count over the (possibly global) batch;
// both None means eval-mode backward (statistics are constants).
template <typename Backend>
std::tuple<Tensor, Tensor> batch_norm_act_backward_elemt(
    const Tensor& grad_out, const Tensor& saved, const Tensor& mean, const Tensor& invstd,
    const OptTensor& weight, const OptTensor& bias, const OptTensor& residual,
    const OptTensor& mean_g, const OptTensor& mean_g_xhat, const std::string& activation,
    double activation_param, bool from_output) {
  const char* op = "batch_norm_act_backward_elemt";
  const ActKind act = parse_activation(activation);
  const LaidOut x = lay_out_input(saved, op);
  const Tensor dy = lay_out_like(grad_out, "grad_out", x, op);
  check_per_channel(mean_g, "mean_g", saved, op);
  check_per_channel(mean_g_xhat, "mean_g_xhat", saved, op);
  TORCH_CHECK_VALUE(mean_g.has_value() == mean_g_xhat.has_value(), op,
                    ": mean_g and mean_g_xhat must both be given (training) or both be None (eval)");
  const OptTensor res = lay_out_like(residual, "residual", x, op);
  const BackwardCoefficients k =
      backward_coefficients(saved, mean, invstd, weight, bias, act, activation_param, from_output, op);
  const auto acc = k.scale.scalar_type();
  // dx = w * invstd * (g - mean_g - x_hat * mean_g_xhat) = g * coef_g + xc * coef_xc + coef_const.
  const Tensor& coef_g = k.scale;
  Tensor coef_xc = at::zeros_like(coef_g);
  Tensor coef_const = at::zeros_like(coef_g);
  if (mean_g.has_value()) {
    coef_xc = -coef_g * invstd.to(acc) * mean_g_xhat->to(acc);
    coef_const = -coef_g * mean_g->to(acc);
  }
  Tensor grad_input = at::empty_like(x.input);
  Tensor grad_residual = res.has_value() ? at::empty_like(x.input) : at::empty({0}, saved.options());
  if (x.shape.numel() > 0)
    Backend::backward_elemt(dy, x.input, res, k, coef_g, coef_xc, coef_const, act, activation_param,
                            from_output, grad_input, grad_residual, x.shape);
  return {grad_input, grad_residual};
}

}  // namespace pyfusedbn
