// Each activation's value and derivative, written once and used by every kernel (CPU and CUDA).
//
// Semantics follow torch.nn.functional exactly, including which side of a kink the derivative
// takes (torch's *_backward kernels) and NaN propagation: a NaN pre-activation gives a NaN output.
// No torch headers here: nvcc compiles this on machines without torch's CUDA headers.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "host_device.h"

namespace pyfusedbn {

// Math wrappers so that the same template picks the float or double libm function on host and
// device alike (std:: overloads are not all usable in CUDA device code).
// expf on the host inline, in plain C that GCC vectorises in the kernels' loops: a call into
// libmvec's vector expf clobbers every vector register, so the loop's sums and coefficients were
// spilled and reloaded around it (SiLU's apply pass 0.78 -> 0.62 ms and its backward reduce 1.7 ->
// 1.3 with this, 8x1280x256 float32, 1 thread, AVX-512). Cody-Waite reduction by ln 2 and
// Cephes' degree-6 polynomial (within 1.5 ulp of exp on [-87, 88]); the power of two is applied in
// two halves so that subnormal results (down to -104) and overflow to inf come out as expf's.
// NaN stays NaN (every step propagates it). Only where AVX-512 is on: with AVX2 alone libmvec's
// expf is faster (tools/ab_cpu_passes.py, PASS_TIMER_ACT=silu: the apply pass 1.0 -> 1.5 ms at
// 8x1280x256). The device keeps CUDA's expf.
#if !defined(__CUDA_ARCH__) && defined(__AVX512F__)
#define PYFUSEDBN_INLINE_EXP 1
// The clamps' bounds, read from this variable (never written): with a bound GCC can see, its
// vectoriser pushes the work after the clamp into both arms of a select, a constant one and a
// computed one, and blends them under k-mask compares (SiLU's forward divided twice per vector);
// written as copysignf(bound, v) the clamp cost four instructions a side. Read from memory, each
// side is one vminps / vmaxps, the bound first so that NaN passes. SiLU, bfloat16 8x1280x256 NCHW,
// 1 thread: apply pass 0.64 -> 0.53 ms, backward reduction 1.22 -> 1.10 (tools/ab_cpu_passes.py,
// PASS_TIMER_ACT=silu), GroupNorm's plane reduction 1.12 -> 0.99; results unchanged.
struct ExpClamp {
  float high;      // exp(89) overflows to inf, as expf's result does from 88.73 on
  float low;       // exp(-104) is 0 in float (the subnormals end at 2^-149 ~ e^-103.3)
  float low_sum;   // 1 + exp(-86) rounds to 1
};
inline ExpClamp g_exp_clamp{89.0f, -104.0f, -86.0f};

// kTimes * exp(r), r = x - n ln 2 for the integer n nearest x / ln 2, which `t` holds in its low
// mantissa bits (t = 1.5 * 2^23 + n). kTimes = 2 scales the coefficients, exactly.
template <int kTimes>
inline float exp_of_remainder(float x, float& t) {
  constexpr float c = static_cast<float>(kTimes);
  const float kShift = 12582912.0f;  // 1.5 * 2^23: adding it rounds x / ln 2 to an integer
  t = x * 1.44269504088896341f + kShift;
  const float n = t - kShift;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = c * 1.9875691500e-4f;
  p = p * r + c * 1.3981999507e-3f;
  p = p * r + c * 8.3334519073e-3f;
  p = p * r + c * 4.1665795894e-2f;
  p = p * r + c * 1.6666665459e-1f;
  p = p * r + c * 5.0000001201e-1f;
  if constexpr (kTimes == 1) return p * r * r + r + 1.0f;
  return (p * r + c) * r + c;
}

// 2^(n + bias) as a float, n held by t as exp_of_remainder leaves it; the result must be normal.
template <int kBias>
inline float power_of_two(float t) {
  uint32_t bits;
  memcpy(&bits, &t, sizeof bits);
  bits = (bits << 23) + (uint32_t(127 + kBias) << 23);  // t's high bits shift out, n lands in the exponent
  float result;
  memcpy(&result, &bits, sizeof result);
  return result;
}
#endif

FBN_HOST_DEVICE float fbn_exp(float v) {
#if !defined(PYFUSEDBN_INLINE_EXP)
  return expf(v);
#else
  float x = v > g_exp_clamp.high ? g_exp_clamp.high : v;  // NaN passes both clamps
  x = x < g_exp_clamp.low ? g_exp_clamp.low : x;
  float t;
  const float p = exp_of_remainder<1>(x, t);
  int32_t t_bits;
  memcpy(&t_bits, &t, sizeof t_bits);
  const int32_t k = t_bits - 0x4B400000;  // n as an integer
  const int32_t half = k >> 1;
  const int32_t lo_bits = (half + 127) << 23, hi_bits = (k - half + 127) << 23;  // 2^half, 2^(k - half)
  float lo, hi;
  memcpy(&lo, &lo_bits, sizeof lo);
  memcpy(&hi, &hi_bits, sizeof hi);
  return p * lo * hi;
#endif
}
FBN_HOST_DEVICE double fbn_exp(double v) { return exp(v); }

// 1 + exp(v), the sigmoid's denominator (SiLU, Sigmoid, Mish). Inline, it needs exp's value only
// where 1 + exp does not round to 1, so v is clamped below at -86 and the power of two applied in
// one step, as 2^(n - 1) times 2 exp(r) (the polynomial's last step in Horner form): a normal
// number for every n from -124 up to 128, where the product overflows to inf as expf does. Within
// 2 ulp of 1 + expf(v) over every 7th float bit pattern, as 1 + fbn_exp is; NaN stays NaN. With
// the clamps' first form (copysignf), SiLU's forward pass 0.75 -> 0.64 ms (bfloat16 8x1280x256
// NCHW, 1 thread, tools/ab_cpu_passes.py with PASS_TIMER_ACT=silu).
FBN_HOST_DEVICE float fbn_one_plus_exp(float v) {
#if !defined(PYFUSEDBN_INLINE_EXP)
  return 1.0f + expf(v);
#else
  float x = v > g_exp_clamp.high ? g_exp_clamp.high : v;
  x = x < g_exp_clamp.low_sum ? g_exp_clamp.low_sum : x;
  float t;
  const float p = exp_of_remainder<2>(x, t);
  return 1.0f + p * power_of_two<-1>(t);
#endif
}
FBN_HOST_DEVICE double fbn_one_plus_exp(double v) { return 1.0 + exp(v); }
FBN_HOST_DEVICE float fbn_expm1(float v) { return expm1f(v); }
FBN_HOST_DEVICE double fbn_expm1(double v) { return expm1(v); }
FBN_HOST_DEVICE float fbn_log1p(float v) { return log1pf(v); }
FBN_HOST_DEVICE double fbn_log1p(double v) { return log1p(v); }
FBN_HOST_DEVICE float fbn_tanh(float v) { return tanhf(v); }
FBN_HOST_DEVICE double fbn_tanh(double v) { return tanh(v); }
FBN_HOST_DEVICE float fbn_erf(float v) { return erff(v); }
FBN_HOST_DEVICE double fbn_erf(double v) { return erf(v); }
FBN_HOST_DEVICE float fbn_abs(float v) { return fabsf(v); }
FBN_HOST_DEVICE double fbn_abs(double v) { return fabs(v); }

// The order is the ABI between Python (activation names) and the kernels: append only.
enum class ActKind : int32_t {
  Identity = 0,
  Relu,
  Relu6,
  LeakyRelu,  // param: negative_slope
  Elu,        // param: alpha
  Silu,
  Gelu,       // erf form (F.gelu, approximate="none")
  GeluTanh,   // F.gelu(approximate="tanh")
  Sigmoid,
  Tanh,
  Softplus,   // param: beta; threshold fixed at torch's default 20
  Softsign,
  Mish,
  Hardswish,
};

// Each activation: value(z, p) and grad(z, p) = d value / dz, both in the accumulate type T.
// Invertible ones (kInvertible) also give inverse(y, p) = z, which the memory-saving backward uses
// to rebuild the pre-activation from the output. Others inherit NotInvertible: the ops refuse
// from_output for them before any kernel runs.
struct NotInvertible {
  static constexpr bool kInvertible = false;
  template <typename T> FBN_HOST_DEVICE static T inverse(T y, T) { return y; }
};

struct Identity {
  static constexpr bool kInvertible = true;
  template <typename T> FBN_HOST_DEVICE static T inverse(T y, T) { return y; }
  template <typename T> FBN_HOST_DEVICE static T value(T z, T) { return z; }
  template <typename T> FBN_HOST_DEVICE static T grad(T, T) { return T(1); }
};

struct Relu : NotInvertible {
  // `z < 0 ? 0 : z` keeps NaN (torch.relu(nan) is nan); fmax would turn it into 0.
  template <typename T> FBN_HOST_DEVICE static T value(T z, T) { return z < T(0) ? T(0) : z; }
  // threshold_backward: gradient flows where the output is > 0, so not at z == 0.
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T) { return z > T(0) ? T(1) : T(0); }
};

struct Relu6 : NotInvertible {
  template <typename T> FBN_HOST_DEVICE static T value(T z, T) {
    return z < T(0) ? T(0) : (z > T(6) ? T(6) : z);
  }
  // hardtanh_backward: open interval (0, 6).
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T) {
    return (z > T(0) && z < T(6)) ? T(1) : T(0);
  }
};

struct LeakyRelu {
  // Invertible for negative_slope > 0 (the ops check).
  static constexpr bool kInvertible = true;
  template <typename T> FBN_HOST_DEVICE static T inverse(T y, T slope) { return y > T(0) ? y : y / slope; }
  template <typename T> FBN_HOST_DEVICE static T value(T z, T slope) { return z > T(0) ? z : z * slope; }
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T slope) { return z > T(0) ? T(1) : slope; }
};

struct Elu {
  // Invertible for alpha > 0 (the ops check): y in (-alpha, 0] maps back through log1p.
  static constexpr bool kInvertible = true;
  // Where exp(z) underflows against 1, y == -alpha and log1p(-1) = -inf; stopping just short of
  // -1 keeps x finite there (its gradient weight alpha * exp(z) is ~1e-7 of alpha anyway).
  template <typename T> FBN_HOST_DEVICE static T inverse(T y, T alpha) {
    const T ratio = y / alpha;
    const T floor = T(-1) + T(1e-7);
    return y > T(0) ? y : fbn_log1p(ratio > floor ? ratio : floor);
  }
  template <typename T> FBN_HOST_DEVICE static T value(T z, T alpha) {
    return z > T(0) ? z : alpha * fbn_expm1(z);
  }
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T alpha) {
    return z > T(0) ? T(1) : alpha * fbn_exp(z);
  }
};

struct Sigmoid : NotInvertible {
  template <typename T> FBN_HOST_DEVICE static T value(T z, T) { return T(1) / fbn_one_plus_exp(-z); }
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T) {
    const T s = value(z, T(0));
    return s * (T(1) - s);
  }
};

struct Silu : NotInvertible {
  template <typename T> FBN_HOST_DEVICE static T value(T z, T) { return z / fbn_one_plus_exp(-z); }
  // In v = -z alone (1 + z (1 - s) = 1 - v (1 - s), exactly): the negation then folds into the
  // rebuild's FMA instead of costing an instruction per vector (the backward reduction ~3%).
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T) {
    const T v = -z;
    const T s = T(1) / fbn_one_plus_exp(v);
    return s * (T(1) - v * (T(1) - s));
  }
};

struct Gelu : NotInvertible {
  template <typename T> FBN_HOST_DEVICE static T value(T z, T) {
    const T kSqrtHalf = T(0.70710678118654752440);
    return T(0.5) * z * (T(1) + fbn_erf(z * kSqrtHalf));
  }
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T) {
    const T kSqrtHalf = T(0.70710678118654752440);
    const T kInvSqrt2Pi = T(0.39894228040143267794);
    const T cdf = T(0.5) * (T(1) + fbn_erf(z * kSqrtHalf));
    const T pdf = kInvSqrt2Pi * fbn_exp(T(-0.5) * z * z);
    return cdf + z * pdf;
  }
};

struct GeluTanh : NotInvertible {
  template <typename T> FBN_HOST_DEVICE static T value(T z, T) {
    const T kBeta = T(0.79788456080286535588);  // sqrt(2 / pi)
    const T kKappa = T(0.044715);
    const T inner = kBeta * (z + kKappa * z * z * z);
    return T(0.5) * z * (T(1) + fbn_tanh(inner));
  }
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T) {
    const T kBeta = T(0.79788456080286535588);
    const T kKappa = T(0.044715);
    const T z_sq = z * z;
    const T inner = kBeta * (z + kKappa * z_sq * z);
    const T t = fbn_tanh(inner);
    const T d_inner = kBeta * (T(1) + T(3) * kKappa * z_sq);
    return T(0.5) * (T(1) + t) + T(0.5) * z * (T(1) - t * t) * d_inner;
  }
};

struct Tanh : NotInvertible {
  template <typename T> FBN_HOST_DEVICE static T value(T z, T) { return fbn_tanh(z); }
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T) {
    const T t = fbn_tanh(z);
    return T(1) - t * t;
  }
};

struct Softplus : NotInvertible {
  // F.softplus(z, beta, threshold=20): linear once beta*z > threshold, as torch.
  template <typename T> FBN_HOST_DEVICE static T value(T z, T beta) {
    const T bz = z * beta;
    return bz > T(20) ? z : fbn_log1p(fbn_exp(bz)) / beta;
  }
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T beta) {
    const T bz = z * beta;
    const T e = fbn_exp(bz);
    return bz > T(20) ? T(1) : e / (e + T(1));
  }
};

struct Softsign : NotInvertible {
  template <typename T> FBN_HOST_DEVICE static T value(T z, T) { return z / (T(1) + fbn_abs(z)); }
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T) {
    const T d = T(1) + fbn_abs(z);
    return T(1) / (d * d);
  }
};

struct Mish : NotInvertible {
  template <typename T> FBN_HOST_DEVICE static T value(T z, T) {
    return z * fbn_tanh(fbn_log1p(fbn_exp(z)));
  }
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T) {
    const T s = T(1) / fbn_one_plus_exp(-z);
    const T t = fbn_tanh(fbn_log1p(fbn_exp(z)));
    return t + z * s * (T(1) - t * t);
  }
};

struct Hardswish : NotInvertible {
  template <typename T> FBN_HOST_DEVICE static T value(T z, T) {
    const T r = z + T(3);
    const T clamped = r < T(0) ? T(0) : (r > T(6) ? T(6) : r);
    return z * clamped / T(6);
  }
  // hardswish_backward: 0 below -3, z/3 + 1/2 on [-3, 3], 1 above.
  template <typename T> FBN_HOST_DEVICE static T grad(T z, T) {
    return z < T(-3) ? T(0) : (z <= T(3) ? z / T(3) + T(0.5) : T(1));
  }
};

// Calls f(Activation{}) with the functor type for `kind`, so kernels are instantiated once per
// activation and the activation inlines into the element loop. Host-only: launchers dispatch.
template <typename F>
inline void dispatch_activation(ActKind kind, F&& f) {
  switch (kind) {
    case ActKind::Identity: f(Identity{}); return;
    case ActKind::Relu: f(Relu{}); return;
    case ActKind::Relu6: f(Relu6{}); return;
    case ActKind::LeakyRelu: f(LeakyRelu{}); return;
    case ActKind::Elu: f(Elu{}); return;
    case ActKind::Silu: f(Silu{}); return;
    case ActKind::Gelu: f(Gelu{}); return;
    case ActKind::GeluTanh: f(GeluTanh{}); return;
    case ActKind::Sigmoid: f(Sigmoid{}); return;
    case ActKind::Tanh: f(Tanh{}); return;
    case ActKind::Softplus: f(Softplus{}); return;
    case ActKind::Softsign: f(Softsign{}); return;
    case ActKind::Mish: f(Mish{}); return;
    case ActKind::Hardswish: f(Hardswish{}); return;
  }
}

// Names as the Python API spells them, indexed by ActKind.
constexpr const char* kActivationNames[] = {
    "identity", "relu",    "relu6", "leaky_relu", "elu",      "silu", "gelu",
    "gelu_tanh", "sigmoid", "tanh",  "softplus",   "softsign", "mish", "hardswish",
};
constexpr int kNumActivations = sizeof(kActivationNames) / sizeof(kActivationNames[0]);

}  // namespace pyfusedbn
