// Batch statistics on the GPU: per-channel mean and biased variance. Welford per thread (one
// accumulator per lane of its kVec-wide loads: kVec channels in channels_last, kVec positions
// of one channel in planar, merged before the block merge), Chan merges between threads and
// between the blocks' partials (block_merge.cuh). Which items a thread visits and where its
// partial goes: launch_geometry.h.
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

  template <typename scalar_t>
  __device__ __forceinline__ void add(const Vec<scalar_t, kVec>& loaded) {
    ++count;
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(count);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const acc_t x = to_acc<acc_t>(loaded.v[k]);
      const acc_t delta = x - mean[k];
      mean[k] += delta * inv_count;
      m2[k] += delta * (x - mean[k]);
    }
  }
  __device__ __forceinline__ MeanM2<acc_t> lane(int k) const { return {mean[k], m2[k], count}; }
};

// Welford over the thread's items (kUnroll loads in flight before the dependent updates),
// then merged per channel over the block into the partial slots.
template <bool kChannelsLast, int kVec, typename scalar_t, typename acc_t>
__global__ void stats_partials(StatsArgs<scalar_t, acc_t> a, acc_t* ws_mean, acc_t* ws_m2, int64_t* ws_count) {
  constexpr int kUnroll = unroll_for(kVec * sizeof(scalar_t), kStatsStreams);
  constexpr int kLanes = kCoefLanes<kChannelsLast, kVec>;
  const BnShape shape = compiled_layout<kChannelsLast>(a.shape);
  const ThreadIndex t = this_thread();
  const ThreadWalk w = thread_walk(shape, kVec, t);
  LaneWelford<acc_t, kVec> acc;
  walk_items<kVec, kUnroll>(shape, w, [&](const int64_t (&offsets)[kUnroll], int count) {
    Vec<scalar_t, kVec> x[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (u < count) x[u] = load_vec<kVec>(a.input + offsets[u]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (u < count) acc.add(x[u]);
  });
  MeanM2<acc_t> lanes[kLanes];
#pragma unroll
  for (int k = 0; k < kLanes; ++k) lanes[k] = acc.lane(k);
  if constexpr (kLanes == 1) {  // planar: the lanes are positions of one channel
#pragma unroll
    for (int k = 1; k < kVec; ++k) lanes[0] = chan_merge(lanes[0], acc.lane(k));
  }
  merge_and_write_partials(shape, t, w, lanes, [&](int64_t slot, const MeanM2<acc_t>& merged) {
    ws_mean[slot] = merged.mean;
    ws_m2[slot] = merged.m2;
    ws_count[slot] = merged.count;
  });
}

template <typename acc_t>
__global__ void stats_finalize(const acc_t* ws_mean, const acc_t* ws_m2, const int64_t* ws_count,
                               int64_t parts, int64_t C, acc_t* mean, acc_t* var) {
  const int64_t c = finalize_channel(blockIdx.x, blockDim.x, threadIdx.x);
  MeanM2<acc_t> acc{0, 0, 0};
  if (c < C) {
    for_each_part(parts, threadIdx.y, blockDim.y, [&](int64_t p) {
      const int64_t slot = partial_slot(p, c, C);
      acc = chan_merge(acc, MeanM2<acc_t>{ws_mean[slot], ws_m2[slot], ws_count[slot]});
    });
  }
  acc = merge_over_block(acc, blockDim.x);
  if (threadIdx.y == 0 && c < C) {
    mean[c] = acc.mean;
    var[c] = acc.count > 0 ? acc.m2 / static_cast<acc_t>(acc.count) : acc_t(0);
  }
}

}  // namespace

int64_t reduction_partials(const BnShape& shape, int num_sms) { return reduction_parts_bound(shape, num_sms); }

template <typename scalar_t, typename acc_t>
void launch_stats(const StatsArgs<scalar_t, acc_t>& args, acc_t* workspace, const LaunchContext& ctx) {
  const BnShape& shape = args.shape;
  const int64_t C = shape.channels;
  const int vec = vector_width<scalar_t>(shape, {args.input});
  int64_t parts = 1;
  acc_t *ws_mean = nullptr, *ws_m2 = nullptr;
  int64_t* ws_count = nullptr;
  dispatch_layout(shape, [&](auto layout) {
    dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
      const auto kernel = stats_partials<decltype(layout)::value, decltype(vec_width)::value, scalar_t, acc_t>;
      static const int blocks_per_sm = resident_blocks_per_sm(kernel);
      const Geometry geo = launch_geometry(shape, vec, reduction_target_blocks(ctx.num_sms, blocks_per_sm));
      parts = geo.parts();
      // Counts first (int64, aligned at the workspace's start), then means and M2s.
      ws_count = reinterpret_cast<int64_t*>(workspace);
      ws_mean = reinterpret_cast<acc_t*>(ws_count + parts * C);
      ws_m2 = ws_mean + parts * C;
      kernel<<<grid_dims(geo), block_dims(geo), 0, ctx.stream>>>(args, ws_mean, ws_m2, ws_count);
    });
  });
  stats_finalize<<<finalize_grid(C), finalize_block(C), 0, ctx.stream>>>(ws_mean, ws_m2, ws_count, parts, C,
                                                                         args.mean, args.var);
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
