#include "kernel_calls.h"

#include <atomic>

#include <c10/util/Exception.h>

namespace pyfusedbn {

static std::atomic<int64_t> g_calls[2];

void count_kernel_call(KernelDevice device) {
  g_calls[static_cast<int>(device)].fetch_add(1, std::memory_order_relaxed);
}

int64_t kernel_calls(const std::string& device) {
  if (device == "cpu") return g_calls[0].load();
  if (device == "cuda") return g_calls[1].load();
  C10_THROW_ERROR(ValueError, c10::str("kernel_calls: device must be 'cpu' or 'cuda', got '", device, "'"));
}

}  // namespace pyfusedbn
