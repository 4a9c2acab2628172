// GroupNorm's CPU backward on a channels_last input, one sample at a time: both passes over a
// sample (its reduction, then its elementwise pass) run before the next sample is touched, so the
// second pass finds the sample in cache (L2 or L3) instead of memory, and g = grad_out * act'(z)
// goes through a per-thread buffer the size of a sample instead of one the size of the input
// (grad_cache.h). Samples run as for_each_sample walks them: in parallel when small, else one
// after another with each sample's passes in parallel. The passes are group_norm_kernels.h's
// (BatchNorm's kernels over the sample as a batch of one; a nested at::parallel_for runs inline)
// and the per-group algebra coefficients.h's, so results round exactly as the pass-by-pass path's.
// Backward, median ms, 2 threads, UNet shapes (8, 320..1280, 64..16, 64..16), SiLU, channels_last:
// float32 and bfloat16 1.17-1.37x the pass-by-pass path. The same walk per group (n, g) for NCHW
// measured 0.69-1.34x, and per part in the forward (statistics, then apply) 0.8-1.05x: the
// forward is bound by the activation's exp, not memory; both keep the steps.
#pragma once

#include <ATen/Parallel.h>

#include "../group_norm/args.h"
#include "../group_norm/coefficients.h"
#include "grad_cache.h"
#include "group_norm_kernels.h"

namespace pyfusedbn {
namespace cpu {

// Whether the walk applies: channels_last with more than one position per sample.
inline bool fuses_groups(const BnShape& shape) { return shape.channels_last && shape.spatial > 1; }

// The per-thread buffer for g over one sample, or nullptr where the elementwise pass recomputes it.
template <typename Act, typename acc_t>
acc_t* sample_grad_cache(const BnShape& shape) {
  const int64_t bytes = shape.channels * shape.spatial * static_cast<int64_t>(sizeof(acc_t));
  if (!kKeepsGrad<Act, false> || bytes > kMaxGradCacheBytes) return nullptr;
  return static_cast<acc_t*>(grad_cache_buffer(bytes));
}

// Bytes of per-thread g buffers the walk may use (for the workspace counter).
template <typename acc_t>
int64_t fused_grad_cache_bytes(const BnShape& shape) {
  return shape.channels * shape.spatial * static_cast<int64_t>(sizeof(acc_t)) * at::get_num_threads();
}

// Per sample: the rebuild coefficients, the reduction (sums per (sample, channel), g into the
// buffer), its groups' elementwise coefficients and the elementwise pass; then the parameter
// gradients from all samples' sums. count = elements per group.
template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void group_backward_fused_kernel(const GroupCoefficientArgs<acc_t>& coefs, const GroupBackwardArrays<acc_t>& k,
                                 double count, const ReduceArgs<scalar_t, acc_t>& reduce,
                                 const ElemtArgs<scalar_t, acc_t>& elemt, acc_t* grad_weight, acc_t* grad_bias) {
  const int64_t G = coefs.groups;
  for_each_sample(reduce.shape, [&](int64_t n) {
    for (int64_t c = 0; c < coefs.channels; ++c) group_backward_prepare_at(coefs, k, n, c);
    acc_t* g = sample_grad_cache<Act, acc_t>(reduce.shape);
    if constexpr (kKeepsGrad<Act, false>) {
      if (g != nullptr) {
        reduce_kernel<Act, kResidual, false, true>(sample_of(reduce, n), g);
        group_elemt_coefficients(coefs, k, count, n * G, (n + 1) * G);
        elemt_from_grad_kernel<kResidual>(sample_of(elemt, n), g);
        return;
      }
    }
    reduce_kernel<Act, kResidual, false>(sample_of(reduce, n));
    group_elemt_coefficients(coefs, k, count, n * G, (n + 1) * G);
    elemt_kernel<Act, kResidual, false>(sample_of(elemt, n));
  });
  group_param_grads(coefs, k, grad_weight, grad_bias);
}

}  // namespace cpu
}  // namespace pyfusedbn
