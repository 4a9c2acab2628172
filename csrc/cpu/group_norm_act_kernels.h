// CPU kernels of the GroupNorm family: statistics per (sample, group), and the elementwise and
// backward-reduction passes with per-(sample, channel) coefficients. They reuse BatchNorm's
// per-element helpers (block_mean_m2, rebuild_pre_activation) and argument structs.
//
// Layouts: planar (NCHW) runs over (n, c) planes, one coefficient each, threads split the
// planes; rows (channels_last, or one position per sample) run over rows of C values and
// vectorise along C, threads split rows (elementwise) or (sample, channel chunk) (reductions).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../group_norm_args.h"
#include "batch_norm_act_kernels.h"

namespace pyfusedbn {
namespace cpu {

// Pre-activation value z at element i of a run: per-(sample, channel) coefficients are a scalar
// for a planar run and indexed by i along a channels_last row.
// g = grad_out * act'(z) and xc of element i, coefficient slot c (scalar per-channel loads hoist
// out of planar loops; along a channels_last row c == i). Returned as Rebuilt{xc, z = g}.
template <typename Act, bool kResidual, bool kFromOutput, typename Args>
inline auto element_grad_and_centred(const Args& a, int64_t i, int64_t c) {
  using acc_t = decltype(a.activation_param);
  const auto r = rebuild_pre_activation<Act, kResidual, kFromOutput, acc_t>(
      load_acc<acc_t>(a.saved[i]), kResidual ? load_acc<acc_t>(a.residual[i]) : acc_t(0),
      a.mean[c], a.scale[c], a.bias[c], a.activation_param);
  return Rebuilt<acc_t>{r.xc, load_acc<acc_t>(a.grad_out[i]) * Act::grad(r.z, a.activation_param)};
}

template <bool kResidual, typename scalar_t, typename acc_t>
inline acc_t pre_activation(const scalar_t* x, const scalar_t* res, acc_t scale, acc_t shift, int64_t i) {
  acc_t z = load_acc<acc_t>(x[i]) * scale + shift;
  if constexpr (kResidual) z += load_acc<acc_t>(res[i]);
  return z;
}

// Channels per reduction task in the rows layout: a chunk's partials stay in registers/L1 and
// (sample, chunk) tasks give threads work even for a batch of one.
constexpr int64_t kChannelChunk = 64;

// Calls body(n, c0, c1) for every (sample, channel chunk) of the rows layout, split for threads.
template <typename Body>
inline void for_each_sample_chunk(const BnShape& shape, Body body) {
  const int64_t C = shape.channels;
  const int64_t chunks = (C + kChannelChunk - 1) / kChannelChunk;
  at::parallel_for(0, shape.batch * chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = (t % chunks) * kChannelChunk;
      body(t / chunks, c0, std::min(C, c0 + kChannelChunk));
    }
  });
}

// Per-(n, c) mean and M2 over the positions of a channels_last input, merged by blocks of rows
// (two passes over cached data per block, as stats_channels_last), count = spatial each.
template <typename scalar_t, typename acc_t>
void channel_stats_rows(const GroupStatsArgs<scalar_t, acc_t>& a, acc_t* nc_mean, acc_t* nc_m2) {
  const int64_t C = a.shape.channels, S = a.shape.spatial;
  for_each_sample_chunk(a.shape, [&](int64_t n, int64_t c0, int64_t c1) {
    const int64_t width = c1 - c0;
    const int64_t rows_per_block = std::max<int64_t>(1, kBlock / width);
    acc_t* mean = nc_mean + n * C + c0;
    acc_t* m2 = nc_m2 + n * C + c0;
    std::fill(mean, mean + width, acc_t(0));
    std::fill(m2, m2 + width, acc_t(0));
    acc_t block_mean[kChannelChunk], block_m2[kChannelChunk];
    int64_t count = 0;
    for (int64_t r0 = 0; r0 < S; r0 += rows_per_block) {
      const int64_t r1 = std::min(S, r0 + rows_per_block);
      const acc_t len = static_cast<acc_t>(r1 - r0);
      const scalar_t* first = a.input + (n * S + r0) * C + c0;
      std::fill(block_mean, block_mean + width, acc_t(0));
      std::fill(block_m2, block_m2 + width, acc_t(0));
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = a.input + (n * S + r) * C + c0;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) block_mean[c] += load_acc<acc_t>(row[c]) - load_acc<acc_t>(first[c]);
      }
      for (int64_t c = 0; c < width; ++c) block_mean[c] = load_acc<acc_t>(first[c]) + block_mean[c] / len;
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = a.input + (n * S + r) * C + c0;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) {
          const acc_t d = load_acc<acc_t>(row[c]) - block_mean[c];
          block_m2[c] += d * d;
        }
      }
      const int64_t total = count + (r1 - r0);
      const acc_t block_share = len / static_cast<acc_t>(total);
      const acc_t prev = static_cast<acc_t>(count);
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) {
        const acc_t delta = block_mean[c] - mean[c];
        mean[c] += delta * block_share;
        m2[c] += block_m2[c] + delta * delta * prev * block_share;
      }
      count = total;
    }
  });
}

template <typename scalar_t, typename acc_t>
void group_stats_kernel(const GroupStatsArgs<scalar_t, acc_t>& a) {
  const int64_t N = a.shape.batch, C = a.shape.channels, S = a.shape.spatial, G = a.groups;
  const int64_t D = a.channels_per_group();
  if (a.contiguous_groups()) {
    const int64_t len = D * S;
    at::parallel_for(0, N * G, std::max<int64_t>(1, kBlock / len), [&](int64_t g0, int64_t g1) {
      for (int64_t ng = g0; ng < g1; ++ng) {
        const scalar_t* group = a.input + ng * len;
        MeanM2<acc_t> acc{0, 0, 0};
        for (int64_t s0 = 0; s0 < len; s0 += kBlock)
          acc = chan_merge(acc, block_mean_m2<acc_t>(group + s0, std::min(kBlock, len - s0)));
        a.mean[ng] = acc.mean;
        a.var[ng] = acc.m2 / static_cast<acc_t>(len);
      }
    });
    return;
  }
  std::vector<acc_t> nc_mean(N * C), nc_m2(N * C);
  channel_stats_rows(a, nc_mean.data(), nc_m2.data());
  at::parallel_for(0, N * G, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t ng = g0; ng < g1; ++ng) {
      MeanM2<acc_t> acc{0, 0, 0};
      for (int64_t c = ng * D; c < (ng + 1) * D; ++c) acc = chan_merge(acc, MeanM2<acc_t>{nc_mean[c], nc_m2[c], S});
      a.mean[ng] = acc.mean;
      a.var[ng] = acc.m2 / static_cast<acc_t>(acc.count);
    }
  });
}

// Calls body(x_offset, coef_offset, len, planar) over the elementwise work split for threads:
// a planar run is one (n, c) plane with the scalar coefficient at coef_offset; a rows run is one
// row of C values whose coefficients start at coef_offset = n * C.
template <typename Body>
inline void for_each_group_run(const BnShape& shape, Body body) {
  const int64_t C = shape.channels, S = shape.spatial;
  if (!shape.channels_last) {
    at::parallel_for(0, shape.batch * C, std::max<int64_t>(1, kGrain / S), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) body(p * S, p, S, true);
    });
  } else {
    at::parallel_for(0, shape.batch * S, std::max<int64_t>(1, kGrain / C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) body(r * C, (r / S) * C, C, false);
    });
  }
}

template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void group_apply_kernel(const ApplyArgs<scalar_t, acc_t>& a) {
  const acc_t p = a.activation_param;
  for_each_group_run(a.shape, [&](int64_t off, int64_t coef, int64_t len, bool planar) {
    const scalar_t* x = a.input + off;
    const scalar_t* res = kResidual ? a.residual + off : nullptr;
    scalar_t* out = a.output + off;
    if (planar) {
      const acc_t sc = a.scale[coef], sh = a.shift[coef];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i)
        out[i] = store_as<scalar_t>(Act::value(pre_activation<kResidual>(x, res, sc, sh, i), p));
    } else {
      const acc_t* sc = a.scale + coef;
      const acc_t* sh = a.shift + coef;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i)
        out[i] = store_as<scalar_t>(Act::value(pre_activation<kResidual>(x, res, sc[i], sh[i], i), p));
    }
  });
}

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
void group_elemt_kernel(const ElemtArgs<scalar_t, acc_t>& a) {
  for_each_group_run(a.shape, [&](int64_t off, int64_t coef, int64_t len, bool planar) {
    // Local copy with the run's offsets applied (element and coefficient), as elemt_kernel.
    ElemtArgs<scalar_t, acc_t> run = a;
    run.saved += off;
    run.grad_out += off;
    if constexpr (kResidual) run.residual += off;
    run.mean += coef;
    run.scale += coef;
    run.bias += coef;
    const acc_t* coef_g = a.coef_g + coef;
    const acc_t* coef_xc = a.coef_xc + coef;
    const acc_t* coef_const = a.coef_const + coef;
    scalar_t* __restrict__ dx = a.grad_input + off;
    scalar_t* __restrict__ dres = kResidual ? a.grad_residual + off : nullptr;
    if (planar) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const auto t = element_grad_and_centred<Act, kResidual, kFromOutput>(run, i, 0);  // {xc, g}
        dx[i] = store_as<scalar_t>(t.z * coef_g[0] + t.xc * coef_xc[0] + coef_const[0]);
        if constexpr (kResidual) dres[i] = store_as<scalar_t>(t.z);
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const auto t = element_grad_and_centred<Act, kResidual, kFromOutput>(run, i, i);
        dx[i] = store_as<scalar_t>(t.z * coef_g[i] + t.xc * coef_xc[i] + coef_const[i]);
        if constexpr (kResidual) dres[i] = store_as<scalar_t>(t.z);
      }
    }
  });
}

// sum(g) and sum(g * xc) per (n, c): blocks sum in acc_t (vectorised), block totals in double.
template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
void group_reduce_kernel(const ReduceArgs<scalar_t, acc_t>& a) {
  const int64_t C = a.shape.channels, S = a.shape.spatial;
  if (!a.shape.channels_last) {
    at::parallel_for(0, a.shape.batch * C, std::max<int64_t>(1, kBlock / S), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        double total_g = 0, total_g_xc = 0;
        for (int64_t s0 = 0; s0 < S; s0 += kBlock) {
          ReduceArgs<scalar_t, acc_t> run = a;
          const int64_t off = p * S + s0, len = std::min(kBlock, S - s0);
          run.saved += off;
          run.grad_out += off;
          if constexpr (kResidual) run.residual += off;
          acc_t sum_g = 0, sum_g_xc = 0;
#pragma omp simd reduction(+ : sum_g, sum_g_xc)
          for (int64_t i = 0; i < len; ++i) {
            const auto t = element_grad_and_centred<Act, kResidual, kFromOutput>(run, i, p);  // {xc, g}
            sum_g += t.z;
            sum_g_xc += t.z * t.xc;
          }
          total_g += sum_g;
          total_g_xc += sum_g_xc;
        }
        a.sum_g[p] = static_cast<acc_t>(total_g);
        a.sum_g_xc[p] = static_cast<acc_t>(total_g_xc);
      }
    });
    return;
  }
  for_each_sample_chunk(a.shape, [&](int64_t n, int64_t c0, int64_t c1) {
    const int64_t width = c1 - c0;
    const int64_t rows_per_block = std::max<int64_t>(1, kBlock / width);
    double total_g[kChannelChunk] = {}, total_g_xc[kChannelChunk] = {};
    acc_t sum_g[kChannelChunk], sum_g_xc[kChannelChunk];
    ReduceArgs<scalar_t, acc_t> run = a;
    run.mean += n * C + c0;
    run.scale += n * C + c0;
    run.bias += n * C + c0;
    for (int64_t r0 = 0; r0 < S; r0 += rows_per_block) {
      std::fill(sum_g, sum_g + width, acc_t(0));
      std::fill(sum_g_xc, sum_g_xc + width, acc_t(0));
      const int64_t r1 = std::min(S, r0 + rows_per_block);
      for (int64_t r = r0; r < r1; ++r) {
        ReduceArgs<scalar_t, acc_t> row = run;
        const int64_t off = (n * S + r) * C + c0;
        row.saved += off;
        row.grad_out += off;
        if constexpr (kResidual) row.residual += off;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) {
          const auto t = element_grad_and_centred<Act, kResidual, kFromOutput>(row, c, c);  // {xc, g}
          sum_g[c] += t.z;
          sum_g_xc[c] += t.z * t.xc;
        }
      }
      for (int64_t c = 0; c < width; ++c) {
        total_g[c] += sum_g[c];
        total_g_xc[c] += sum_g_xc[c];
      }
    }
    for (int64_t c = 0; c < width; ++c) {
      a.sum_g[n * C + c0 + c] = static_cast<acc_t>(total_g[c]);
      a.sum_g_xc[n * C + c0 + c] = static_cast<acc_t>(total_g_xc[c]);
    }
  });
}

}  // namespace cpu
}  // namespace pyfusedbn
