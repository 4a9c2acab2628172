// The per-channel steps between the bulk passes, defined once for the CPU (a plain loop over
// channels) and CUDA (one thread per channel, csrc/cuda/batch_norm_finalize.cu):
//   forward:  batch mean/var -> invstd, folded scale/shift, running-statistics update;
//   eval:     running mean/var -> mean, invstd, folded scale/shift;
//   backward: weight/invstd/bias -> the rebuild coefficients (before the reduction), and
//             sum_g/sum_g_xc -> grad_weight/grad_bias and the elementwise pass's coefficients.
// Doing this inside the kernels instead of with a dozen tiny tensor ops is what makes a layer's
// host cost (and on the GPU its launch count) independent of its channel count.
//
// No torch headers. Pointers of type param_t (weight, bias, their gradients) and running_t
// (running statistics) hold either the accumulate type or the input's type (half/bfloat16
// buffers of a half/bfloat16 model); `Convert` supplies to_acc/from_acc for them:
//   template <typename acc_t, typename T> static acc_t to_acc(T);
//   template <typename T, typename acc_t> static T from_acc(acc_t);   (round to nearest)
#pragma once

#include <stdint.h>

#include "../common/activations.h"

namespace pyfusedbn {

FBN_HOST_DEVICE float fbn_sqrt(float v) { return sqrtf(v); }
FBN_HOST_DEVICE double fbn_sqrt(double v) { return sqrt(v); }

// 1 / sqrt(var + eps), as torch's batch norm kernels compute it (a division, not rsqrt, which
// is approximate on the GPU).
template <typename acc_t>
FBN_HOST_DEVICE acc_t invstd_of(acc_t var, acc_t eps) {
  return acc_t(1) / fbn_sqrt(var + eps);
}

// The forward's affine transform folded per channel: x * scale + shift.
template <typename acc_t>
struct FoldedAffine {
  acc_t scale;
  acc_t shift;
};
template <typename acc_t>
FBN_HOST_DEVICE FoldedAffine<acc_t> fold_affine(acc_t mean, acc_t invstd, acc_t weight, acc_t bias) {
  const acc_t scale = weight * invstd;
  return {scale, bias - mean * scale};
}

template <typename Convert, typename acc_t, typename param_t>
FBN_HOST_DEVICE acc_t load_or(const param_t* p, int64_t c, acc_t absent) {
  return p ? Convert::template to_acc<acc_t>(p[c]) : absent;
}

// Training forward. running_* may be nullptr (not tracked); weight/bias may be nullptr (1 and 0).
template <typename acc_t, typename param_t, typename running_t>
struct ForwardFinalizeArgs {
  const acc_t* mean;  // batch mean and biased variance, from the stats pass
  const acc_t* var;
  const param_t* weight;
  const param_t* bias;
  running_t* running_mean;
  running_t* running_var;
  acc_t* invstd;
  acc_t* scale;
  acc_t* shift;
  acc_t eps;
  // running = keep * running + mean_weight * mean  (keep = 1 - momentum, mean_weight = momentum)
  // running_var likewise with var_weight = momentum * n / (n - 1): torch stores the unbiased
  // variance. Computed once on the host in double, as torch's in-place update takes its scalars.
  acc_t keep;
  acc_t mean_weight;
  acc_t var_weight;
  // The module's num_batches_tracked, incremented once per call (by channel 0's step) so that
  // torch's bookkeeping costs no op of its own; nullptr: the caller counts.
  int64_t* batches_tracked;
  int64_t channels;
};

template <typename Convert, typename acc_t, typename param_t, typename running_t>
FBN_HOST_DEVICE void finalize_forward_channel(const ForwardFinalizeArgs<acc_t, param_t, running_t>& a,
                                              int64_t c) {
  const acc_t mean = a.mean[c], var = a.var[c];
  const acc_t invstd = invstd_of(var, a.eps);
  const FoldedAffine<acc_t> affine = fold_affine(mean, invstd, load_or<Convert>(a.weight, c, acc_t(1)),
                                                 load_or<Convert>(a.bias, c, acc_t(0)));
  a.invstd[c] = invstd;
  a.scale[c] = affine.scale;
  a.shift[c] = affine.shift;
  if (c == 0 && a.batches_tracked) *a.batches_tracked += 1;
  if (a.running_mean) {
    // Updated in the accumulate type and rounded once (half/bfloat16 buffers).
    const acc_t rm = Convert::template to_acc<acc_t>(a.running_mean[c]);
    const acc_t rv = Convert::template to_acc<acc_t>(a.running_var[c]);
    a.running_mean[c] = Convert::template from_acc<running_t>(rm * a.keep + mean * a.mean_weight);
    a.running_var[c] = Convert::template from_acc<running_t>(rv * a.keep + var * a.var_weight);
  }
}

// Eval forward: statistics from the running buffers. mean_out/invstd_out receive them in the
// accumulate type (what the backward reads).
template <typename acc_t, typename param_t, typename running_t>
struct EvalFinalizeArgs {
  const running_t* running_mean;
  const running_t* running_var;
  const param_t* weight;
  const param_t* bias;
  acc_t* mean;
  acc_t* invstd;
  acc_t* scale;
  acc_t* shift;
  acc_t eps;
  int64_t channels;
};

template <typename Convert, typename acc_t, typename param_t, typename running_t>
FBN_HOST_DEVICE void finalize_eval_channel(const EvalFinalizeArgs<acc_t, param_t, running_t>& a, int64_t c) {
  const acc_t mean = Convert::template to_acc<acc_t>(a.running_mean[c]);
  const acc_t invstd = invstd_of(Convert::template to_acc<acc_t>(a.running_var[c]), a.eps);
  const FoldedAffine<acc_t> affine = fold_affine(mean, invstd, load_or<Convert>(a.weight, c, acc_t(1)),
                                                 load_or<Convert>(a.bias, c, acc_t(0)));
  a.mean[c] = mean;
  a.invstd[c] = invstd;
  a.scale[c] = affine.scale;
  a.shift[c] = affine.shift;
}

// Before the backward reduction: the coefficients that rebuild xc and the pre-activation
// (common/kernel_args.h, rebuild_pre_activation): scale = weight * invstd, bias (0 without affine).
// Also the forward's scale/shift from given statistics (the apply op), when shift is set.
template <typename acc_t, typename param_t>
struct PrepareArgs {
  const acc_t* mean;
  const acc_t* invstd;
  const param_t* weight;
  const param_t* bias;
  acc_t* scale;
  acc_t* bias_acc;  // nullptr: not wanted
  acc_t* shift;     // nullptr: not wanted
  int64_t channels;
};

template <typename Convert, typename acc_t, typename param_t>
FBN_HOST_DEVICE void prepare_channel(const PrepareArgs<acc_t, param_t>& a, int64_t c) {
  const acc_t bias = load_or<Convert>(a.bias, c, acc_t(0));
  const FoldedAffine<acc_t> affine =
      fold_affine(a.mean[c], a.invstd[c], load_or<Convert>(a.weight, c, acc_t(1)), bias);
  a.scale[c] = affine.scale;
  if (a.bias_acc) a.bias_acc[c] = bias;
  if (a.shift) a.shift[c] = affine.shift;
}

// The elementwise backward pass computes dx = g * coef_g + xc * coef_xc + coef_const with
// coef_g = scale; in training mode (statistics depend on x)
//   coef_xc = -scale * invstd * mean(g * x_hat),  coef_const = -scale * mean(g),
// in eval mode both are 0.
template <typename acc_t>
struct ElemtCoefficients {
  acc_t coef_xc;
  acc_t coef_const;
};
template <typename acc_t>
FBN_HOST_DEVICE ElemtCoefficients<acc_t> elemt_coefficients(acc_t scale, acc_t invstd, acc_t mean_g,
                                                            acc_t mean_g_xhat) {
  return {-scale * invstd * mean_g_xhat, -scale * mean_g};
}

// After the backward reduction. sum_g_xhat = invstd * sum_g_xc is grad_weight and sum_g is
// grad_bias (each written when its pointer is set, in the parameter's dtype); sum_g nullptr means
// both sums are 0 (an empty batch). The elementwise coefficients use mean_g = sum_g * inv_count
// and mean_g_xhat = sum_g_xhat * inv_count when `training`, else they are 0; coef_xc nullptr:
// not wanted. Given means (the synchronised BatchNorm's all-reduced ones) go in as sum_g and
// sum_g_xc with sums_are_xhat and inv_count = 1.
template <typename acc_t, typename param_t>
struct BackwardFinalizeArgs {
  const acc_t* invstd;
  const acc_t* scale;
  const acc_t* sum_g;
  const acc_t* sum_g_xc;
  param_t* grad_weight;
  param_t* grad_bias;
  acc_t* coef_xc;
  acc_t* coef_const;
  acc_t inv_count;
  bool training;
  bool sums_are_xhat;  // sum_g_xc already holds sum(g * x_hat)
  int64_t channels;
};

template <typename Convert, typename acc_t, typename param_t>
FBN_HOST_DEVICE void finalize_backward_channel(const BackwardFinalizeArgs<acc_t, param_t>& a, int64_t c) {
  const acc_t invstd = a.invstd[c];
  const acc_t sum_g = a.sum_g ? a.sum_g[c] : acc_t(0);
  const acc_t sum_g_xhat = !a.sum_g ? acc_t(0) : a.sums_are_xhat ? a.sum_g_xc[c] : a.sum_g_xc[c] * invstd;
  if (a.grad_weight) a.grad_weight[c] = Convert::template from_acc<param_t>(sum_g_xhat);
  if (a.grad_bias) a.grad_bias[c] = Convert::template from_acc<param_t>(sum_g);
  if (!a.coef_xc) return;
  ElemtCoefficients<acc_t> k{acc_t(0), acc_t(0)};
  if (a.training) k = elemt_coefficients(a.scale[c], invstd, sum_g * a.inv_count, sum_g_xhat * a.inv_count);
  a.coef_xc[c] = k.coef_xc;
  a.coef_const[c] = k.coef_const;
}

// One name for every step, so a loop (CPU) or kernel (CUDA) over channels is written once.
template <typename Convert, typename acc_t, typename param_t, typename running_t>
FBN_HOST_DEVICE void run_channel(const ForwardFinalizeArgs<acc_t, param_t, running_t>& a, int64_t c) {
  finalize_forward_channel<Convert>(a, c);
}
template <typename Convert, typename acc_t, typename param_t, typename running_t>
FBN_HOST_DEVICE void run_channel(const EvalFinalizeArgs<acc_t, param_t, running_t>& a, int64_t c) {
  finalize_eval_channel<Convert>(a, c);
}
template <typename Convert, typename acc_t, typename param_t>
FBN_HOST_DEVICE void run_channel(const PrepareArgs<acc_t, param_t>& a, int64_t c) {
  prepare_channel<Convert>(a, c);
}
template <typename Convert, typename acc_t, typename param_t>
FBN_HOST_DEVICE void run_channel(const BackwardFinalizeArgs<acc_t, param_t>& a, int64_t c) {
  finalize_backward_channel<Convert>(a, c);
}

// The parameters (weight, bias, grads) and running buffers of a call are each either in the
// accumulate type or in the input's type: calls f(type_tag<param_t>, type_tag<running_t>).
template <typename T>
struct type_tag {
  using type = T;
};
template <typename scalar_t, typename acc_t, typename F>
void dispatch_channel_types(bool params_are_acc, bool running_is_acc, F&& f) {
  auto with_params = [&](auto params) {
    if (running_is_acc) f(params, type_tag<acc_t>{});
    else f(params, type_tag<scalar_t>{});
  };
  if (params_are_acc) with_params(type_tag<acc_t>{});
  else with_params(type_tag<scalar_t>{});
}

}  // namespace pyfusedbn
