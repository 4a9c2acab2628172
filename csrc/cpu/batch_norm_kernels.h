// CPU kernels: raw-pointer loops, multi-threaded with at::parallel_for and written so the
// compiler vectorises the inner loops (`omp simd`, one activation inlined per instantiation).
// The entry points the binding calls: stats_kernel, reduce_kernel (reduction_kernels.h),
// apply_kernel, elemt_kernel (elementwise_kernels.h). Both walk the data in chunks of the
// accumulate type (chunks.h), so bfloat16/float16 run the float32 loops. For costly activations
// the backward's two passes share g through grad_cache.h (reduce_kernel<..., true>,
// elemt_from_grad_kernel).
#pragma once

#include "elementwise_kernels.h"
#include "grad_cache.h"
#include "reduction_kernels.h"
