// The forward ops, written once for every device. A Backend supplies the bulk kernels (stats,
// apply, backward_reduce, backward_elemt) on tensors already checked and laid out, and runs the
// per-channel steps of args.h; this file does the argument checks, the memory-format
// handling and the workspace. The per-channel algebra is coefficients.h's: no tensor op
// runs per channel, so a call dispatches a handful of host ops whatever its size.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>

#include "../common/activations.h"
#include "../common/checks.h"
#include "../common/kernel_args.h"
#include "args.h"

namespace pyfusedbn {

// Running buffers the finalize step updates itself (same dtype class, contiguous); otherwise the
// pointers are null and update_running_stats does it with tensor ops afterwards.
struct RunningBuffers {
  void* mean = nullptr;
  void* var = nullptr;
  bool is_acc = true;
};
RunningBuffers running_buffers(const OptTensor& running_mean, const OptTensor& running_var, const Tensor& input);
void update_running_stats(const OptTensor& running_mean, const OptTensor& running_var,
                          const Tensor& mean, const Tensor& var, int64_t count, double momentum);

// num_batches_tracked: one int64 value on input's device.
void check_batches_tracked(const OptTensor& t, const Tensor& input, const char* op);

// Per-channel accumulate-type vectors the backward passes read (workspace slots or tensors'
// data): the rebuild coefficients (common/kernel_args.h, rebuild_pre_activation) and the elementwise
// pass's coefficients (coefficients.h, elemt_coefficients).
struct ElemtCoefficientPtrs {
  const void* coef_g;
  const void* coef_xc;
  const void* coef_const;
};
struct RebuildCoefficients {
  const void* mean;
  const void* scale;
  const void* bias;
  // Where a backend keeps g = grad_out * act'(z) between the two backward passes of one call
  // (CPU, costly activations: csrc/cpu/grad_cache.h); nullptr: each pass computes it.
  void* grad_cache = nullptr;

  // The backward passes' kernel arguments over these vectors, from the tensors' data pointers
  // in the backend's element type (at::Half on the CPU, __half on CUDA).
  template <typename scalar_t, typename acc_t>
  ReduceArgs<scalar_t, acc_t> reduce_args(const scalar_t* grad_out, const scalar_t* saved, const scalar_t* residual,
                                          void* sum_g, void* sum_g_xc, acc_t param, const BnShape& shape) const {
    return {grad_out, saved, residual, typed<acc_t>(mean), typed<acc_t>(scale), typed<acc_t>(bias),
            typed<acc_t>(sum_g), typed<acc_t>(sum_g_xc), param, shape};
  }
  template <typename scalar_t, typename acc_t>
  ElemtArgs<scalar_t, acc_t> elemt_args(const scalar_t* grad_out, const scalar_t* saved, const scalar_t* residual,
                                        const ElemtCoefficientPtrs& coef, scalar_t* grad_input,
                                        scalar_t* grad_residual, acc_t param, const BnShape& shape) const {
    return {grad_out,
            saved,
            residual,
            typed<acc_t>(mean),
            typed<acc_t>(scale),
            typed<acc_t>(bias),
            typed<acc_t>(coef.coef_g),
            typed<acc_t>(coef.coef_xc),
            typed<acc_t>(coef.coef_const),
            grad_input,
            grad_residual,
            param,
            shape};
  }
};

template <typename Backend>
std::tuple<Tensor, Tensor> batch_norm_stats(const Tensor& input) {
  const char* op = "batch_norm_stats";
  const LaidOut x = lay_out_input(input, op);
  const auto options = input.options().dtype(acc_type_of(input));
  if (x.shape.numel() == 0) return {at::zeros({x.shape.channels}, options), at::zeros({x.shape.channels}, options)};
  Tensor mean = at::empty({x.shape.channels}, options);
  Tensor var = at::empty({x.shape.channels}, options);
  Backend::stats(x.input, x.shape, mean.data_ptr(), var.data_ptr());
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
  Tensor out = empty_like_input(x);
  if (x.shape.numel() == 0) return out;
  const Tensor mean_acc = as_acc(mean, input), invstd_acc = as_acc(invstd, input);
  const ChannelParams params = channel_params(weight, bias, input);
  const ChannelWorkspace ws(input, x.shape.channels, 2);  // scale, shift
  Backend::finalize(input, PrepareStep{mean_acc.data_ptr(), invstd_acc.data_ptr(), &params, ws[0], nullptr,
                                       ws[1], x.shape.channels});
  Backend::apply(x.input, res, ws[0], ws[1], act, activation_param, out, x.shape);
  return out;
}

template <typename Backend>
std::tuple<Tensor, Tensor, Tensor> batch_norm_act_train(
    const Tensor& input, const OptTensor& weight, const OptTensor& bias, const OptTensor& residual,
    const OptTensor& running_mean, const OptTensor& running_var, double momentum, double eps,
    const std::string& activation, double activation_param, const OptTensor& num_batches_tracked) {
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
  check_batches_tracked(num_batches_tracked, input, op);
  const OptTensor res = lay_out_like(residual, "residual", x, op);
  const int64_t count = x.shape.reduce_size();
  // torch's own check (F.batch_norm / _verify_batch_size), same type and wording.
  TORCH_CHECK_VALUE(count != 1, "Expected more than 1 value per channel when training, got input size ",
                    input.sizes());

  const int64_t channels = x.shape.channels;
  const auto options = input.options().dtype(acc_type_of(input));
  Tensor out = empty_like_input(x);
  if (x.shape.numel() == 0) {
    // An empty batch (or no channels) leaves the running statistics untouched, as torch does;
    // it still counts as a batch.
    if (num_batches_tracked.has_value()) num_batches_tracked->add_(1);
    return {out, at::zeros({channels}, options), at::zeros({channels}, options)};
  }
  // The stats kernel and the finalize step write every channel.
  Tensor mean = at::empty({channels}, options);
  Tensor invstd = at::empty({channels}, options);
  const ChannelWorkspace ws(input, channels, 3);  // var, scale, shift
  Backend::stats(x.input, x.shape, mean.data_ptr(), ws[0]);
  const ChannelParams params = channel_params(weight, bias, input);
  const RunningBuffers running = running_buffers(running_mean, running_var, input);
  // torch stores the unbiased variance in running_var (Bessel's correction over N * spatial).
  const double bessel = static_cast<double>(count) / static_cast<double>(count - 1);
  Backend::finalize(input, ForwardStep{mean.data_ptr(), ws[0], &params, running.mean, running.var,
                                       running.is_acc, invstd.data_ptr(), ws[1], ws[2], eps, 1.0 - momentum,
                                       momentum, momentum * bessel,
                                       num_batches_tracked ? num_batches_tracked->data_ptr<int64_t>() : nullptr,
                                       channels});
  if (running_mean.has_value() && running.mean == nullptr)
    update_running_stats(running_mean, running_var, mean, ws.tensor(0), count, momentum);
  Backend::apply(x.input, res, ws[1], ws[2], act, activation_param, out, x.shape);
  return {out, mean, invstd};
}

// Eval forward. With save_stats (the eval-mode training path needs them for backward) also
// returns the running statistics as the accumulate-type mean and invstd.
template <typename Backend>
std::tuple<Tensor, Tensor, Tensor> batch_norm_act_eval_impl(
    const Tensor& input, const Tensor& running_mean, const Tensor& running_var, const OptTensor& weight,
    const OptTensor& bias, const OptTensor& residual, double eps, const std::string& activation,
    double activation_param, bool save_stats, const char* op) {
  const ActKind act = parse_activation(activation);
  check_eps_momentum(eps, 0.0, op);
  const LaidOut x = lay_out_input(input, op);
  check_per_channel(running_mean, "running_mean", input, op);
  check_per_channel(running_var, "running_var", input, op);
  check_per_channel(weight, "weight", input, op);
  check_per_channel(bias, "bias", input, op);
  const OptTensor res = lay_out_like(residual, "residual", x, op);
  const int64_t channels = x.shape.channels;
  Tensor out = empty_like_input(x);
  const auto options = input.options().dtype(acc_type_of(input));
  Tensor mean, invstd;  // undefined unless save_stats
  if (save_stats) {
    mean = at::empty({channels}, options);
    invstd = at::empty({channels}, options);
  }
  if (channels == 0 || (x.shape.numel() == 0 && !save_stats)) return {out, mean, invstd};
  // Buffers of an unusual dtype or layout are read through an accumulate-type copy.
  RunningBuffers running = running_buffers(running_mean, running_var, input);
  Tensor mean_copy, var_copy;
  if (running.mean == nullptr) {
    mean_copy = as_acc(running_mean, input);
    var_copy = as_acc(running_var, input);
    running = {mean_copy.data_ptr(), var_copy.data_ptr(), true};
  }
  const ChannelParams params = channel_params(weight, bias, input);
  const ChannelWorkspace ws(input, channels, save_stats ? 2 : 4);  // [mean, invstd,] scale, shift
  void* mean_out = save_stats ? mean.data_ptr() : ws[2];
  void* invstd_out = save_stats ? invstd.data_ptr() : ws[3];
  Backend::finalize(input, EvalStep{running.mean, running.var, running.is_acc, &params, mean_out, invstd_out,
                                    ws[0], ws[1], eps, channels});
  if (x.shape.numel() > 0) Backend::apply(x.input, res, ws[0], ws[1], act, activation_param, out, x.shape);
  return {out, mean, invstd};
}

template <typename Backend>
Tensor batch_norm_act_eval(const Tensor& input, const Tensor& running_mean, const Tensor& running_var,
                           const OptTensor& weight, const OptTensor& bias, const OptTensor& residual,
                           double eps, const std::string& activation, double activation_param) {
  return std::get<0>(batch_norm_act_eval_impl<Backend>(input, running_mean, running_var, weight, bias,
                                                       residual, eps, activation, activation_param, false,
                                                       "batch_norm_act_eval"));
}

// The eval forward that also returns (mean, invstd) for backward (eval-mode training: frozen
// statistics, trainable affine), one op like the training forward.
template <typename Backend>
std::tuple<Tensor, Tensor, Tensor> batch_norm_act_eval_for_backward(
    const Tensor& input, const Tensor& running_mean, const Tensor& running_var, const OptTensor& weight,
    const OptTensor& bias, const OptTensor& residual, double eps, const std::string& activation,
    double activation_param) {
  return batch_norm_act_eval_impl<Backend>(input, running_mean, running_var, weight, bias, residual, eps,
                                           activation, activation_param, true,
                                           "batch_norm_act_eval_for_backward");
}

}  // namespace pyfusedbn
