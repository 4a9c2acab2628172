// GroupNorm + activation ops, written once for every device. A Backend supplies the kernels
// (group stats, and apply / backward_reduce / backward_elemt with per-(sample, channel)
// coefficients); this file does the checks, the layout and the per-(sample, group) algebra.
#pragma once

#include <string>
#include <tuple>

#include "batch_norm_act_ops.h"
#include "group_norm_args.h"

namespace pyfusedbn {

// Per-(sample, channel) inputs of both backward passes: mean, scale = weight * rstd and the bias,
// in the accumulate dtype (GroupNorm's coefficients vary per sample, so they stay tensors).
// grad_cache: where a backend keeps g = grad_out * act'(z) between the two passes, when it does
// (CPU, costly activations: csrc/cpu/grad_cache.h); undefined otherwise.
struct BackwardCoefficients {
  Tensor mean, scale, bias, grad_cache;
};

// The per-(sample, group) algebra (group_coefficients.h: host loops for CPU tensors, tensor ops
// elsewhere). Forward: rstd (N, G) and the apply pass's scale / shift (N * C) from mean / var.
struct GroupForwardCoefficients {
  Tensor rstd, scale, shift;
};
GroupForwardCoefficients group_forward_coefficients(const Tensor& mean, const Tensor& var, double eps,
                                                    const OptTensor& weight, const OptTensor& bias,
                                                    int64_t channels);
// Backward, before the passes: their per-(n, c) mean, scale, bias (grad_cache left undefined).
BackwardCoefficients group_backward_coefficients(const Tensor& mean, const Tensor& rstd, const OptTensor& weight,
                                                 const OptTensor& bias, int64_t channels);
// Backward, between the passes: parameter gradients (C, accumulate dtype) and the elementwise
// coefficients (N * C), from the reduction's sums; count = elements per group.
struct GroupBackwardFinal {
  Tensor grad_weight, grad_bias, coef_xc, coef_const;
};
GroupBackwardFinal group_backward_finalize(const Tensor& sum_g, const Tensor& sum_g_xc, const Tensor& rstd,
                                           const OptTensor& weight, int64_t channels, double count);

void check_num_groups(const Tensor& input, int64_t num_groups, const char* op);
// mean / rstd of the backward: (N, num_groups) on input's device.
void check_per_group(const Tensor& t, const char* name, const Tensor& input, int64_t num_groups,
                     const char* op);
// (N, G) values as N * C: each group's value repeated over its channels.
Tensor expand_per_group(const Tensor& per_group, int64_t channels);
// A per-channel tensor (or `fill` without one) repeated for each of N samples: N * C values.
Tensor repeat_per_sample(const OptTensor& per_channel, int64_t batch, int64_t channels, double fill,
                         at::ScalarType acc, const Tensor& like);

template <typename Backend>
std::tuple<Tensor, Tensor, Tensor> group_norm_act(const Tensor& input, const OptTensor& weight,
                                                  const OptTensor& bias, const OptTensor& residual,
                                                  int64_t num_groups, double eps,
                                                  const std::string& activation, double activation_param) {
  const char* op = "group_norm_act";
  const ActKind act = parse_activation(activation);
  check_eps_momentum(eps, 0.0, op);
  const LaidOut x = lay_out_input(input, op);
  check_num_groups(input, num_groups, op);
  check_per_channel(weight, "weight", input, op);
  check_per_channel(bias, "bias", input, op);
  const OptTensor res = lay_out_like(residual, "residual", x, op);
  const auto acc = acc_type_of(input);
  const int64_t N = x.shape.batch, C = x.shape.channels;
  Tensor out = at::empty_like(x.input);
  // Written whole by the statistics kernel; an empty input's statistics are zeros.
  const bool empty = x.shape.numel() == 0;
  Tensor mean = empty ? at::zeros({N, num_groups}, input.options().dtype(acc))
                      : at::empty({N, num_groups}, input.options().dtype(acc));
  Tensor var = at::empty_like(mean);
  if (empty) var.zero_();
  if (!empty) Backend::group_stats(x.input, x.shape, num_groups, mean, var);
  const GroupForwardCoefficients k = group_forward_coefficients(mean, var, eps, weight, bias, C);
  if (!empty) Backend::apply(x.input, res, k.scale, k.shift, act, activation_param, out, x.shape);
  return {out, mean, k.rstd};
}

template <typename Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor> group_norm_act_backward(
    const Tensor& grad_out, const Tensor& input, const Tensor& mean, const Tensor& rstd,
    const OptTensor& weight, const OptTensor& bias, const OptTensor& residual, int64_t num_groups,
    const std::string& activation, double activation_param) {
  const char* op = "group_norm_act_backward";
  const ActKind act = parse_activation(activation);
  const LaidOut x = lay_out_input(input, op);
  check_num_groups(input, num_groups, op);
  const Tensor dy = lay_out_like(grad_out, "grad_out", x, op);
  const OptTensor res = lay_out_like(residual, "residual", x, op);
  check_per_group(mean, "mean", input, num_groups, op);
  check_per_group(rstd, "rstd", input, num_groups, op);
  check_per_channel(weight, "weight", input, op);
  check_per_channel(bias, "bias", input, op);
  const auto acc = acc_type_of(input);
  const int64_t N = x.shape.batch, C = x.shape.channels, G = num_groups;
  const Tensor rstd_acc = rstd.scalar_type() == acc ? rstd : rstd.to(acc);
  BackwardCoefficients k = group_backward_coefficients(mean, rstd_acc, weight, bias, C);
  k.grad_cache = Backend::grad_cache(x.input, act);
  // Written whole by the reduction; an empty input's sums are zeros.
  const bool empty = x.shape.numel() == 0;
  Tensor sum_g = empty ? at::zeros({N * C}, rstd_acc.options()) : at::empty({N * C}, rstd_acc.options());
  Tensor sum_g_xc = at::empty_like(sum_g);
  if (empty) sum_g_xc.zero_();
  if (!empty)
    Backend::backward_reduce(dy, x.input, res, k, act, activation_param, false, sum_g, sum_g_xc, x.shape);
  const double count = static_cast<double>(C / G * x.shape.spatial);
  const GroupBackwardFinal f = group_backward_finalize(sum_g, sum_g_xc, rstd_acc, weight, C, count);
  Tensor grad_input = at::empty_like(x.input);
  Tensor grad_residual = res.has_value() ? at::empty_like(x.input) : at::empty({0}, input.options());
  if (!empty)
    Backend::backward_elemt(dy, x.input, res, k, k.scale, f.coef_xc, f.coef_const, act, activation_param, false,
                            grad_input, grad_residual, x.shape);
  return {grad_input, f.grad_weight, f.grad_bias, grad_residual};
}

}  // namespace pyfusedbn
