// Raw-pointer views of one fused BatchNorm+activation call, shared by the CPU and CUDA kernels.
// No torch headers: the bindings fill these from tensors, the kernels see only pointers and sizes.
#pragma once

#include <stdint.h>

#include "activations.h"

namespace pyfusedbn {

// The input viewed as (batch, channels, spatial). `channels_last` means the memory is
// (batch * spatial) rows of `channels` contiguous values (NHWC, NDHWC, and every rank-2 input);
// otherwise each (n, c) plane of `spatial` values is contiguous (NCHW).
struct BnShape {
  int64_t batch;
  int64_t channels;
  int64_t spatial;
  bool channels_last;

  FBN_HOST_DEVICE int64_t reduce_size() const { return batch * spatial; }
  FBN_HOST_DEVICE int64_t numel() const { return batch * channels * spatial; }
};

// Forward elementwise pass: out = act(x * scale[c] + shift[c] (+ residual)).
// scale = weight * invstd and shift = bias - mean * scale fold the affine transform once per channel.
template <typename scalar_t, typename acc_t>
struct ApplyArgs {
  const scalar_t* input;
  const scalar_t* residual;  // nullptr when absent
  const acc_t* scale;
  const acc_t* shift;
  scalar_t* output;
  acc_t activation_param;
  BnShape shape;
};

// The backward passes read back either the input x (the default) or the output y (memory-saving
// mode, invertible activations only). Either way they rebuild, per element,
//   xc = x - mean  and  z = xc * scale + bias (+ residual)      (z: the pre-activation value)
// from x directly, or from y as z = Act::inverse(y), xc = (z - residual - bias) / scale.
// scale = weight * invstd, bias = the BatchNorm bias (0 without affine).

// Backward reduction: g = grad_out * act'(z), then per channel sum_g = sum(g) and
// sum_g_xc = sum(g * xc). (grad_bias = sum_g, grad_weight = invstd * sum_g_xc.)
template <typename scalar_t, typename acc_t>
struct ReduceArgs {
  const scalar_t* grad_out;
  const scalar_t* saved;     // x, or y when the kernel is instantiated from_output
  const scalar_t* residual;  // nullptr when absent
  const acc_t* mean;
  const acc_t* scale;
  const acc_t* bias;
  acc_t* sum_g;
  acc_t* sum_g_xc;
  acc_t activation_param;
  BnShape shape;
};

// Backward elementwise pass: grad_input = g * coef_g[c] + xc * coef_xc[c] + coef_const[c], and
// grad_residual = g. The three coefficients hold the whole BatchNorm backward (training or eval).
template <typename scalar_t, typename acc_t>
struct ElemtArgs {
  const scalar_t* grad_out;
  const scalar_t* saved;     // x, or y when the kernel is instantiated from_output
  const scalar_t* residual;  // nullptr when absent
  const acc_t* mean;
  const acc_t* scale;
  const acc_t* bias;
  const acc_t* coef_g;
  const acc_t* coef_xc;
  const acc_t* coef_const;
  scalar_t* grad_input;
  scalar_t* grad_residual;  // nullptr when absent
  acc_t activation_param;
  BnShape shape;
};

// The centred input xc = x - mean and the pre-activation z of one element.
template <typename acc_t>
struct Rebuilt {
  acc_t xc;
  acc_t z;
};

// Rebuilds (xc, z) for one element; kFromOutput selects the memory-saving path. Returned by
// value (no out-parameters) so CPU loops calling it stay vectorisable.
template <typename Act, bool kResidual, bool kFromOutput, typename acc_t>
FBN_HOST_DEVICE Rebuilt<acc_t> rebuild_pre_activation(acc_t saved, acc_t residual, acc_t mean,
                                                      acc_t scale, acc_t bias, acc_t param) {
  if constexpr (kFromOutput) {
    const acc_t z = Act::inverse(saved, param);
    acc_t affine = z - bias;
    if constexpr (kResidual) affine -= residual;
    return {affine / scale, z};
  } else {
    const acc_t xc = saved - mean;
    acc_t z = xc * scale + bias;
    if constexpr (kResidual) z += residual;
    return {xc, z};
  }
}

// Statistics pass: per-channel mean and biased variance of the input.
template <typename scalar_t, typename acc_t>
struct StatsArgs {
  const scalar_t* input;
  acc_t* mean;
  acc_t* var;
  BnShape shape;
};

}  // namespace pyfusedbn
