// Host-side declarations of the GroupNorm CUDA launchers (group_norm.cu, group_norm_finalize.cu),
// shared by the kernel files and the binding (group_norm_binding.cpp). Torch-free, as
// batch_norm_kernels.cuh.
// The elementwise and backward-reduction launchers take BatchNorm's argument structs with
// per-(sample, channel) coefficient and sum arrays (N * C values, index n * C + c).
#pragma once

#include "../group_norm/args.h"
#include "batch_norm_kernels.cuh"

namespace pyfusedbn {
namespace cuda {

// What the statistics kernel writes besides mean, at the end of each (sample, group)'s block
// (group_norm/coefficients.h's forward formulas): rstd per (n, g), the apply pass's scale / shift per
// (n, c). var is not materialised (args.var is not written).
template <typename acc_t>
struct GroupForwardOutputs {
  const acc_t* weight;  // C values or nullptr (1)
  const acc_t* bias;    // C values or nullptr (0)
  double eps;
  acc_t* rstd;  // N * groups
  GroupForwardArrays<acc_t> arrays;
};

// mean, rstd, scale and shift (see GroupForwardOutputs). Not for an empty input.
template <typename scalar_t, typename acc_t>
void launch_group_stats(const GroupStatsArgs<scalar_t, acc_t>& args, const GroupForwardOutputs<acc_t>& out,
                        const LaunchContext& ctx);

// The backward's per-(sample, group) steps (group_norm_finalize.cu). Prepare: the rebuild
// coefficients mean / scale / bias per (n, c) (one launch).
template <typename acc_t>
void launch_group_backward_prepare(const GroupCoefficientArgs<acc_t>& args, const GroupBackwardArrays<acc_t>& k,
                                   const LaunchContext& ctx);

// Finalize: grad_weight / grad_bias (C values) and coef_xc / coef_const per (n, c) from the sums.
// One launch; a second when the batch is split into parts (group_param_grad_parts(N) > 1), whose
// per-channel partial sums go to `partials` (2 * parts * C doubles, else unused and may be null).
int64_t group_param_grad_parts(int64_t batch);
template <typename acc_t>
void launch_group_backward_finalize(const GroupCoefficientArgs<acc_t>& args, const GroupBackwardArrays<acc_t>& k,
                                    double count, acc_t* grad_weight, acc_t* grad_bias, double* partials,
                                    const LaunchContext& ctx);

template <typename scalar_t, typename acc_t>
void launch_group_apply(const ApplyArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx);

// sum_g / sum_g_xc per (sample, channel).
template <typename scalar_t, typename acc_t>
void launch_group_backward_reduce(const ReduceArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx);

template <typename scalar_t, typename acc_t>
void launch_group_backward_elemt(const ElemtArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx);

// The rows path (group_norm/args.h: group_rows_layout): ApplyArgs / ReduceArgs / ElemtArgs with
// null coefficient and sum pointers, each element's coefficients from `rows`.
template <typename scalar_t, typename acc_t>
void launch_group_rows_apply(const ApplyArgs<scalar_t, acc_t>& args, const GroupRowsCoefficients<acc_t>& rows,
                             ActKind act, const LaunchContext& ctx);
// coef_xc / coef_const per (row, group) and each part's parameter-gradient sums (rows.partials), one launch.
template <typename scalar_t, typename acc_t>
void launch_group_rows_backward_reduce(const ReduceArgs<scalar_t, acc_t>& args, const GroupRowsCoefficients<acc_t>& rows,
                                       double count, ActKind act, const LaunchContext& ctx);
// grad_weight / grad_bias from the parts' sums, one launch.
template <typename acc_t>
void launch_group_rows_backward_finalize(const GroupRowsCoefficients<acc_t>& rows, acc_t* grad_weight, acc_t* grad_bias,
                                         const LaunchContext& ctx);
template <typename scalar_t, typename acc_t>
void launch_group_rows_backward_elemt(const ElemtArgs<scalar_t, acc_t>& args, const GroupRowsCoefficients<acc_t>& rows,
                                      ActKind act, const LaunchContext& ctx);

}  // namespace cuda
}  // namespace pyfusedbn
