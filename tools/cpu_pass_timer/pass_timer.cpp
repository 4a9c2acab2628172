// Times the four BatchNorm + ReLU (or SiLU) CPU passes (statistics, apply, backward reduce, backward
// elementwise) straight from csrc/cpu's headers, no torch dispatch, no allocation per call:
// built against two checkouts by tools/ab_cpu_passes.py, so a kernel change can be timed in
// seconds instead of after a full extension build. Prints, per shape, layout and dtype, the
// first-quartile ms of each pass over 60 calls, and a checksum of the results (equal checksums:
// same elementwise results; the reduction's may differ in the last bits with summation order).
//
//   pass_timer THREADS CxS [CxS ...]      (batch 8, S = H * W)
//
// With PASS_TIMER_COLD=1 each call starts with the caches holding other data (64 MiB written
// before it, untimed): the tensors come from memory, as in a training step, where the harness's
// own few tensors would otherwise stay in L3 from call to call.
// With PASS_TIMER_ACT=silu the activation is SiLU, whose backward keeps g in a buffer between its
// two passes as the extension's does (grad_cache.h): the exp-bound case of GroupNorm + SiLU.
// PASS_TIMER_DTYPES (e.g. "float32,bfloat16") limits the dtypes timed.
#include "cpu/vector_math.h"  // first, as in the bindings: SIMD declarations of libm functions

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cpu/elementwise_kernels.h"
#include "cpu/grad_cache.h"
#include "cpu/reduction_kernels.h"

using namespace pyfusedbn;

// Writes 64 MiB (more than L2 + L3 here), so that the next call finds none of its tensors cached.
void evict_caches() {
  static std::vector<char> junk(size_t(64) << 20);
  static char value = 0;
  ++value;
  at::parallel_for(0, static_cast<int64_t>(junk.size()), 1 << 20, [&](int64_t b, int64_t e) {
    std::fill(junk.begin() + b, junk.begin() + e, value);
  });
}

template <typename F>
double quartile_ms(F f) {
  static const bool cold = std::getenv("PASS_TIMER_COLD") != nullptr && std::getenv("PASS_TIMER_COLD")[0] == '1';
  std::vector<double> ms;
  for (int r = 0; r < 60; ++r) {
    if (cold) evict_caches();
    const auto t = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 4];
}

template <typename Act, typename T>
void run(const char* name, int64_t N, int64_t C, int64_t S, bool channels_last) {
  const int64_t n = N * C * S;
  std::vector<T> x(n), dy(n), out(n), dx(n);
  std::vector<float> g(cpu::kKeepsGrad<Act, false> ? n : 0);
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = T(normal(gen));
    dy[i] = T(normal(gen));
  }
  std::vector<float> mean(C, 0.01f), var(C), scale(C, 1.1f), shift(C, 0.1f), bias(C, 0.2f), coef_g(C, 0.5f),
      coef_xc(C, 0.3f), coef_const(C, 0.01f), sum_g(C), sum_g_xc(C);
  const BnShape shape{N, C, S, channels_last};
  const double stats = quartile_ms([&] { cpu::stats_kernel(StatsArgs<T, float>{x.data(), mean.data(), var.data(), shape}); });
  const double apply = quartile_ms([&] {
    cpu::apply_kernel<Act, false>(ApplyArgs<T, float>{x.data(), nullptr, scale.data(), shift.data(), out.data(), 0.f, shape});
  });
  const ReduceArgs<T, float> reduce_args{dy.data(), x.data(), nullptr, mean.data(), scale.data(),
                                         bias.data(), sum_g.data(), sum_g_xc.data(), 0.f, shape};
  const ElemtArgs<T, float> elemt_args{dy.data(), x.data(), nullptr, mean.data(), scale.data(), bias.data(),
                                       coef_g.data(), coef_xc.data(), coef_const.data(), dx.data(), nullptr, 0.f, shape};
  double reduce = 0, elemt = 0;
  if constexpr (cpu::kKeepsGrad<Act, false>) {
    reduce = quartile_ms([&] { cpu::reduce_kernel<Act, false, false, true>(reduce_args, g.data()); });
    elemt = quartile_ms([&] { cpu::elemt_from_grad_kernel<false>(elemt_args, g.data()); });
  } else {
    reduce = quartile_ms([&] { cpu::reduce_kernel<Act, false, false>(reduce_args); });
    elemt = quartile_ms([&] { cpu::elemt_kernel<Act, false, false>(elemt_args); });
  }
  double elementwise = 0, sums = 0;
  for (int64_t i = 0; i < n; ++i) elementwise += std::abs(float(dx[i])) * (1 + i % 7) + float(out[i]) * (1 + i % 5);
  for (int64_t c = 0; c < C; ++c) sums += sum_g[c] + 2 * sum_g_xc[c];
  std::printf("%s %ldx%ldx%ld %s stats %.3f apply %.3f reduce %.3f elemt %.3f | checksum %.6e %.6e\n", name, (long)N,
              (long)C, (long)S, channels_last ? "channels_last" : "nchw", stats, apply, reduce, elemt, elementwise, sums);
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: pass_timer THREADS CxS [CxS ...]\n");
    return 2;
  }
  at::set_num_threads(std::atoi(argv[1]));
  const char* act = std::getenv("PASS_TIMER_ACT");
  const bool silu = act != nullptr && std::string(act) == "silu";
  const char* dtypes_env = std::getenv("PASS_TIMER_DTYPES");
  const std::string dtypes = dtypes_env != nullptr ? dtypes_env : "float16,bfloat16,float32";
  auto timed = [&](auto type, const char* name, int64_t C, int64_t S, bool channels_last) {
    using T = decltype(type);
    if (("," + dtypes + ",").find("," + std::string(name) + ",") == std::string::npos) return;
    if (silu) run<Silu, T>(name, 8, C, S, channels_last);
    else run<Relu, T>(name, 8, C, S, channels_last);
  };
  for (int k = 2; k < argc; ++k) {
    long C = 0, S = 0;
    if (std::sscanf(argv[k], "%ldx%ld", &C, &S) != 2) return 2;
    for (bool channels_last : {true, false}) {
      timed(c10::Half(), "float16", C, S, channels_last);
      timed(c10::BFloat16(), "bfloat16", C, S, channels_last);
      timed(float(), "float32", C, S, channels_last);
    }
  }
}
