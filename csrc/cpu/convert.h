// Loads and stores between the storage dtype and the accumulate type, written so that CPU loops
// over bfloat16 and float16 vectorise. c10's conversions use a scalar F16C intrinsic for Half
// and a NaN branch for BFloat16, which leave those loops scalar (~16x slower than float).
// Both conversions are exact IEEE round-to-nearest-even, NaN stays NaN.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

namespace pyfusedbn {
namespace cpu {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

template <typename acc_t, typename scalar_t>
inline acc_t load_acc(const scalar_t& v) {
  return static_cast<acc_t>(v);
}

template <>
inline float load_acc<float, c10::BFloat16>(const c10::BFloat16& v) {
  return bits_to_float(static_cast<uint32_t>(v.x) << 16);
}

// Half to float without branches (the FP16 library's algorithm, as c10's portable path).
template <>
inline float load_acc<float, c10::Half>(const c10::Half& v) {
  const uint32_t w = static_cast<uint32_t>(v.x) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_to_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude = two_w < (1u << 27) ? float_to_bits(denormalized) : float_to_bits(normalized);
  return bits_to_float(sign | magnitude);
}

template <typename scalar_t, typename acc_t>
inline scalar_t store_as(acc_t v) {
  return static_cast<scalar_t>(v);
}

template <>
inline c10::BFloat16 store_as<c10::BFloat16, float>(float v) {
  const uint32_t u = float_to_bits(v);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return c10::BFloat16(static_cast<uint16_t>(v != v ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
}

template <>
inline c10::Half store_as<c10::Half, float>(float v) {
  const uint32_t w = float_to_bits(v);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  const float scaled = (__builtin_fabsf(v) * 0x1.0p+112f) * 0x1.0p-110f;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  const uint32_t bits = float_to_bits(bits_to_float((bias >> 1) + 0x07800000u) + scaled);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  const uint32_t half = (sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign);
  return c10::Half(static_cast<uint16_t>(half), c10::Half::from_bits());
}

}  // namespace cpu
}  // namespace pyfusedbn
