// CPU kernels of the GroupNorm rows path (one position per sample: LayerNorm2d's (N*H*W, C) rows;
// group_norm/args.h: group_rows_layout). The per-(row, channel) coefficients exist only for a
// block of rows at a time, in a per-thread scratch that stays in cache: each block fills them from
// its rows' statistics (group_norm/coefficients.h, the same formulas and roundings as the
// workspace arrays of the other layouts) and runs BatchNorm's vectorised kernels over the block
// as one row of (rows * C) channels (the reduction sums each element where it computes it, so
// needs no block arrays). The workspace is then per (row, group), per part and per thread, not
// per element.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../group_norm/coefficients.h"
#include "batch_norm_kernels.h"

namespace pyfusedbn {
namespace cpu {

// Elements of a block: its scratch arrays (up to five) stay in L2.
constexpr int64_t kRowBlockElements = 4096;
inline int64_t rows_per_block(int64_t channels) {
  return std::max<int64_t>(1, kRowBlockElements / std::max<int64_t>(channels, 1));
}
// Scratch bytes the rows kernels use per thread, for `arrays` per-(row, channel) arrays.
template <typename acc_t>
int64_t row_scratch_bytes(int64_t channels, int64_t arrays) {
  return arrays * rows_per_block(channels) * channels * static_cast<int64_t>(sizeof(acc_t)) * at::get_num_threads();
}

// A block of rows [n0, n1) as a BatchNorm problem: one row of (n1 - n0) * C channels.
inline BnShape row_block_shape(int64_t n0, int64_t n1, int64_t channels) {
  return BnShape{1, (n1 - n0) * channels, 1, true};
}

template <typename T>
inline T* rows_from(T* p, int64_t n0, int64_t channels) {
  return p == nullptr ? p : p + n0 * channels;  // absent residuals stay nullptr
}

// body(n0, n1, scratch) over blocks of at most rows_per_block rows, rows split across threads;
// scratch: `arrays` arrays of a block's values, this thread's.
template <typename acc_t, typename Body>
void for_each_row_block(int64_t rows, int64_t channels, int64_t arrays, Body body) {
  const int64_t K = rows_per_block(channels);
  at::parallel_for(0, rows, K, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> scratch(arrays * K * channels);
    for (int64_t n0 = r0; n0 < r1; n0 += K) body(n0, std::min(n0 + K, r1), scratch.data());
  });
}

// The rebuild coefficients mean, scale = weight * rstd and bias of rows [n0, n1), as
// group_backward_prepare_at writes them.
// body(ng, c, i) for every element of rows [n0, n1): its (row, group), channel and index in the block.
template <typename acc_t, typename Body>
void for_each_block_element(const GroupRowsCoefficients<acc_t>& rc, int64_t n0, int64_t n1, Body body) {
  const int64_t C = rc.channels, G = rc.groups, D = C / G;
  for (int64_t ng = n0 * G; ng < n1 * G; ++ng) {
    const int64_t first = (ng - n0 * G) * D, c0 = (ng % G) * D;
    for (int64_t j = 0; j < D; ++j) body(ng, c0 + j, first + j);
  }
}

template <typename acc_t>
void fill_rebuild_coefficients(const GroupRowsCoefficients<acc_t>& rc, int64_t n0, int64_t n1, acc_t* mean,
                               acc_t* scale, acc_t* bias) {
  for_each_block_element(rc, n0, n1, [&](int64_t ng, int64_t c, int64_t i) {
    mean[i] = rc.mean[ng];
    scale[i] = weight_at(rc.weight, c) * rc.rstd[ng];
    bias[i] = bias_at(rc.bias, c);
  });
}

template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void group_rows_apply_kernel(const ApplyArgs<scalar_t, acc_t>& a, const GroupRowsCoefficients<acc_t>& rc) {
  const int64_t C = rc.channels;
  for_each_row_block<acc_t>(a.shape.batch, C, 2, [&](int64_t n0, int64_t n1, acc_t* scratch) {
    acc_t *scale = scratch, *shift = scratch + (n1 - n0) * C;
    for_each_block_element(rc, n0, n1, [&](int64_t ng, int64_t c, int64_t i) {
      const ScaleShift<acc_t> s = group_scale_shift(rc.mean[ng], rc.rstd[ng], rc.weight, rc.bias, c);
      scale[i] = s.scale;
      shift[i] = s.shift;
    });
    ApplyArgs<scalar_t, acc_t> b = a;
    b.input = rows_from(a.input, n0, C);
    b.residual = rows_from(a.residual, n0, C);
    b.output = rows_from(a.output, n0, C);
    b.scale = scale;
    b.shift = shift;
    b.shape = row_block_shape(n0, n1, C);
    apply_kernel<Act, kResidual>(b);
  });
}

// The reduction: per (row, group) the elementwise coefficients into rc.coef_xc / coef_const, per
// part the parameter-gradient sums into rc.partials; parts run in parallel, their rows in order.
// Each element's g and g * xc are summed where they are made (no per-element array), with the
// other layouts' roundings: g * xc in acc_t, the sums in double.
template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void group_rows_reduce_kernel(const ReduceArgs<scalar_t, acc_t>& a, const GroupRowsCoefficients<acc_t>& rc,
                              double count) {
  const int64_t N = a.shape.batch, C = rc.channels, G = rc.groups, D = C / G;
  const int64_t per_part = group_rows_per_part(N, rc.parts);
  const acc_t param = a.activation_param;
  at::parallel_for(0, rc.parts, 1, [&](int64_t p0, int64_t p1) {
    std::vector<double> sum_weight(C), sum_bias(C);
    for (int64_t part = p0; part < p1; ++part) {
      std::fill(sum_weight.begin(), sum_weight.end(), 0.0);
      std::fill(sum_bias.begin(), sum_bias.end(), 0.0);
      double *part_weight = sum_weight.data(), *part_bias = sum_bias.data();
      for (int64_t n = part * per_part; n < std::min(N, (part + 1) * per_part); ++n) {
        const scalar_t *dy = a.grad_out + n * C, *saved = a.saved + n * C;
        const scalar_t* res = kResidual ? a.residual + n * C : nullptr;
        for (int64_t ng = n * G; ng < (n + 1) * G; ++ng) {
          const acc_t mean = rc.mean[ng], rstd = rc.rstd[ng];
          DxhatSums sums{0, 0};
          double dxhat = 0, dxhat_xc = 0;
#pragma omp simd reduction(+ : dxhat, dxhat_xc)
          for (int64_t c = (ng - n * G) * D; c < (ng - n * G + 1) * D; ++c) {
            const acc_t w = weight_at(rc.weight, c);
            acc_t r = 0;
            if constexpr (kResidual) r = load_acc<acc_t>(res[c]);
            const auto t = grad_and_centred<Act, kResidual, false>(load_acc<acc_t>(dy[c]), load_acc<acc_t>(saved[c]),
                                                                   r, mean, w * rstd, bias_at(rc.bias, c), param);
            const acc_t g_xc = t.z * t.xc;  // t = {xc, g}
            dxhat += static_cast<double>(w) * t.z;
            dxhat_xc += static_cast<double>(w) * g_xc;
            part_weight[c] += static_cast<double>(g_xc) * rstd;
            part_bias[c] += t.z;
          }
          sums.a = dxhat;
          sums.b = dxhat_xc;
          const ElemtCoefficientPair<acc_t> coefs = group_elemt_coefficients(rstd, count, sums);
          rc.coef_xc[ng] = coefs.coef_xc;
          rc.coef_const[ng] = coefs.coef_const;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        rc.partials[2 * (part * C + c)] = part_weight[c];
        rc.partials[2 * (part * C + c) + 1] = part_bias[c];
      }
    }
  });
}

template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void group_rows_elemt_kernel(const ElemtArgs<scalar_t, acc_t>& a, const GroupRowsCoefficients<acc_t>& rc) {
  const int64_t C = rc.channels;
  for_each_row_block<acc_t>(a.shape.batch, C, 5, [&](int64_t n0, int64_t n1, acc_t* scratch) {
    const int64_t m = (n1 - n0) * C;
    acc_t *mean = scratch, *scale = scratch + m, *bias = scratch + 2 * m, *coef_xc = scratch + 3 * m,
          *coef_const = scratch + 4 * m;
    fill_rebuild_coefficients(rc, n0, n1, mean, scale, bias);
    for_each_block_element(rc, n0, n1, [&](int64_t ng, int64_t, int64_t i) {
      coef_xc[i] = rc.coef_xc[ng];
      coef_const[i] = rc.coef_const[ng];
    });
    ElemtArgs<scalar_t, acc_t> b = a;
    b.grad_out = rows_from(a.grad_out, n0, C);
    b.saved = rows_from(a.saved, n0, C);
    b.residual = rows_from(a.residual, n0, C);
    b.grad_input = rows_from(a.grad_input, n0, C);
    b.grad_residual = rows_from(a.grad_residual, n0, C);
    b.mean = mean;
    b.scale = scale;
    b.bias = bias;
    b.coef_g = scale;  // weight * rstd, as in the workspace arrays
    b.coef_xc = coef_xc;
    b.coef_const = coef_const;
    b.shape = row_block_shape(n0, n1, C);
    elemt_kernel<Act, kResidual, false>(b);
  });
}

}  // namespace cpu
}  // namespace pyfusedbn
