// GroupNorm's NCHW backward over one group part (group_norm_fused.h): D planes of S contiguous
// values, read where they lie (float32, float64, bfloat16 on AVX-512). BatchNorm's planar
// kernels, which the part otherwise runs through, are built for long channels: per plane they pay
// lane sums over 32 lanes folded through the stack, a double merge per block, and (16-bit) a
// rounding pass out of an L1 buffer; on GroupNorm's small planes (16x16 in a diffusion UNet's
// deepest blocks) that overhead was most of a cheap activation's reduction (perf, identity: 16% of
// its samples on vector instructions). Here each plane is one `omp simd` reduction into a register
// accumulator pair, and the elementwise pass rounds grad_input in registers.
#pragma once

#include <algorithm>
#include <type_traits>

#include "../common/kernel_args.h"
#include "chunks.h"
#include "elementwise_kernels.h"  // grad_and_centred
#include "grad_cache.h"           // kKeepsGrad
#include "reduction_kernels.h"    // kBlock

namespace pyfusedbn {
namespace cpu {

// Whether planar GroupNorm input takes these kernels: input in acc_t, and bfloat16 where AVX-512
// narrows 32-bit lanes to 16 in one instruction (the in-register rounding was measured there only).
template <typename scalar_t, typename acc_t>
constexpr bool kGroupPlanesInPlace = std::is_same_v<scalar_t, acc_t>
#if defined(PYFUSEDBN_CONVERT_AVX512)
                                     || std::is_same_v<scalar_t, c10::BFloat16>
#endif
    ;

// sum(g) and sum(g * xc) of each of the part's planes (a = the part's ReduceArgs, shape {1, D, S}),
// g also into g_cache (laid out as the part) where kKeepGrad. A plane sums in acc_t kBlock values
// at a time, the blocks in double, as reduce_planar does (long float32 sums keep their precision).
template <typename Act, bool kResidual, bool kKeepGrad, typename scalar_t, typename acc_t>
void reduce_group_planes(const ReduceArgs<scalar_t, acc_t>& a, acc_t* g_cache) {
  const int64_t D = a.shape.channels, S = a.shape.spatial;
  const acc_t param = a.activation_param;
  for (int64_t c = 0; c < D; ++c) {
    const acc_t mean = a.mean[c], scale = a.scale[c], bias = a.bias[c];
    double total_g = 0, total_g_xc = 0;
    for (int64_t s0 = 0; s0 < S; s0 += kBlock) {
      const int64_t o = c * S + s0, len = std::min(kBlock, S - s0);
      const scalar_t *dy = a.grad_out + o, *x = a.saved + o, *res = kResidual ? a.residual + o : nullptr;
      acc_t* g_out = kKeepGrad ? g_cache + o : nullptr;
      acc_t sum_g = 0, sum_g_xc = 0;
#pragma omp simd reduction(+ : sum_g, sum_g_xc)
      for (int64_t i = 0; i < len; ++i) {
        const auto t = grad_and_centred<Act, kResidual, false>(
            load_acc<acc_t>(dy[i]), load_acc<acc_t>(x[i]), kResidual ? load_acc<acc_t>(res[i]) : acc_t(0), mean, scale,
            bias, param);  // {xc, g}
        if constexpr (kKeepGrad) g_out[i] = t.z;
        sum_g += t.z;
        sum_g_xc += t.z * t.xc;
      }
      total_g += sum_g;
      total_g_xc += sum_g_xc;
    }
    a.sum_g[c] = static_cast<acc_t>(total_g);
    a.sum_g_xc[c] = static_cast<acc_t>(total_g_xc);
  }
}

// grad_input = g * coef_g + xc * coef_xc + coef_const (and grad_residual = g) over the part's
// planes, g from g_cache where kKeepGrad, else recomputed; results rounded to scalar_t in registers.
template <typename Act, bool kResidual, bool kKeepGrad, typename scalar_t, typename acc_t>
void elemt_group_planes(const ElemtArgs<scalar_t, acc_t>& a, const acc_t* g_cache) {
  const int64_t D = a.shape.channels, S = a.shape.spatial;
  const acc_t param = a.activation_param;
  for (int64_t c = 0; c < D; ++c) {
    const acc_t mean = a.mean[c], scale = a.scale[c], bias = a.bias[c], coef_g = a.coef_g[c],
                coef_xc = a.coef_xc[c], coef_const = a.coef_const[c];
    const int64_t o = c * S;
    const scalar_t *dy = a.grad_out + o, *x = a.saved + o, *res = kResidual ? a.residual + o : nullptr;
    const acc_t* g_in = kKeepGrad ? g_cache + o : nullptr;
    scalar_t *dx = a.grad_input + o, *dres = kResidual ? a.grad_residual + o : nullptr;
#pragma omp simd
    for (int64_t i = 0; i < S; ++i) {
      acc_t g, xc;
      if constexpr (kKeepGrad) {
        g = g_in[i];
        xc = load_acc<acc_t>(x[i]) - mean;
      } else {
        const auto t = grad_and_centred<Act, kResidual, false>(
            load_acc<acc_t>(dy[i]), load_acc<acc_t>(x[i]), kResidual ? load_acc<acc_t>(res[i]) : acc_t(0), mean,
            scale, bias, param);
        g = t.z;
        xc = t.xc;
      }
      dx[i] = store_as<scalar_t>(g * coef_g + xc * coef_xc + coef_const);
      if constexpr (kResidual) dres[i] = store_as<scalar_t>(g);
    }
  }
}

// Both passes over a part: the reduction, coefficients() (the part's elementwise coefficients from
// its sums), the elementwise pass; through g_cache where the activation keeps g and it is given.
template <typename Act, bool kResidual, typename scalar_t, typename acc_t, typename Coefficients>
void run_group_planes(const ReduceArgs<scalar_t, acc_t>& reduce, const ElemtArgs<scalar_t, acc_t>& elemt,
                      acc_t* g_cache, Coefficients coefficients) {
  if constexpr (kKeepsGrad<Act, false>) {
    if (g_cache != nullptr) {
      reduce_group_planes<Act, kResidual, true>(reduce, g_cache);
      coefficients();
      elemt_group_planes<Act, kResidual, true>(elemt, g_cache);
      return;
    }
  }
  reduce_group_planes<Act, kResidual, false>(reduce, static_cast<acc_t*>(nullptr));
  coefficients();
  elemt_group_planes<Act, kResidual, false>(elemt, static_cast<const acc_t*>(nullptr));
}

}  // namespace cpu
}  // namespace pyfusedbn
