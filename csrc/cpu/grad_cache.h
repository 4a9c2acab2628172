// The CPU backward's gradient cache. Both backward passes need g = grad_out * act'(z); for the
// activations whose derivative calls libm (exp, erf, tanh) that call is most of a pass's time on
// a CPU (~0.2 ns per float32 element with AVX-512 against ~0.07 for a load-multiply-store), so the
// reduction writes g to a buffer laid out as the input and the elementwise pass reads it back:
// one transcendental per element instead of two (eager PyTorch also pays two: forward and
// backward). The cheap activations keep recomputing, which costs less than the extra traffic;
// so does the memory-saving mode (from_output), whose point is not to hold extra tensors.
#pragma once

#include <cstddef>
#include <memory>
#include <type_traits>

#include "../common/activations.h"
#include "../common/kernel_args.h"
#include "chunks.h"
#include "elementwise_kernels.h"  // Coef

namespace pyfusedbn {
namespace cpu {

template <typename Act>
constexpr bool kGradCallsLibm =
    std::is_same_v<Act, Elu> || std::is_same_v<Act, Silu> || std::is_same_v<Act, Gelu> ||
    std::is_same_v<Act, GeluTanh> || std::is_same_v<Act, Sigmoid> || std::is_same_v<Act, Tanh> ||
    std::is_same_v<Act, Softplus> || std::is_same_v<Act, Mish>;

template <typename Act, bool kFromOutput>
constexpr bool kKeepsGrad = kGradCallsLibm<Act> && !kFromOutput;

// The cache is a per-thread buffer that only grows, up to kMaxGradCacheBytes, and is reused by
// later backward calls: a fresh multi-MB tensor pays a page fault per 4 KiB on first touch, which
// here cost ~4 ms for 5 MB, more than the pass it saves. Larger inputs recompute g. It pays from
// DRAM too: (8, 1280, 16, 16) float32, 42 MB of x, dy, g and dx, SiLU backward 1.72 -> 1.16 ms
// with it (2 threads; the exp costs more than the extra write and read of g).
constexpr int64_t kMaxGradCacheBytes = int64_t(64) << 20;

// The calling thread's buffer of at least `bytes` (<= kMaxGradCacheBytes).
inline void* grad_cache_buffer(int64_t bytes) {
  thread_local std::unique_ptr<std::byte[]> buffer;
  thread_local int64_t capacity = 0;
  if (bytes > capacity) {
    buffer.reset();  // free the old one first: never both at once
    buffer.reset(new std::byte[bytes]);
    capacity = bytes;
  }
  return buffer.get();
}

// The cache for a backward call over `numel` elements (acc_size bytes each), or nullptr where
// the backward recomputes g. Valid until this thread's next backward call.
inline void* grad_cache_for(ActKind act, bool from_output, int64_t numel, int64_t acc_size) {
  bool costly = false;
  dispatch_activation(act, [&](auto activation) { costly = kGradCallsLibm<decltype(activation)>; });
  if (!costly || from_output || numel * acc_size > kMaxGradCacheBytes) return nullptr;
  return grad_cache_buffer(numel * acc_size);
}

template <bool kPerColumn, bool kResidual, typename acc_t, typename In>
inline void elemt_row_from_grad(const acc_t* g, const In* saved, const acc_t* mean_at, const acc_t* coef_g_at,
                                const acc_t* coef_xc_at, const acc_t* coef_const_at, acc_t* dx, acc_t* dres,
                                int64_t len) {
  const Coef<kPerColumn, acc_t> mean(mean_at), coef_g(coef_g_at), coef_xc(coef_xc_at), coef_const(coef_const_at);
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    dx[j] = g[j] * coef_g[j] + (load_acc<acc_t>(saved[j]) - mean[j]) * coef_xc[j] + coef_const[j];
    if constexpr (kResidual) dres[j] = g[j];
  }
}

// elemt_kernel's result from the cached g (x read back for xc = x - mean, in place where
// kReadsInPlace; grad_out not read).
template <bool kResidual, typename scalar_t, typename acc_t>
void elemt_from_grad_kernel(const ElemtArgs<scalar_t, acc_t>& a, const acc_t* grad_cache) {
  const int64_t C = a.shape.channels;
  for_each_chunk(a.shape, [&](const Chunk& k) {
    acc_t saved_buf[kChunk], dx_buf[kChunk], dres_buf[kChunk];
    const int64_t n = k.numel();
    const acc_t* g = grad_cache + k.offset;
    const auto* saved = read_view<acc_t>(a.saved + k.offset, saved_buf, n);
    acc_t* dx = acc_target(a.grad_input + k.offset, dx_buf);
    acc_t* dres = kResidual ? acc_target(a.grad_residual + k.offset, dres_buf) : nullptr;
    for (int64_t r = 0; r < k.rows; ++r) {
      const int64_t o = r * k.cols;
      acc_t* r_dres = kResidual ? dres + o : nullptr;
      if (k.planar) {
        const int64_t c = (k.first + r) % C;
        elemt_row_from_grad<false, kResidual>(g + o, saved + o, a.mean + c, a.coef_g + c, a.coef_xc + c,
                                              a.coef_const + c, dx + o, r_dres, k.cols);
      } else {
        const int64_t c = k.first;
        elemt_row_from_grad<true, kResidual>(g + o, saved + o, a.mean + c, a.coef_g + c, a.coef_xc + c,
                                             a.coef_const + c, dx + o, r_dres, k.cols);
      }
    }
    flush(dx, a.grad_input + k.offset, n);
    if constexpr (kResidual) flush(dres, a.grad_residual + k.offset, n);
  });
}

}  // namespace cpu
}  // namespace pyfusedbn
