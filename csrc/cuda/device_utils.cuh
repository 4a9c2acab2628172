// Device helpers shared by the CUDA kernel files: dtype conversion, 8/16-byte vector loads, the
// backward's per-element terms, and the dispatch of the vector width and layout onto kernel
// template parameters (activation, residual and from_output: ../common/dispatch.h, shared with the CPU
// backend). The launch geometry and the loops' index math: launch_geometry.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "../common/activations.h"
#include "../common/dispatch.h"
#include "../common/kernel_args.h"
#include "launch_geometry.h"

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

// kVec consecutive values moved as one 8- or 16-byte load/store (or kVec = 1: one scalar access).
template <typename scalar_t> constexpr int kMaxVec = 16 / sizeof(scalar_t);

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Vec {
  scalar_t v[kVec];
};

// Loads kVec values from p (aligned to the vector's size: vector_width checked it). Kernels
// that keep several loads in flight hold them in this packed form (a 16-bit vector of 8 values
// is 4 registers, not 8) and convert each value to acc_t where it is used.
template <int kVec, typename scalar_t>
__device__ __forceinline__ Vec<scalar_t, kVec> load_vec(const scalar_t* p) {
  return *reinterpret_cast<const Vec<scalar_t, kVec>*>(p);
}

template <int kVec, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_acc(scalar_t* p, const acc_t (&in)[kVec]) {
  Vec<scalar_t, kVec> stored;
#pragma unroll
  for (int k = 0; k < kVec; ++k) stored.v[k] = from_acc<scalar_t>(in[k]);
  *reinterpret_cast<Vec<scalar_t, kVec>*>(p) = stored;
}

// Per-channel values of a thread's kVec lanes, kLanes of them: channels c0 .. c0 + kVec - 1
// in channels_last (kLanes = kVec), or the thread's one channel c0 in planar (kLanes = 1: every
// lane is the same channel, so one register instead of kVec). Lane k reads at_lane<kLanes>(k).
template <bool kChannelsLast, int kVec>
constexpr int kCoefLanes = kChannelsLast ? kVec : 1;

template <int kLanes>
__device__ __forceinline__ constexpr int at_lane(int k) { return kLanes == 1 ? 0 : k; }

template <int kLanes, typename acc_t>
__device__ __forceinline__ void load_lanes(const acc_t* per_channel, int64_t c0, acc_t (&out)[kLanes]) {
#pragma unroll
  for (int k = 0; k < kLanes; ++k) out[k] = per_channel[c0 + k];
}

// What rebuild_pre_activation needs per channel (mean, scale = weight * invstd, bias), per lane.
template <typename acc_t, int kLanes>
struct RebuildCoefs {
  acc_t mean[kLanes], scale[kLanes], bias[kLanes];

  __device__ __forceinline__ static RebuildCoefs load(const acc_t* mean, const acc_t* scale, const acc_t* bias,
                                                      int64_t c0) {
    RebuildCoefs k_c;
    load_lanes<kLanes>(mean, c0, k_c.mean);
    load_lanes<kLanes>(scale, c0, k_c.scale);
    load_lanes<kLanes>(bias, c0, k_c.bias);
    return k_c;
  }
};

// The tensors the backward reads for kVec elements (Args is ReduceArgs or ElemtArgs), loaded
// apart from their use so that a thread can have several items' loads in flight.
template <typename scalar_t, int kVec, bool kResidual>
struct BackwardInputs {
  Vec<scalar_t, kVec> saved, dy, residual;

  template <typename Args>
  __device__ __forceinline__ void load(const Args& a, int64_t i) {
    saved = load_vec<kVec>(a.saved + i);
    dy = load_vec<kVec>(a.grad_out + i);
    if constexpr (kResidual) residual = load_vec<kVec>(a.residual + i);
  }
};

// The backward's first step for kVec loaded elements, shared by its reduce and elementwise
// passes: g = grad_out * act'(z) and the centred input xc, with z and xc rebuilt from x or
// (kFromOutput) from y.
template <typename Act, bool kFromOutput, typename scalar_t, int kVec, bool kResidual, typename acc_t, int kLanes>
__device__ __forceinline__ void backward_terms(const BackwardInputs<scalar_t, kVec, kResidual>& in,
                                               const RebuildCoefs<acc_t, kLanes>& k_c, acc_t param,
                                               acc_t (&g)[kVec], acc_t (&xc)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int l = at_lane<kLanes>(k);
    const acc_t residual = kResidual ? to_acc<acc_t>(in.residual.v[k]) : acc_t(0);
    const auto r = rebuild_pre_activation<Act, kResidual, kFromOutput, acc_t>(
        to_acc<acc_t>(in.saved.v[k]), residual, k_c.mean[l], k_c.scale[l], k_c.bias[l], param);
    g[k] = to_acc<acc_t>(in.dy.v[k]) * Act::grad(r.z, param);
    xc[k] = r.xc;
  }
}

// A backward pass's walk over a thread's items (launch_geometry.h): kUnroll items' inputs are
// loaded first, then use(offset, g, xc) runs for each with backward_terms' g and xc.
template <typename Act, bool kResidual, bool kFromOutput, int kVec, int kUnroll, typename Args, typename acc_t,
          int kLanes, typename Use>
__device__ __forceinline__ void walk_backward_terms(const Args& a, const BnShape& shape, const ThreadWalk& w,
                                                    const RebuildCoefs<acc_t, kLanes>& coefs, Use&& use) {
  using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(a.saved)>>;
  walk_items<kVec, kUnroll>(shape, w, [&](const int64_t (&offsets)[kUnroll], int count) {
    BackwardInputs<scalar_t, kVec, kResidual> in[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (u < count) in[u].load(a, offsets[u]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (u < count) {
        acc_t g[kVec], xc[kVec];
        backward_terms<Act, kFromOutput>(in[u], coefs, a.activation_param, g, xc);
        use(offsets[u], g, xc);
      }
    }
  });
}

// The vector width of a launch (launch_geometry.h's rule) for these tensors' addresses.
template <typename scalar_t>
int vector_width(const BnShape& shape, std::initializer_list<const void*> pointers) {
  uint64_t address_bits = 0;
  for (const void* p : pointers) address_bits |= static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p));
  return pick_vector_width(shape, static_cast<int>(sizeof(scalar_t)), address_bits);
}

// Calls f(std::integral_constant<int, V>) for the launch's vector width (1, kMaxVec / 2 or kMaxVec).
template <typename scalar_t, typename F>
inline void dispatch_vector_width(int vec, F&& f) {
  constexpr int kFull = kMaxVec<scalar_t>, kHalf = kMaxVec<scalar_t> / 2;
  if (vec == kFull) f(std::integral_constant<int, kFull>{});
  else if constexpr (kHalf > 1) {
    if (vec == kHalf) f(std::integral_constant<int, kHalf>{});
    else f(std::integral_constant<int, 1>{});
  } else f(std::integral_constant<int, 1>{});
}

// Calls f(std::bool_constant<channels_last>): the kernels are compiled per layout, so planar
// ones keep one copy of each per-channel coefficient instead of one per lane.
template <typename F>
inline void dispatch_layout(const BnShape& shape, F&& f) {
  if (shape.channels_last) f(std::true_type{});
  else f(std::false_type{});
}

// The calling thread's place in the launch, for launch_geometry.h's index functions.
__device__ __forceinline__ ThreadIndex this_thread() {
  return {blockIdx.x, blockIdx.y, static_cast<int>(threadIdx.x), static_cast<int>(threadIdx.y), gridDim.y,
          static_cast<int>(blockDim.x), static_cast<int>(blockDim.y)};
}

// The shape with the layout the kernel was compiled for: a compile-time constant, so the index
// functions' other branch folds away.
template <bool kChannelsLast>
__device__ __forceinline__ BnShape compiled_layout(BnShape shape) {
  shape.channels_last = kChannelsLast;
  return shape;
}

inline dim3 grid_dims(const Geometry& g) { return dim3(static_cast<unsigned>(g.grid_x), static_cast<unsigned>(g.grid_y)); }
inline dim3 block_dims(const Geometry& g) { return dim3(static_cast<unsigned>(g.block_x), static_cast<unsigned>(g.block_y)); }

// Blocks of `kernel` resident on one SM (its registers and shared memory decide), so a launch
// asks for as many blocks as really run at once. On an error it answers 8 (full occupancy) and
// leaves the error for the launch check.
template <typename Kernel>
int resident_blocks_per_sm(Kernel* kernel) {
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kBlockThreads, 0) != cudaSuccess || blocks < 1)
    return 8;
  return blocks;
}

}  // namespace cuda
}  // namespace pyfusedbn
