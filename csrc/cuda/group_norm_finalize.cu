// The GroupNorm backward's per-(sample, group) steps on the GPU, each thread calling
// group_norm/coefficients.h's formulas (the CPU backend runs the same ones in loops).
// - prepare: one thread per (n, c).
// - finalize: one launch. Its first blocks sum the parameter gradients, a 32-channel tile each
//   (coalesced along C) with 8 rows of samples merged over the block; the other blocks compute
//   the elementwise coefficients, a warp per (n, g) with the lanes over the group's channels
//   (coalesced whether a group has one channel, as InstanceNorm, or all C, as LayerNorm2d).
//   A large batch (LayerNorm2d has one "sample" per position) splits each tile's samples into
//   parts whose sums a second small kernel merges in a fixed order: no atomics, so the result is
//   the same on every run.
// - the rows path's reduction and parameter-gradient merge (one position per sample; see
//   group_rows_reduce_kernel).
#include "../group_norm/coefficients.h"
#include "block_merge.cuh"
#include "group_norm_device_utils.cuh"
#include "group_norm_kernels.cuh"

namespace pyfusedbn {
namespace cuda {
namespace {

constexpr int kTileChannels = 32;                            // x of a parameter-gradient block
constexpr int kTileRows = kBlockThreads / kTileChannels;     // y: samples summed side by side
constexpr int kWarpsPerBlock = kBlockThreads / 32;           // coefficient blocks: a warp per (n, g)
constexpr int64_t kSamplesPerPart = 1024;                    // beyond it the batch is split
constexpr int64_t kMaxParts = 256;
constexpr int64_t kMaxItemBlocks = 65535;                    // grid-stride loops beyond

unsigned item_blocks(int64_t items, int64_t per_block) {
  return static_cast<unsigned>(clamp64(ceil_div(items, per_block), 1, kMaxItemBlocks));
}

template <typename acc_t>
__global__ void group_backward_prepare_kernel(GroupCoefficientArgs<acc_t> a, GroupBackwardArrays<acc_t> k) {
  const int64_t items = a.batch * a.channels;
  for (int64_t nc = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; nc < items;
       nc += static_cast<int64_t>(gridDim.x) * blockDim.x)
    group_backward_prepare_at(a, k, nc / a.channels, nc % a.channels);
}

// Block `block` = (tile, part) of the parameter gradients: channel tile * 32 + x, the part's
// samples by y. One part: the gradients themselves; several: the part's sums into partials
// ((part, c) pairs of doubles: weight, bias).
template <typename acc_t>
__device__ void param_grad_block(const GroupCoefficientArgs<acc_t>& a, const GroupBackwardArrays<acc_t>& k,
                                 int64_t block, int64_t parts, acc_t* grad_weight, acc_t* grad_bias,
                                 double* partials) {
  const int64_t tile = block / parts, part = block % parts;
  const int64_t c = tile * kTileChannels + threadIdx.x;
  const int64_t per_part = ceil_div(a.batch, parts), n0 = part * per_part;
  const int64_t n1 = n0 + per_part < a.batch ? n0 + per_part : a.batch;
  SumPair<double> sums{0, 0};  // (g: weight's sum, g_xc: bias's), for the block merge
  if (c < a.channels) {
    const ParamGradSums s = group_param_grad_sums(a, k, c, n0 + threadIdx.y, n1, kTileRows);
    sums = {s.weight, s.bias};
  }
  sums = merge_over_block(sums, kTileChannels);
  if (threadIdx.y != 0 || c >= a.channels) return;
  if (parts == 1) {
    grad_weight[c] = static_cast<acc_t>(sums.g);
    grad_bias[c] = static_cast<acc_t>(sums.g_xc);
  } else {
    partials[2 * (part * a.channels + c)] = sums.g;
    partials[2 * (part * a.channels + c) + 1] = sums.g_xc;
  }
}

// Coefficient block `block` of `blocks`: warp y takes (n, g) = block * warps + y, then strides.
// Every lane of a warp holds the same ng, so the shuffles see the whole warp.
template <typename acc_t>
__device__ void elemt_coefficient_block(const GroupCoefficientArgs<acc_t>& a, const GroupBackwardArrays<acc_t>& k,
                                        double count, int64_t block, int64_t blocks) {
  const int64_t groups = a.batch * a.groups;
  const int lane = threadIdx.x;
  for (int64_t ng = block * kWarpsPerBlock + threadIdx.y; ng < groups; ng += blocks * kWarpsPerBlock) {
    DxhatSums sums = group_dxhat_sums(a, k, ng, lane, 32);
    // Butterfly: every lane ends with the same total (each step adds the same pair).
    for (int offset = 16; offset > 0; offset /= 2) {
      sums.a += __shfl_xor_sync(0xffffffffu, sums.a, offset);
      sums.b += __shfl_xor_sync(0xffffffffu, sums.b, offset);
    }
    group_store_elemt_coefficients(a, k, count, ng, sums, lane, 32);
  }
}

// Block (32, 8). Blocks [0, param_blocks): parameter gradients; the rest: coefficients. The
// branch is per block, so each side's barriers see their whole block.
template <typename acc_t>
__global__ void group_backward_finalize_kernel(GroupCoefficientArgs<acc_t> a, GroupBackwardArrays<acc_t> k,
                                               double count, acc_t* grad_weight, acc_t* grad_bias,
                                               double* partials, int64_t parts, int64_t param_blocks) {
  const int64_t block = blockIdx.x;
  if (block < param_blocks)
    param_grad_block(a, k, block, parts, grad_weight, grad_bias, partials);
  else
    elemt_coefficient_block(a, k, count, block - param_blocks, gridDim.x - param_blocks);
}

// The parts' sums per channel, in part order.
template <typename acc_t>
__global__ void merge_param_grad_parts(const double* partials, int64_t parts, int64_t channels, acc_t* grad_weight,
                                       acc_t* grad_bias) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < channels;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const ParamGradSums sums = group_merged_param_grads(partials, parts, channels, c);
    grad_weight[c] = static_cast<acc_t>(sums.weight);
    grad_bias[c] = static_cast<acc_t>(sums.bias);
  }
}

// The rows path's reduction (group_norm/args.h: group_rows_layout), one launch of (32, 8) blocks
// that each keep all their threads on elements. Blocks [0, param_blocks): a 32-channel tile of
// one part of the rows, x along channels (coalesced), y along the part's rows, the part's
// parameter-gradient sums into rc.partials. The rest: a warp per (row, group), lanes along its
// channels, the elementwise coefficients into rc.coef_xc / coef_const. Each side computes g and
// xc itself (the data is read twice in one launch instead of a per-element array written once
// and read twice), with the per-(sample, channel) path's roundings: g * xc in acc_t, then double.
template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
__device__ __forceinline__ void rows_terms(const ReduceArgs<scalar_t, acc_t>& a, const GroupRowsCoefficients<acc_t>& rc,
                                           int64_t n, int64_t c, acc_t& g, acc_t& g_xc) {
  const auto k_c = GroupRebuildCoefs<acc_t, 1>::rows(rc, n, c);
  acc_t g1[1], xc1[1];
  group_backward_terms<Act, kResidual, false>(a, n * rc.channels + c, k_c, g1, xc1);
  g = g1[0];
  g_xc = g1[0] * xc1[0];
}

template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
__global__ void group_rows_reduce_kernel(ReduceArgs<scalar_t, acc_t> a, GroupRowsCoefficients<acc_t> rc, double count,
                                         int64_t param_blocks) {
  const int64_t N = a.shape.batch, C = rc.channels;
  if (blockIdx.x < param_blocks) {
    const int64_t tile = blockIdx.x / rc.parts, part = blockIdx.x % rc.parts;
    const int64_t c = tile * kTileChannels + threadIdx.x, per_part = group_rows_per_part(N, rc.parts);
    const int64_t n1 = (part + 1) * per_part < N ? (part + 1) * per_part : N;
    SumPair<double> sums{0, 0};  // (g: weight's sum, g_xc: bias's), for the block merge
    if (c < C) {
      for (int64_t n = part * per_part + threadIdx.y; n < n1; n += kTileRows) {
        acc_t g, g_xc;
        rows_terms<Act, kResidual>(a, rc, n, c, g, g_xc);
        sums.g += static_cast<double>(g_xc) * rc.rstd[rc.group_of(n, c)];
        sums.g_xc += g;
      }
    }
    sums = merge_over_block(sums, kTileChannels);
    if (threadIdx.y == 0 && c < C) {
      rc.partials[2 * (part * C + c)] = sums.g;
      rc.partials[2 * (part * C + c) + 1] = sums.g_xc;
    }
    return;
  }
  const int64_t blocks = gridDim.x - param_blocks, D = C / rc.groups;
  for (int64_t ng = (blockIdx.x - param_blocks) * kWarpsPerBlock + threadIdx.y; ng < N * rc.groups;
       ng += blocks * kWarpsPerBlock) {
    const int64_t n = ng / rc.groups, c0 = (ng % rc.groups) * D;
    DxhatSums sums{0, 0};
    for (int64_t j = threadIdx.x; j < D; j += 32) {
      acc_t g, g_xc;
      rows_terms<Act, kResidual>(a, rc, n, c0 + j, g, g_xc);
      const double w = weight_at(rc.weight, c0 + j);
      sums.a += w * g;
      sums.b += w * g_xc;
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      sums.a += __shfl_xor_sync(0xffffffffu, sums.a, offset);
      sums.b += __shfl_xor_sync(0xffffffffu, sums.b, offset);
    }
    if (threadIdx.x == 0) {
      const ElemtCoefficientPair<acc_t> coefs = group_elemt_coefficients(rc.rstd[ng], count, sums);
      rc.coef_xc[ng] = coefs.coef_xc;
      rc.coef_const[ng] = coefs.coef_const;
    }
  }
}

}  // namespace

int64_t group_param_grad_parts(int64_t batch) { return clamp64(ceil_div(batch, kSamplesPerPart), 1, kMaxParts); }

template <typename acc_t>
void launch_group_backward_prepare(const GroupCoefficientArgs<acc_t>& args, const GroupBackwardArrays<acc_t>& k,
                                   const LaunchContext& ctx) {
  const int64_t items = args.batch * args.channels;
  if (items == 0) return;
  group_backward_prepare_kernel<<<item_blocks(items, kBlockThreads), kBlockThreads, 0, ctx.stream>>>(args, k);
}

template <typename acc_t>
void launch_group_backward_finalize(const GroupCoefficientArgs<acc_t>& args, const GroupBackwardArrays<acc_t>& k,
                                    double count, acc_t* grad_weight, acc_t* grad_bias, double* partials,
                                    const LaunchContext& ctx) {
  if (args.channels == 0) return;
  const int64_t parts = group_param_grad_parts(args.batch);
  const int64_t param_blocks = ceil_div(args.channels, kTileChannels) * parts;
  const int64_t coefficient_blocks = item_blocks(args.batch * args.groups, kWarpsPerBlock);
  group_backward_finalize_kernel<<<static_cast<unsigned>(param_blocks + coefficient_blocks),
                                   dim3(kTileChannels, kTileRows), 0, ctx.stream>>>(
      args, k, count, grad_weight, grad_bias, partials, parts, param_blocks);
  if (parts > 1)
    merge_param_grad_parts<<<item_blocks(args.channels, kBlockThreads), kBlockThreads, 0, ctx.stream>>>(
        partials, parts, args.channels, grad_weight, grad_bias);
}

template <typename scalar_t, typename acc_t>
void launch_group_rows_backward_reduce(const ReduceArgs<scalar_t, acc_t>& args, const GroupRowsCoefficients<acc_t>& rows,
                                       double count, ActKind act, const LaunchContext& ctx) {
  if (args.shape.numel() == 0) return;
  const int64_t param_blocks = ceil_div(rows.channels, kTileChannels) * rows.parts;
  const int64_t coefficient_blocks = item_blocks(args.shape.batch * rows.groups, kWarpsPerBlock);
  dispatch_act_residual(act, args.residual != nullptr, [&](auto activation, auto res) {
    group_rows_reduce_kernel<decltype(activation), decltype(res)::value>
        <<<static_cast<unsigned>(param_blocks + coefficient_blocks), dim3(kTileChannels, kTileRows), 0, ctx.stream>>>(
            args, rows, count, param_blocks);
  });
}

template <typename acc_t>
void launch_group_rows_backward_finalize(const GroupRowsCoefficients<acc_t>& rows, acc_t* grad_weight, acc_t* grad_bias,
                                         const LaunchContext& ctx) {
  if (rows.channels == 0) return;
  merge_param_grad_parts<<<item_blocks(rows.channels, kBlockThreads), kBlockThreads, 0, ctx.stream>>>(
      rows.partials, rows.parts, rows.channels, grad_weight, grad_bias);
}

#define FBN_INSTANTIATE_GROUP_ROWS_REDUCE(scalar_t, acc_t)                                                      \
  template void launch_group_rows_backward_reduce<scalar_t, acc_t>(                                           \
      const ReduceArgs<scalar_t, acc_t>&, const GroupRowsCoefficients<acc_t>&, double, ActKind, const LaunchContext&);
FBN_INSTANTIATE_GROUP_ROWS_REDUCE(float, float)
FBN_INSTANTIATE_GROUP_ROWS_REDUCE(double, double)
FBN_INSTANTIATE_GROUP_ROWS_REDUCE(__half, float)
FBN_INSTANTIATE_GROUP_ROWS_REDUCE(__nv_bfloat16, float)
#undef FBN_INSTANTIATE_GROUP_ROWS_REDUCE

#define FBN_INSTANTIATE_GROUP_COEFFICIENTS(acc_t)                                                           \
  template void launch_group_backward_prepare<acc_t>(const GroupCoefficientArgs<acc_t>&,                    \
                                                     const GroupBackwardArrays<acc_t>&, const LaunchContext&); \
  template void launch_group_backward_finalize<acc_t>(const GroupCoefficientArgs<acc_t>&,                   \
                                                      const GroupBackwardArrays<acc_t>&, double, acc_t*, acc_t*, \
                                                      double*, const LaunchContext&);  \
  template void launch_group_rows_backward_finalize<acc_t>(const GroupRowsCoefficients<acc_t>&, acc_t*, acc_t*,     \
                                                           const LaunchContext&);
FBN_INSTANTIATE_GROUP_COEFFICIENTS(float)
FBN_INSTANTIATE_GROUP_COEFFICIENTS(double)
#undef FBN_INSTANTIATE_GROUP_COEFFICIENTS

}  // namespace cuda
}  // namespace pyfusedbn
