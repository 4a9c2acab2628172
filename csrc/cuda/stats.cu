// Batch statistics on the GPU: per-channel mean and biased variance. Welford per thread (one
// accumulator per lane of its kVec-wide loads: kVec channels in channels_last, kVec positions
// of one channel in planar, merged before the block merge), Chan merges between threads and
// between the blocks' partials (block_merge.cuh).
#include "block_merge.cuh"

namespace pyfusedbn {
namespace cuda {
namespace {

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

// Loads the vectors at steps first, first + stride, ... (kUnroll of them, those before end),
// then adds them: the loads are independent, so they are in flight together.
template <typename acc_t, int kVec, typename Address>
__device__ __forceinline__ void add_unrolled(LaneWelford<acc_t, kVec>& acc, int64_t first, int64_t stride,
                                             int64_t end, Address&& address) {
  acc_t x[kUnroll][kVec];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
    if (first + u * stride < end) load_acc<kVec>(address(first + u * stride), x[u]);
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
    if (first + u * stride < end) acc.add(x[u]);
}

template <int kVec, typename scalar_t, typename acc_t>
__global__ void stats_partials_channels_last(StatsArgs<scalar_t, acc_t> a, acc_t* ws_mean, acc_t* ws_m2,
                                             int64_t* ws_count) {
  const int64_t C = a.shape.channels, rows = a.shape.reduce_size(), vectors = C / kVec;
  const int64_t cv = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t part = blockIdx.y, row_stride = static_cast<int64_t>(gridDim.y) * blockDim.y;
  LaneWelford<acc_t, kVec> acc;
  if (cv < vectors) {
    const scalar_t* column = a.input + cv * kVec;
    for (int64_t r0 = part * blockDim.y + threadIdx.y; r0 < rows; r0 += kUnroll * row_stride)
      add_unrolled(acc, r0, row_stride, rows, [&](int64_t r) { return column + r * C; });
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
         v0 += kUnroll * v_stride)
      add_unrolled(acc, v0, v_stride, vectors, [&](int64_t v) { return plane + v * kVec; });
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
  MeanM2<acc_t> acc{0, 0, 0};
  if (c < C) {
    for (int64_t p = threadIdx.y; p < parts; p += blockDim.y)
      acc = chan_merge(acc, MeanM2<acc_t>{ws_mean[p * C + c], ws_m2[p * C + c], ws_count[p * C + c]});
  }
  acc = merge_over_block(acc, blockDim.x);
  if (threadIdx.y == 0 && c < C) {
    mean[c] = acc.mean;
    var[c] = acc.count > 0 ? acc.m2 / static_cast<acc_t>(acc.count) : acc_t(0);
  }
}

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
  const dim3 finalize = finalize_block(C);
  stats_finalize<<<ceil_div(C, finalize.x), finalize, 0, ctx.stream>>>(
      ws_mean, ws_m2, ws_count, parts, C, args.mean, args.var);
}

#define FBN_INSTANTIATE_STATS(scalar_t, acc_t) \
  template void launch_stats<scalar_t, acc_t>(const StatsArgs<scalar_t, acc_t>&, acc_t*, const LaunchContext&);
FBN_INSTANTIATE_STATS(float, float)
FBN_INSTANTIATE_STATS(double, double)
FBN_INSTANTIATE_STATS(__half, float)
FBN_INSTANTIATE_STATS(__nv_bfloat16, float)
#undef FBN_INSTANTIATE_STATS

}  // namespace cuda
}  // namespace pyfusedbn
