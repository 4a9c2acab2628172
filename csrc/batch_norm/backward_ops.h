// The backward ops, written once for every device (see ops.h for the layering).
// batch_norm_act_backward is the whole backward in one op call (the autograd path);
// batch_norm_act_backward_reduce / _elemt are its two passes, for the synchronised BatchNorm,
// which all-reduces between them.
#pragma once

#include <torch/library.h>

#include <array>

#include "ops.h"

namespace pyfusedbn {

// Refuses from_output (memory-saving backward) for activations the kernels cannot invert.
void check_from_output(ActKind act, double activation_param, const char* op);

// What every backward op checks and prepares: the laid-out saved tensor, grad_out and residual,
// the statistics in the accumulate type, the parameters, and in `ws` the rebuild coefficients
// scale = weight * invstd (slot 0) and bias (slot 1) (common/kernel_args.h, rebuild_pre_activation).
struct BackwardInputs {
  LaidOut x;
  Tensor dy;
  OptTensor res;
  Tensor mean, invstd;
  ChannelParams params;
  ActKind act;
  RebuildCoefficients rebuild(const ChannelWorkspace& ws) const { return {mean.data_ptr(), ws[0], ws[1]}; }
};

template <typename Backend>
BackwardInputs backward_inputs(const Tensor& grad_out, const Tensor& saved, const Tensor& mean,
                               const Tensor& invstd, const OptTensor& weight, const OptTensor& bias,
                               const OptTensor& residual, const std::string& activation,
                               double activation_param, bool from_output, const ChannelWorkspace& ws,
                               const char* op) {
  const ActKind act = parse_activation(activation);
  LaidOut x = lay_out_input(saved, op);
  Tensor dy = lay_out_like(grad_out, "grad_out", x, op);
  OptTensor res = lay_out_like(residual, "residual", x, op);
  check_per_channel(mean, "mean", saved, op);
  check_per_channel(invstd, "invstd", saved, op);
  check_per_channel(weight, "weight", saved, op);
  check_per_channel(bias, "bias", saved, op);
  if (from_output) check_from_output(act, activation_param, op);
  BackwardInputs in{std::move(x), std::move(dy), std::move(res), as_acc(mean, saved), as_acc(invstd, saved),
                    channel_params(weight, bias, saved), act};
  Backend::finalize(saved, PrepareStep{in.mean.data_ptr(), in.invstd.data_ptr(), &in.params, ws[0], ws[1],
                                       nullptr, in.x.shape.channels});
  return in;
}

// `saved` is the forward's input, or its output when from_output (memory-saving mode).
// Returns sum(g) and sum(g * x_hat) (grad_bias and grad_weight, in the accumulate type).
template <typename Backend>
std::tuple<Tensor, Tensor> batch_norm_act_backward_reduce(
    const Tensor& grad_out, const Tensor& saved, const Tensor& mean, const Tensor& invstd,
    const OptTensor& weight, const OptTensor& bias, const OptTensor& residual,
    const std::string& activation, double activation_param, bool from_output) {
  const char* op = "batch_norm_act_backward_reduce";
  check_input(saved, op);  // rank and dtype, before anything reads size(1)
  const int64_t channels = saved.size(1);
  const ChannelWorkspace ws(saved, channels, 2);  // scale, bias
  const BackwardInputs in = backward_inputs<Backend>(grad_out, saved, mean, invstd, weight, bias, residual,
                                                     activation, activation_param, from_output, ws, op);
  const auto options = saved.options().dtype(acc_type_of(saved));
  Tensor sum_g = at::empty({channels}, options);
  Tensor sum_g_xhat = at::empty({channels}, options);
  const bool ran = in.x.shape.numel() > 0;
  if (ran)
    Backend::backward_reduce(in.dy, in.x.input, in.res, in.rebuild(ws), in.act, activation_param, from_output,
                             sum_g.data_ptr(), sum_g_xhat.data_ptr(), in.x.shape);
  // sum(g * x_hat) = invstd * sum(g * (x - mean)), in place; an empty batch gives zeros.
  Backend::finalize(saved, BackwardStep{in.invstd.data_ptr(), ws[0], ran ? sum_g.data_ptr() : nullptr,
                                        sum_g_xhat.data_ptr(), true, sum_g_xhat.data_ptr(),
                                        ran ? nullptr : sum_g.data_ptr(), nullptr, nullptr, 1.0, false, false,
                                        channels});
  return {sum_g, sum_g_xhat};
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
  check_input(saved, op);
  check_per_channel(mean_g, "mean_g", saved, op);
  check_per_channel(mean_g_xhat, "mean_g_xhat", saved, op);
  TORCH_CHECK_VALUE(mean_g.has_value() == mean_g_xhat.has_value(), op,
                    ": mean_g and mean_g_xhat must both be given (training) or both be None (eval)");
  const int64_t channels = saved.size(1);
  const ChannelWorkspace ws(saved, channels, 4);  // scale, bias, coef_xc, coef_const
  const BackwardInputs in = backward_inputs<Backend>(grad_out, saved, mean, invstd, weight, bias, residual,
                                                     activation, activation_param, from_output, ws, op);
  const bool training = mean_g.has_value();
  const Tensor mean_g_acc = training ? as_acc(*mean_g, saved) : Tensor();
  const Tensor mean_g_xhat_acc = training ? as_acc(*mean_g_xhat, saved) : Tensor();
  Backend::finalize(saved, BackwardStep{in.invstd.data_ptr(), ws[0], training ? mean_g_acc.data_ptr() : nullptr,
                                        training ? mean_g_xhat_acc.data_ptr() : nullptr, true, nullptr, nullptr,
                                        ws[2], ws[3], 1.0, training, true, channels});
  Tensor grad_input = empty_like_input(in.x);
  Tensor grad_residual = in.res.has_value() ? empty_like_input(in.x) : at::empty({0}, saved.options());
  if (in.x.shape.numel() > 0)
    Backend::backward_elemt(in.dy, in.x.input, in.res, in.rebuild(ws), ElemtCoefficientPtrs{ws[0], ws[2], ws[3]},
                            in.act, activation_param, from_output, grad_input, grad_residual, in.x.shape);
  return {grad_input, grad_residual};
}

// The whole backward in one op: the reduction (when training or a parameter needs its gradient),
// the finalize step, the elementwise pass (when input or residual needs its gradient).
// output_mask = which of (input, weight, bias, residual) need a gradient, as torch's
// native_batch_norm_backward; the others (and those of absent arguments) are None.
template <typename Backend>
std::tuple<OptTensor, OptTensor, OptTensor, OptTensor> batch_norm_act_backward(
    const Tensor& grad_out, const Tensor& saved, const Tensor& mean, const Tensor& invstd,
    const OptTensor& weight, const OptTensor& bias, const OptTensor& residual, bool training,
    const std::string& activation, double activation_param, bool from_output, std::array<bool, 4> output_mask) {
  const char* op = "batch_norm_act_backward";
  check_input(saved, op);
  const int64_t channels = saved.size(1);
  // scale, bias, sum_g, sum_g_xc, coef_xc, coef_const
  const ChannelWorkspace ws(saved, channels, 6);
  const BackwardInputs in = backward_inputs<Backend>(grad_out, saved, mean, invstd, weight, bias, residual,
                                                     activation, activation_param, from_output, ws, op);
  const bool need_weight = output_mask[1] && weight.has_value();
  const bool need_bias = output_mask[2] && bias.has_value();
  const bool need_residual = output_mask[3] && residual.has_value();
  const bool need_elemt = output_mask[0] || need_residual;
  const bool reduce = (training && need_elemt) || need_weight || need_bias;
  const bool ran_reduce = reduce && in.x.shape.numel() > 0;
  // Both passes in this call: the backend may keep g from the first for the second.
  RebuildCoefficients rebuild = in.rebuild(ws);
  if (ran_reduce && need_elemt) rebuild.grad_cache = Backend::grad_cache(in.x.input, in.act, from_output);
  if (ran_reduce)
    Backend::backward_reduce(in.dy, in.x.input, in.res, rebuild, in.act, activation_param, from_output,
                             ws[2], ws[3], in.x.shape);
  // Gradients in the parameters' own dtype, written by the finalize step (an unusual dtype mix
  // computes in the accumulate type and converts: channel_params).
  auto param_grad = [&](bool needed, const OptTensor& param_used) -> OptTensor {
    if (!needed) return c10::nullopt;
    return at::empty({channels}, saved.options().dtype(param_used->scalar_type()));
  };
  OptTensor grad_weight = param_grad(need_weight, in.params.weight);
  OptTensor grad_bias = param_grad(need_bias, in.params.bias);
  const int64_t count = in.x.shape.reduce_size();
  Backend::finalize(saved, BackwardStep{in.invstd.data_ptr(), ws[0], ran_reduce ? ws[2] : nullptr, ws[3],
                                        in.params.is_acc, grad_weight ? grad_weight->data_ptr() : nullptr,
                                        grad_bias ? grad_bias->data_ptr() : nullptr,
                                        need_elemt ? ws[4] : nullptr, ws[5],
                                        1.0 / static_cast<double>(count > 0 ? count : 1), training, false, channels});
  if (grad_weight && grad_weight->scalar_type() != weight->scalar_type()) grad_weight = grad_weight->to(weight->scalar_type());
  if (grad_bias && grad_bias->scalar_type() != bias->scalar_type()) grad_bias = grad_bias->to(bias->scalar_type());
  OptTensor grad_input, grad_residual;
  if (need_elemt) {
    grad_input = empty_like_input(in.x);
    // With a residual the kernel always writes grad_residual (= g).
    Tensor grad_res = in.res.has_value() ? empty_like_input(in.x) : Tensor();
    if (in.x.shape.numel() > 0)
      Backend::backward_elemt(in.dy, in.x.input, in.res, rebuild, ElemtCoefficientPtrs{ws[0], ws[4], ws[5]},
                              in.act, activation_param, from_output, *grad_input, grad_res, in.x.shape);
    if (!output_mask[0]) grad_input = c10::nullopt;
    if (need_residual) grad_residual = grad_res;
  }
  return {grad_input, grad_weight, grad_bias, grad_residual};
}

// Every BatchNorm op's kernel over one device's Backend: the body of that device's
// TORCH_LIBRARY_IMPL block (cpu/batch_norm_binding.cpp, cuda/batch_norm_binding.cpp).
template <typename Backend>
void batch_norm_ops_impl(torch::Library& m) {
  m.impl("batch_norm_stats", &batch_norm_stats<Backend>);
  m.impl("batch_norm_act_train", &batch_norm_act_train<Backend>);
  m.impl("batch_norm_act_eval", &batch_norm_act_eval<Backend>);
  m.impl("batch_norm_act_eval_for_backward", &batch_norm_act_eval_for_backward<Backend>);
  m.impl("batch_norm_act_apply", &batch_norm_act_apply<Backend>);
  m.impl("batch_norm_act_backward_reduce", &batch_norm_act_backward_reduce<Backend>);
  m.impl("batch_norm_act_backward_elemt", &batch_norm_act_backward_elemt<Backend>);
  m.impl("batch_norm_act_backward", &batch_norm_act_backward<Backend>);
}

}  // namespace pyfusedbn
