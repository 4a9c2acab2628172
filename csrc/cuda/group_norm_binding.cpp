// CUDA backend of the GroupNorm ops: tensors to raw-pointer kernel arguments, the current stream
// and device, and the TORCH_LIBRARY_IMPL(CUDA) registrations. Kernels: group_norm.cu and
// group_norm_finalize.cu.
// (Compiled only in CUDA builds, as every csrc/cuda/*.cpp: setup.py adds them with nvcc present.)
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "../common/kernel_calls.h"
#include "../group_norm/backward_ops.h"
#include "binding_utils.h"
#include "group_norm_kernels.cuh"

namespace pyfusedbn {
namespace {

using namespace cuda_binding;

// Every step is a kernel launch on the current stream (counted as one call each); the
// per-(sample, group) algebra runs in kernels (group_norm/coefficients.h's formulas), never as
// tensor ops, so a training step is 2 launches forward and 4 backward.
struct CudaGroupBackend {
  // mean, rstd and the apply pass's scale / shift, in the statistics kernel (var stays internal).
  static void group_stats(const Tensor& x, const BnShape& shape, int64_t groups, double eps,
                          const GroupAffine& affine, Tensor& mean, Tensor& rstd, const GroupWorkspace& workspace) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(x.device());
    const auto ctx = launch_context(x);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "group_norm_stats_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto a = coefficient_args<acc_t>(mean, rstd, affine, shape, groups);
      cuda::launch_group_stats(
          GroupStatsArgs<typename CudaScalar<scalar_t>::type, acc_t>{device_ptr<scalar_t>(x), mean.data_ptr<acc_t>(),
                                                                     nullptr, shape, groups},
          cuda::GroupForwardOutputs<acc_t>{a.weight, a.bias, eps, rstd.data_ptr<acc_t>(),
                                           forward_arrays<acc_t>(workspace)},
          ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void apply(const Tensor& x, const OptTensor& residual, const GroupWorkspace& workspace, ActKind act, double param,
                    Tensor& out, const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(x.device());
    const auto ctx = launch_context(x);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "group_norm_act_apply_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const auto f = forward_arrays<acc_t>(workspace);
      cuda::launch_group_apply(ApplyArgs<cuda_t, acc_t>{device_ptr<scalar_t>(x), device_ptr_or_null<scalar_t>(residual),
                                                        f.scale, f.shift, device_ptr<scalar_t>(out),
                                                        static_cast<acc_t>(param), shape},
                               act, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The rows path (group_norm/args.h: group_rows_layout): 2 launches forward, 3 backward.
  static void rows_apply(const Tensor& x, const OptTensor& residual, const GroupRowsState& rows, ActKind act,
                         double param, Tensor& out, const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(x.device());
    const auto ctx = launch_context(x);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "group_norm_act_rows_apply_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      cuda::launch_group_rows_apply(ApplyArgs<cuda_t, acc_t>{device_ptr<scalar_t>(x), device_ptr_or_null<scalar_t>(residual),
                                                             nullptr, nullptr, device_ptr<scalar_t>(out),
                                                             static_cast<acc_t>(param), shape},
                                    rows.args<acc_t>(), act, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void rows_backward_reduce(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                                   const GroupRowsState& rows, ActKind act, double param, double count,
                                   const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(saved.device());
    const auto ctx = launch_context(saved);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "group_norm_act_rows_backward_reduce_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const ReduceArgs<cuda_t, acc_t> args{device_ptr<scalar_t>(dy), device_ptr<scalar_t>(saved),
                                           device_ptr_or_null<scalar_t>(residual), nullptr, nullptr, nullptr, nullptr,
                                           nullptr, static_cast<acc_t>(param), shape};
      cuda::launch_group_rows_backward_reduce(args, rows.args<acc_t>(), count, act, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void rows_backward_finalize(const GroupRowsState& rows, Tensor& grad_weight, Tensor& grad_bias) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(grad_weight.device());
    const auto ctx = launch_context(grad_weight);
    AT_DISPATCH_FLOATING_TYPES(grad_weight.scalar_type(), "group_norm_rows_backward_finalize_cuda", [&] {
      cuda::launch_group_rows_backward_finalize(rows.args<scalar_t>(), grad_weight.data_ptr<scalar_t>(),
                                                grad_bias.data_ptr<scalar_t>(), ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void rows_backward_elemt(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                                  const GroupRowsState& rows, ActKind act, double param, Tensor& grad_input,
                                  Tensor& grad_residual, const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(saved.device());
    const auto ctx = launch_context(saved);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "group_norm_act_rows_backward_elemt_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const ElemtArgs<cuda_t, acc_t> args{
          device_ptr<scalar_t>(dy), device_ptr<scalar_t>(saved), device_ptr_or_null<scalar_t>(residual), nullptr,
          nullptr, nullptr, nullptr, nullptr, nullptr, device_ptr<scalar_t>(grad_input),
          residual.has_value() ? device_ptr<scalar_t>(grad_residual) : nullptr, static_cast<acc_t>(param), shape};
      cuda::launch_group_rows_backward_elemt(args, rows.args<acc_t>(), act, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The backward passes recompute g (memory-bound here: a cache would only add traffic).
  static Tensor grad_cache(const Tensor&, ActKind) { return Tensor(); }

  static void backward_prepare(const Tensor& mean, const Tensor& rstd, const GroupAffine& affine,
                               const BnShape& shape, int64_t groups, const BackwardCoefficients& k) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(rstd.device());
    const auto ctx = launch_context(rstd);
    AT_DISPATCH_FLOATING_TYPES(rstd.scalar_type(), "group_norm_backward_prepare_cuda", [&] {
      cuda::launch_group_backward_prepare(coefficient_args<scalar_t>(mean, rstd, affine, shape, groups),
                                          k.arrays<scalar_t>(), ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // from_output is always false for GroupNorm (no memory-saving mode): the launchers omit it.
  static void backward_reduce(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                              const BackwardCoefficients& k, ActKind act, double param, bool /*from_output*/,
                              const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(saved.device());
    const auto ctx = launch_context(saved);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "group_norm_act_backward_reduce_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const auto args = k.arrays<acc_t>().reduce_args<cuda_t>(
          device_ptr<scalar_t>(dy), device_ptr<scalar_t>(saved), device_ptr_or_null<scalar_t>(residual),
          static_cast<acc_t>(param), shape);
      cuda::launch_group_backward_reduce(args, act, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // A batch split into parts (cuda::group_param_grad_parts) needs room for their partial sums:
  // allocated only then (large batches, where one allocation is noise).
  static void backward_finalize(const Tensor& rstd, const GroupAffine& affine, const BnShape& shape, int64_t groups,
                                double count, const BackwardCoefficients& k, Tensor& grad_weight, Tensor& grad_bias) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(rstd.device());
    const auto ctx = launch_context(rstd);
    const int64_t parts = cuda::group_param_grad_parts(shape.batch);
    const Tensor partials =
        parts > 1 ? at::empty({2 * parts * shape.channels}, rstd.options().dtype(at::kDouble)) : Tensor();
    AT_DISPATCH_FLOATING_TYPES(rstd.scalar_type(), "group_norm_backward_finalize_cuda", [&] {
      cuda::launch_group_backward_finalize(coefficient_args<scalar_t>(Tensor(), rstd, affine, shape, groups),
                                           k.arrays<scalar_t>(), count, grad_weight.data_ptr<scalar_t>(),
                                           grad_bias.data_ptr<scalar_t>(),
                                           partials.defined() ? partials.data_ptr<double>() : nullptr, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void backward_elemt(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                             const BackwardCoefficients& k, ActKind act, double param, bool /*from_output*/,
                             Tensor& grad_input, Tensor& grad_residual, const BnShape& shape) {
    count_kernel_call(KernelDevice::CUDA);
    const c10::cuda::CUDAGuard guard(saved.device());
    const auto ctx = launch_context(saved);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "group_norm_act_backward_elemt_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const auto args = k.arrays<acc_t>().elemt_args<cuda_t>(
          device_ptr<scalar_t>(dy), device_ptr<scalar_t>(saved), device_ptr_or_null<scalar_t>(residual),
          device_ptr<scalar_t>(grad_input), residual.has_value() ? device_ptr<scalar_t>(grad_residual) : nullptr,
          static_cast<acc_t>(param), shape);
      cuda::launch_group_backward_elemt(args, act, ctx);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyfusedbn, CUDA, m) {
  group_norm_ops_impl<CudaGroupBackend>(m);
}

}  // namespace pyfusedbn
