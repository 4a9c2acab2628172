// The floating-point dtype dispatch of every binding (CPU and CUDA, both norms): float, double,
// half and bfloat16, with scalar_t bound inside the lambda as torch's AT_DISPATCH macros do.
#pragma once

#include <ATen/Dispatch.h>

#define FBN_DISPATCH_FLOATING(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)
