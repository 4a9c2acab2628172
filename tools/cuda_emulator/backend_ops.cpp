// The emulated CUDA backend's test-only ops (namespace pyfusedbn_emulator; only the emulated
// library built by build.py's build_backend has them): set the emulated device (SM count,
// occupancy answer, scheduling order) and read what ran.
#include <torch/library.h>

#include "cuda_emu/runtime.h"

namespace {

void configure(int64_t num_sms, int64_t occupancy, const std::string& order) {
  TORCH_CHECK(num_sms >= 1, "pyfusedbn_emulator.configure: num_sms must be >= 1, got ", num_sms);
  TORCH_CHECK(occupancy >= 1, "pyfusedbn_emulator.configure: occupancy must be >= 1, got ", occupancy);
  TORCH_CHECK(emu::parse_order(order.c_str()),
              "pyfusedbn_emulator.configure: order must be forward, reverse or random:SEED, got '", order, "'");
  emu::config().num_sms = static_cast<int>(num_sms);
  emu::config().occupancy = static_cast<int>(occupancy);
}

int64_t launches() { return emu::config().launches; }

std::string kernels_launched() { return emu::kernels_launched(); }

}  // namespace

TORCH_LIBRARY(pyfusedbn_emulator, m) {
  m.def("configure(int num_sms, int occupancy, str order) -> ()", &configure);
  m.def("launches() -> int", &launches);
  m.def("kernels_launched() -> str", &kernels_launched);
}
