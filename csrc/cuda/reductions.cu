// Per-channel reductions on the GPU: batch statistics (Welford per thread, Chan merges between
// threads and blocks) and the backward sums sum(g), sum(g * xc). Each channel's work is split
// over `parts` blocks that write partials to a workspace; a small kernel merges them in a fixed
// order (deterministic, no atomics), so small channel counts still fill the device.
// Each thread keeps one accumulator per lane of its kVec-wide loads: kVec channels in
// channels_last, kVec positions of one channel in planar (merged before the block merge).
#include "batch_norm_act_kernels.cuh"
#include "device_utils.cuh"
#include "../welford.h"

namespace pyfusedbn {
namespace cuda {
namespace {

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

// ---- statistics ---------------------------------------------------------------------------

// kVec Welford accumulators that see the same number of values, so they share one count and
// one reciprocal per update.
template <typename acc_t, int kVec>
struct LaneWelford {
  acc_t mean[kVec] = {};
  acc_t m2[kVec] = {};
  int64_t count = 0;

  __device__ __forceinline__ void add(const acc_t (&x)[kVec]) {
    ++count;
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(count);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const acc_t delta = x[k] - mean[k];
      mean[k] += delta * inv_count;
      m2[k] += delta * (x[k] - mean[k]);
    }
  }
  __device__ __forceinline__ MeanM2<acc_t> lane(int k) const { return {mean[k], m2[k], count}; }
};

template <int kVec, typename scalar_t, typename acc_t>
__global__ void stats_partials_channels_last(StatsArgs<scalar_t, acc_t> a, acc_t* ws_mean, acc_t* ws_m2,
                                             int64_t* ws_count) {
  const int64_t C = a.shape.channels, rows = a.shape.reduce_size(), vectors = C / kVec;
  const int64_t cv = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t part = blockIdx.y, row_stride = static_cast<int64_t>(gridDim.y) * blockDim.y;
  LaneWelford<acc_t, kVec> acc;
  if (cv < vectors) {
    const scalar_t* column = a.input + cv * kVec;
    for (int64_t r0 = part * blockDim.y + threadIdx.y; r0 < rows; r0 += kUnroll * row_stride) {
      acc_t x[kUnroll][kVec];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (r0 + u * row_stride < rows) load_acc<kVec>(column + (r0 + u * row_stride) * C, x[u]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (r0 + u * row_stride < rows) acc.add(x[u]);
    }
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const MeanM2<acc_t> merged = merge_over_block(acc.lane(k), blockDim.x);
    if (threadIdx.y == 0 && cv < vectors) {
      const int64_t at = part * C + cv * kVec + k;
      ws_mean[at] = merged.mean;
      ws_m2[at] = merged.m2;
      ws_count[at] = merged.count;
    }
  }
}

template <int kVec, typename scalar_t, typename acc_t>
__global__ void stats_partials_planar(StatsArgs<scalar_t, acc_t> a, acc_t* ws_mean, acc_t* ws_m2,
                                      int64_t* ws_count) {
  const int64_t C = a.shape.channels, S = a.shape.spatial, N = a.shape.batch, vectors = S / kVec;
  const int64_t c = blockIdx.x, part = blockIdx.z * gridDim.y + blockIdx.y;
  const int64_t v_stride = static_cast<int64_t>(gridDim.z) * blockDim.x;
  LaneWelford<acc_t, kVec> acc;
  for (int64_t n = blockIdx.y * static_cast<int64_t>(blockDim.y) + threadIdx.y; n < N;
       n += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const scalar_t* plane = a.input + (n * C + c) * S;
    for (int64_t v0 = blockIdx.z * static_cast<int64_t>(blockDim.x) + threadIdx.x; v0 < vectors;
         v0 += kUnroll * v_stride) {
      acc_t x[kUnroll][kVec];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (v0 + u * v_stride < vectors) load_acc<kVec>(plane + (v0 + u * v_stride) * kVec, x[u]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (v0 + u * v_stride < vectors) acc.add(x[u]);
    }
  }
  MeanM2<acc_t> thread_total = acc.lane(0);
#pragma unroll
  for (int k = 1; k < kVec; ++k) thread_total = chan_merge(thread_total, acc.lane(k));
  const MeanM2<acc_t> merged = merge_over_block(thread_total, 1);
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    ws_mean[part * C + c] = merged.mean;
    ws_m2[part * C + c] = merged.m2;
    ws_count[part * C + c] = merged.count;
  }
}

template <typename acc_t>
__global__ void stats_finalize(const acc_t* ws_mean, const acc_t* ws_m2, const int64_t* ws_count,
                               int64_t parts, int64_t C, acc_t* mean, acc_t* var) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  MeanM2<acc_t> acc{0, 0, 0};
  for (int64_t p = 0; p < parts; ++p)
    acc = chan_merge(acc, MeanM2<acc_t>{ws_mean[p * C + c], ws_m2[p * C + c], ws_count[p * C + c]});
  mean[c] = acc.mean;
  var[c] = acc.count > 0 ? acc.m2 / static_cast<acc_t>(acc.count) : acc_t(0);
}

// ---- backward sums -----------------------------------------------------------------------

// Adds g = grad_out * act'(z) and g * xc of the kVec elements at i into the lanes' sums; the
// per-channel coefficients were loaded once per thread (one channel per lane, or the same one).
template <typename Act, bool kResidual, bool kFromOutput, int kVec, typename scalar_t, typename acc_t>
__device__ __forceinline__ void add_grad_terms(const ReduceArgs<scalar_t, acc_t>& a, int64_t i,
                                               const RebuildCoefs<acc_t, kVec>& k_c,
                                               SumPair<acc_t> (&acc)[kVec]) {
  acc_t saved[kVec], dy[kVec], residual[kVec] = {};
  load_acc<kVec>(a.saved + i, saved);
  load_acc<kVec>(a.grad_out + i, dy);
  if constexpr (kResidual) load_acc<kVec>(a.residual + i, residual);
  const acc_t p = a.activation_param;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const auto r = rebuild_pre_activation<Act, kResidual, kFromOutput, acc_t>(saved[k], residual[k], k_c.mean[k],
                                                                              k_c.scale[k], k_c.bias[k], p);
    const acc_t g = dy[k] * Act::grad(r.z, p);
    acc[k].g += g;
    acc[k].g_xc += g * r.xc;
  }
}

template <typename Act, bool kResidual, bool kFromOutput, int kVec, typename scalar_t, typename acc_t>
__global__ void reduce_partials_channels_last(ReduceArgs<scalar_t, acc_t> a, acc_t* ws_g, acc_t* ws_g_xc) {
  const int64_t C = a.shape.channels, rows = a.shape.reduce_size(), vectors = C / kVec;
  const int64_t cv = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, part = blockIdx.y;
  SumPair<acc_t> acc[kVec] = {};
  if (cv < vectors) {
    const auto coefs = RebuildCoefs<acc_t, kVec>::channels(a.mean, a.scale, a.bias, cv * kVec);
    for (int64_t r = part * blockDim.y + threadIdx.y; r < rows; r += static_cast<int64_t>(gridDim.y) * blockDim.y)
      add_grad_terms<Act, kResidual, kFromOutput>(a, r * C + cv * kVec, coefs, acc);
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const SumPair<acc_t> merged = merge_over_block(acc[k], blockDim.x);
    if (threadIdx.y == 0 && cv < vectors) {
      ws_g[part * C + cv * kVec + k] = merged.g;
      ws_g_xc[part * C + cv * kVec + k] = merged.g_xc;
    }
  }
}

template <typename Act, bool kResidual, bool kFromOutput, int kVec, typename scalar_t, typename acc_t>
__global__ void reduce_partials_planar(ReduceArgs<scalar_t, acc_t> a, acc_t* ws_g, acc_t* ws_g_xc) {
  const int64_t C = a.shape.channels, S = a.shape.spatial, N = a.shape.batch, vectors = S / kVec;
  const int64_t c = blockIdx.x, part = blockIdx.z * gridDim.y + blockIdx.y;
  const auto coefs = RebuildCoefs<acc_t, kVec>::one_channel(a.mean, a.scale, a.bias, c);
  SumPair<acc_t> acc[kVec] = {};
  for (int64_t n = blockIdx.y * static_cast<int64_t>(blockDim.y) + threadIdx.y; n < N;
       n += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const int64_t plane = (n * C + c) * S;
    for (int64_t v = blockIdx.z * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < vectors;
         v += static_cast<int64_t>(gridDim.z) * blockDim.x)
      add_grad_terms<Act, kResidual, kFromOutput>(a, plane + v * kVec, coefs, acc);
  }
  SumPair<acc_t> thread_total = acc[0];
#pragma unroll
  for (int k = 1; k < kVec; ++k) thread_total = merge(thread_total, acc[k]);
  const SumPair<acc_t> merged = merge_over_block(thread_total, 1);
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    ws_g[part * C + c] = merged.g;
    ws_g_xc[part * C + c] = merged.g_xc;
  }
}

template <typename acc_t>
__global__ void reduce_finalize(const acc_t* ws_g, const acc_t* ws_g_xc, int64_t parts, int64_t C,
                                acc_t* sum_g, acc_t* sum_g_xc) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  acc_t g = 0, g_xc = 0;
  for (int64_t p = 0; p < parts; ++p) {
    g += ws_g[p * C + c];
    g_xc += ws_g_xc[p * C + c];
  }
  sum_g[c] = g;
  sum_g_xc[c] = g_xc;
}

// About one full wave of 256-thread blocks (8 per SM on sm_80 / sm_90).
int64_t reduction_target_blocks(int num_sms) { return 8 * static_cast<int64_t>(std::max(num_sms, 1)); }

constexpr int kFinalizeThreads = 128;

}  // namespace

int64_t reduction_partials(const BnShape& shape, int num_sms) {
  int64_t parts = 1;
  for (int vec : {1, 2, 4, 8})
    parts = std::max(parts, launch_geometry(shape, vec, reduction_target_blocks(num_sms)).parts());
  return parts;
}

template <typename scalar_t, typename acc_t>
void launch_stats(const StatsArgs<scalar_t, acc_t>& args, acc_t* workspace, const LaunchContext& ctx) {
  const BnShape& shape = args.shape;
  const int64_t C = shape.channels;
  const int vec = vector_width<scalar_t>(shape, {args.input});
  const Geometry geo = launch_geometry(shape, vec, reduction_target_blocks(ctx.num_sms));
  const int64_t parts = geo.parts();
  // Counts first (int64, aligned at the workspace's start), then means and M2s.
  int64_t* ws_count = reinterpret_cast<int64_t*>(workspace);
  acc_t* ws_mean = reinterpret_cast<acc_t*>(ws_count + parts * C);
  acc_t* ws_m2 = ws_mean + parts * C;
  dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
    constexpr int kVec = decltype(vec_width)::value;
    if (shape.channels_last)
      stats_partials_channels_last<kVec><<<geo.grid, geo.block, 0, ctx.stream>>>(args, ws_mean, ws_m2, ws_count);
    else
      stats_partials_planar<kVec><<<geo.grid, geo.block, 0, ctx.stream>>>(args, ws_mean, ws_m2, ws_count);
  });
  stats_finalize<<<ceil_div(C, kFinalizeThreads), kFinalizeThreads, 0, ctx.stream>>>(
      ws_mean, ws_m2, ws_count, parts, C, args.mean, args.var);
}

template <typename scalar_t, typename acc_t>
void launch_backward_reduce(const ReduceArgs<scalar_t, acc_t>& args, ActKind act, bool from_output,
                            acc_t* workspace, const LaunchContext& ctx) {
  const BnShape& shape = args.shape;
  const int64_t C = shape.channels;
  const int vec = vector_width<scalar_t>(shape, {args.grad_out, args.saved, args.residual});
  const Geometry geo = launch_geometry(shape, vec, reduction_target_blocks(ctx.num_sms));
  const int64_t parts = geo.parts();
  acc_t* ws_g = workspace;
  acc_t* ws_g_xc = workspace + parts * C;
  dispatch_kernel_variant(act, args.residual != nullptr, from_output, [&](auto activation, auto res, auto from_out) {
    using Act = decltype(activation);
    constexpr bool kRes = decltype(res)::value, kFromOut = decltype(from_out)::value;
    dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
      constexpr int kVec = decltype(vec_width)::value;
      if (shape.channels_last)
        reduce_partials_channels_last<Act, kRes, kFromOut, kVec><<<geo.grid, geo.block, 0, ctx.stream>>>(
            args, ws_g, ws_g_xc);
      else
        reduce_partials_planar<Act, kRes, kFromOut, kVec><<<geo.grid, geo.block, 0, ctx.stream>>>(
            args, ws_g, ws_g_xc);
    });
  });
  reduce_finalize<<<ceil_div(C, kFinalizeThreads), kFinalizeThreads, 0, ctx.stream>>>(
      ws_g, ws_g_xc, parts, C, args.sum_g, args.sum_g_xc);
}

#define FBN_INSTANTIATE_REDUCTIONS(scalar_t, acc_t)                                                  \
  template void launch_stats<scalar_t, acc_t>(const StatsArgs<scalar_t, acc_t>&, acc_t*,             \
                                              const LaunchContext&);                                 \
  template void launch_backward_reduce<scalar_t, acc_t>(const ReduceArgs<scalar_t, acc_t>&, ActKind, \
                                                        bool, acc_t*, const LaunchContext&);
FBN_INSTANTIATE_REDUCTIONS(float, float)
FBN_INSTANTIATE_REDUCTIONS(double, double)
FBN_INSTANTIATE_REDUCTIONS(__half, float)
FBN_INSTANTIATE_REDUCTIONS(__nv_bfloat16, float)
#undef FBN_INSTANTIATE_REDUCTIONS

}  // namespace cuda
}  // namespace pyfusedbn
