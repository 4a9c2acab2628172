// CUDA backend: tensors to raw-pointer kernel arguments, the current stream and device, the
// reductions' workspace, and the TORCH_LIBRARY_IMPL(CUDA) registrations. The kernels themselves
// live in the .cu files beside this one and see no torch header.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "../batch_norm/backward_ops.h"
#include "../common/kernel_calls.h"
#include "batch_norm_kernels.cuh"
#include "binding_utils.h"

namespace pyfusedbn {
namespace {

using namespace cuda_binding;

Tensor reduction_workspace(const Tensor& like, const BnShape& shape, const cuda::LaunchContext& ctx) {
  return at::empty({cuda::workspace_elements(shape, ctx.num_sms)}, like.options().dtype(acc_type_of(like)));
}

struct CudaBackend {
  static void stats(const Tensor& x, const BnShape& shape, void* mean, void* var) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(x.device());
    const auto ctx = launch_context(x);
    Tensor workspace = reduction_workspace(x, shape, ctx);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "batch_norm_stats_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      cuda::launch_stats(StatsArgs<cuda_t, acc_t>{device_ptr<scalar_t>(x), typed<acc_t>(mean), typed<acc_t>(var),
                                                  shape},
                         workspace.data_ptr<acc_t>(), ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void apply(const Tensor& x, const OptTensor& residual, const void* scale, const void* shift,
                    ActKind act, double param, Tensor& out, const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(x.device());
    const auto ctx = launch_context(x);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "batch_norm_act_apply_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      cuda::launch_apply(ApplyArgs<cuda_t, acc_t>{device_ptr<scalar_t>(x), device_ptr_or_null<scalar_t>(residual),
                                                  typed<acc_t>(scale), typed<acc_t>(shift),
                                                  device_ptr<scalar_t>(out), static_cast<acc_t>(param), shape},
                         act, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The backward passes recompute g (memory-bound here: a cache would only add traffic).
  static void* grad_cache(const Tensor&, ActKind, bool) { return nullptr; }

  static void backward_reduce(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                              const RebuildCoefficients& k, ActKind act, double param, bool from_output,
                              void* sum_g, void* sum_g_xc, const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(saved.device());
    const auto ctx = launch_context(saved);
    Tensor workspace = reduction_workspace(saved, shape, ctx);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "batch_norm_act_backward_reduce_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const auto args = k.reduce_args<cuda_t>(device_ptr<scalar_t>(dy), device_ptr<scalar_t>(saved),
                                              device_ptr_or_null<scalar_t>(residual), sum_g, sum_g_xc,
                                              static_cast<acc_t>(param), shape);
      cuda::launch_backward_reduce(args, act, from_output, workspace.data_ptr<acc_t>(), ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void backward_elemt(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                             const RebuildCoefficients& k, const ElemtCoefficientPtrs& coef, ActKind act,
                             double param, bool from_output, Tensor& grad_input, Tensor& grad_residual,
                             const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(saved.device());
    const auto ctx = launch_context(saved);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "batch_norm_act_backward_elemt_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const auto args = k.elemt_args<cuda_t>(device_ptr<scalar_t>(dy), device_ptr<scalar_t>(saved),
                                             device_ptr_or_null<scalar_t>(residual), coef,
                                             device_ptr<scalar_t>(grad_input),
                                             residual.has_value() ? device_ptr<scalar_t>(grad_residual) : nullptr,
                                             static_cast<acc_t>(param), shape);
      cuda::launch_backward_elemt(args, act, from_output, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The per-channel steps: one small kernel on the current stream.
  template <typename Step>
  static void finalize(const Tensor& like, const Step& step) {
    const c10::cuda::CUDAGuard guard(like.device());
    const auto ctx = launch_context(like);
    FBN_DISPATCH_FLOATING(like.scalar_type(), "batch_norm_act_finalize_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      with_typed_args<cuda_t, acc_t>(step, [&](const auto& args) { cuda::launch_finalize(args, ctx); });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyfusedbn, CUDA, m) {
  batch_norm_ops_impl<CudaBackend>(m);
}

}  // namespace pyfusedbn
