// GroupNorm's per-(sample, group) algebra as plain loops (torch-free), for CPU tensors: the
// coefficients the kernels take per (sample, channel), and the parameter gradients. On a CPU these
// few thousand values cost less as one loop than as the ~20 small tensor ops they replace
// (~35 us of a 50 us op on a small layer). Other devices use the same formulas as tensor ops
// (group_norm_act_common.cpp). weight / bias: C values or nullptr (1 and 0).
#pragma once

#include <math.h>
#include <stdint.h>

namespace pyfusedbn {

// rstd = 1 / sqrt(var + eps) per (n, g); scale = weight * rstd, shift = bias - mean * scale per (n, c).
template <typename acc_t>
void group_forward_coefficients(const acc_t* mean, const acc_t* var, double eps, const acc_t* weight,
                                const acc_t* bias, int64_t N, int64_t C, int64_t G, acc_t* rstd, acc_t* scale,
                                acc_t* shift) {
  const int64_t D = C / G;
  for (int64_t ng = 0; ng < N * G; ++ng) {
    const acc_t r = acc_t(1) / static_cast<acc_t>(sqrt(static_cast<double>(var[ng]) + eps));
    rstd[ng] = r;
    const int64_t n = ng / G, c0 = (ng % G) * D;
    for (int64_t c = c0; c < c0 + D; ++c) {
      const acc_t s = (weight ? weight[c] : acc_t(1)) * r;
      scale[n * C + c] = s;
      shift[n * C + c] = (bias ? bias[c] : acc_t(0)) - mean[ng] * s;
    }
  }
}

// The backward passes' per-(n, c) inputs: mean, scale = weight * rstd, bias.
template <typename acc_t>
void group_backward_prepare(const acc_t* mean, const acc_t* rstd, const acc_t* weight, const acc_t* bias,
                            int64_t N, int64_t C, int64_t G, acc_t* mean_nc, acc_t* scale_nc, acc_t* bias_nc) {
  const int64_t D = C / G;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t ng = n * G + c / D;
      mean_nc[n * C + c] = mean[ng];
      scale_nc[n * C + c] = (weight ? weight[c] : acc_t(1)) * rstd[ng];
      bias_nc[n * C + c] = bias ? bias[c] : acc_t(0);
    }
}

// From the reduction's sum_g and sum_g_xc per (n, c): grad_bias = sum_n sum_g, grad_weight =
// sum_n rstd * sum_g_xc, and the elementwise coefficients (group_norm_act_ops.h derives them)
//   coef_xc = -rstd^3 * B / count, coef_const = -rstd * A / count,
// A = sum(weight * sum_g), B = sum(weight * sum_g_xc) over the group's channels. Sums in double.
template <typename acc_t>
void group_backward_finalize(const acc_t* sum_g, const acc_t* sum_g_xc, const acc_t* rstd, const acc_t* weight,
                             int64_t N, int64_t C, int64_t G, double count, acc_t* grad_weight, acc_t* grad_bias,
                             acc_t* coef_xc, acc_t* coef_const) {
  const int64_t D = C / G;
  for (int64_t c = 0; c < C; ++c) {
    double gw = 0, gb = 0;
    for (int64_t n = 0; n < N; ++n) {
      gb += sum_g[n * C + c];
      gw += static_cast<double>(sum_g_xc[n * C + c]) * rstd[n * G + c / D];
    }
    grad_weight[c] = static_cast<acc_t>(gw);
    grad_bias[c] = static_cast<acc_t>(gb);
  }
  for (int64_t ng = 0; ng < N * G; ++ng) {
    const int64_t n = ng / G, c0 = (ng % G) * D;
    double a = 0, b = 0;
    for (int64_t c = c0; c < c0 + D; ++c) {
      const double w = weight ? weight[c] : 1.0;
      a += w * sum_g[n * C + c];
      b += w * sum_g_xc[n * C + c];
    }
    const double r = rstd[ng];
    const acc_t xc_coef = static_cast<acc_t>(-r * r * r * b / count);
    const acc_t const_coef = static_cast<acc_t>(-r * a / count);
    for (int64_t c = c0; c < c0 + D; ++c) {
      coef_xc[n * C + c] = xc_coef;
      coef_const[n * C + c] = const_coef;
    }
  }
}

}  // namespace pyfusedbn
