// GroupNorm on the GPU: statistics per (sample, group), the elementwise passes with
// per-(sample, channel) coefficients, and the backward's per-(sample, channel) sums.
//
// Statistics: one 256-thread block per (sample, group), Welford per thread, Chan merges over the
// block (block_merge.cuh); the block then writes its group's rstd and the apply pass's
// per-channel scale / shift (group_norm/coefficients.h), so the forward is two launches. In NCHW a
// group is one contiguous run; in NHWC (the diffusion-UNet layout) it is D = C / G channels of
// each of the sample's rows, walked row by row so a warp reads whole D-channel runs of
// consecutive rows.
// Elementwise: a grid-stride loop over kVec-wide vectors (16 bytes when the contiguous dimension
// and every pointer allow it); the coefficient index is the vector's (n, c).
// Backward sums: NCHW one block per (n, c) plane; NHWC one block per (n, 32-channel tile),
// x along channels (coalesced), y along the sample's rows.
#include "../group_norm/coefficients.h"
#include "block_merge.cuh"
#include "group_norm_device_utils.cuh"
#include "group_norm_kernels.cuh"

namespace pyfusedbn {
namespace cuda {
namespace {

// Offset of a group's j-th value (j < D * S): contiguous groups, or D channels of S rows.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ int64_t group_offset(const GroupStatsArgs<scalar_t, acc_t>& a, int64_t ng, int64_t j) {
  const int64_t D = a.channels_per_group(), S = a.shape.spatial, C = a.shape.channels;
  if (a.contiguous_groups()) return ng * D * S + j;
  const int64_t n = ng / a.groups, g = ng % a.groups;
  return (n * S + j / D) * C + g * D + j % D;
}

// One block per (n, g) (grid-stride over them past the grid's limit): Welford over the group,
// then mean, rstd, and the group's D scale / shift values written by the block's threads.
template <typename scalar_t, typename acc_t>
__global__ void group_stats_kernel(GroupStatsArgs<scalar_t, acc_t> a, GroupForwardOutputs<acc_t> out) {
  __shared__ acc_t group_mean, group_rstd_value;
  const int64_t len = a.channels_per_group() * a.shape.spatial, groups = a.shape.batch * a.groups;
  const int64_t D = a.channels_per_group(), C = a.shape.channels;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, threads = blockDim.x * blockDim.y;
  for (int64_t ng = blockIdx.x; ng < groups; ng += gridDim.x) {
    MeanM2<acc_t> acc{0, 0, 0};
    for (int64_t j0 = tid; j0 < len; j0 += static_cast<int64_t>(kGroupUnroll) * threads) {
      acc_t x[kGroupUnroll];
#pragma unroll
      for (int u = 0; u < kGroupUnroll; ++u) {
        const int64_t j = j0 + static_cast<int64_t>(u) * threads;
        if (j < len) x[u] = to_acc<acc_t>(a.input[group_offset(a, ng, j)]);
      }
#pragma unroll
      for (int u = 0; u < kGroupUnroll; ++u)
        if (j0 + static_cast<int64_t>(u) * threads < len) welford_add(acc, x[u]);
    }
    acc = merge_over_block(acc, 1);  // (starts with a barrier: the last group's readers are done)
    if (tid == 0) {
      const acc_t rstd = group_rstd(acc.m2 / static_cast<acc_t>(len), out.eps);
      a.mean[ng] = acc.mean;
      out.rstd[ng] = rstd;
      group_mean = acc.mean;
      group_rstd_value = rstd;
    }
    __syncthreads();
    const int64_t first = (ng / a.groups) * C, c0 = (ng % a.groups) * D;
    for (int64_t j = tid; out.arrays.scale != nullptr && j < D; j += threads) {  // (none on the rows path)
      const ScaleShift<acc_t> s = group_scale_shift(group_mean, group_rstd_value, out.weight, out.bias, c0 + j);
      out.arrays.scale[first + c0 + j] = s.scale;
      out.arrays.shift[first + c0 + j] = s.shift;
    }
  }
}

// (n * C + c) of the vector starting at element i (kVec never straddles a plane or a row).
__device__ __forceinline__ int64_t coefficient_index(const BnShape& shape, int64_t i) {
  const int64_t C = shape.channels, S = shape.spatial;
  if (!shape.channels_last) return i / S;
  return (i / (S * C)) * C + i % C;
}

template <typename F>
__device__ __forceinline__ void for_each_vector(const BnShape& shape, int vec, F&& f) {
  const int64_t vectors = shape.numel() / vec;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < vectors;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x)
    f(v * vec, coefficient_index(shape, v * vec));
}

template <typename Act, bool kResidual, int kVec, typename scalar_t, typename acc_t>
__global__ void group_apply_kernel(ApplyArgs<scalar_t, acc_t> a) {
  const int channel_step = a.shape.channels_last ? 1 : 0;
  for_each_vector(a.shape, kVec, [&](int64_t i, int64_t nc) {
    acc_t x[kVec], residual[kVec] = {}, out[kVec], scale[kVec], shift[kVec];
    group_load_acc<kVec>(a.input + i, x);
    if constexpr (kResidual) group_load_acc<kVec>(a.residual + i, residual);
    group_load_per_lane<kVec>(a.scale, nc, channel_step, scale);
    group_load_per_lane<kVec>(a.shift, nc, channel_step, shift);
#pragma unroll
    for (int k = 0; k < kVec; ++k) out[k] = Act::value(x[k] * scale[k] + shift[k] + residual[k], a.activation_param);
    store_acc<kVec>(a.output + i, out);
  });
}

template <typename Act, bool kResidual, int kVec, typename scalar_t, typename acc_t>
__global__ void group_elemt_kernel(ElemtArgs<scalar_t, acc_t> a) {
  const int channel_step = a.shape.channels_last ? 1 : 0;
  for_each_vector(a.shape, kVec, [&](int64_t i, int64_t nc) {
    const auto k_c = GroupRebuildCoefs<acc_t, kVec>::load(a.mean, a.scale, a.bias, nc, channel_step);
    acc_t g[kVec], xc[kVec], coef_g[kVec], coef_xc[kVec], coef_const[kVec], grad_input[kVec];
    group_backward_terms<Act, kResidual, false>(a, i, k_c, g, xc);
    group_load_per_lane<kVec>(a.coef_g, nc, channel_step, coef_g);
    group_load_per_lane<kVec>(a.coef_xc, nc, channel_step, coef_xc);
    group_load_per_lane<kVec>(a.coef_const, nc, channel_step, coef_const);
#pragma unroll
    for (int k = 0; k < kVec; ++k) grad_input[k] = g[k] * coef_g[k] + xc[k] * coef_xc[k] + coef_const[k];
    store_acc<kVec>(a.grad_input + i, grad_input);
    if constexpr (kResidual) store_acc<kVec>(a.grad_residual + i, g);
  });
}

// The rows path (group_norm/args.h: group_rows_layout): the element index is n * C + c, and each
// lane's coefficients come from its row's statistics (coefficients.h), not from per-element arrays.
template <typename Act, bool kResidual, int kVec, typename scalar_t, typename acc_t>
__global__ void group_rows_apply_kernel(ApplyArgs<scalar_t, acc_t> a, GroupRowsCoefficients<acc_t> rc) {
  for_each_vector(a.shape, kVec, [&](int64_t i, int64_t) {
    const int64_t n = i / rc.channels, c0 = i % rc.channels;
    acc_t x[kVec], residual[kVec] = {}, out[kVec];
    group_load_acc<kVec>(a.input + i, x);
    if constexpr (kResidual) group_load_acc<kVec>(a.residual + i, residual);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const ScaleShift<acc_t> s = group_rows_scale_shift(rc, n, c0 + k);
      out[k] = Act::value(x[k] * s.scale + s.shift + residual[k], a.activation_param);
    }
    store_acc<kVec>(a.output + i, out);
  });
}

// grad_input = g * (weight * rstd) + xc * coef_xc + coef_const, the last two per (row, group).
template <typename Act, bool kResidual, int kVec, typename scalar_t, typename acc_t>
__global__ void group_rows_elemt_kernel(ElemtArgs<scalar_t, acc_t> a, GroupRowsCoefficients<acc_t> rc) {
  for_each_vector(a.shape, kVec, [&](int64_t i, int64_t) {
    const int64_t n = i / rc.channels, c0 = i % rc.channels;
    const auto k_c = GroupRebuildCoefs<acc_t, kVec>::rows(rc, n, c0);
    acc_t g[kVec], xc[kVec], grad_input[kVec];
    group_backward_terms<Act, kResidual, false>(a, i, k_c, g, xc);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t ng = rc.group_of(n, c0 + k);
      grad_input[k] = g[k] * k_c.scale[k] + xc[k] * rc.coef_xc[ng] + rc.coef_const[ng];
    }
    store_acc<kVec>(a.grad_input + i, grad_input);
    if constexpr (kResidual) store_acc<kVec>(a.grad_residual + i, g);
  });
}

// One block per (n, c) plane (NCHW), grid-stride past the grid's limit.
template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
__global__ void group_reduce_planar(ReduceArgs<scalar_t, acc_t> a) {
  const int64_t S = a.shape.spatial, planes = a.shape.batch * a.shape.channels;
  for (int64_t nc = blockIdx.x; nc < planes; nc += gridDim.x) {
    const auto k_c = GroupRebuildCoefs<acc_t, 1>::one_channel(a.mean, a.scale, a.bias, nc);
    SumPair<acc_t> acc{0, 0};
    for (int64_t s = threadIdx.y * blockDim.x + threadIdx.x; s < S; s += blockDim.x * blockDim.y) {
      acc_t g[1], xc[1];
      group_backward_terms<Act, kResidual, false>(a, nc * S + s, k_c, g, xc);
      acc.g += g[0];
      acc.g_xc += g[0] * xc[0];
    }
    acc = merge_over_block(acc, 1);  // (starts with a barrier: the last plane's readers are done)
    if (threadIdx.x == 0 && threadIdx.y == 0) {
      a.sum_g[nc] = acc.g;
      a.sum_g_xc[nc] = acc.g_xc;
    }
  }
}

// One block per (n, 32-channel tile) of the rows layout: x along channels, y along rows;
// grid-stride past the grid's limit.
template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
__global__ void group_reduce_rows(ReduceArgs<scalar_t, acc_t> a, int64_t tiles) {
  const int64_t C = a.shape.channels, S = a.shape.spatial;
  for (int64_t item = blockIdx.x; item < a.shape.batch * tiles; item += gridDim.x) {
    const int64_t n = item / tiles, c = (item % tiles) * blockDim.x + threadIdx.x;
    SumPair<acc_t> acc{0, 0};
    if (c < C) {
      const auto k_c = GroupRebuildCoefs<acc_t, 1>::one_channel(a.mean, a.scale, a.bias, n * C + c);
      for (int64_t s = threadIdx.y; s < S; s += blockDim.y) {
        acc_t g[1], xc[1];
        group_backward_terms<Act, kResidual, false>(a, (n * S + s) * C + c, k_c, g, xc);
        acc.g += g[0];
        acc.g_xc += g[0] * xc[0];
      }
    }
    acc = merge_over_block(acc, blockDim.x);
    if (threadIdx.y == 0 && c < C) {
      a.sum_g[n * C + c] = acc.g;
      a.sum_g_xc[n * C + c] = acc.g_xc;
    }
  }
}

// Four waves of 256-thread blocks for the grid-stride elementwise loops.
unsigned elementwise_blocks(int64_t vectors, int num_sms) {
  return static_cast<unsigned>(std::max<int64_t>(
      1, std::min(ceil_div(vectors, kBlockThreads), 32 * static_cast<int64_t>(std::max(num_sms, 1)))));
}

}  // namespace

template <typename scalar_t, typename acc_t>
void launch_group_stats(const GroupStatsArgs<scalar_t, acc_t>& args, const GroupForwardOutputs<acc_t>& out,
                        const LaunchContext& ctx) {
  const int64_t groups = args.shape.batch * args.groups;
  if (groups == 0) return;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(groups, kMaxGridX));
  group_stats_kernel<<<blocks, dim3(32, kBlockThreads / 32), 0, ctx.stream>>>(args, out);
}

template <typename scalar_t, typename acc_t>
void launch_group_apply(const ApplyArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx) {
  const int vec = vector_width<scalar_t>(args.shape, {args.input, args.residual, args.output});
  const unsigned blocks = elementwise_blocks(args.shape.numel() / vec, ctx.num_sms);
  dispatch_act_residual(act, args.residual != nullptr, [&](auto activation, auto res) {
    dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
      group_apply_kernel<decltype(activation), decltype(res)::value, decltype(vec_width)::value>
          <<<blocks, kBlockThreads, 0, ctx.stream>>>(args);
    });
  });
}

template <typename scalar_t, typename acc_t>
void launch_group_rows_apply(const ApplyArgs<scalar_t, acc_t>& args, const GroupRowsCoefficients<acc_t>& rows,
                             ActKind act, const LaunchContext& ctx) {
  const int vec = vector_width<scalar_t>(args.shape, {args.input, args.residual, args.output});
  const unsigned blocks = elementwise_blocks(args.shape.numel() / vec, ctx.num_sms);
  dispatch_act_residual(act, args.residual != nullptr, [&](auto activation, auto res) {
    dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
      group_rows_apply_kernel<decltype(activation), decltype(res)::value, decltype(vec_width)::value>
          <<<blocks, kBlockThreads, 0, ctx.stream>>>(args, rows);
    });
  });
}

template <typename scalar_t, typename acc_t>
void launch_group_rows_backward_elemt(const ElemtArgs<scalar_t, acc_t>& args, const GroupRowsCoefficients<acc_t>& rows,
                                      ActKind act, const LaunchContext& ctx) {
  const int vec = vector_width<scalar_t>(
      args.shape, {args.grad_out, args.saved, args.residual, args.grad_input, args.grad_residual});
  const unsigned blocks = elementwise_blocks(args.shape.numel() / vec, ctx.num_sms);
  dispatch_act_residual(act, args.residual != nullptr, [&](auto activation, auto res) {
    dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
      group_rows_elemt_kernel<decltype(activation), decltype(res)::value, decltype(vec_width)::value>
          <<<blocks, kBlockThreads, 0, ctx.stream>>>(args, rows);
    });
  });
}

template <typename scalar_t, typename acc_t>
void launch_group_backward_reduce(const ReduceArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx) {
  const BnShape& shape = args.shape;
  dispatch_act_residual(act, args.residual != nullptr, [&](auto activation, auto res) {
    using Act = decltype(activation);
    constexpr bool kRes = decltype(res)::value;
    // Clamped to the grid's limit (the kernels stride past it), as launch_group_stats.
    if (shape.channels_last) {
      const int64_t tiles = ceil_div(shape.channels, 32);
      const auto blocks = static_cast<unsigned>(std::min<int64_t>(shape.batch * tiles, kMaxGridX));
      group_reduce_rows<Act, kRes><<<blocks, dim3(32, kBlockThreads / 32), 0, ctx.stream>>>(args, tiles);
    } else {
      const auto blocks = static_cast<unsigned>(std::min<int64_t>(shape.batch * shape.channels, kMaxGridX));
      group_reduce_planar<Act, kRes><<<blocks, dim3(32, kBlockThreads / 32), 0, ctx.stream>>>(args);
    }
  });
}

template <typename scalar_t, typename acc_t>
void launch_group_backward_elemt(const ElemtArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx) {
  const int vec = vector_width<scalar_t>(
      args.shape, {args.grad_out, args.saved, args.residual, args.grad_input, args.grad_residual});
  const unsigned blocks = elementwise_blocks(args.shape.numel() / vec, ctx.num_sms);
  dispatch_act_residual(act, args.residual != nullptr, [&](auto activation, auto res) {
    dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
      group_elemt_kernel<decltype(activation), decltype(res)::value, decltype(vec_width)::value>
          <<<blocks, kBlockThreads, 0, ctx.stream>>>(args);
    });
  });
}

#define FBN_INSTANTIATE_GROUP(scalar_t, acc_t)                                                                \
  template void launch_group_stats<scalar_t, acc_t>(const GroupStatsArgs<scalar_t, acc_t>&,                  \
                                                    const GroupForwardOutputs<acc_t>&, const LaunchContext&); \
  template void launch_group_apply<scalar_t, acc_t>(const ApplyArgs<scalar_t, acc_t>&, ActKind,               \
                                                    const LaunchContext&);                                    \
  template void launch_group_backward_reduce<scalar_t, acc_t>(const ReduceArgs<scalar_t, acc_t>&, ActKind,    \
                                                              const LaunchContext&);                          \
  template void launch_group_backward_elemt<scalar_t, acc_t>(const ElemtArgs<scalar_t, acc_t>&, ActKind,      \
                                                             const LaunchContext&);                          \
  template void launch_group_rows_apply<scalar_t, acc_t>(const ApplyArgs<scalar_t, acc_t>&,                   \
                                                         const GroupRowsCoefficients<acc_t>&, ActKind,        \
                                                         const LaunchContext&);                               \
  template void launch_group_rows_backward_elemt<scalar_t, acc_t>(const ElemtArgs<scalar_t, acc_t>&,          \
                                                                  const GroupRowsCoefficients<acc_t>&, ActKind, \
                                                                  const LaunchContext&);
FBN_INSTANTIATE_GROUP(float, float)
FBN_INSTANTIATE_GROUP(double, double)
FBN_INSTANTIATE_GROUP(__half, float)
FBN_INSTANTIATE_GROUP(__nv_bfloat16, float)
#undef FBN_INSTANTIATE_GROUP

}  // namespace cuda
}  // namespace pyfusedbn
