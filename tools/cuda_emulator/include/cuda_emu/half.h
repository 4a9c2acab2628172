// __half and __nv_bfloat16 for the emulator: 16-bit storage with the explicit conversions the
// kernels use (round to nearest even, as cuda_fp16.h / cuda_bf16.h), and no implicit
// conversions or operators (the project compiles its CUDA code with __CUDA_NO_HALF_CONVERSIONS__
// and friends). tests/test_cuda_emulated.py checks every half value against numpy.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

namespace emu {
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace emu

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu, mantissa = h.bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return emu::bits_float(sign | 0x7f800000u | (mantissa << 13));
  return emu::bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline __half __float2half_rn(float f) {
  uint32_t x = emu::float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu))};  // NaN
  if (x >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // rounds past 65504: inf
  if (x < 0x38800000u) {  // below 2^-14: a subnormal half (or zero), round(|f| * 2^24) to even
    const float scaled = std::nearbyint(std::ldexp(emu::bits_float(x), 24));
    return {static_cast<uint16_t>(sign | static_cast<uint16_t>(scaled))};
  }
  x += 0xfffu + ((x >> 13) & 1u);  // round the 13 dropped bits to nearest, ties to even
  return {static_cast<uint16_t>(sign | ((x - (112u << 23)) >> 13))};
}

inline float __bfloat162float(__nv_bfloat16 b) { return emu::bits_float(static_cast<uint32_t>(b.bits) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t x = emu::float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((x >> 16) | 0x40u)};  // quiet NaN
  return {static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16)};
}
