// Per-vector helpers of the GroupNorm kernels: a kVec-vector's loads into the accumulate type,
// per-lane coefficients indexed by (sample, channel), and the backward's g / xc for one vector.
// BatchNorm's kernels (device_utils.cuh) stage several vectors per thread with per-layout lanes;
// the GroupNorm kernels walk one vector at a time, so they keep these simpler forms.
#pragma once

#include "../group_norm/coefficients.h"
#include "device_utils.cuh"

namespace pyfusedbn {
namespace cuda {

// Statistics: values each thread loads before merging them (loads in flight per thread).
constexpr int kGroupUnroll = 4;

// CUDA's limit on gridDim.x: kernels with one block per item grid-stride past it.
constexpr int64_t kMaxGridX = 2147483647;

// Loads kVec values from p (aligned to the vector's size: vector_width checked it) into acc_t.
template <int kVec, typename acc_t, typename scalar_t>
__device__ __forceinline__ void group_load_acc(const scalar_t* p, acc_t (&out)[kVec]) {
  const Vec<scalar_t, kVec> loaded = *reinterpret_cast<const Vec<scalar_t, kVec>*>(p);
#pragma unroll
  for (int k = 0; k < kVec; ++k) out[k] = to_acc<acc_t>(loaded.v[k]);
}

// Coefficients for a vector's kVec lanes: slot c0 + k in lane k (channels_last, step 1) or slot
// c0 in every lane (planar, step 0).
template <int kVec, typename acc_t>
__device__ __forceinline__ void group_load_per_lane(const acc_t* coefficients, int64_t c0, int step,
                                                    acc_t (&out)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) out[k] = coefficients[c0 + k * step];
}

// What rebuild_pre_activation needs per lane: mean, scale = weight * rstd, bias.
template <typename acc_t, int kVec>
struct GroupRebuildCoefs {
  acc_t mean[kVec], scale[kVec], bias[kVec];

  __device__ __forceinline__ static GroupRebuildCoefs load(const acc_t* mean, const acc_t* scale,
                                                           const acc_t* bias, int64_t c0, int step) {
    GroupRebuildCoefs k_c;
    group_load_per_lane<kVec>(mean, c0, step, k_c.mean);
    group_load_per_lane<kVec>(scale, c0, step, k_c.scale);
    group_load_per_lane<kVec>(bias, c0, step, k_c.bias);
    return k_c;
  }
  // The rows path: lanes are channels c0 .. c0 + kVec - 1 of row n (coefficients.h's formulas).
  __device__ __forceinline__ static GroupRebuildCoefs rows(const GroupRowsCoefficients<acc_t>& rc, int64_t n,
                                                           int64_t c0) {
    GroupRebuildCoefs k_c;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t ng = rc.group_of(n, c0 + k);
      k_c.mean[k] = rc.mean[ng];
      k_c.scale[k] = weight_at(rc.weight, c0 + k) * rc.rstd[ng];
      k_c.bias[k] = bias_at(rc.bias, c0 + k);
    }
    return k_c;
  }
  __device__ __forceinline__ static GroupRebuildCoefs one_channel(const acc_t* mean, const acc_t* scale,
                                                                  const acc_t* bias, int64_t c) {
    return load(mean, scale, bias, c, 0);
  }
};

// g = grad_out * act'(z) and the centred input xc for the kVec elements at i (Args: ReduceArgs
// or ElemtArgs), z and xc rebuilt from x.
template <typename Act, bool kResidual, bool kFromOutput, int kVec, typename Args, typename acc_t>
__device__ __forceinline__ void group_backward_terms(const Args& a, int64_t i,
                                                     const GroupRebuildCoefs<acc_t, kVec>& k_c,
                                                     acc_t (&g)[kVec], acc_t (&xc)[kVec]) {
  acc_t saved[kVec], dy[kVec], residual[kVec] = {};
  group_load_acc<kVec>(a.saved + i, saved);
  group_load_acc<kVec>(a.grad_out + i, dy);
  if constexpr (kResidual) group_load_acc<kVec>(a.residual + i, residual);
  const acc_t p = a.activation_param;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const auto r = rebuild_pre_activation<Act, kResidual, kFromOutput, acc_t>(
        saved[k], residual[k], k_c.mean[k], k_c.scale[k], k_c.bias[k], p);
    g[k] = dy[k] * Act::grad(r.z, p);
    xc[k] = r.xc;
  }
}

}  // namespace cuda
}  // namespace pyfusedbn
