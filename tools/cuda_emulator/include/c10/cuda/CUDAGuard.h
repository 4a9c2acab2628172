// The emulated backend's stand-in for c10/cuda/CUDAGuard.h. The emulated backend runs on CPU
// tensors (tools/cuda_emulator/backend.py), so the device a binding guards is the CPU, which has
// no index: there is one emulated device, and a guard has nothing to switch.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

namespace c10 {
namespace cuda {

class CUDAGuard {
 public:
  explicit CUDAGuard(c10::Device device) {
    TORCH_CHECK(device.is_cpu(), "emulated CUDA backend: tensors must be CPU tensors, got ", device);
  }
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};

}  // namespace cuda
}  // namespace c10
