// Device helpers shared by the CUDA kernel files: dtype conversion, launch geometry, and the
// dispatch of activations / residual / from_output onto kernel template parameters.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../activations.h"
#include "../kernel_args.h"

namespace pyfusedbn {
namespace cuda {

template <typename acc_t> __device__ __forceinline__ acc_t to_acc(float v) { return v; }
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(double v) { return v; }
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(__half v) { return __half2float(v); }
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename scalar_t> __device__ __forceinline__ scalar_t from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename scalar_t> __device__ __forceinline__ scalar_t from_acc(double v) { return v; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Thread-block shapes. Planar (NCHW): x walks a plane's spatial positions, y walks samples.
// Channels-last: x walks 32 consecutive channels (one 128-byte row segment per warp for
// float), y walks rows.
inline dim3 planar_block(int64_t spatial) {
  int x = 32;
  while (x < spatial && x < 512) x *= 2;
  return dim3(x, 512 / x);
}
constexpr int kRowsPerBlock = 16;
inline dim3 channels_last_block() { return dim3(32, kRowsPerBlock); }

// Calls f(Act{}, has_residual, from_output) with compile-time flags. from_output variants exist
// only for invertible activations (the ops refuse the others before launching).
template <typename F>
inline void dispatch_kernel_variant(ActKind act, bool has_residual, bool from_output, F&& f) {
  dispatch_activation(act, [&](auto activation) {
    using Act = decltype(activation);
    auto with_residual = [&](auto res) {
      if constexpr (Act::kInvertible) {
        if (from_output) {
          f(activation, res, std::true_type{});
          return;
        }
      }
      f(activation, res, std::false_type{});
    };
    if (has_residual) with_residual(std::true_type{});
    else with_residual(std::false_type{});
  });
}

}  // namespace cuda
}  // namespace pyfusedbn
