// FBN_HOST_DEVICE marks the functions that CUDA kernels and CPU loops both call (activations,
// Welford merges, kernel argument helpers, the per-channel and per-group algebra): host and
// device, force-inlined under nvcc; plain inline for the host compiler.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FBN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FBN_HOST_DEVICE inline
#endif
