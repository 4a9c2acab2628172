// CPU backend of the GroupNorm ops: tensors to raw-pointer kernel arguments, dtype/activation
// dispatch, and the TORCH_LIBRARY_IMPL(CPU) registrations.
#include "vector_math.h"  // first: SIMD declarations of libm functions

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../common/dispatch.h"
#include "../common/kernel_calls.h"
#include "../group_norm/backward_ops.h"
#include "../group_norm/coefficients.h"
#include "binding_utils.h"
#include "group_norm_fused.h"
#include "group_norm_kernels.h"
#include "group_norm_rows.h"

namespace pyfusedbn {
namespace {

using namespace cpu_binding;

template <typename acc_t>
acc_t* cache_ptr(const BackwardCoefficients& k) {
  return k.grad_cache.defined() ? k.grad_cache.data_ptr<acc_t>() : nullptr;
}

// The per-(sample, group) steps run group_norm/coefficients.h's host loops: not kernels, so not counted.
struct CpuGroupBackend {
  // mean, rstd and the apply pass's scale / shift (the workspace): the kernel writes var into
  // rstd, which the coefficient loop then turns into rstd in place.
  static void group_stats(const Tensor& x, const BnShape& shape, int64_t groups, double eps,
                          const GroupAffine& affine, Tensor& mean, Tensor& rstd, const GroupWorkspace& workspace) {
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "group_norm_stats_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      acc_t* var = rstd.data_ptr<acc_t>();
      cpu::group_stats_kernel(
          GroupStatsArgs<scalar_t, acc_t>{x.data_ptr<scalar_t>(), mean.data_ptr<acc_t>(), var, shape, groups});
      const auto a = coefficient_args<acc_t>(mean, rstd, affine, shape, groups);
      group_forward_coefficients(a.mean, var, eps, a.weight, a.bias, shape.batch, shape.channels, groups, var,
                                 forward_arrays<acc_t>(workspace));
    });
  }

  static void apply(const Tensor& x, const OptTensor& residual, const GroupWorkspace& workspace, ActKind act, double param,
                    Tensor& out, const BnShape& shape) {
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "group_norm_act_apply_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto f = forward_arrays<acc_t>(workspace);
      const ApplyArgs<scalar_t, acc_t> args{x.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(residual), f.scale,
                                            f.shift, out.data_ptr<scalar_t>(), static_cast<acc_t>(param), shape};
      dispatch_act_residual(act, residual.has_value(), [&](auto activation, auto has_residual) {
        cpu::group_apply_kernel<decltype(activation), decltype(has_residual)::value>(args);
      });
    });
  }

  // The backward part by part (group_norm_fused.h) where it applies; the steps below elsewhere.
  static bool fuses_groups(const BnShape& shape, int64_t groups, const Tensor& input) {
    return cpu::fuses_groups(shape, groups, static_cast<int64_t>(input.element_size()),
                             static_cast<int64_t>(c10::elementSize(acc_type_of(input))));
  }

  // Counted as the two passes it runs, as the steps are.
  static void group_backward(const Tensor& dy, const Tensor& x, const OptTensor& residual, const Tensor& mean,
                             const Tensor& rstd, const GroupAffine& affine, int64_t groups, double count,
                             const GroupWorkspace& workspace, ActKind act, double param, Tensor& grad_input,
                             Tensor& grad_residual, Tensor& grad_weight, Tensor& grad_bias, const BnShape& shape) {
    count_kernel_call(KernelDevice::CPU);
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "group_norm_act_backward_fused_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto k = GroupBackwardArrays<acc_t>::from([&](int64_t i) { return workspace.array<acc_t>(i); });
      const auto coefs = coefficient_args<acc_t>(mean, rstd, affine, shape, groups);
      const acc_t p = static_cast<acc_t>(param);
      const auto reduce = k.reduce_args(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(residual), p, shape);
      const auto elemt = k.elemt_args(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(residual),
                                      grad_input.data_ptr<scalar_t>(),
                                      residual.has_value() ? grad_residual.data_ptr<scalar_t>() : nullptr, p, shape);
      dispatch_act_residual(act, residual.has_value(), [&](auto activation, auto has_residual) {
        using Act = decltype(activation);
        if (cpu::kKeepsGrad<Act, false>) add_group_workspace_bytes(cpu::fused_grad_cache_bytes<acc_t>(shape, groups));
        cpu::group_backward_fused_kernel<Act, decltype(has_residual)::value>(
            coefs, k, count, reduce, elemt, grad_weight.data_ptr<acc_t>(), grad_bias.data_ptr<acc_t>());
      });
    });
  }

  // The rows path (group_norm_rows.h): coefficients per block of rows in per-thread scratch.
  static void rows_apply(const Tensor& x, const OptTensor& residual, const GroupRowsState& rows, ActKind act,
                         double param, Tensor& out, const BnShape& shape) {
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "group_norm_act_rows_apply_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      add_group_workspace_bytes(cpu::row_scratch_bytes<acc_t>(shape.channels, 2));
      const ApplyArgs<scalar_t, acc_t> args{x.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(residual), nullptr,
                                            nullptr, out.data_ptr<scalar_t>(), static_cast<acc_t>(param), shape};
      dispatch_act_residual(act, residual.has_value(), [&](auto activation, auto has_residual) {
        cpu::group_rows_apply_kernel<decltype(activation), decltype(has_residual)::value>(args, rows.args<acc_t>());
      });
    });
  }

  static void rows_backward_reduce(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                                   const GroupRowsState& rows, ActKind act, double param, double count,
                                   const BnShape& shape) {
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "group_norm_act_rows_backward_reduce_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      add_group_workspace_bytes(2 * shape.channels * static_cast<int64_t>(sizeof(double)) * at::get_num_threads());
      const ReduceArgs<scalar_t, acc_t> args{dy.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>(),
                                             ptr_or_null<scalar_t>(residual), nullptr, nullptr, nullptr, nullptr,
                                             nullptr, static_cast<acc_t>(param), shape};
      dispatch_act_residual(act, residual.has_value(), [&](auto activation, auto has_res) {
        cpu::group_rows_reduce_kernel<decltype(activation), decltype(has_res)::value>(args, rows.args<acc_t>(), count);
      });
    });
  }

  static void rows_backward_finalize(const GroupRowsState& rows, Tensor& grad_weight, Tensor& grad_bias) {
    AT_DISPATCH_FLOATING_TYPES(grad_weight.scalar_type(), "group_norm_rows_backward_finalize_cpu", [&] {
      group_rows_param_grads(rows.args<scalar_t>(), grad_weight.data_ptr<scalar_t>(), grad_bias.data_ptr<scalar_t>());
    });
  }

  static void rows_backward_elemt(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                                  const GroupRowsState& rows, ActKind act, double param, Tensor& grad_input,
                                  Tensor& grad_residual, const BnShape& shape) {
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "group_norm_act_rows_backward_elemt_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      add_group_workspace_bytes(cpu::row_scratch_bytes<acc_t>(shape.channels, 5));
      const ElemtArgs<scalar_t, acc_t> args{
          dy.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(residual), nullptr, nullptr,
          nullptr, nullptr, nullptr, nullptr, grad_input.data_ptr<scalar_t>(),
          residual.has_value() ? grad_residual.data_ptr<scalar_t>() : nullptr, static_cast<acc_t>(param), shape};
      dispatch_act_residual(act, residual.has_value(), [&](auto activation, auto has_res) {
        cpu::group_rows_elemt_kernel<decltype(activation), decltype(has_res)::value>(args, rows.args<acc_t>());
      });
    });
  }

  // A view of this thread's reusable buffer (grad_cache.h), valid until the next backward call.
  static Tensor grad_cache(const Tensor& x, ActKind act) {
    const auto acc = acc_type_of(x);
    void* cache = cpu::grad_cache_for(act, false, x.numel(), static_cast<int64_t>(c10::elementSize(acc)));
    return cache ? at::from_blob(cache, {x.numel()}, x.options().dtype(acc)) : Tensor();
  }

  static void backward_prepare(const Tensor& mean, const Tensor& rstd, const GroupAffine& affine,
                               const BnShape& shape, int64_t groups, const BackwardCoefficients& k) {
    AT_DISPATCH_FLOATING_TYPES(rstd.scalar_type(), "group_norm_backward_prepare_cpu", [&] {
      group_backward_prepare(coefficient_args<scalar_t>(mean, rstd, affine, shape, groups), k.arrays<scalar_t>());
    });
  }

  static void backward_reduce(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                              const BackwardCoefficients& k, ActKind act, double param, bool from_output,
                              const BnShape& shape) {
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "group_norm_act_backward_reduce_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto args = k.arrays<acc_t>().reduce_args(dy.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>(),
                                                      ptr_or_null<scalar_t>(residual), static_cast<acc_t>(param),
                                                      shape);
      dispatch_backward(act, residual.has_value(), from_output, [&](auto activation, auto has_res, auto from_out) {
        cpu::group_reduce_kernel<decltype(activation), decltype(has_res)::value, decltype(from_out)::value>(
            args, cache_ptr<acc_t>(k));
      });
    });
  }

  static void backward_finalize(const Tensor& rstd, const GroupAffine& affine, const BnShape& shape, int64_t groups,
                                double count, const BackwardCoefficients& k, Tensor& grad_weight, Tensor& grad_bias) {
    AT_DISPATCH_FLOATING_TYPES(rstd.scalar_type(), "group_norm_backward_finalize_cpu", [&] {
      group_backward_finalize(coefficient_args<scalar_t>(Tensor(), rstd, affine, shape, groups), k.arrays<scalar_t>(),
                              count, grad_weight.data_ptr<scalar_t>(), grad_bias.data_ptr<scalar_t>());
    });
  }

  static void backward_elemt(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                             const BackwardCoefficients& k, ActKind act, double param, bool from_output,
                             Tensor& grad_input, Tensor& grad_residual, const BnShape& shape) {
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "group_norm_act_backward_elemt_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto args = k.arrays<acc_t>().elemt_args(
          dy.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(residual),
          grad_input.data_ptr<scalar_t>(), residual.has_value() ? grad_residual.data_ptr<scalar_t>() : nullptr,
          static_cast<acc_t>(param), shape);
      dispatch_backward(act, residual.has_value(), from_output, [&](auto activation, auto has_res, auto from_out) {
        cpu::group_elemt_kernel<decltype(activation), decltype(has_res)::value, decltype(from_out)::value>(
            args, cache_ptr<acc_t>(k));
      });
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyfusedbn, CPU, m) {
  group_norm_ops_impl<CpuGroupBackend>(m);
}

}  // namespace pyfusedbn
