// CPU kernels of the GroupNorm family, run as BatchNorm's kernels over a re-labelled problem.
// GroupNorm's coefficients are per (sample, channel), so each (n, c) pair plays the part of a
// BatchNorm channel:
// - NCHW: the N*C planes are the channels of a batch of one, shape {1, N*C, S}; a group's D planes
//   are contiguous, so its statistics are those of one channel of {1, N*G, D*S}.
// - channels_last: sample n is a batch of one, shape {1, C, S}, whose coefficients and sums start
//   at n*C; one position per sample ((N, C) input) is a single row of N*C values.
// The BatchNorm kernels (vectorised chunks, bulk 16-bit conversion, lane sums) then do the work;
// an earlier set of GroupNorm-only loops was 0.5-0.9x eager where these are 1.5-3x.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../group_norm/args.h"
#include "batch_norm_kernels.h"
#include "grad_cache.h"

namespace pyfusedbn {
namespace cpu {

// Whether a channels_last input is walked sample by sample (else one flat BatchNorm call).
inline bool walks_samples(const BnShape& shape) { return shape.channels_last && shape.spatial > 1; }

// The whole input as one BatchNorm batch of one, channels = the N*C (sample, channel) pairs.
inline BnShape flat_shape(const BnShape& shape) {
  return BnShape{1, shape.batch * shape.channels, shape.spatial, shape.channels_last};
}

// One sample of a channels_last input as a BatchNorm batch of one.
inline BnShape sample_shape(const BnShape& shape) { return BnShape{1, shape.channels, shape.spatial, true}; }

template <typename T>
inline T* shifted(T* p, int64_t by) {
  return p == nullptr ? p : p + by;  // absent residuals stay nullptr
}

// Each argument struct restricted to a slice of the input: its elements start at `elems`, its
// coefficients and sums at `coefs`, and it is `shape` (a BatchNorm batch of one).
template <typename scalar_t, typename acc_t>
ApplyArgs<scalar_t, acc_t> part_of(ApplyArgs<scalar_t, acc_t> a, int64_t elems, int64_t coefs, const BnShape& shape) {
  a.input += elems;
  a.residual = shifted(a.residual, elems);
  a.output += elems;
  a.scale += coefs;
  a.shift += coefs;
  a.shape = shape;
  return a;
}

template <typename scalar_t, typename acc_t>
ReduceArgs<scalar_t, acc_t> part_of(ReduceArgs<scalar_t, acc_t> a, int64_t elems, int64_t coefs, const BnShape& shape) {
  a.grad_out += elems;
  a.saved += elems;
  a.residual = shifted(a.residual, elems);
  a.mean += coefs;
  a.scale += coefs;
  a.bias += coefs;
  a.sum_g += coefs;
  a.sum_g_xc += coefs;
  a.shape = shape;
  return a;
}

template <typename scalar_t, typename acc_t>
ElemtArgs<scalar_t, acc_t> part_of(ElemtArgs<scalar_t, acc_t> a, int64_t elems, int64_t coefs, const BnShape& shape) {
  a.grad_out += elems;
  a.saved += elems;
  a.residual = shifted(a.residual, elems);
  a.grad_input += elems;
  a.grad_residual = shifted(a.grad_residual, elems);
  a.mean += coefs;
  a.scale += coefs;
  a.bias += coefs;
  a.coef_g += coefs;
  a.coef_xc += coefs;
  a.coef_const += coefs;
  a.shape = shape;
  return a;
}

// Each argument struct restricted to sample n of a channels_last input.
template <typename Args>
Args sample_of(const Args& a, int64_t n) {
  const int64_t C = a.shape.channels;
  return part_of(a, n * C * a.shape.spatial, n * C, sample_shape(a.shape));
}

// Samples of at most this many values are split across threads whenever each thread gets as many
// as the others (for_each_sample). Larger ones stay parallel inside: split, 8x320x64x64 measured
// 0.95-1.03x, no gain.
constexpr int64_t kMaxSplitSample = int64_t(1) << 20;

// Calls body(n) for every sample: samples split across threads (a nested at::parallel_for runs
// inline, so the kernel is then serial within its sample) where a sample is small, or not large
// and every thread gets as many whole samples as the others; else one after another, the
// BatchNorm kernel parallelising inside each, with a barrier per pass and sample: those cost
// float32 channels_last 8x1280x16x16's forward 15% of its samples in libgomp. Split, GroupNorm +
// SiLU channels_last at 8x640x32x32 and 8x1280x16x16 ran backward 1.07-1.28x as fast, forward
// 0.93-1.09x (2 threads, `python tools/ab_group_norm_backward.py --layouts nhwc`).
template <typename Body>
inline void for_each_sample(const BnShape& shape, Body body) {
  const int64_t per_sample = shape.channels * shape.spatial, threads = at::get_num_threads();
  const bool even_split = shape.batch % threads == 0 && per_sample <= kMaxSplitSample;
  if (shape.batch == 1 || (!even_split && per_sample >= kGrain * threads)) {
    for (int64_t n = 0; n < shape.batch; ++n) body(n);
    return;
  }
  at::parallel_for(0, shape.batch, std::max<int64_t>(1, kGrain / per_sample), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) body(n);
  });
}

// Runs a BatchNorm kernel over GroupNorm arguments (see the top of the file): kernel(args, first),
// `first` the index of the arguments' first element in the whole input.
template <typename Args, typename Kernel>
void run_as_batch_norm(const Args& a, Kernel kernel) {
  if (walks_samples(a.shape)) {
    const int64_t per_sample = a.shape.channels * a.shape.spatial;
    for_each_sample(a.shape, [&](int64_t n) { kernel(sample_of(a, n), n * per_sample); });
  } else {
    Args flat = a;
    flat.shape = flat_shape(a.shape);
    kernel(flat, int64_t(0));
  }
}

// Groups [g0, g1)'s mean and biased variance from their channels' (D consecutive channels per
// group, S values each), merged in double as the BatchNorm statistics merge.
template <typename acc_t>
void merge_channel_stats(const acc_t* c_mean, const acc_t* c_var, int64_t S, int64_t D, int64_t g0, int64_t g1,
                         acc_t* mean, acc_t* var) {
  for (int64_t g = g0; g < g1; ++g) {
    MeanM2<double> acc{0, 0, 0};
    for (int64_t c = g * D; c < (g + 1) * D; ++c)
      acc = chan_merge(acc, MeanM2<double>{c_mean[c], static_cast<double>(c_var[c]) * static_cast<double>(S), S});
    mean[g] = static_cast<acc_t>(acc.mean);
    var[g] = static_cast<acc_t>(acc.m2 / static_cast<double>(acc.count));
  }
}

template <typename scalar_t, typename acc_t>
void group_stats_kernel(const GroupStatsArgs<scalar_t, acc_t>& a) {
  const int64_t N = a.shape.batch, C = a.shape.channels, S = a.shape.spatial, G = a.groups;
  const int64_t D = a.channels_per_group();
  if (a.contiguous_groups()) {
    stats_kernel(StatsArgs<scalar_t, acc_t>{a.input, a.mean, a.var, BnShape{1, N * G, D * S, false}});
    return;
  }
  // channels_last: per-(n, c) statistics, then each group's D channels merged (S values each).
  std::vector<acc_t> nc_mean(N * C), nc_var(N * C);
  for_each_sample(a.shape, [&](int64_t n) {
    stats_kernel(StatsArgs<scalar_t, acc_t>{a.input + n * C * S, nc_mean.data() + n * C, nc_var.data() + n * C,
                                            sample_shape(a.shape)});
  });
  at::parallel_for(0, N * G, 1, [&](int64_t g0, int64_t g1) {
    merge_channel_stats(nc_mean.data(), nc_var.data(), S, D, g0, g1, a.mean, a.var);
  });
}

template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void group_apply_kernel(const ApplyArgs<scalar_t, acc_t>& a) {
  run_as_batch_norm(a, [](const ApplyArgs<scalar_t, acc_t>& b, int64_t) { apply_kernel<Act, kResidual>(b); });
}

// sum(g) and sum(g * xc) per (n, c); g also into grad_cache when it is given (grad_cache.h).
template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
void group_reduce_kernel(const ReduceArgs<scalar_t, acc_t>& a, acc_t* grad_cache) {
  if constexpr (kKeepsGrad<Act, kFromOutput>) {
    if (grad_cache != nullptr) {
      run_as_batch_norm(a, [&](const ReduceArgs<scalar_t, acc_t>& b, int64_t first) {
        reduce_kernel<Act, kResidual, kFromOutput, true>(b, grad_cache + first);
      });
      return;
    }
  }
  run_as_batch_norm(a, [](const ReduceArgs<scalar_t, acc_t>& b, int64_t) { reduce_kernel<Act, kResidual, kFromOutput>(b); });
}

// The elementwise pass, from grad_cache when the reduction filled it.
template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
void group_elemt_kernel(const ElemtArgs<scalar_t, acc_t>& a, const acc_t* grad_cache) {
  if constexpr (kKeepsGrad<Act, kFromOutput>) {
    if (grad_cache != nullptr) {
      run_as_batch_norm(a, [&](const ElemtArgs<scalar_t, acc_t>& b, int64_t first) {
        elemt_from_grad_kernel<kResidual>(b, grad_cache + first);
      });
      return;
    }
  }
  run_as_batch_norm(a, [](const ElemtArgs<scalar_t, acc_t>& b, int64_t) { elemt_kernel<Act, kResidual, kFromOutput>(b); });
}

}  // namespace cpu
}  // namespace pyfusedbn
