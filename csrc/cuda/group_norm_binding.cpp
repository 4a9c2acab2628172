// CUDA backend of the GroupNorm ops: tensors to raw-pointer kernel arguments, the current stream
// and device, and the TORCH_LIBRARY_IMPL(CUDA) registrations. Kernels: group_norm.cu.
// (Compiled only in CUDA builds, as every csrc/cuda/*.cpp: setup.py adds them with nvcc present.)
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "../group_norm_act_ops.h"
#include "../kernel_calls.h"
#include "binding_utils.h"
#include "group_norm_kernels.cuh"

namespace pyfusedbn {
namespace {

using namespace cuda_binding;

struct CudaGroupBackend {
  static void group_stats(const Tensor& x, const BnShape& shape, int64_t groups, Tensor& mean, Tensor& var) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(x.device());
    const auto ctx = launch_context(x);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "group_norm_stats_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      cuda::launch_group_stats(GroupStatsArgs<typename CudaScalar<scalar_t>::type, acc_t>{
                                   device_ptr<scalar_t>(x), mean.data_ptr<acc_t>(), var.data_ptr<acc_t>(), shape,
                                   groups},
                               ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void apply(const Tensor& x, const OptTensor& residual, const Tensor& scale, const Tensor& shift,
                    ActKind act, double param, Tensor& out, const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(x.device());
    const auto ctx = launch_context(x);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "group_norm_act_apply_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      cuda::launch_group_apply(ApplyArgs<cuda_t, acc_t>{device_ptr<scalar_t>(x), device_ptr_or_null<scalar_t>(residual),
                                                        scale.data_ptr<acc_t>(), shift.data_ptr<acc_t>(),
                                                        device_ptr<scalar_t>(out), static_cast<acc_t>(param), shape},
                               act, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The backward passes recompute g (memory-bound here: a cache would only add traffic).
  static Tensor grad_cache(const Tensor&, ActKind) { return Tensor(); }

  // from_output is always false for GroupNorm (no memory-saving mode): the launchers omit it.
  static void backward_reduce(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                              const BackwardCoefficients& k, ActKind act, double param, bool /*from_output*/,
                              Tensor& sum_g, Tensor& sum_g_xc, const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(saved.device());
    const auto ctx = launch_context(saved);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "group_norm_act_backward_reduce_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const ReduceArgs<cuda_t, acc_t> args{
          device_ptr<scalar_t>(dy), device_ptr<scalar_t>(saved), device_ptr_or_null<scalar_t>(residual),
          k.mean.data_ptr<acc_t>(), k.scale.data_ptr<acc_t>(),  k.bias.data_ptr<acc_t>(),
          sum_g.data_ptr<acc_t>(),  sum_g_xc.data_ptr<acc_t>(), static_cast<acc_t>(param),
          shape};
      cuda::launch_group_backward_reduce(args, act, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void backward_elemt(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                             const BackwardCoefficients& k, const Tensor& coef_g, const Tensor& coef_xc,
                             const Tensor& coef_const, ActKind act, double param, bool /*from_output*/,
                             Tensor& grad_input, Tensor& grad_residual, const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(saved.device());
    const auto ctx = launch_context(saved);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "group_norm_act_backward_elemt_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const ElemtArgs<cuda_t, acc_t> args{
          device_ptr<scalar_t>(dy),        device_ptr<scalar_t>(saved),
          device_ptr_or_null<scalar_t>(residual), k.mean.data_ptr<acc_t>(),
          k.scale.data_ptr<acc_t>(),       k.bias.data_ptr<acc_t>(),
          coef_g.data_ptr<acc_t>(),        coef_xc.data_ptr<acc_t>(),
          coef_const.data_ptr<acc_t>(),    device_ptr<scalar_t>(grad_input),
          residual.has_value() ? device_ptr<scalar_t>(grad_residual) : nullptr,
          static_cast<acc_t>(param),       shape};
      cuda::launch_group_backward_elemt(args, act, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyfusedbn, CUDA, m) {
  m.impl("group_norm_act", &group_norm_act<CudaGroupBackend>);
  m.impl("group_norm_act_backward", &group_norm_act_backward<CudaGroupBackend>);
}

}  // namespace pyfusedbn
