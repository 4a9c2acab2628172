// The emulated backend's stand-in for c10/cuda/CUDAException.h (tools/cuda_emulator/backend.py):
// the emulator stops the process itself on what a GPU would refuse, so a launch has no error
// left to check; a runtime call's error becomes a c10::Error as on a GPU.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#define C10_CUDA_CHECK(EXPR)                                                              \
  do {                                                                                   \
    const cudaError_t emu_error = (EXPR);                                                \
    TORCH_CHECK(emu_error == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(emu_error)); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
