// Per-channel (count, mean, M2) partial statistics and Chan's parallel merge, shared by the CPU
// and CUDA reductions. Merging partials computed over blocks (each block two-pass or Welford)
// keeps the variance stable for inputs with a large mean, unlike sum / sum-of-squares.
#pragma once

#include <stdint.h>

#include "host_device.h"

namespace pyfusedbn {

template <typename T>
struct MeanM2 {
  T mean;
  T m2;  // sum of squared deviations from mean
  int64_t count;
};

// Chan, Golub & LeVeque: combine two disjoint partials.
template <typename T>
FBN_HOST_DEVICE MeanM2<T> chan_merge(const MeanM2<T>& a, const MeanM2<T>& b) {
  if (a.count == 0) return b;
  if (b.count == 0) return a;
  const int64_t count = a.count + b.count;
  const T b_share = T(b.count) / T(count);
  const T delta = b.mean - a.mean;
  MeanM2<T> out;
  out.mean = a.mean + delta * b_share;
  out.m2 = a.m2 + b.m2 + delta * delta * T(a.count) * b_share;
  out.count = count;
  return out;
}

// One Welford step: add a single value.
template <typename T>
FBN_HOST_DEVICE void welford_add(MeanM2<T>& acc, T value) {
  acc.count += 1;
  const T delta = value - acc.mean;
  acc.mean += delta / T(acc.count);
  acc.m2 += delta * (value - acc.mean);
}

}  // namespace pyfusedbn
