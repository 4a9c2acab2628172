// A per-device count of kernel launches, read through torch.ops.pyfusedbn.kernel_calls(device).
#pragma once

#include <cstdint>
#include <string>

namespace pyfusedbn {

enum class KernelDevice { CPU = 0, CUDA = 1 };

void count_kernel_call(KernelDevice device);
int64_t kernel_calls(const std::string& device);

}  // namespace pyfusedbn
