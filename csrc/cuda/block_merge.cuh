// Block-level merging shared by the reduction kernels (stats.cu, backward_reduce.cu): the
// accumulator types, warp-shuffle + shared-memory block merges, and the reduction grids. Each
// channel's work is split over `parts` blocks that write partials to a workspace; a small
// finalize kernel merges them in a fixed order (deterministic, no atomics, no host sync), so
// small channel counts still fill the device.
#pragma once

#include "batch_norm_act_kernels.cuh"
#include "device_utils.cuh"
#include "../welford.h"

namespace pyfusedbn {
namespace cuda {

// Rows (channels_last) or vectors (planar) each thread loads before accumulating any of them:
// independent loads in flight hide memory latency (Welford's updates form a dependent chain).
constexpr int kUnroll = 4;

template <typename acc_t>
struct SumPair {
  acc_t g;
  acc_t g_xc;
};

template <typename acc_t>
__device__ __forceinline__ MeanM2<acc_t> merge(const MeanM2<acc_t>& a, const MeanM2<acc_t>& b) {
  return chan_merge(a, b);
}
template <typename acc_t>
__device__ __forceinline__ SumPair<acc_t> merge(const SumPair<acc_t>& a, const SumPair<acc_t>& b) {
  return {a.g + b.g, a.g_xc + b.g_xc};
}

template <typename T> __device__ __forceinline__ T shfl_down(T v, int offset) {
  return __shfl_down_sync(0xffffffffu, v, offset);
}
__device__ __forceinline__ int64_t shfl_down(int64_t v, int offset) {
  return __shfl_down_sync(0xffffffffu, static_cast<long long>(v), offset);
}
template <typename acc_t> __device__ __forceinline__ MeanM2<acc_t> shfl_down(const MeanM2<acc_t>& v, int offset) {
  return {shfl_down(v.mean, offset), shfl_down(v.m2, offset), shfl_down(v.count, offset)};
}
template <typename acc_t> __device__ __forceinline__ SumPair<acc_t> shfl_down(const SumPair<acc_t>& v, int offset) {
  return {shfl_down(v.g, offset), shfl_down(v.g_xc, offset)};
}

// Merges `value` over the block's threads whose flat index is equal modulo `width` (a power of
// two <= 32: blockDim.x in channels_last, 1 in planar where the whole block is one channel).
// Warp shuffles first, then one shared-memory pass over the warps. The result is valid in the
// threads with flat index < width. Every thread of the block must call it.
template <typename T>
__device__ T merge_over_block(T value, int width) {
  __shared__ T per_warp[kBlockThreads];
  for (int offset = 16; offset >= width; offset /= 2) value = merge(value, shfl_down(value, offset));
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warps = blockDim.x * blockDim.y / 32;
  __syncthreads();  // an earlier call's readers are done with per_warp
  if (lane < width) per_warp[warp * width + lane] = value;
  __syncthreads();
  if (tid < width) {
    value = per_warp[tid];
    for (int w = 1; w < warps; ++w) value = merge(value, per_warp[w * width + tid]);
  }
  return value;
}


// Finalize: block (bx, by) = (channels, partials): each thread merges every by-th partial of
// its channel, then the block merges over y. Reads of one partial are coalesced along C.
inline dim3 finalize_block(int64_t C) {
  const int bx = pow2_at_least(C, 32);
  return dim3(bx, kBlockThreads / bx);
}

// About one full wave of 256-thread blocks (8 per SM on sm_80 / sm_90).
inline int64_t reduction_target_blocks(int num_sms) { return 8 * static_cast<int64_t>(std::max(num_sms, 1)); }

}  // namespace cuda
}  // namespace pyfusedbn
