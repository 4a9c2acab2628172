// Block-level merging shared by the reduction kernels (batch_norm_stats.cu,
// batch_norm_backward_reduce.cu): the accumulator types, warp-shuffle + shared-memory block
// merges, and the reduction grids. Each channel's work is split over `parts` blocks that write
// partials to a workspace; a small finalize kernel merges them in a fixed order (deterministic,
// no atomics, no host sync), so small channel counts still fill the device.
#pragma once

#include "../common/welford.h"
#include "batch_norm_kernels.cuh"
#include "device_utils.cuh"

namespace pyfusedbn {
namespace cuda {

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


// A reduction kernel's end: each thread holds one value per lane (kLanes: kVec channels in
// channels_last, its one channel in planar); the block merges them (merge_width threads per
// channel) and the writing threads store them at partial_slot(part, channel) through
// write(slot, value). Every thread of the block must call it (block-wide barriers).
template <int kLanes, typename T, typename Write>
__device__ __forceinline__ void merge_and_write_partials(const BnShape& shape, const ThreadIndex& t,
                                                         const ThreadWalk& w, const T (&lanes)[kLanes],
                                                         Write&& write) {
  const int width = merge_width(shape, t);
  const bool writer = writes_partials(shape, t, w);
#pragma unroll
  for (int k = 0; k < kLanes; ++k) {
    const T merged = merge_over_block(lanes[k], width);
    if (writer) write(partial_slot(t.block_y, lane_channel(shape, w, kLanes, k), shape.channels), merged);
  }
}

// Finalize launch: block (channels, parts), coalesced along C (launch_geometry.h's for_each_part).
inline dim3 finalize_block(int64_t C) {
  const int bx = finalize_block_x(C);
  return dim3(bx, kBlockThreads / bx);
}
inline unsigned finalize_grid(int64_t C) { return static_cast<unsigned>(ceil_div(C, finalize_block_x(C))); }

}  // namespace cuda
}  // namespace pyfusedbn
