// The emulator's own checks (tests/test_cuda_emulated.py runs each): that it refuses or stops
// on what a GPU would refuse or hang on, that its warp shuffles follow CUDA's width rules, and
// (halves) every half value and the rounding boundaries of half and bfloat16, for numpy and
// torch to compare.
//   emulator_checks CHECK [--order ...]
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

void launch(dim3 grid, dim3 block, std::function<void()> body) {
  emu::launch(body, "check_kernel", __FILE__, __LINE__, grid, block);
}

int shuffles() {
  int failures = 0;
  launch(1, 64, [&] {
    const int lane = threadIdx.x % 32;
    const int down = __shfl_down_sync(0xffffffffu, lane, 3, 16);
    const int up = __shfl_up_sync(0xffffffffu, lane, 5, 8);
    const int xr = __shfl_xor_sync(0xffffffffu, lane, 6, 8);
    const double idx = __shfl_sync(0xffffffffu, static_cast<double>(lane), 9, 16);
    const long long big = __shfl_down_sync(0xffffffffu, static_cast<long long>(lane) << 40, 16);
    const int want_down = lane % 16 + 3 < 16 ? lane + 3 : lane;
    const int want_up = lane % 8 >= 5 ? lane - 5 : lane;
    const int want_xor = (lane ^ 6) < lane / 8 * 8 + 8 ? lane ^ 6 : lane;
    const double want_idx = lane / 16 * 16 + 9;
    const long long want_big = static_cast<long long>(lane + 16 < 32 ? lane + 16 : lane) << 40;
    if (down != want_down || up != want_up || xr != want_xor || idx != want_idx || big != want_big) {
      std::printf("FAIL lane %d: down %d/%d up %d/%d xor %d/%d idx %g/%g\n", lane, down, want_down, up, want_up,
                  xr, want_xor, idx, want_idx);
      ++failures;
    }
  });
  // Half a warp shuffling among itself while the other half does something else.
  launch(1, 32, [&] {
    const int lane = threadIdx.x;
    if (lane < 16) {
      const int v = __shfl_xor_sync(0x0000ffffu, lane, 1);
      if (v != (lane ^ 1)) ++failures;
    }
  });
  std::printf("shuffles: %d failures\n", failures);
  return failures ? 1 : 0;
}

// A block-wide sum through shared memory; with the barrier between the writes and the reads
// removed, the result depends on the scheduling order.
int race(bool with_barrier) {
  static emu::SharedSite site;
  int total = 0;
  launch(1, 64, [&] {
    auto& cells = site.get<int[64]>("cells", __FILE__, __LINE__);
    cells[threadIdx.x] = static_cast<int>(threadIdx.x);
    if (with_barrier) __syncthreads();
    if (threadIdx.x == 0) {
      for (int i = 0; i < 64; ++i) total += cells[i];
    }
  });
  std::printf("race: total %d\n", total);
  return 0;
}

int halves() {
  // Every half bit pattern to float; then each finite half's value, the midpoints to its
  // neighbour and one float either side of them, rounded to half and to bfloat16.
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = __half2float(__half{static_cast<uint16_t>(h)});
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    std::printf("h %u %08x\n", h, bits);
  }
  auto emit = [](float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    std::printf("f %08x %04x %04x\n", bits, __float2half_rn(f).bits, __float2bfloat16_rn(f).bits);
  };
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const float a = __half2float(__half{static_cast<uint16_t>(h | sign)});
      const float b = __half2float(__half{static_cast<uint16_t>((h + 1) | sign)});
      const float mid = (a + b) / 2;  // exact: one more bit than a half
      emit(a);
      emit(mid);
      emit(std::nextafter(mid, 0.0f));
      emit(std::nextafter(mid, 1e30f * (sign ? -1 : 1)));
    }
  }
  for (uint32_t top = 0; top < 65536; top += 7) {  // bfloat16 boundaries over the whole range
    for (uint32_t low : {0x0000u, 0x7fffu, 0x8000u, 0x8001u}) {
      const uint32_t bits = top << 16 | low;
      float f;
      std::memcpy(&f, &bits, 4);
      if (f == f) emit(f);
    }
  }
  return 0;
}

const std::map<std::string, std::function<int()>> kChecks = {
    {"shuffles", shuffles},
    {"race_with_barrier", [] { return race(true); }},
    {"race_without_barrier", [] { return race(false); }},
    {"halves", halves},
    // Each of these must stop the emulator (exit 86) with the message the test expects.
    {"skip_barrier", [] { launch(1, 64, [] { if (threadIdx.x == 5) return; __syncthreads(); }); return 0; }},
    {"different_barriers", [] {
       launch(1, 64, [] {
         if (threadIdx.x < 32) __syncthreads();
         else __syncthreads();
       });
       return 0;
     }},
    {"mask_exited_lane", [] {
       launch(1, 32, [] {
         if (threadIdx.x == 31) return;
         (void)__shfl_down_sync(0xffffffffu, 1.0f, 1);
       });
       return 0;
     }},
    {"mask_absent_lane", [] { launch(1, 16, [] { (void)__shfl_down_sync(0xffffffffu, 1, 1); }); return 0; }},
    {"deadlock", [] {
       launch(1, 32, [] {
         if (threadIdx.x < 16) __syncthreads();
         else (void)__shfl_xor_sync(0xffffffffu, 1, 1);
       });
       return 0;
     }},
    {"bad_width", [] { launch(1, 32, [] { (void)__shfl_down_sync(0xffffffffu, 1, 1, 12); }); return 0; }},
    {"block_too_big", [] { launch(1, 1025, [] {}); return 0; }},
    {"grid_y_too_big", [] { launch(dim3(1, 65536), 32, [] {}); return 0; }},
    {"shared_too_big", [] {
       static emu::SharedSite site;
       launch(1, 32, [] { site.get<float[12289]>("big", __FILE__, __LINE__)[threadIdx.x] = 0; });
       return 0;
     }},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !kChecks.count(argv[1])) {
    std::fprintf(stderr, "usage: emulator_checks CHECK [--order ORDER]; checks:");
    for (const auto& c : kChecks) std::fprintf(stderr, " %s", c.first.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  if (argc == 4 && std::strcmp(argv[2], "--order") == 0 && !emu::parse_order(argv[3])) return 2;
  return kChecks.at(argv[1])();
}
