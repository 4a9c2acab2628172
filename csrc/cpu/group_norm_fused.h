// GroupNorm's CPU forward and backward one part at a time: every pass over a part (its
// statistics, then its apply; its reduction, then its elementwise pass) runs before the next part
// is touched, so the second pass reads the part from cache instead of memory, and the backward's
// g = grad_out * act'(z) goes through a per-thread buffer the size of a part instead of one the
// size of the input (grad_cache.h). A part holds whole groups:
// - NCHW: one group (n, g), its D planes contiguous; the parts run in parallel, one per task.
// - channels_last: one sample (a group's channels are strided within it), walked as
//   for_each_sample does: samples in parallel when small, else each sample's passes in parallel.
// The passes themselves are group_norm_kernels.h's (BatchNorm's kernels over the part as a batch
// of one; a nested at::parallel_for runs inline), and the per-group algebra coefficients.h's, so
// results round exactly as the pass-by-pass path's. Eager PyTorch's GroupNorm + SiLU makes ~9
// sweeps of the tensor through memory for a training step, the pass-by-pass path 9, this one 5.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../group_norm/args.h"
#include "../group_norm/coefficients.h"
#include "grad_cache.h"
#include "group_norm_kernels.h"

namespace pyfusedbn {
namespace cpu {

// A part's accumulate-type bytes above which NCHW runs pass by pass: its second pass would not
// find it in L2 (1-2 MiB per core on current x86 server parts).
constexpr int64_t kMaxFusedGroupBytes = int64_t(1) << 20;

// Whether the fused walk applies: NCHW needs a group per thread and groups that fit in L2.
inline bool fuses_groups(const BnShape& shape, int64_t groups, int64_t acc_size) {
  if (shape.channels_last && shape.spatial > 1) return true;
  const int64_t group_bytes = shape.channels / groups * shape.spatial * acc_size;
  return shape.batch * groups >= at::get_num_threads() && group_bytes <= kMaxFusedGroupBytes;
}

// Sample n's channels [c0, c0 + shape.channels) as a BatchNorm batch of one, `groups` groups.
struct GroupPart {
  int64_t sample, c0, groups;
  BnShape shape;

  int64_t coefs(const BnShape& whole) const { return sample * whole.channels + c0; }
  int64_t elems(const BnShape& whole) const { return coefs(whole) * whole.spatial; }
  int64_t first_group(int64_t G, int64_t D) const { return sample * G + c0 / D; }

  template <typename Args>
  Args of(const Args& a, const BnShape& whole) const {
    return part_of(a, elems(whole), coefs(whole), shape);
  }
};

// Calls body(part) for every part (see the top of the file).
template <typename Body>
void for_each_group_part(const BnShape& shape, int64_t G, Body body) {
  const int64_t C = shape.channels, D = C / G;
  if (shape.channels_last && shape.spatial > 1) {
    for_each_sample(shape, [&](int64_t n) { body(GroupPart{n, 0, G, sample_shape(shape)}); });
    return;
  }
  at::parallel_for(0, shape.batch * G, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      body(GroupPart{p / G, (p % G) * D, 1, BnShape{1, D, shape.spatial, false}});
  });
}

// Mean and biased variance of the part's groups into mean / var at its first group.
template <typename scalar_t, typename acc_t>
void part_stats(const scalar_t* x, const GroupPart& part, int64_t D, acc_t* mean, acc_t* var) {
  if (!part.shape.channels_last) {  // one group, contiguous: a single channel of D * S values
    stats_kernel(StatsArgs<scalar_t, acc_t>{x, mean, var, BnShape{1, 1, D * part.shape.spatial, false}});
    return;
  }
  std::vector<acc_t> c_mean(part.shape.channels), c_var(part.shape.channels);
  stats_kernel(StatsArgs<scalar_t, acc_t>{x, c_mean.data(), c_var.data(), part.shape});
  merge_channel_stats(c_mean.data(), c_var.data(), part.shape.spatial, D, 0, part.groups, mean, var);
}

// Forward: the statistics (mean; rstd, written through var first as the pass-by-pass path does),
// the apply pass's scale / shift, and the output.
template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void group_forward_fused_kernel(const GroupCoefficientArgs<acc_t>& coefs, double eps, acc_t* mean, acc_t* rstd,
                                const GroupForwardArrays<acc_t>& arrays, const ApplyArgs<scalar_t, acc_t>& a) {
  const BnShape& whole = a.shape;
  const int64_t G = coefs.groups, D = coefs.channels_per_group();
  for_each_group_part(whole, G, [&](const GroupPart& part) {
    const int64_t ng = part.first_group(G, D), nc = part.coefs(whole);
    part_stats(a.input + part.elems(whole), part, D, mean + ng, rstd + ng);
    group_forward_coefficients<acc_t>(mean + ng, rstd + ng, eps, shifted(coefs.weight, part.c0),
                                      shifted(coefs.bias, part.c0), 1, part.shape.channels, part.groups, rstd + ng,
                                      GroupForwardArrays<acc_t>{arrays.scale + nc, arrays.shift + nc});
    apply_kernel<Act, kResidual>(part.of(a, whole));
  });
}

// The per-thread buffer for g over one part, or nullptr where the elementwise pass recomputes it.
template <typename Act, typename acc_t>
acc_t* part_grad_cache(const GroupPart& part) {
  constexpr bool keeps = kKeepsGrad<Act, false>;
  const int64_t bytes = part.shape.numel() * static_cast<int64_t>(sizeof(acc_t));
  if (!keeps || bytes > kMaxGradCacheBytes) return nullptr;
  return static_cast<acc_t*>(grad_cache_buffer(bytes));
}

// Bytes of per-thread g buffers the fused backward may use (for the workspace counter).
template <typename acc_t>
int64_t fused_grad_cache_bytes(const BnShape& shape, int64_t groups) {
  const bool per_sample = shape.channels_last && shape.spatial > 1;
  const int64_t part = (per_sample ? shape.channels : shape.channels / groups) * shape.spatial;
  return part * static_cast<int64_t>(sizeof(acc_t)) * at::get_num_threads();
}

// Backward: per part the rebuild coefficients, the reduction (sums per (sample, channel), g into
// the part's buffer), its groups' elementwise coefficients and the elementwise pass; then the
// parameter gradients from all samples' sums. count = elements per group.
template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void group_backward_fused_kernel(const GroupCoefficientArgs<acc_t>& coefs, const GroupBackwardArrays<acc_t>& k,
                                 double count, const ReduceArgs<scalar_t, acc_t>& reduce,
                                 const ElemtArgs<scalar_t, acc_t>& elemt, acc_t* grad_weight, acc_t* grad_bias) {
  const BnShape& whole = reduce.shape;
  const int64_t G = coefs.groups, D = coefs.channels_per_group();
  for_each_group_part(whole, G, [&](const GroupPart& part) {
    for (int64_t c = part.c0; c < part.c0 + part.shape.channels; ++c) group_backward_prepare_at(coefs, k, part.sample, c);
    acc_t* g = part_grad_cache<Act, acc_t>(part);
    const int64_t ng = part.first_group(G, D);
    if constexpr (kKeepsGrad<Act, false>) {
      if (g != nullptr) {
        reduce_kernel<Act, kResidual, false, true>(part.of(reduce, whole), g);
        group_elemt_coefficients(coefs, k, count, ng, ng + part.groups);
        elemt_from_grad_kernel<kResidual>(part.of(elemt, whole), g);
        return;
      }
    }
    reduce_kernel<Act, kResidual, false>(part.of(reduce, whole));
    group_elemt_coefficients(coefs, k, count, ng, ng + part.groups);
    elemt_kernel<Act, kResidual, false>(part.of(elemt, whole));
  });
  group_param_grads(coefs, k, grad_weight, grad_bias);
}

}  // namespace cpu
}  // namespace pyfusedbn
