// GroupNorm's per-(sample, group) algebra, written once for CPU and CUDA (torch-free): the
// coefficients the elementwise kernels take per (sample, channel) and the parameter gradients.
// Each formula is a per-item FBN_HOST_DEVICE function; the host loops at the bottom call them for
// CPU tensors, and the CUDA kernels (cuda/group_norm_finalize.cu, the end of group_stats_kernel in
// cuda/group_norm.cu) call them one thread per item. Usually a few thousand values: as ~20
// small tensor ops they cost more than the kernels themselves (~35 us of a 50 us CPU op, a launch
// each on a GPU). The sums run in double on both devices.
#pragma once

#include <math.h>
#include <stdint.h>

#include "../common/host_device.h"
#include "args.h"

namespace pyfusedbn {

template <typename acc_t>
FBN_HOST_DEVICE acc_t weight_at(const acc_t* weight, int64_t c) {
  return weight ? weight[c] : acc_t(1);
}
template <typename acc_t>
FBN_HOST_DEVICE acc_t bias_at(const acc_t* bias, int64_t c) {
  return bias ? bias[c] : acc_t(0);
}

// Per (n, g): rstd = 1 / sqrt(var + eps), the root taken in double (as the CPU loop always has,
// so both devices round it alike).
template <typename acc_t>
FBN_HOST_DEVICE acc_t group_rstd(acc_t var, double eps) {
  return acc_t(1) / static_cast<acc_t>(sqrt(static_cast<double>(var) + eps));
}

// Per (n, c): the apply pass's scale = weight * rstd and shift = bias - mean * scale.
template <typename acc_t>
struct ScaleShift {
  acc_t scale;
  acc_t shift;
};
template <typename acc_t>
FBN_HOST_DEVICE ScaleShift<acc_t> group_scale_shift(acc_t mean, acc_t rstd, const acc_t* weight,
                                                    const acc_t* bias, int64_t c) {
  const acc_t scale = weight_at(weight, c) * rstd;
  return {scale, bias_at(bias, c) - mean * scale};
}

// Per (n, c): the backward passes' rebuild coefficients mean, scale = weight * rstd, bias.
template <typename acc_t>
FBN_HOST_DEVICE void group_backward_prepare_at(const GroupCoefficientArgs<acc_t>& a,
                                               const GroupBackwardArrays<acc_t>& k, int64_t n, int64_t c) {
  const int64_t nc = n * a.channels + c, ng = n * a.groups + c / a.channels_per_group();
  k.mean[nc] = a.mean[ng];
  k.scale[nc] = weight_at(a.weight, c) * a.rstd[ng];
  k.bias[nc] = bias_at(a.bias, c);
}

// Per c, from the reduction's sums: grad_bias = sum_n sum_g, grad_weight = sum_n rstd * sum_g_xc,
// summed in double over the samples n_first, n_first + n_step, ... below n_end (a CUDA thread
// sums a strided part and the block merges the parts; the CPU loop takes them all).
struct ParamGradSums {
  double weight;
  double bias;
};
template <typename acc_t>
FBN_HOST_DEVICE ParamGradSums group_param_grad_sums(const GroupCoefficientArgs<acc_t>& a,
                                                    const GroupBackwardArrays<acc_t>& k, int64_t c,
                                                    int64_t n_first, int64_t n_end, int64_t n_step) {
  const int64_t C = a.channels, g = c / a.channels_per_group();
  ParamGradSums sums{0, 0};
  for (int64_t n = n_first; n < n_end; n += n_step) {
    sums.bias += k.sum_g[n * C + c];
    sums.weight += static_cast<double>(k.sum_g_xc[n * C + c]) * a.rstd[n * a.groups + g];
  }
  return sums;
}

// Per (n, g), the elementwise pass's coefficients for the group's channels. With
// dxhat = g * weight over a group of `count` elements,
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
//      = g * (weight * rstd) + xc * (-rstd^3 * B / count) + (-rstd * A / count),
// A = sum(weight * sum_g), B = sum(weight * sum_g_xc) over the group's D channels, in double.
// As above, over the channels j_first, j_first + j_step, ... of the group (a CUDA warp's lanes
// share a group); the stores likewise.
struct DxhatSums {
  double a;
  double b;
};
template <typename acc_t>
FBN_HOST_DEVICE int64_t group_first_slot(const GroupCoefficientArgs<acc_t>& a, int64_t ng) {
  return (ng / a.groups) * a.channels + (ng % a.groups) * a.channels_per_group();  // n * C + c0
}
template <typename acc_t>
FBN_HOST_DEVICE DxhatSums group_dxhat_sums(const GroupCoefficientArgs<acc_t>& a, const GroupBackwardArrays<acc_t>& k,
                                           int64_t ng, int64_t j_first, int64_t j_step) {
  const int64_t D = a.channels_per_group(), first = group_first_slot(a, ng), c0 = (ng % a.groups) * D;
  DxhatSums sums{0, 0};
  for (int64_t j = j_first; j < D; j += j_step) {
    const double w = weight_at(a.weight, c0 + j);
    sums.a += w * k.sum_g[first + j];
    sums.b += w * k.sum_g_xc[first + j];
  }
  return sums;
}
template <typename acc_t>
struct ElemtCoefficientPair {
  acc_t coef_xc;
  acc_t coef_const;
};
template <typename acc_t>
FBN_HOST_DEVICE ElemtCoefficientPair<acc_t> group_elemt_coefficients(acc_t rstd, double count, const DxhatSums& sums) {
  const double r = rstd;
  return {static_cast<acc_t>(-r * r * r * sums.b / count), static_cast<acc_t>(-r * sums.a / count)};
}
template <typename acc_t>
FBN_HOST_DEVICE void group_store_elemt_coefficients(const GroupCoefficientArgs<acc_t>& a,
                                                    const GroupBackwardArrays<acc_t>& k, double count, int64_t ng,
                                                    const DxhatSums& sums, int64_t j_first, int64_t j_step) {
  const int64_t D = a.channels_per_group(), first = group_first_slot(a, ng);
  const ElemtCoefficientPair<acc_t> coefs = group_elemt_coefficients(a.rstd[ng], count, sums);
  for (int64_t j = j_first; j < D; j += j_step) {
    k.coef_xc[first + j] = coefs.coef_xc;
    k.coef_const[first + j] = coefs.coef_const;
  }
}

// The rows path (args.h: GroupRowsCoefficients): element (n, c)'s coefficients from its row's
// statistics, by the formulas above, so each value rounds as the per-(sample, channel) arrays would.
template <typename acc_t>
FBN_HOST_DEVICE ScaleShift<acc_t> group_rows_scale_shift(const GroupRowsCoefficients<acc_t>& rc, int64_t n,
                                                         int64_t c) {
  const int64_t ng = rc.group_of(n, c);
  return group_scale_shift(rc.mean[ng], rc.rstd[ng], rc.weight, rc.bias, c);
}
// The parameter gradients of channel c: the parts' sums (rc.partials) in part order.
FBN_HOST_DEVICE ParamGradSums group_merged_param_grads(const double* partials, int64_t parts, int64_t channels,
                                                              int64_t c) {
  ParamGradSums sums{0, 0};
  for (int64_t part = 0; part < parts; ++part) {
    sums.weight += partials[2 * (part * channels + c)];
    sums.bias += partials[2 * (part * channels + c) + 1];
  }
  return sums;
}

// The host loops (CPU tensors).

// Forward: rstd per (n, g) from var, and scale / shift per (n, c). var may be rstd itself (the
// CPU backend has the statistics kernel write var there): each var[ng] is read before rstd[ng]
// is written, and never after.
template <typename acc_t>
void group_forward_coefficients(const acc_t* mean, const acc_t* var, double eps, const acc_t* weight,
                                const acc_t* bias, int64_t N, int64_t C, int64_t G, acc_t* rstd,
                                const GroupForwardArrays<acc_t>& out) {
  const int64_t D = C / G;
  for (int64_t ng = 0; ng < N * G; ++ng) {
    const acc_t r = group_rstd(var[ng], eps);
    rstd[ng] = r;
    if (out.scale == nullptr) continue;  // the rows path: no per-(sample, channel) arrays
    const int64_t n = ng / G, c0 = (ng % G) * D;
    for (int64_t c = c0; c < c0 + D; ++c) {
      const ScaleShift<acc_t> s = group_scale_shift(mean[ng], r, weight, bias, c);
      out.scale[n * C + c] = s.scale;
      out.shift[n * C + c] = s.shift;
    }
  }
}

// Backward, before the passes.
template <typename acc_t>
void group_backward_prepare(const GroupCoefficientArgs<acc_t>& a, const GroupBackwardArrays<acc_t>& k) {
  for (int64_t n = 0; n < a.batch; ++n)
    for (int64_t c = 0; c < a.channels; ++c) group_backward_prepare_at(a, k, n, c);
}

// Backward, between the passes: parameter gradients (C values) and elementwise coefficients;
// count = elements per group.
template <typename acc_t>
void group_param_grads(const GroupCoefficientArgs<acc_t>& a, const GroupBackwardArrays<acc_t>& k, acc_t* grad_weight,
                       acc_t* grad_bias) {
  for (int64_t c = 0; c < a.channels; ++c) {
    const ParamGradSums sums = group_param_grad_sums(a, k, c, 0, a.batch, 1);
    grad_weight[c] = static_cast<acc_t>(sums.weight);
    grad_bias[c] = static_cast<acc_t>(sums.bias);
  }
}
// The elementwise coefficients of groups [ng0, ng1) (all their reduction sums are in).
template <typename acc_t>
void group_elemt_coefficients(const GroupCoefficientArgs<acc_t>& a, const GroupBackwardArrays<acc_t>& k, double count,
                              int64_t ng0, int64_t ng1) {
  for (int64_t ng = ng0; ng < ng1; ++ng)
    group_store_elemt_coefficients(a, k, count, ng, group_dxhat_sums(a, k, ng, 0, 1), 0, 1);
}
template <typename acc_t>
void group_backward_finalize(const GroupCoefficientArgs<acc_t>& a, const GroupBackwardArrays<acc_t>& k,
                             double count, acc_t* grad_weight, acc_t* grad_bias) {
  group_param_grads(a, k, grad_weight, grad_bias);
  group_elemt_coefficients(a, k, count, 0, a.batch * a.groups);
}

// Rows backward, between the passes: the parameter gradients from the parts' sums.
template <typename acc_t>
void group_rows_param_grads(const GroupRowsCoefficients<acc_t>& rc, acc_t* grad_weight, acc_t* grad_bias) {
  for (int64_t c = 0; c < rc.channels; ++c) {
    const ParamGradSums sums = group_merged_param_grads(rc.partials, rc.parts, rc.channels, c);
    grad_weight[c] = static_cast<acc_t>(sums.weight);
    grad_bias[c] = static_cast<acc_t>(sums.bias);
  }
}

}  // namespace pyfusedbn
