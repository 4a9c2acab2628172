// Per-channel reductions on the GPU: batch statistics (Welford per thread, Chan merges between
// threads and blocks) and the backward sums sum(g), sum(g * xc). Each channel's work is split
// over `parts` blocks that write partials to a workspace; a small kernel merges them, so small
// channel counts still fill the device. Two layouts:
//   planar (NCHW): block = one channel, x over a plane's positions, y over samples;
//   channels_last (rows of C): block = 32 channels x 16 rows, each warp reads 32 consecutive
//   channels of a row (coalesced), rows strided over the grid.
#include "device_utils.cuh"
#include "launch.cuh"
#include "../welford.h"

namespace pyfusedbn {
namespace cuda {
namespace {

constexpr int kMaxThreads = 512;

// Two per-channel sums merged by addition (the backward reduction).
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

// Tree-merges the values of threads that share a channel. all_threads: every thread of the
// block (planar); otherwise threads with the same threadIdx.x (channels_last). The result is
// valid in the threads with threadIdx.y == 0 (and threadIdx.x == 0 for all_threads).
template <typename T>
__device__ T block_merge(T value, bool all_threads) {
  __shared__ T buffer[kMaxThreads];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  buffer[tid] = value;
  __syncthreads();
  const int lanes = all_threads ? blockDim.x * blockDim.y : blockDim.y;
  const int lane = all_threads ? tid : threadIdx.y;
  const int step = all_threads ? 1 : blockDim.x;
  for (int stride = lanes / 2; stride > 0; stride /= 2) {
    if (lane < stride) buffer[tid] = merge(buffer[tid], buffer[tid + stride * step]);
    __syncthreads();
  }
  return buffer[all_threads ? 0 : threadIdx.x];
}

// ---- statistics ---------------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
__global__ void stats_partials_planar(StatsArgs<scalar_t, acc_t> a, acc_t* ws_mean, acc_t* ws_m2,
                                      int64_t* ws_count) {
  const int64_t C = a.shape.channels, S = a.shape.spatial, N = a.shape.batch;
  const int64_t c = blockIdx.x, part = blockIdx.y, parts = gridDim.y;
  MeanM2<acc_t> acc{0, 0, 0};
  for (int64_t n = part * blockDim.y + threadIdx.y; n < N; n += parts * blockDim.y) {
    const scalar_t* plane = a.input + (n * C + c) * S;
    for (int64_t s = threadIdx.x; s < S; s += blockDim.x) welford_add(acc, to_acc<acc_t>(plane[s]));
  }
  acc = block_merge(acc, true);
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    ws_mean[part * C + c] = acc.mean;
    ws_m2[part * C + c] = acc.m2;
    ws_count[part * C + c] = acc.count;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void stats_partials_channels_last(StatsArgs<scalar_t, acc_t> a, acc_t* ws_mean,
                                             acc_t* ws_m2, int64_t* ws_count) {
  const int64_t C = a.shape.channels, rows = a.shape.reduce_size();
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x, part = blockIdx.y, parts = gridDim.y;
  MeanM2<acc_t> acc{0, 0, 0};
  if (c < C) {
    for (int64_t r = part * blockDim.y + threadIdx.y; r < rows; r += parts * blockDim.y)
      welford_add(acc, to_acc<acc_t>(a.input[r * C + c]));
  }
  acc = block_merge(acc, false);
  if (threadIdx.y == 0 && c < C) {
    ws_mean[part * C + c] = acc.mean;
    ws_m2[part * C + c] = acc.m2;
    ws_count[part * C + c] = acc.count;
  }
}

template <typename acc_t>
__global__ void stats_finalize(const acc_t* ws_mean, const acc_t* ws_m2, const int64_t* ws_count,
                               int64_t parts, int64_t C, acc_t* mean, acc_t* var) {
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  MeanM2<acc_t> acc{0, 0, 0};
  for (int64_t p = 0; p < parts; ++p) {
    const MeanM2<acc_t> part{ws_mean[p * C + c], ws_m2[p * C + c], ws_count[p * C + c]};
    acc = chan_merge(acc, part);
  }
  mean[c] = acc.mean;
  var[c] = acc.count > 0 ? acc.m2 / static_cast<acc_t>(acc.count) : acc_t(0);
}

// ---- backward sums -----------------------------------------------------------------------

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
__device__ __forceinline__ void add_grad_terms(const ReduceArgs<scalar_t, acc_t>& a, int64_t i,
                                               int64_t c, SumPair<acc_t>& acc) {
  const acc_t p = a.activation_param;
  const auto r = rebuild_pre_activation<Act, kResidual, kFromOutput, acc_t>(
      to_acc<acc_t>(a.saved[i]), kResidual ? to_acc<acc_t>(a.residual[i]) : acc_t(0), a.mean[c],
      a.scale[c], a.bias[c], p);
  const acc_t g = to_acc<acc_t>(a.grad_out[i]) * Act::grad(r.z, p);
  acc.g += g;
  acc.g_xc += g * r.xc;
}

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
__global__ void reduce_partials_planar(ReduceArgs<scalar_t, acc_t> a, acc_t* ws_g, acc_t* ws_g_xc) {
  const int64_t C = a.shape.channels, S = a.shape.spatial, N = a.shape.batch;
  const int64_t c = blockIdx.x, part = blockIdx.y, parts = gridDim.y;
  SumPair<acc_t> acc{0, 0};
  for (int64_t n = part * blockDim.y + threadIdx.y; n < N; n += parts * blockDim.y) {
    const int64_t base = (n * C + c) * S;
    for (int64_t s = threadIdx.x; s < S; s += blockDim.x)
      add_grad_terms<Act, kResidual, kFromOutput>(a, base + s, c, acc);
  }
  acc = block_merge(acc, true);
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    ws_g[part * C + c] = acc.g;
    ws_g_xc[part * C + c] = acc.g_xc;
  }
}

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
__global__ void reduce_partials_channels_last(ReduceArgs<scalar_t, acc_t> a, acc_t* ws_g, acc_t* ws_g_xc) {
  const int64_t C = a.shape.channels, rows = a.shape.reduce_size();
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x, part = blockIdx.y, parts = gridDim.y;
  SumPair<acc_t> acc{0, 0};
  if (c < C) {
    for (int64_t r = part * blockDim.y + threadIdx.y; r < rows; r += parts * blockDim.y)
      add_grad_terms<Act, kResidual, kFromOutput>(a, r * C + c, c, acc);
  }
  acc = block_merge(acc, false);
  if (threadIdx.y == 0 && c < C) {
    ws_g[part * C + c] = acc.g;
    ws_g_xc[part * C + c] = acc.g_xc;
  }
}

template <typename acc_t>
__global__ void reduce_finalize(const acc_t* ws_g, const acc_t* ws_g_xc, int64_t parts, int64_t C,
                                acc_t* sum_g, acc_t* sum_g_xc) {
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  acc_t g = 0, g_xc = 0;
  for (int64_t p = 0; p < parts; ++p) {
    g += ws_g[p * C + c];
    g_xc += ws_g_xc[p * C + c];
  }
  sum_g[c] = g;
  sum_g_xc[c] = g_xc;
}

// The grid of a reduction: x over channels (planar: one per block; channels_last: 32 per
// block), y over `parts` slices of the batch.
dim3 reduction_grid(const BnShape& shape, int64_t parts) {
  const int64_t channel_blocks = shape.channels_last ? ceil_div(shape.channels, 32) : shape.channels;
  return dim3(static_cast<unsigned>(channel_blocks), static_cast<unsigned>(parts));
}

}  // namespace

int64_t reduction_partials(const BnShape& shape, int num_sms) {
  // Enough blocks for ~4 waves of the device, each slice still a few rows/samples deep.
  const int64_t target_blocks = 4 * static_cast<int64_t>(std::max(num_sms, 1));
  int64_t channel_blocks, slices;
  if (shape.channels_last) {
    channel_blocks = ceil_div(shape.channels, 32);
    slices = ceil_div(shape.reduce_size(), kRowsPerBlock * 8);
  } else {
    channel_blocks = shape.channels;
    slices = ceil_div(shape.batch, planar_block(shape.spatial).y);
  }
  const int64_t parts = ceil_div(target_blocks, std::max<int64_t>(channel_blocks, 1));
  return std::max<int64_t>(1, std::min<int64_t>({parts, slices, 65535}));
}

template <typename scalar_t, typename acc_t>
void launch_stats(const StatsArgs<scalar_t, acc_t>& args, acc_t* workspace, const LaunchContext& ctx) {
  const BnShape& shape = args.shape;
  const int64_t parts = reduction_partials(shape, ctx.num_sms);
  const int64_t C = shape.channels;
  // Counts first (int64, aligned at the workspace's start), then means and M2s.
  int64_t* ws_count = reinterpret_cast<int64_t*>(workspace);
  acc_t* ws_mean = reinterpret_cast<acc_t*>(ws_count + parts * C);
  acc_t* ws_m2 = ws_mean + parts * C;
  const dim3 grid = reduction_grid(shape, parts);
  if (shape.channels_last) {
    stats_partials_channels_last<<<grid, channels_last_block(), 0, ctx.stream>>>(args, ws_mean, ws_m2, ws_count);
  } else {
    stats_partials_planar<<<grid, planar_block(shape.spatial), 0, ctx.stream>>>(args, ws_mean, ws_m2, ws_count);
  }
  stats_finalize<<<ceil_div(C, 128), 128, 0, ctx.stream>>>(ws_mean, ws_m2, ws_count, parts, C, args.mean,
                                                          args.var);
}

template <typename scalar_t, typename acc_t>
void launch_backward_reduce(const ReduceArgs<scalar_t, acc_t>& args, ActKind act, bool from_output,
                            acc_t* workspace, const LaunchContext& ctx) {
  const BnShape& shape = args.shape;
  const int64_t parts = reduction_partials(shape, ctx.num_sms);
  const int64_t C = shape.channels;
  acc_t* ws_g = workspace;
  acc_t* ws_g_xc = workspace + parts * C;
  const dim3 grid = reduction_grid(shape, parts);
  dispatch_kernel_variant(act, args.residual != nullptr, from_output, [&](auto activation, auto res, auto from_out) {
    using Act = decltype(activation);
    constexpr bool kRes = decltype(res)::value, kFromOut = decltype(from_out)::value;
    if (shape.channels_last) {
      reduce_partials_channels_last<Act, kRes, kFromOut><<<grid, channels_last_block(), 0, ctx.stream>>>(
          args, ws_g, ws_g_xc);
    } else {
      reduce_partials_planar<Act, kRes, kFromOut><<<grid, planar_block(shape.spatial), 0, ctx.stream>>>(
          args, ws_g, ws_g_xc);
    }
  });
  reduce_finalize<<<ceil_div(C, 128), 128, 0, ctx.stream>>>(ws_g, ws_g_xc, parts, C, args.sum_g, args.sum_g_xc);
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
