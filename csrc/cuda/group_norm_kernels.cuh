// Host-side declarations of the GroupNorm CUDA launchers (group_norm.cu), shared by the kernel
// file and the binding (group_norm_binding.cpp). Torch-free, as batch_norm_act_kernels.cuh.
// The elementwise and backward-reduction launchers take BatchNorm's argument structs with
// per-(sample, channel) coefficient and sum arrays (N * C values, index n * C + c).
#pragma once

#include "../group_norm_args.h"
#include "batch_norm_act_kernels.cuh"

namespace pyfusedbn {
namespace cuda {

// mean / var per (sample, group).
template <typename scalar_t, typename acc_t>
void launch_group_stats(const GroupStatsArgs<scalar_t, acc_t>& args, const LaunchContext& ctx);

template <typename scalar_t, typename acc_t>
void launch_group_apply(const ApplyArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx);

// sum_g / sum_g_xc per (sample, channel).
template <typename scalar_t, typename acc_t>
void launch_group_backward_reduce(const ReduceArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx);

template <typename scalar_t, typename acc_t>
void launch_group_backward_elemt(const ElemtArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx);

}  // namespace cuda
}  // namespace pyfusedbn
