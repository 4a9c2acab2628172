// GroupNorm's CPU backward one part at a time: both passes over a part (its reduction, then its
// elementwise pass) run before the next part is touched, so the second pass finds the part in
// cache (L2 or L3) instead of memory, and g = grad_out * act'(z) goes through a per-thread buffer
// the size of a part instead of one the size of the input (grad_cache.h). A part holds whole groups:
// - channels_last: one sample (a group's channels are strided within it), walked as
//   for_each_sample walks them: in parallel when small, else each sample's passes in parallel;
// - NCHW, 16-bit or float32 input: one group (n, g), its D planes contiguous, the groups in
//   parallel. There the whole-input g buffer (float) would be twice the input's bytes (16-bit).
// channels_last parts and NCHW float16 run group_norm_kernels.h's passes (BatchNorm's kernels over
// the part as a batch of one; a nested at::parallel_for runs inline); NCHW float32 and bfloat16
// (AVX-512) the plane kernels of group_norm_planes.h. The per-group algebra is coefficients.h's.
// Backward against the pass-by-pass path, median ms, 2 threads, SiLU, UNet shapes (8, 320..1280,
// 64..16, 64..16): channels_last float32 and bfloat16 1.16-1.37x; NCHW float16 1.22-1.47x. The
// plane kernels against what NCHW float32 (the steps) and bfloat16 (the walk over BatchNorm's
// kernels) ran before them, backward op, 2 threads, Zen 5 (`python tools/ab_group_norm_backward.py
// --layouts nchw [--between]`): 1.16-1.26x back to back, 1.08-1.46x between eager GroupNorm steps.
// The forward keeps its passes: rounding the apply pass's bfloat16 results in registers was 5-10%
// slower than the chunked pass with its bulk rounding.
#pragma once

#include <ATen/Parallel.h>

#include "../group_norm/args.h"
#include "../group_norm/coefficients.h"
#include "grad_cache.h"
#include "group_norm_kernels.h"
#include "group_norm_planes.h"

namespace pyfusedbn {
namespace cpu {

// A group's accumulate-type bytes above which NCHW keeps the steps: the second pass would not find
// it in L2 (1-2 MiB per core on current x86 server parts).
constexpr int64_t kMaxFusedGroupBytes = int64_t(1) << 20;

// Whether the walk applies (see the top of the file); elem_size and acc_size in bytes.
inline bool fuses_groups(const BnShape& shape, int64_t groups, int64_t elem_size, int64_t acc_size) {
  if (shape.spatial == 1) return false;  // the rows path
  if (shape.channels_last) return true;
  const int64_t group_bytes = shape.channels / groups * shape.spatial * acc_size;
  const bool walked_type = elem_size < acc_size || elem_size == 4;  // 16-bit, float32 (not float64)
  return walked_type && shape.batch * groups >= at::get_num_threads() && group_bytes <= kMaxFusedGroupBytes;
}

// Sample n's channels [c0, c0 + shape.channels) as a BatchNorm batch of one: `groups` whole groups.
struct GroupPart {
  int64_t sample, c0, groups;
  BnShape shape;

  int64_t first_group(int64_t G) const { return sample * G + c0 / (shape.channels / groups); }

  template <typename Args>
  Args of(const Args& a) const {
    const int64_t coefs = sample * a.shape.channels + c0;
    return part_of(a, coefs * a.shape.spatial, coefs, shape);
  }
};

// Calls body(part) for every part (see the top of the file).
template <typename Body>
void for_each_group_part(const BnShape& shape, int64_t G, Body body) {
  if (shape.channels_last) {
    for_each_sample(shape, [&](int64_t n) { body(GroupPart{n, 0, G, sample_shape(shape)}); });
    return;
  }
  const int64_t D = shape.channels / G;
  at::parallel_for(0, shape.batch * G, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) body(GroupPart{p / G, (p % G) * D, 1, BnShape{1, D, shape.spatial, false}});
  });
}

// The per-thread buffer for g over one part, or nullptr where the elementwise pass recomputes it.
template <typename Act, typename acc_t>
acc_t* part_grad_cache(const BnShape& part) {
  const int64_t bytes = part.numel() * static_cast<int64_t>(sizeof(acc_t));
  if (!kKeepsGrad<Act, false> || bytes > kMaxGradCacheBytes) return nullptr;
  return static_cast<acc_t*>(grad_cache_buffer(bytes));
}

// Bytes of per-thread g buffers the walk may use (for the workspace counter).
template <typename acc_t>
int64_t fused_grad_cache_bytes(const BnShape& shape, int64_t groups) {
  const int64_t part = (shape.channels_last ? shape.channels : shape.channels / groups) * shape.spatial;
  return part * static_cast<int64_t>(sizeof(acc_t)) * at::get_num_threads();
}

// Per part: the rebuild coefficients, the reduction (sums per (sample, channel), g into the
// buffer), its groups' elementwise coefficients and the elementwise pass; then the parameter
// gradients from all samples' sums. count = elements per group.
template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void group_backward_fused_kernel(const GroupCoefficientArgs<acc_t>& coefs, const GroupBackwardArrays<acc_t>& k,
                                 double count, const ReduceArgs<scalar_t, acc_t>& reduce,
                                 const ElemtArgs<scalar_t, acc_t>& elemt, acc_t* grad_weight, acc_t* grad_bias) {
  const int64_t G = coefs.groups;
  for_each_group_part(reduce.shape, G, [&](const GroupPart& part) {
    for (int64_t c = part.c0; c < part.c0 + part.shape.channels; ++c) group_backward_prepare_at(coefs, k, part.sample, c);
    const int64_t ng = part.first_group(G);
    acc_t* g = part_grad_cache<Act, acc_t>(part.shape);
    if constexpr (kGroupPlanesInPlace<scalar_t, acc_t>) {
      if (!part.shape.channels_last) {
        run_group_planes<Act, kResidual>(part.of(reduce), part.of(elemt), g,
                                         [&] { group_elemt_coefficients(coefs, k, count, ng, ng + part.groups); });
        return;
      }
    }
    if constexpr (kKeepsGrad<Act, false>) {
      if (g != nullptr) {
        reduce_kernel<Act, kResidual, false, true>(part.of(reduce), g);
        group_elemt_coefficients(coefs, k, count, ng, ng + part.groups);
        elemt_from_grad_kernel<kResidual>(part.of(elemt), g);
        return;
      }
    }
    reduce_kernel<Act, kResidual, false>(part.of(reduce));
    group_elemt_coefficients(coefs, k, count, ng, ng + part.groups);
    elemt_kernel<Act, kResidual, false>(part.of(elemt));
  });
  group_param_grads(coefs, k, grad_weight, grad_bias);
}

}  // namespace cpu
}  // namespace pyfusedbn
