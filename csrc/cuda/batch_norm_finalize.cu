// The per-channel steps (../batch_norm/coefficients.h) on the GPU: one thread per channel, one launch
// per step on the caller's stream. The same functions run in the CPU backend's loop.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../batch_norm/coefficients.h"
#include "batch_norm_kernels.cuh"

namespace pyfusedbn {
namespace cuda {
namespace {

// cuda_fp16.h / cuda_bf16.h conversions (host-device, round to nearest); float and double
// convert implicitly.
struct DeviceConvert {
  template <typename acc_t, typename T>
  static FBN_HOST_DEVICE acc_t to_acc(T v) { return static_cast<acc_t>(v); }
  template <typename acc_t>
  static FBN_HOST_DEVICE acc_t to_acc(__half v) { return static_cast<acc_t>(__half2float(v)); }
  template <typename acc_t>
  static FBN_HOST_DEVICE acc_t to_acc(__nv_bfloat16 v) { return static_cast<acc_t>(__bfloat162float(v)); }

  template <typename T, typename acc_t>
  static FBN_HOST_DEVICE T from_acc(acc_t v) {
    if constexpr (std::is_same_v<T, __half>) return __float2half_rn(static_cast<float>(v));
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(static_cast<float>(v));
    else return static_cast<T>(v);
  }
};

constexpr int kThreads = 256;

template <typename Args>
__global__ void finalize_kernel(Args args) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= args.channels) return;
  run_channel<DeviceConvert>(args, c);
}

template <typename Args>
void launch(const Args& args, const LaunchContext& ctx) {
  if (args.channels == 0) return;
  const int64_t blocks = (args.channels + kThreads - 1) / kThreads;
  finalize_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, ctx.stream>>>(args);
}

}  // namespace

template <typename acc_t, typename param_t, typename running_t>
void launch_finalize(const ForwardFinalizeArgs<acc_t, param_t, running_t>& args, const LaunchContext& ctx) {
  launch(args, ctx);
}
template <typename acc_t, typename param_t, typename running_t>
void launch_finalize(const EvalFinalizeArgs<acc_t, param_t, running_t>& args, const LaunchContext& ctx) {
  launch(args, ctx);
}
template <typename acc_t, typename param_t>
void launch_finalize(const PrepareArgs<acc_t, param_t>& args, const LaunchContext& ctx) {
  launch(args, ctx);
}
template <typename acc_t, typename param_t>
void launch_finalize(const BackwardFinalizeArgs<acc_t, param_t>& args, const LaunchContext& ctx) {
  launch(args, ctx);
}

// Every (accumulate, parameter, running) type combination batch_norm/args.h dispatches to: all
// in the accumulate type, and for half/bfloat16 input each mix with the input's type.
#define FBN_INSTANTIATE_FINALIZE_PR(acc_t, param_t, running_t)                                              \
  template void launch_finalize(const ForwardFinalizeArgs<acc_t, param_t, running_t>&, const LaunchContext&); \
  template void launch_finalize(const EvalFinalizeArgs<acc_t, param_t, running_t>&, const LaunchContext&);
#define FBN_INSTANTIATE_FINALIZE_P(acc_t, param_t)                                          \
  template void launch_finalize(const PrepareArgs<acc_t, param_t>&, const LaunchContext&); \
  template void launch_finalize(const BackwardFinalizeArgs<acc_t, param_t>&, const LaunchContext&);
#define FBN_INSTANTIATE_FINALIZE_LOWP(scalar_t)         \
  FBN_INSTANTIATE_FINALIZE_PR(float, float, scalar_t)    \
  FBN_INSTANTIATE_FINALIZE_PR(float, scalar_t, float)    \
  FBN_INSTANTIATE_FINALIZE_PR(float, scalar_t, scalar_t) \
  FBN_INSTANTIATE_FINALIZE_P(float, scalar_t)
FBN_INSTANTIATE_FINALIZE_PR(float, float, float)
FBN_INSTANTIATE_FINALIZE_P(float, float)
FBN_INSTANTIATE_FINALIZE_PR(double, double, double)
FBN_INSTANTIATE_FINALIZE_P(double, double)
FBN_INSTANTIATE_FINALIZE_LOWP(__half)
FBN_INSTANTIATE_FINALIZE_LOWP(__nv_bfloat16)
#undef FBN_INSTANTIATE_FINALIZE_LOWP
#undef FBN_INSTANTIATE_FINALIZE_P
#undef FBN_INSTANTIATE_FINALIZE_PR

}  // namespace cuda
}  // namespace pyfusedbn
