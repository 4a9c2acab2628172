// What the CUDA bindings (batch_norm_binding.cpp, group_norm_binding.cpp) share: torch scalar types
// as the CUDA types the kernels take, raw device pointers, the current stream and SM count, and
// the floating-point dtype dispatch (../common/dtype_dispatch.h). Host code only (c10/cuda headers, no ATen/cuda: its
// CUDAContext would pull in cuBLAS/cuSPARSE headers we do not use).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../common/dtype_dispatch.h"
#include "batch_norm_kernels.cuh"

namespace pyfusedbn {
namespace cuda_binding {

// The CUDA type with the layout of a torch scalar type.
template <typename T> struct CudaScalar { using type = T; };
template <> struct CudaScalar<at::Half> { using type = __half; };
template <> struct CudaScalar<at::BFloat16> { using type = __nv_bfloat16; };

template <typename scalar_t>
auto* device_ptr(const at::Tensor& t) {
  return reinterpret_cast<typename CudaScalar<scalar_t>::type*>(t.data_ptr<scalar_t>());
}

template <typename scalar_t>
const typename CudaScalar<scalar_t>::type* device_ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? device_ptr<scalar_t>(*t) : nullptr;
}

inline int multiprocessor_count(c10::DeviceIndex device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// The current stream of like's device and that device's SM count (grids are sized from it).
inline cuda::LaunchContext launch_context(const at::Tensor& like) {
  const c10::DeviceIndex device = like.device().index();
  return {c10::cuda::getCurrentCUDAStream(device).stream(), multiprocessor_count(device)};
}

}  // namespace cuda_binding
}  // namespace pyfusedbn
