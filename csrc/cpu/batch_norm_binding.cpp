// CPU backend: tensors to raw-pointer kernel arguments, dtype/activation dispatch, and the
// TORCH_LIBRARY_IMPL(CPU) registrations.
#include "vector_math.h"  // first: SIMD declarations of libm functions

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../batch_norm/backward_ops.h"
#include "../common/dispatch.h"
#include "../common/kernel_calls.h"
#include "batch_norm_kernels.h"
#include "binding_utils.h"

namespace pyfusedbn {
namespace {

using namespace cpu_binding;

// at::Half / at::BFloat16 convert to and from float (round to nearest) by static_cast.
struct HostConvert {
  template <typename acc_t, typename T>
  static acc_t to_acc(T v) { return static_cast<acc_t>(v); }
  template <typename T, typename acc_t>
  static T from_acc(acc_t v) { return static_cast<T>(v); }
};

struct CpuBackend {
  static void stats(const Tensor& x, const BnShape& shape, void* mean, void* var) {
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "batch_norm_stats_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      cpu::stats_kernel(StatsArgs<scalar_t, acc_t>{x.data_ptr<scalar_t>(), typed<acc_t>(mean), typed<acc_t>(var), shape});
    });
  }

  static void apply(const Tensor& x, const OptTensor& residual, const void* scale, const void* shift,
                    ActKind act, double param, Tensor& out, const BnShape& shape) {
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(x.scalar_type(), "batch_norm_act_apply_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const ApplyArgs<scalar_t, acc_t> args{x.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(residual),
                                            typed<acc_t>(scale), typed<acc_t>(shift),
                                            out.data_ptr<scalar_t>(), static_cast<acc_t>(param), shape};
      dispatch_act_residual(act, residual.has_value(), [&](auto activation, auto has_residual) {
        cpu::apply_kernel<decltype(activation), decltype(has_residual)::value>(args);
      });
    });
  }

  // A reusable per-thread buffer for g (grad_cache.h), or nullptr.
  static void* grad_cache(const Tensor& x, ActKind act, bool from_output) {
    return cpu::grad_cache_for(act, from_output, x.numel(),
                               static_cast<int64_t>(c10::elementSize(acc_type_of(x))));
  }

  static void backward_reduce(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                              const RebuildCoefficients& k, ActKind act, double param, bool from_output,
                              void* sum_g, void* sum_g_xc, const BnShape& shape) {
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "batch_norm_act_backward_reduce_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto args = k.reduce_args(dy.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(residual),
                                      sum_g, sum_g_xc, static_cast<acc_t>(param), shape);
      dispatch_backward(act, residual.has_value(), from_output, [&](auto activation, auto has_res, auto from_out) {
        using Act = decltype(activation);
        constexpr bool kRes = decltype(has_res)::value, kFromOut = decltype(from_out)::value;
        if constexpr (cpu::kKeepsGrad<Act, kFromOut>) {
          if (k.grad_cache != nullptr) return cpu::reduce_kernel<Act, kRes, kFromOut, true>(args, typed<acc_t>(k.grad_cache));
        }
        cpu::reduce_kernel<Act, kRes, kFromOut>(args);
      });
    });
  }

  static void backward_elemt(const Tensor& dy, const Tensor& saved, const OptTensor& residual,
                             const RebuildCoefficients& k, const ElemtCoefficientPtrs& coef, ActKind act,
                             double param, bool from_output, Tensor& grad_input, Tensor& grad_residual,
                             const BnShape& shape) {
    count_kernel_call(KernelDevice::CPU);
    FBN_DISPATCH_FLOATING(saved.scalar_type(), "batch_norm_act_backward_elemt_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto args = k.elemt_args(dy.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(residual),
                                     coef, grad_input.data_ptr<scalar_t>(),
                                     residual.has_value() ? grad_residual.data_ptr<scalar_t>() : nullptr,
                                     static_cast<acc_t>(param), shape);
      dispatch_backward(act, residual.has_value(), from_output, [&](auto activation, auto has_res, auto from_out) {
        using Act = decltype(activation);
        constexpr bool kRes = decltype(has_res)::value, kFromOut = decltype(from_out)::value;
        if constexpr (cpu::kKeepsGrad<Act, kFromOut>) {
          if (k.grad_cache != nullptr) return cpu::elemt_from_grad_kernel<kRes>(args, typed<acc_t>(k.grad_cache));
        }
        cpu::elemt_kernel<Act, kRes, kFromOut>(args);
      });
    });
  }

  // The per-channel steps: a plain loop over channels (C values: no parallelism needed).
  template <typename Step>
  static void finalize(const Tensor& like, const Step& step) {
    FBN_DISPATCH_FLOATING(like.scalar_type(), "batch_norm_act_finalize_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      with_typed_args<scalar_t, acc_t>(step, [&](const auto& args) {
        for (int64_t c = 0; c < args.channels; ++c) run_channel<HostConvert>(args, c);
      });
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyfusedbn, CPU, m) {
  batch_norm_ops_impl<CpuBackend>(m);
}

}  // namespace pyfusedbn
