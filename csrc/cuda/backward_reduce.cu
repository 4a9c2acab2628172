// The backward's per-channel sums on the GPU: sum(g) and sum(g * xc) with g = grad_out *
// act'(z), the pre-activation z rebuilt from the input or (from_output) from the output. Each
// thread keeps one pair of sums per lane of its kVec-wide loads; blocks write partials that a
// finalize kernel adds in a fixed order (block_merge.cuh).
#include "block_merge.cuh"

namespace pyfusedbn {
namespace cuda {
namespace {

// Adds g and g * xc (backward_terms) of the kVec elements at i into the lanes' sums.
template <typename Act, bool kResidual, bool kFromOutput, int kVec, typename scalar_t, typename acc_t>
__device__ __forceinline__ void add_grad_terms(const ReduceArgs<scalar_t, acc_t>& a, int64_t i,
                                               const RebuildCoefs<acc_t, kVec>& k_c,
                                               SumPair<acc_t> (&acc)[kVec]) {
  acc_t g[kVec], xc[kVec];
  backward_terms<Act, kResidual, kFromOutput>(a, i, k_c, g, xc);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    acc[k].g += g[k];
    acc[k].g_xc += g[k] * xc[k];
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
  SumPair<acc_t> acc{0, 0};
  if (c < C) {
    for (int64_t p = threadIdx.y; p < parts; p += blockDim.y)
      acc = merge(acc, SumPair<acc_t>{ws_g[p * C + c], ws_g_xc[p * C + c]});
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
  const Geometry geo = launch_geometry(shape, vec, reduction_target_blocks(ctx.num_sms));
  const int64_t parts = geo.parts();
  acc_t* ws_g = workspace;
  acc_t* ws_g_xc = workspace + parts * C;
  dispatch_backward(act, args.residual != nullptr, from_output, [&](auto activation, auto res, auto from_out) {
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
  const dim3 finalize = finalize_block(C);
  reduce_finalize<<<ceil_div(C, finalize.x), finalize, 0, ctx.stream>>>(
      ws_g, ws_g_xc, parts, C, args.sum_g, args.sum_g_xc);
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
