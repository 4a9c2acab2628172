// Host-side declarations of the CUDA launchers (defined in batch_norm_stats.cu,
// batch_norm_backward_reduce.cu, batch_norm_elementwise.cu and batch_norm_finalize.cu), shared by the kernel files and the binding. Launchers enqueue on ctx.stream
// and never synchronise or allocate.
// No torch headers: scalar_t is float, double, __half or __nv_bfloat16 (the binding
// reinterprets at::Half / at::BFloat16 pointers, which have the same layout).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../batch_norm/coefficients.h"
#include "../common/activations.h"
#include "../common/kernel_args.h"

namespace pyfusedbn {
namespace cuda {

// What a launcher needs to know about the device and where its scratch space is. The binding
// allocates the workspace (workspace_elements() accumulator values) with torch's allocator.
struct LaunchContext {
  cudaStream_t stream;
  int num_sms;
};

// Per-channel partial results: the reductions split each channel's work over several blocks,
// write partials here, and a second small kernel merges them (no atomics, no host sync). The
// count bounds every vector width a launch may pick, so it depends on the shape only.
int64_t reduction_partials(const BnShape& shape, int num_sms);
// In accumulator values: per partial and channel an int64 count and two accumulators (float or
// double), so at most four values.
inline int64_t workspace_elements(const BnShape& shape, int num_sms) {
  return 4 * reduction_partials(shape, num_sms) * shape.channels;
}

template <typename scalar_t, typename acc_t>
void launch_stats(const StatsArgs<scalar_t, acc_t>& args, acc_t* workspace, const LaunchContext& ctx);

template <typename scalar_t, typename acc_t>
void launch_apply(const ApplyArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx);

template <typename scalar_t, typename acc_t>
void launch_backward_reduce(const ReduceArgs<scalar_t, acc_t>& args, ActKind act, bool from_output,
                            acc_t* workspace, const LaunchContext& ctx);

template <typename scalar_t, typename acc_t>
void launch_backward_elemt(const ElemtArgs<scalar_t, acc_t>& args, ActKind act, bool from_output,
                           const LaunchContext& ctx);

// The per-channel steps (../batch_norm/coefficients.h), one small kernel each (batch_norm_finalize.cu).
template <typename acc_t, typename param_t, typename running_t>
void launch_finalize(const ForwardFinalizeArgs<acc_t, param_t, running_t>& args, const LaunchContext& ctx);
template <typename acc_t, typename param_t, typename running_t>
void launch_finalize(const EvalFinalizeArgs<acc_t, param_t, running_t>& args, const LaunchContext& ctx);
template <typename acc_t, typename param_t>
void launch_finalize(const PrepareArgs<acc_t, param_t>& args, const LaunchContext& ctx);
template <typename acc_t, typename param_t>
void launch_finalize(const BackwardFinalizeArgs<acc_t, param_t>& args, const LaunchContext& ctx);

}  // namespace cuda
}  // namespace pyfusedbn
