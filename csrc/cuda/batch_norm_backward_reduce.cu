// The backward's per-channel sums on the GPU: sum(g) and sum(g * xc) with g = grad_out *
// act'(z), the pre-activation z rebuilt from the input or (from_output) from the output. Each
// thread keeps one pair of sums per lane of its kVec-wide loads; blocks write partials that a
// finalize kernel adds in a fixed order (block_merge.cuh; index math: launch_geometry.h).
#include "block_merge.cuh"

namespace pyfusedbn {
namespace cuda {
namespace {

template <typename Act, bool kResidual, bool kFromOutput, bool kChannelsLast, int kVec, typename scalar_t,
          typename acc_t>
__global__ void reduce_partials(ReduceArgs<scalar_t, acc_t> a, acc_t* ws_g, acc_t* ws_g_xc) {
  constexpr int kUnroll = unroll_for(kVec * sizeof(scalar_t), kReduceStreams + kResidual);
  constexpr int kLanes = kCoefLanes<kChannelsLast, kVec>;
  const BnShape shape = compiled_layout<kChannelsLast>(a.shape);
  const ThreadIndex t = this_thread();
  const ThreadWalk w = thread_walk(shape, kVec, t);
  SumPair<acc_t> acc[kVec] = {};
  if (w.active) {
    const auto coefs = RebuildCoefs<acc_t, kLanes>::load(a.mean, a.scale, a.bias, lane_channel(shape, w, kVec, 0));
    walk_backward_terms<Act, kResidual, kFromOutput, kVec, kUnroll>(
        a, shape, w, coefs, [&](int64_t, const acc_t (&g)[kVec], const acc_t (&xc)[kVec]) {
#pragma unroll
          for (int k = 0; k < kVec; ++k) {
            acc[k].g += g[k];
            acc[k].g_xc += g[k] * xc[k];
          }
        });
  }
  SumPair<acc_t> lanes[kLanes];
#pragma unroll
  for (int k = 0; k < kLanes; ++k) lanes[k] = acc[k];
  if constexpr (kLanes == 1) {  // planar: the lanes are positions of one channel
#pragma unroll
    for (int k = 1; k < kVec; ++k) lanes[0] = merge(lanes[0], acc[k]);
  }
  merge_and_write_partials(shape, t, w, lanes, [&](int64_t slot, const SumPair<acc_t>& merged) {
    ws_g[slot] = merged.g;
    ws_g_xc[slot] = merged.g_xc;
  });
}

template <typename acc_t>
__global__ void reduce_finalize(const acc_t* ws_g, const acc_t* ws_g_xc, int64_t parts, int64_t C,
                                acc_t* sum_g, acc_t* sum_g_xc) {
  const int64_t c = finalize_channel(blockIdx.x, blockDim.x, threadIdx.x);
  SumPair<acc_t> acc{0, 0};
  if (c < C) {
    for_each_part(parts, threadIdx.y, blockDim.y, [&](int64_t p) {
      const int64_t slot = partial_slot(p, c, C);
      acc = merge(acc, SumPair<acc_t>{ws_g[slot], ws_g_xc[slot]});
    });
  }
  acc = merge_over_block(acc, blockDim.x);
  if (threadIdx.y == 0 && c < C) {
    sum_g[c] = acc.g;
    sum_g_xc[c] = acc.g_xc;
  }
}

}  // namespace

template <typename scalar_t, typename acc_t>
void launch_backward_reduce(const ReduceArgs<scalar_t, acc_t>& args, ActKind act, bool from_output,
                            acc_t* workspace, const LaunchContext& ctx) {
  const BnShape& shape = args.shape;
  const int64_t C = shape.channels;
  const int vec = vector_width<scalar_t>(shape, {args.grad_out, args.saved, args.residual});
  int64_t parts = 1;
  dispatch_backward(act, args.residual != nullptr, from_output, [&](auto activation, auto res, auto from_out) {
    dispatch_layout(shape, [&](auto layout) {
      dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
        const auto kernel = reduce_partials<decltype(activation), decltype(res)::value, decltype(from_out)::value,
                                            decltype(layout)::value, decltype(vec_width)::value, scalar_t, acc_t>;
        static const int blocks_per_sm = resident_blocks_per_sm(kernel);
        const Geometry geo = launch_geometry(shape, vec, reduction_target_blocks(ctx.num_sms, blocks_per_sm));
        parts = geo.parts();
        kernel<<<grid_dims(geo), block_dims(geo), 0, ctx.stream>>>(args, workspace, workspace + parts * C);
      });
    });
  });
  reduce_finalize<<<finalize_grid(C), finalize_block(C), 0, ctx.stream>>>(
      workspace, workspace + parts * C, parts, C, args.sum_g, args.sum_g_xc);
}

#define FBN_INSTANTIATE_BACKWARD_REDUCE(scalar_t, acc_t)                                               \
  template void launch_backward_reduce<scalar_t, acc_t>(const ReduceArgs<scalar_t, acc_t>&, ActKind, bool, \
                                                        acc_t*, const LaunchContext&);
FBN_INSTANTIATE_BACKWARD_REDUCE(float, float)
FBN_INSTANTIATE_BACKWARD_REDUCE(double, double)
FBN_INSTANTIATE_BACKWARD_REDUCE(__half, float)
FBN_INSTANTIATE_BACKWARD_REDUCE(__nv_bfloat16, float)
#undef FBN_INSTANTIATE_BACKWARD_REDUCE

}  // namespace cuda
}  // namespace pyfusedbn
