// Loads and stores between the storage dtype and the accumulate type. Per element (load_acc,
// store_as): branch-free, so loops calling them vectorise (c10's conversions use a scalar F16C
// intrinsic for Half and a NaN branch for BFloat16). In bulk (to_acc, from_acc): whole runs
// converted with AVX2/F16C instructions, several times faster than the per-element forms inside
// a compute loop. All are exact IEEE round-to-nearest-even; NaN stays NaN.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__AVX2__) || defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

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

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define PYFUSEDBN_CONVERT_AVX512 1
// 16 values at a time in 512-bit registers, the last (n % 16) under a mask: a channels_last row
// of 17 or 33 channels is converted with no scalar tail.
inline __mmask16 tail_mask(int64_t left) { return static_cast<__mmask16>((1u << left) - 1u); }

inline __m512 widen16(__m256i bits, c10::Half) { return _mm512_cvtph_ps(bits); }
// bfloat16 is the high half of a float32.
inline __m512 widen16(__m256i bits, c10::BFloat16) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

inline __m256i narrow16(__m512 v, c10::Half) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// As store_as (vcvtneps2bf16 would flush float32 subnormals to zero, so it is not used).
inline __m256i narrow16(__m512 v, c10::BFloat16) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  const __m512i bits = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), rounded, _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(bits);
}

template <typename scalar_t>
constexpr bool kConverts16 = std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>;
#endif

// How far ahead of its loads to_acc prefetches. A conversion loop is a burst of loads with little
// work between them: it stalls on memory where the hardware prefetcher has not run ahead, which
// cost float16 as much time as float32 on streamed tensors (half its bytes). float16 passes, 1
// thread, caches evicted before each call (`python tools/ab_cpu_passes.py --cold`), two runs
// each: 1 and 4 KiB ahead gained alike (8x256x56x56 channels_last backward reduction 2.7 ->
// 2.1-2.3 ms, elementwise 4.3 -> 3.2-3.7; 8x512x28x28 NCHW reduction 2.0 -> 1.3); 2 KiB, kept:
// 8x512x28x28 channels_last reduction 1.8 -> 1.3-1.4, elementwise 2.5 -> 2.0-2.1. Cached tensors
// (8x1024x14x14, 8x2048x7x7): no change beyond noise.
constexpr int64_t kPrefetchBytes = 2048;

// dst[i] = src[i] as acc_t, for i < n.
template <typename acc_t, typename scalar_t>
inline void to_acc(const scalar_t* src, acc_t* dst, int64_t n) {
  int64_t i = 0;
#if defined(PYFUSEDBN_CONVERT_AVX512)
  if constexpr (kConverts16<scalar_t> && std::is_same_v<acc_t, float>) {
    for (; i + 16 <= n; i += 16) {
      // One prefetch per 32 bytes read: a line is asked for twice, the second time at no cost.
      _mm_prefetch(reinterpret_cast<const char*>(src + i) + kPrefetchBytes, _MM_HINT_T0);
      _mm512_storeu_ps(dst + i, widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)), scalar_t()));
    }
    if (i < n) {
      const __mmask16 mask = tail_mask(n - i);
      _mm512_mask_storeu_ps(dst + i, mask, widen16(_mm256_maskz_loadu_epi16(mask, src + i), scalar_t()));
    }
    return;
  }
#endif
#if defined(__F16C__)
  if constexpr (std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>) {
    // A cache line (32 values) per step, one prefetch each: a prefetch per 8 values took load
    // slots from the loads (AVX2 Zen 3, 2 threads, `python tools/ab_cpu_passes.py`, float16 pass
    // sums: 8x1024x14x14 NCHW 1.36 -> 0.97 ms, 8x256x56x56 NCHW 6.6 -> 5.0, channels_last 7.5 -> 6.8).
    for (; i + 32 <= n; i += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(src + i) + kPrefetchBytes, _MM_HINT_T0);
      for (int64_t k = 0; k < 32; k += 8)
        _mm256_storeu_ps(dst + i + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + k))));
    }
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
#endif
#if defined(__AVX2__)
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    // bfloat16 is the high half of a float32.
    for (; i + 8 <= n; i += 8) {
      const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    }
  }
#endif
  for (; i < n; ++i) dst[i] = load_acc<acc_t>(src[i]);
}

#if defined(__AVX2__)
// 8 floats to 8 bfloat16 bit patterns (in the low 16 bits of each 32-bit lane), as store_as.
inline __m256i bfloat16_bits(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
}
#endif

// dst[i] = src[i] rounded to scalar_t, for i < n.
template <typename scalar_t, typename acc_t>
inline void from_acc(const acc_t* src, scalar_t* dst, int64_t n) {
  int64_t i = 0;
#if defined(PYFUSEDBN_CONVERT_AVX512)
  if constexpr (kConverts16<scalar_t> && std::is_same_v<acc_t, float>) {
    for (; i + 16 <= n; i += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), narrow16(_mm512_loadu_ps(src + i), scalar_t()));
    if (i < n) {
      const __mmask16 mask = tail_mask(n - i);
      _mm256_mask_storeu_epi16(dst + i, mask, narrow16(_mm512_maskz_loadu_ps(mask, src + i), scalar_t()));
    }
    return;
  }
#endif
#if defined(__F16C__)
  if constexpr (std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>) {
    for (; i + 8 <= n; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
#endif
#if defined(__AVX2__)
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    for (; i + 16 <= n; i += 16) {
      // packus works per 128-bit lane: (lo0-3, hi0-3 | lo4-7, hi4-7), then reorder the quadwords.
      const __m256i packed = _mm256_packus_epi32(bfloat16_bits(_mm256_loadu_ps(src + i)),
                                                 bfloat16_bits(_mm256_loadu_ps(src + i + 8)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_permute4x64_epi64(packed, 0xD8));
    }
  }
#endif
  for (; i < n; ++i) dst[i] = store_as<scalar_t>(src[i]);
}

// float16 converted in registers inside the elementwise compute loops, kRegisterBlock values at a
// time: a kernel copies a block of each stream into small arrays (load_block), runs its compute
// loop on them with the constant length FullRegisterBlock, and rounds the results out
// (store_block). Inlined with a constant trip count, GCC keeps the arrays in registers, so the
// loop is vcvtph2ps, the math, vcvtps2ph: no L1 buffer round trip (to_acc, from_acc), which costs
// a store and a load per value and stream. Only on AVX2 + F16C machines without AVX-512, the ones
// it was measured on; elsewhere float16 keeps the bulk conversions. A row's last
// (len % kRegisterBlock) values are a block of run-time length with per-element conversions, or a
// zero-padded whole block (for_each_register_block).
#if defined(__F16C__) && !defined(PYFUSEDBN_CONVERT_AVX512)
template <typename scalar_t, typename acc_t>
constexpr bool kConvertsInRegisters = std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>;
#else
template <typename scalar_t, typename acc_t>
constexpr bool kConvertsInRegisters = false;
#endif

constexpr int64_t kRegisterBlock = 8;
using FullRegisterBlock = std::integral_constant<int64_t, kRegisterBlock>;

// body(j, n) for the blocks of a row of len values: n is FullRegisterBlock, then (the tail) int64_t.
template <typename Body>
inline void for_each_block(int64_t len, Body body) {
  int64_t j = 0;
  for (; j + kRegisterBlock <= len; j += kRegisterBlock) body(j, FullRegisterBlock());
  if (j < len) body(j, len - j);
}

template <typename acc_t, typename scalar_t, typename N>
inline void load_block(const scalar_t* src, acc_t* dst, N n) {
#if defined(__F16C__)
  if constexpr (std::is_same_v<N, FullRegisterBlock> && kConvertsInRegisters<scalar_t, acc_t>) {
    _mm256_storeu_ps(dst, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = load_acc<acc_t>(src[i]);
}

template <typename scalar_t, typename acc_t, typename N>
inline void store_block(const acc_t* src, scalar_t* dst, N n) {
#if defined(__F16C__)
  if constexpr (std::is_same_v<N, FullRegisterBlock> && kConvertsInRegisters<scalar_t, acc_t>) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = store_as<scalar_t>(src[i]);
}

}  // namespace cpu
}  // namespace pyfusedbn
