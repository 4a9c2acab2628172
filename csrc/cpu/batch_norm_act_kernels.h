// CPU kernels: raw-pointer loops, multi-threaded with at::parallel_for and written so the
// compiler vectorises the inner loop (`omp simd`, one activation inlined per instantiation).
//
// Two layouts (see BnShape): planar (NCHW, each (n, c) plane contiguous) parallelises over
// channels for the reductions and over planes for the elementwise passes; channels_last (rows of
// C values) vectorises along C and reduces into per-thread per-channel partials.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../kernel_args.h"
#include "../welford.h"
#include "convert.h"

namespace pyfusedbn {
namespace cpu {

// Elements per two-pass statistics block, and per reduction block: small enough to stay in L1/L2
// between the two passes, large enough to amortise the per-block merge.
constexpr int64_t kBlock = 4096;
// Elements per parallel task in the elementwise passes.
constexpr int64_t kGrain = 32768;

// Mean and M2 of one contiguous block, two passes over cached data. The first pass sums
// x - x[0] rather than x: with a large mean (1e4 over a spread of 1) float32 sums of raw values
// would lose the digits the variance is made of.
template <typename scalar_t, typename acc_t>
inline MeanM2<acc_t> block_mean_m2(const scalar_t* p, int64_t len) {
  const acc_t shift = load_acc<acc_t>(p[0]);
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < len; ++i) sum += load_acc<acc_t>(p[i]) - shift;
  const acc_t mean = shift + sum / static_cast<acc_t>(len);
  acc_t m2 = 0;
#pragma omp simd reduction(+ : m2)
  for (int64_t i = 0; i < len; ++i) {
    const acc_t d = load_acc<acc_t>(p[i]) - mean;
    m2 += d * d;
  }
  return {mean, m2, len};
}

template <typename scalar_t, typename acc_t>
void stats_planar(const StatsArgs<scalar_t, acc_t>& a) {
  const int64_t C = a.shape.channels, S = a.shape.spatial, N = a.shape.batch;
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      MeanM2<acc_t> acc{0, 0, 0};
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* plane = a.input + (n * C + c) * S;
        for (int64_t s0 = 0; s0 < S; s0 += kBlock)
          acc = chan_merge(acc, block_mean_m2<scalar_t, acc_t>(plane + s0, std::min(kBlock, S - s0)));
      }
      a.mean[c] = acc.mean;
      a.var[c] = acc.m2 / static_cast<acc_t>(acc.count);
    }
  });
}

template <typename scalar_t, typename acc_t>
void stats_channels_last(const StatsArgs<scalar_t, acc_t>& a) {
  const int64_t C = a.shape.channels, rows = a.shape.reduce_size();
  const int64_t rows_per_block = std::max<int64_t>(1, kBlock / C);
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  const int threads = at::get_num_threads();
  // Per-thread partials; every channel of a thread has seen the same rows, so one count each.
  std::vector<acc_t> t_mean(threads * C, 0), t_m2(threads * C, 0);
  std::vector<int64_t> t_count(threads, 0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const int tid = at::get_thread_num();
    acc_t* mean = &t_mean[tid * C];
    acc_t* m2 = &t_m2[tid * C];
    std::vector<acc_t> block_mean(C), block_m2(C);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rows_per_block, r1 = std::min(rows, r0 + rows_per_block);
      const acc_t len = static_cast<acc_t>(r1 - r0);
      // Shifted sums, as in block_mean_m2: the block's first row is the shift.
      const scalar_t* first = a.input + r0 * C;
      std::fill(block_mean.begin(), block_mean.end(), acc_t(0));
      std::fill(block_m2.begin(), block_m2.end(), acc_t(0));
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = a.input + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) block_mean[c] += load_acc<acc_t>(row[c]) - load_acc<acc_t>(first[c]);
      }
      for (int64_t c = 0; c < C; ++c) block_mean[c] = load_acc<acc_t>(first[c]) + block_mean[c] / len;
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = a.input + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const acc_t d = load_acc<acc_t>(row[c]) - block_mean[c];
          block_m2[c] += d * d;
        }
      }
      // Chan merge of the block into this thread's partial, all channels at once.
      const int64_t total = t_count[tid] + (r1 - r0);
      const acc_t block_share = len / static_cast<acc_t>(total);
      const acc_t prev = static_cast<acc_t>(t_count[tid]);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const acc_t delta = block_mean[c] - mean[c];
        mean[c] += delta * block_share;
        m2[c] += block_m2[c] + delta * delta * prev * block_share;
      }
      t_count[tid] = total;
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    MeanM2<acc_t> acc{0, 0, 0};
    for (int t = 0; t < threads; ++t) acc = chan_merge(acc, MeanM2<acc_t>{t_mean[t * C + c], t_m2[t * C + c], t_count[t]});
    a.mean[c] = acc.mean;
    a.var[c] = acc.m2 / static_cast<acc_t>(acc.count);
  }
}

template <typename scalar_t, typename acc_t>
void stats_kernel(const StatsArgs<scalar_t, acc_t>& a) {
  if (a.shape.channels_last) stats_channels_last(a);
  else stats_planar(a);
}

// Calls body(x_offset, channel_or_-1, count) over the elementwise work, split for threads:
// planar gives one contiguous plane (fixed channel) per call, channels_last a run of whole rows.
template <typename Body>
inline void for_each_run(const BnShape& shape, Body body) {
  const int64_t C = shape.channels, S = shape.spatial;
  if (!shape.channels_last) {
    at::parallel_for(0, shape.batch * C, std::max<int64_t>(1, kGrain / S), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) body(p * S, p % C, S);
    });
  } else {
    at::parallel_for(0, shape.reduce_size(), std::max<int64_t>(1, kGrain / C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) body(r * C, int64_t(-1), C);
    });
  }
}

// Pre-activation value z at element i of a run: per-channel coefficients are a scalar for a
// planar run (channel >= 0) and indexed by i along a channels_last row.
template <bool kResidual, typename scalar_t, typename acc_t>
inline acc_t pre_activation(const scalar_t* x, const scalar_t* res, acc_t scale, acc_t shift, int64_t i) {
  acc_t z = load_acc<acc_t>(x[i]) * scale + shift;
  if constexpr (kResidual) z += load_acc<acc_t>(res[i]);
  return z;
}

template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void apply_kernel(const ApplyArgs<scalar_t, acc_t>& a) {
  const acc_t p = a.activation_param;
  for_each_run(a.shape, [&](int64_t off, int64_t c, int64_t len) {
    const scalar_t* x = a.input + off;
    const scalar_t* res = kResidual ? a.residual + off : nullptr;
    scalar_t* out = a.output + off;
    if (c >= 0) {
      const acc_t sc = a.scale[c], sh = a.shift[c];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i)
        out[i] = store_as<scalar_t>(Act::value(pre_activation<kResidual>(x, res, sc, sh, i), p));
    } else {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i)
        out[i] = store_as<scalar_t>(Act::value(pre_activation<kResidual>(x, res, a.scale[i], a.shift[i], i), p));
    }
  });
}

// g = grad_out * act'(z) and xc of element i, channel c (scalar per-channel loads hoist out of
// planar loops; along a channels_last row c == i). Returned as Rebuilt{xc, z = g}.
template <typename Act, bool kResidual, bool kFromOutput, typename Args>
inline auto grad_and_centred(const Args& a, int64_t i, int64_t c) {
  using acc_t = decltype(a.activation_param);
  const auto r = rebuild_pre_activation<Act, kResidual, kFromOutput, acc_t>(
      load_acc<acc_t>(a.saved[i]), kResidual ? load_acc<acc_t>(a.residual[i]) : acc_t(0),
      a.mean[c], a.scale[c], a.bias[c], a.activation_param);
  return Rebuilt<acc_t>{r.xc, load_acc<acc_t>(a.grad_out[i]) * Act::grad(r.z, a.activation_param)};
}

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
void elemt_kernel(const ElemtArgs<scalar_t, acc_t>& a) {
  for_each_run(a.shape, [&](int64_t off, int64_t c, int64_t len) {
    // Local copy with the run's offset applied: keeps every pointer the loop touches in registers.
    ElemtArgs<scalar_t, acc_t> run = a;
    run.saved += off;
    run.grad_out += off;
    if constexpr (kResidual) run.residual += off;
    scalar_t* __restrict__ dx = a.grad_input + off;
    scalar_t* __restrict__ dres = kResidual ? a.grad_residual + off : nullptr;
    if (c >= 0) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const auto t = grad_and_centred<Act, kResidual, kFromOutput>(run, i, c);  // {xc, g}
        dx[i] = store_as<scalar_t>(t.z * a.coef_g[c] + t.xc * a.coef_xc[c] + a.coef_const[c]);
        if constexpr (kResidual) dres[i] = store_as<scalar_t>(t.z);
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const auto t = grad_and_centred<Act, kResidual, kFromOutput>(run, i, i);
        dx[i] = store_as<scalar_t>(t.z * a.coef_g[i] + t.xc * a.coef_xc[i] + a.coef_const[i]);
        if constexpr (kResidual) dres[i] = store_as<scalar_t>(t.z);
      }
    }
  });
}

// sum(g) and sum(g * xc) per channel. Blocks sum in acc_t (vectorised), block totals
// accumulate in double so that long reductions in float32 keep their precision.
template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
void reduce_planar(const ReduceArgs<scalar_t, acc_t>& a) {
  const int64_t C = a.shape.channels, S = a.shape.spatial, N = a.shape.batch;
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double total_g = 0, total_g_xc = 0;
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t s0 = 0; s0 < S; s0 += kBlock) {
          const int64_t off = (n * C + c) * S + s0, len = std::min(kBlock, S - s0);
          // Local copy with the block's offset applied, as in elemt_kernel.
          ReduceArgs<scalar_t, acc_t> run = a;
          run.saved += off;
          run.grad_out += off;
          if constexpr (kResidual) run.residual += off;
          acc_t sum_g = 0, sum_g_xc = 0;
#pragma omp simd reduction(+ : sum_g, sum_g_xc)
          for (int64_t i = 0; i < len; ++i) {
            const auto t = grad_and_centred<Act, kResidual, kFromOutput>(run, i, c);  // {xc, g}
            sum_g += t.z;
            sum_g_xc += t.z * t.xc;
          }
          total_g += sum_g;
          total_g_xc += sum_g_xc;
        }
      }
      a.sum_g[c] = static_cast<acc_t>(total_g);
      a.sum_g_xc[c] = static_cast<acc_t>(total_g_xc);
    }
  });
}

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
void reduce_channels_last(const ReduceArgs<scalar_t, acc_t>& a) {
  const int64_t C = a.shape.channels, rows = a.shape.reduce_size();
  const int64_t rows_per_block = std::max<int64_t>(1, kBlock / C);
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  const int threads = at::get_num_threads();
  std::vector<double> t_g(threads * C, 0), t_g_xc(threads * C, 0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const int tid = at::get_thread_num();
    std::vector<acc_t> sum_g(C), sum_g_xc(C);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(sum_g.begin(), sum_g.end(), acc_t(0));
      std::fill(sum_g_xc.begin(), sum_g_xc.end(), acc_t(0));
      const int64_t r1 = std::min(rows, (b + 1) * rows_per_block);
      for (int64_t r = b * rows_per_block; r < r1; ++r) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const auto t = grad_and_centred<Act, kResidual, kFromOutput>(a, r * C + c, c);  // {xc, g}
          sum_g[c] += t.z;
          sum_g_xc[c] += t.z * t.xc;
        }
      }
      double* g_total = &t_g[tid * C];
      double* g_xc_total = &t_g_xc[tid * C];
      for (int64_t c = 0; c < C; ++c) {
        g_total[c] += sum_g[c];
        g_xc_total[c] += sum_g_xc[c];
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double g = 0, g_xc = 0;
    for (int t = 0; t < threads; ++t) {
      g += t_g[t * C + c];
      g_xc += t_g_xc[t * C + c];
    }
    a.sum_g[c] = static_cast<acc_t>(g);
    a.sum_g_xc[c] = static_cast<acc_t>(g_xc);
  }
}

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
void reduce_kernel(const ReduceArgs<scalar_t, acc_t>& a) {
  if (a.shape.channels_last) reduce_channels_last<Act, kResidual, kFromOutput>(a);
  else reduce_planar<Act, kResidual, kFromOutput>(a);
}

}  // namespace cpu
}  // namespace pyfusedbn
