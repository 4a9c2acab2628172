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
  Tensor mean = at::zeros({N, num_groups}, input.options().dtype(acc));
  Tensor var = at::zeros({N, num_groups}, input.options().dtype(acc));
  if (x.shape.numel() > 0) Backend::group_stats(x.input, x.shape, num_groups, mean, var);
  Tensor rstd = (var + eps).rsqrt_();
  const Tensor rstd_nc = expand_per_group(rstd, C);
  const Tensor scale = (rstd_nc * repeat_per_sample(weight, N, C, 1.0, acc, rstd)).contiguous();
  const Tensor shift =
      at::addcmul(repeat_per_sample(bias, N, C, 0.0, acc, rstd), expand_per_group(mean, C), scale, -1);
  if (x.shape.numel() > 0) Backend::apply(x.input, res, scale, shift, act, activation_param, out, x.shape);
  return {out, mean, rstd};
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
  const Tensor rstd_acc = rstd.to(acc);
  const Tensor rstd_nc = expand_per_group(rstd_acc, C);
  const Tensor weight_nc = repeat_per_sample(weight, N, C, 1.0, acc, rstd_acc);
  const BackwardCoefficients k{expand_per_group(mean.to(acc), C), (rstd_nc * weight_nc).contiguous(),
                               repeat_per_sample(bias, N, C, 0.0, acc, rstd_acc),
                               Backend::grad_cache(x.input, act)};
  Tensor sum_g = at::zeros({N * C}, rstd_acc.options());
  Tensor sum_g_xc = at::zeros({N * C}, rstd_acc.options());
  if (x.shape.numel() > 0)
    Backend::backward_reduce(dy, x.input, res, k, act, activation_param, false, sum_g, sum_g_xc, x.shape);
  const Tensor grad_bias = sum_g.view({N, C}).sum(0);
  const Tensor grad_weight = (sum_g_xc * rstd_nc).view({N, C}).sum(0);
  // With dxhat = g * weight over a group of `count` elements,
  //   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
  //      = g * (weight * rstd) + xc * (-rstd^3 * B / count) + (-rstd * A / count),
  // A = sum(weight * sum_g), B = sum(weight * sum_g_xc) over the group's channels.
  const int64_t D = C / G;
  const double count = static_cast<double>(D * x.shape.spatial);
  const Tensor sum_dxhat = (sum_g * weight_nc).view({N, G, D}).sum(2);
  const Tensor sum_dxhat_xc = (sum_g_xc * weight_nc).view({N, G, D}).sum(2);
  const Tensor coef_xc = expand_per_group(-rstd_acc.pow(3) * sum_dxhat_xc / count, C);
  const Tensor coef_const = expand_per_group(-rstd_acc * sum_dxhat / count, C);
  Tensor grad_input = at::empty_like(x.input);
  Tensor grad_residual = res.has_value() ? at::empty_like(x.input) : at::empty({0}, input.options());
  if (x.shape.numel() > 0)
    Backend::backward_elemt(dy, x.input, res, k, k.scale, coef_xc, coef_const, act, activation_param, false,
                            grad_input, grad_residual, x.shape);
  return {grad_input, grad_weight, grad_bias, grad_residual};
}

}  // namespace pyfusedbn
