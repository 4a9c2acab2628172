// Device helpers shared by the CUDA kernel files: dtype conversion, 16-byte vector loads, launch
// geometry, and the dispatch of the vector width onto a kernel template parameter (activation,
// residual and from_output: ../dispatch.h, shared with the CPU backend).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "../activations.h"
#include "../dispatch.h"
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

// kVec consecutive values moved as one 16-byte load/store (or kVec = 1: one scalar access).
template <typename scalar_t> constexpr int kMaxVec = 16 / sizeof(scalar_t);

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Vec {
  scalar_t v[kVec];
};

// Loads kVec values from p (aligned to the vector's size: vector_width checked it) into acc_t.
template <int kVec, typename acc_t, typename scalar_t>
__device__ __forceinline__ void load_acc(const scalar_t* p, acc_t (&out)[kVec]) {
  const Vec<scalar_t, kVec> loaded = *reinterpret_cast<const Vec<scalar_t, kVec>*>(p);
#pragma unroll
  for (int k = 0; k < kVec; ++k) out[k] = to_acc<acc_t>(loaded.v[k]);
}

template <int kVec, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_acc(scalar_t* p, const acc_t (&in)[kVec]) {
  Vec<scalar_t, kVec> stored;
#pragma unroll
  for (int k = 0; k < kVec; ++k) stored.v[k] = from_acc<scalar_t>(in[k]);
  *reinterpret_cast<Vec<scalar_t, kVec>*>(p) = stored;
}

// Per-channel values for a thread's kVec lanes: channel c0 + k in lane k (channels_last,
// channel_step 1) or channel c0 in every lane (planar, channel_step 0). Loaded once per thread.
template <int kVec, typename acc_t>
__device__ __forceinline__ void load_per_lane(const acc_t* per_channel, int64_t c0, int channel_step,
                                              acc_t (&out)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) out[k] = per_channel[c0 + k * channel_step];
}

// What rebuild_pre_activation needs per channel (mean, scale = weight * invstd, bias), per lane.
template <typename acc_t, int kVec>
struct RebuildCoefs {
  acc_t mean[kVec], scale[kVec], bias[kVec];

  __device__ __forceinline__ static RebuildCoefs load(const acc_t* mean, const acc_t* scale, const acc_t* bias,
                                                      int64_t c0, int channel_step) {
    RebuildCoefs k_c;
    load_per_lane<kVec>(mean, c0, channel_step, k_c.mean);
    load_per_lane<kVec>(scale, c0, channel_step, k_c.scale);
    load_per_lane<kVec>(bias, c0, channel_step, k_c.bias);
    return k_c;
  }
  __device__ __forceinline__ static RebuildCoefs channels(const acc_t* mean, const acc_t* scale,
                                                          const acc_t* bias, int64_t c0) {
    return load(mean, scale, bias, c0, 1);
  }
  __device__ __forceinline__ static RebuildCoefs one_channel(const acc_t* mean, const acc_t* scale,
                                                             const acc_t* bias, int64_t c) {
    return load(mean, scale, bias, c, 0);
  }
};

// The backward's first step for the kVec elements at i, shared by its reduce and elementwise
// passes: g = grad_out * act'(z) and the centred input xc, with z and xc rebuilt from x or
// (kFromOutput) from y. Args is ReduceArgs or ElemtArgs.
template <typename Act, bool kResidual, bool kFromOutput, int kVec, typename Args, typename acc_t>
__device__ __forceinline__ void backward_terms(const Args& a, int64_t i, const RebuildCoefs<acc_t, kVec>& k_c,
                                               acc_t (&g)[kVec], acc_t (&xc)[kVec]) {
  acc_t saved[kVec], dy[kVec], residual[kVec] = {};
  load_acc<kVec>(a.saved + i, saved);
  load_acc<kVec>(a.grad_out + i, dy);
  if constexpr (kResidual) load_acc<kVec>(a.residual + i, residual);
  const acc_t p = a.activation_param;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const auto r = rebuild_pre_activation<Act, kResidual, kFromOutput, acc_t>(saved[k], residual[k], k_c.mean[k],
                                                                              k_c.scale[k], k_c.bias[k], p);
    g[k] = dy[k] * Act::grad(r.z, p);
    xc[k] = r.xc;
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The vector width of a launch: 16 bytes when the contiguous dimension (C for channels_last, the
// spatial plane otherwise) is a multiple of it and every tensor starts 16-byte aligned (a view
// with a storage offset may not), else 1.
template <typename scalar_t>
int vector_width(const BnShape& shape, std::initializer_list<const void*> pointers) {
  constexpr int kVec = kMaxVec<scalar_t>;
  const int64_t contiguous = shape.channels_last ? shape.channels : shape.spatial;
  if (contiguous % kVec != 0) return 1;
  for (const void* p : pointers)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return 1;
  return kVec;
}

// Every kernel runs 256-thread blocks: (x, y) = (vectors along the contiguous dimension, rows).
//   planar (NCHW): grid (C, sample slices, position slices); a block's threads all see one
//     channel, x walks a plane's vectors, y walks samples. Small planes (3x3, 7x7) get a narrow x
//     and many samples per block instead of idle lanes.
//   channels_last: grid (channel blocks, row slices); x walks up to 32 channel vectors of a row
//     (so a warp reads 32 x 16 contiguous bytes, or several whole rows when C is small), y rows.
// target_blocks bounds the grid (the loops stride over what is left).
constexpr int kBlockThreads = 256;

struct Geometry {
  dim3 grid, block;
  int64_t parts() const { return static_cast<int64_t>(grid.y) * grid.z; }
};

inline int pow2_at_least(int64_t n, int cap) {
  int p = 1;
  while (p < n && p < cap) p *= 2;
  return p;
}

inline Geometry launch_geometry(const BnShape& shape, int vec, int64_t target_blocks) {
  constexpr int64_t kMaxGridYZ = 65535;
  if (shape.channels_last) {
    const int64_t vectors = ceil_div(shape.channels, vec);
    const int bx = pow2_at_least(vectors, 32), by = kBlockThreads / bx;
    const int64_t channel_blocks = ceil_div(vectors, bx);
    const int64_t row_slices = ceil_div(shape.reduce_size(), by);
    const int64_t parts = std::max<int64_t>(
        1, std::min({ceil_div(target_blocks, channel_blocks), row_slices, kMaxGridYZ}));
    return {dim3(static_cast<unsigned>(channel_blocks), static_cast<unsigned>(parts)), dim3(bx, by)};
  }
  const int64_t vectors = ceil_div(shape.spatial, vec);
  const int bx = pow2_at_least(vectors, kBlockThreads), by = kBlockThreads / bx;
  const int64_t wanted = std::max<int64_t>(1, ceil_div(target_blocks, shape.channels));
  const int64_t sample_parts = std::max<int64_t>(1, std::min({ceil_div(shape.batch, by), wanted, kMaxGridYZ}));
  const int64_t position_parts = std::max<int64_t>(
      1, std::min({ceil_div(vectors, bx), ceil_div(wanted, sample_parts), kMaxGridYZ}));
  return {dim3(static_cast<unsigned>(shape.channels), static_cast<unsigned>(sample_parts),
               static_cast<unsigned>(position_parts)),
          dim3(bx, by)};
}

// Calls f(std::integral_constant<int, V>) for the launch's vector width (1 or kMaxVec).
template <typename scalar_t, typename F>
inline void dispatch_vector_width(int vec, F&& f) {
  if (vec == kMaxVec<scalar_t>) f(std::integral_constant<int, kMaxVec<scalar_t>>{});
  else f(std::integral_constant<int, 1>{});
}

}  // namespace cuda
}  // namespace pyfusedbn
