// What the emulated-kernel drivers share: the run's options (--order, --sms, --occupancy), the
// four dtypes' conversions to and from double, guarded buffers, float64 activation references
// (written here, independent of csrc/common/activations.h), the comparison that reports which tensor
// differed and by how much, and a digest of every output (equal across scheduling orders).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/activations.h"  // csrc's ActKind: which kernel instantiation a case launches

namespace harness {

struct Options {
  int sms = 132;
  std::string filter;  // run only cases whose name contains it
};

inline Options parse(int argc, char** argv) {
  Options o;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // what ran before a crash is on the log
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    if (key == "--order") {
      if (!emu::parse_order(value.c_str())) std::exit(2);
    } else if (key == "--sms") {
      o.sms = std::stoi(value);
      emu::config().num_sms = o.sms;
    } else if (key == "--occupancy") {
      emu::config().occupancy = std::stoi(value);
    } else if (key == "--filter") {
      o.filter = value;
    } else {
      std::fprintf(stderr, "unknown option %s\n", key.c_str());
      std::exit(2);
    }
  }
  return o;
}

template <typename T> inline double to_double(T v) { return static_cast<double>(v); }
template <> inline double to_double(__half v) { return __half2float(v); }
template <> inline double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> inline T from_double(double v) { return static_cast<T>(v); }
template <> inline __half from_double(double v) { return __float2half_rn(static_cast<float>(v)); }
template <> inline __nv_bfloat16 from_double(double v) { return __float2bfloat16_rn(static_cast<float>(v)); }

template <typename T> constexpr const char* dtype_name = "float32";
template <> constexpr const char* dtype_name<double> = "float64";
template <> constexpr const char* dtype_name<__half> = "float16";
template <> constexpr const char* dtype_name<__nv_bfloat16> = "bfloat16";

// (rtol, atol relative to the reference's largest magnitude) per dtype of the compared values.
struct Tolerance {
  double rtol, atol;
};
template <typename T> constexpr Tolerance tolerance{1e-4, 2e-5};
template <> constexpr Tolerance tolerance<double>{1e-10, 1e-11};
template <> constexpr Tolerance tolerance<__half>{4e-3, 3e-3};
template <> constexpr Tolerance tolerance<__nv_bfloat16>{2e-2, 2e-2};

// A device buffer of n values at `offset` values past an aligned start (offset 1 makes a
// misaligned view: the vector width falls to 1), with guard values after it: a kernel that
// writes past its end is caught (and by ASan past the allocation).
template <typename T>
struct Buffer {
  static constexpr int kGuard = 16;
  std::vector<T> storage;
  int offset;
  int64_t n;
  Buffer(int64_t count, int start_offset = 0) : storage(count + start_offset + kGuard), offset(start_offset), n(count) {
    std::memset(static_cast<void*>(storage.data()), 0xa5, storage.size() * sizeof(T));
  }
  T* data() { return storage.data() + offset; }
  T& operator[](int64_t i) { return data()[i]; }
  bool guard_intact() const {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(storage.data() + offset + n);
    for (size_t i = 0; i < kGuard * sizeof(T); ++i)
      if (p[i] != 0xa5) return false;
    return true;
  }
};

// Activations in float64: (value, derivative, inverse) as torch.nn.functional defines them.
enum class Act { Identity, Relu, LeakyRelu, Elu, Silu };
struct ActRef {
  Act act;
  const char* name;
  double param;
  bool invertible;
  pyfusedbn::ActKind kind;
  double value(double z) const {
    switch (act) {
      case Act::Relu: return z > 0 ? z : 0;
      case Act::LeakyRelu: return z > 0 ? z : z * param;
      case Act::Elu: return z > 0 ? z : param * (std::exp(z) - 1);
      case Act::Silu: return z / (1 + std::exp(-z));
      default: return z;
    }
  }
  double grad(double z) const {
    switch (act) {
      case Act::Relu: return z > 0 ? 1 : 0;
      case Act::LeakyRelu: return z > 0 ? 1 : param;
      case Act::Elu: return z > 0 ? 1 : param * std::exp(z);
      case Act::Silu: {
        const double s = 1 / (1 + std::exp(-z));
        return s * (1 + z * (1 - s));
      }
      default: return 1;
    }
  }
};
inline const std::vector<ActRef>& activations() {
  using pyfusedbn::ActKind;
  static const std::vector<ActRef> acts = {{Act::Identity, "identity", 0, true, ActKind::Identity},
                                           {Act::Relu, "relu", 0, false, ActKind::Relu},
                                           {Act::LeakyRelu, "leaky_relu", 0.1, true, ActKind::LeakyRelu},
                                           {Act::Elu, "elu", 1.0, true, ActKind::Elu},
                                           {Act::Silu, "silu", 0, false, ActKind::Silu}};
  return acts;
}

// Deterministic inputs in [-2, 2) (a linear congruential stream per seed).
inline double input_value(uint64_t seed, int64_t i) {
  uint64_t s = (seed + 1) * 6364136223846793005ull + static_cast<uint64_t>(i) * 1442695040888963407ull;
  s ^= s >> 29;
  s *= 0xbf58476d1ce4e5b9ull;
  s ^= s >> 32;
  return static_cast<double>(s % 1000003) / 1000003.0 * 4 - 2;
}

// The run's verdict: failures are printed as they happen; the digest folds every output.
struct Report {
  int failures = 0;
  uint64_t digest = 1469598103934665603ull;

  template <typename T>
  void fold(const T* p, int64_t n) {
    const unsigned char* b = reinterpret_cast<const unsigned char*>(p);
    for (int64_t i = 0; i < n * static_cast<int64_t>(sizeof(T)); ++i) digest = (digest ^ b[i]) * 1099511628211ull;
  }

  // Compares n values of `got` (type T) with the float64 reference `want`.
  template <typename T>
  void check(const std::string& where, const char* tensor, const T* got, const std::vector<double>& want,
             Tolerance tol, double extra = 1) {
    fold(got, static_cast<int64_t>(want.size()));
    double scale = 0;
    for (double w : want) scale = std::fmax(scale, std::fabs(w));
    for (size_t i = 0; i < want.size(); ++i) {
      const double g = to_double(got[i]), err = std::fabs(g - want[i]);
      if (!(err <= extra * (tol.atol * scale + tol.rtol * std::fabs(want[i])))) {
        ++failures;
        std::printf("FAIL %s: %s[%zu] = %.9g, float64 reference %.9g (|diff| %.3g, scale %.3g)\n", where.c_str(),
                    tensor, i, g, want[i], err, scale);
        return;
      }
    }
  }
  template <typename T>
  void check_guard(const std::string& where, const char* tensor, const Buffer<T>& b) {
    if (!b.guard_intact()) {
      ++failures;
      std::printf("FAIL %s: %s written past its %lld values\n", where.c_str(), tensor, static_cast<long long>(b.n));
    }
  }
  int finish(const char* suite) {
    std::printf("kernels launched: %s\n", emu::kernels_launched().c_str());
    std::printf("%s: %d failures, %lld launches, digest %016llx\n", suite, failures,
                static_cast<long long>(emu::config().launches), static_cast<unsigned long long>(digest));
    return failures ? 1 : 0;
  }
};

// Calls f(case, activation) for each case (with a `name`) and activation the --filter selects.
template <typename scalar_t, typename Cases, typename F>
void for_each_selected(const Cases& cases, const Options& opt, F&& f) {
  for (const auto& k : cases)
    for (const ActRef& act : activations()) {
      const std::string name = std::string(k.name) + " " + dtype_name<scalar_t> + " " + act.name;
      if (opt.filter.empty() || name.find(opt.filter) != std::string::npos) f(k, act);
    }
}

// A driver's main: Suite::run<T>(options, report) for the four dtypes, then the verdict.
template <typename Suite>
int run_suite(int argc, char** argv, const char* name) {
  const Options opt = parse(argc, argv);
  Report rep;
  Suite::template run<float>(opt, rep);
  Suite::template run<double>(opt, rep);
  Suite::template run<__half>(opt, rep);
  Suite::template run<__nv_bfloat16>(opt, rep);
  return rep.finish(name);
}

}  // namespace harness
