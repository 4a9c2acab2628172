// Sums over a contiguous block with many independent partial sums. One vector accumulator
// (what `omp simd reduction` gives) serialises the adds on their latency, ~4 cycles each, which
// made the planar reductions compute-bound at a third of the copy speed; kLanes accumulators keep
// the vector units busy. The lanes combine in a fixed order: results are deterministic.
#pragma once

#include <stdint.h>

namespace pyfusedbn {
namespace cpu {

// Four 256-bit vectors' worth of lanes.
template <typename acc_t>
constexpr int64_t kLanes = 128 / sizeof(acc_t);

template <typename acc_t>
struct SumPair {
  acc_t first;
  acc_t second;
};

// The lanes' total, folded in halves (lanes[j] += lanes[j + half]): log2(kLanes) dependent vector
// adds instead of a chain of kLanes scalar adds, which on a small block (a 16x16 plane: 16
// vectors of work) cost as much as the block itself. Overwrites lanes.
template <typename acc_t>
inline acc_t combine_lanes(acc_t* lanes) {
  for (int64_t half = kLanes<acc_t> / 2; half >= 1; half /= 2) {
#pragma omp simd
    for (int64_t j = 0; j < half; ++j) lanes[j] += lanes[j + half];
  }
  return lanes[0];
}

// sum over i < len of term(i).
template <typename acc_t, typename Term>
inline acc_t lane_sum(int64_t len, Term term) {
  constexpr int64_t L = kLanes<acc_t>;
  acc_t lanes[L] = {};
  int64_t i = 0;
  for (; i + L <= len; i += L) {
#pragma omp simd
    for (int64_t j = 0; j < L; ++j) lanes[j] += term(i + j);
  }
  acc_t tail = 0;
#pragma omp simd reduction(+ : tail)
  for (int64_t k = i; k < len; ++k) tail += term(k);
  return combine_lanes(lanes) + tail;
}

// Both sums of term(i) = SumPair{a, b} in one pass.
template <typename acc_t, typename Term>
inline SumPair<acc_t> lane_sum_pair(int64_t len, Term term) {
  constexpr int64_t L = kLanes<acc_t>;
  acc_t first[L] = {}, second[L] = {};
  int64_t i = 0;
  for (; i + L <= len; i += L) {
#pragma omp simd
    for (int64_t j = 0; j < L; ++j) {
      const SumPair<acc_t> t = term(i + j);
      first[j] += t.first;
      second[j] += t.second;
    }
  }
  acc_t tail_first = 0, tail_second = 0;
#pragma omp simd reduction(+ : tail_first, tail_second)
  for (int64_t k = i; k < len; ++k) {
    const SumPair<acc_t> t = term(k);
    tail_first += t.first;
    tail_second += t.second;
  }
  return {combine_lanes(first) + tail_first, combine_lanes(second) + tail_second};
}

}  // namespace cpu
}  // namespace pyfusedbn
