// The CPU reductions: batch statistics (mean, biased variance) and the backward reduction
// (sum g, sum g * xc), per channel, over blocks of acc_t values.
//
// Planar (NCHW) parallelises over channels: each channel's planes are cut into blocks (small
// planes gathered, several per block, into one contiguous buffer) and reduced with lane sums.
// channels_last parallelises over blocks of rows, vectorises along C and merges per-thread
// per-channel partials. Both are deterministic for a fixed thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common/kernel_args.h"
#include "../common/welford.h"
#include "chunks.h"
#include "elementwise_kernels.h"  // grad_and_centred
#include "lane_sum.h"

namespace pyfusedbn {
namespace cpu {

// Elements per reduction block: the statistics read each block twice (shifted mean, then M2),
// from L1; large enough to amortise the per-block merge.
constexpr int64_t kBlock = 2048;

// One planar reduction block of a channel: `count` runs of `len` values, run k at offset + k * stride.
struct Segments {
  int64_t offset;
  int64_t len;
  int64_t count;
  int64_t stride;

  int64_t numel() const { return len * count; }
};

// Calls block(segments) over channel c's values: slices of one plane, or for planes smaller than
// half a block, several whole planes (n, c), (n + 1, c), ... together.
template <typename Block>
inline void for_each_channel_block(const BnShape& shape, int64_t c, Block block) {
  const int64_t C = shape.channels, S = shape.spatial, N = shape.batch;
  if (S >= kBlock / 2) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t s0 = 0; s0 < S; s0 += kBlock) block(Segments{(n * C + c) * S + s0, std::min(kBlock, S - s0), 1, 0});
  } else {
    const int64_t planes = kBlock / S;
    for (int64_t n0 = 0; n0 < N; n0 += planes) block(Segments{(n0 * C + c) * S, S, std::min(planes, N - n0), C * S});
  }
}

// A block's values gathered (and converted) into buf as one contiguous acc_t array.
template <typename acc_t, typename scalar_t>
inline const acc_t* gather(const scalar_t* base, const Segments& seg, acc_t* buf) {
  for (int64_t k = 0; k < seg.count; ++k) to_acc(base + seg.offset + k * seg.stride, buf + k * seg.len, seg.len);
  return buf;
}

// Calls f(pointers...) with a block of each stream: in place when the block is one run and
// scalar_t is read in place, else gathered into the buffers. Two variants, not one per stream.
template <typename acc_t, typename scalar_t, typename F, typename... Buffers>
inline auto with_planar_block(const Segments& seg, F f, std::pair<const scalar_t*, Buffers>... streams) {
  if constexpr (kReadsInPlace<scalar_t, acc_t>) {
    if (seg.count == 1) return f((streams.first ? streams.first + seg.offset : nullptr)...);
  }
  return f((streams.first ? gather(streams.first, seg, streams.second) : nullptr)...);
}

// Mean and M2 of one contiguous block, two passes over cached data. The first pass sums
// x - x[0] rather than x: with a large mean (1e4 over a spread of 1) float32 sums of raw values
// would lose the digits the variance is made of.
template <typename acc_t, typename T>
inline MeanM2<acc_t> block_mean_m2(const T* x, int64_t len) {
  const acc_t shift = load_acc<acc_t>(x[0]);
  const acc_t mean =
      shift + lane_sum<acc_t>(len, [&](int64_t i) { return load_acc<acc_t>(x[i]) - shift; }) / static_cast<acc_t>(len);
  const acc_t m2 = lane_sum<acc_t>(len, [&](int64_t i) {
    const acc_t d = load_acc<acc_t>(x[i]) - mean;
    return d * d;
  });
  return {mean, m2, len};
}

// A block's float32 partial widened for the merge.
template <typename acc_t>
inline MeanM2<double> widened(const MeanM2<acc_t>& block) {
  return {static_cast<double>(block.mean), static_cast<double>(block.m2), block.count};
}

// Blocks are reduced in acc_t and merged in double: merged in float32, M2 grows to ~count * var
// and each block's addition rounds at its ulp, which over 2^29 values per channel biased the
// variance by 4e-4 (tests/test_huge.py).
template <typename scalar_t, typename acc_t>
void stats_planar(const StatsArgs<scalar_t, acc_t>& a) {
  at::parallel_for(0, a.shape.channels, 1, [&](int64_t c0, int64_t c1) {
    acc_t buf[kBlock];
    for (int64_t c = c0; c < c1; ++c) {
      MeanM2<double> acc{0, 0, 0};
      for_each_channel_block(a.shape, c, [&](const Segments& seg) {
        acc = chan_merge(acc, widened(with_planar_block<acc_t>(seg, [&](const auto* x) { return block_mean_m2<acc_t>(x, seg.numel()); },
                                                               std::pair<const scalar_t*, acc_t*>{a.input, buf})));
      });
      a.mean[c] = static_cast<acc_t>(acc.mean);
      a.var[c] = static_cast<acc_t>(acc.m2 / static_cast<double>(acc.count));
    }
  });
}

// channels_last blocks: rows_per_block rows x cols_per_block columns, up to kRowBlock elements
// (L2-resident between the two statistics passes) but at least kMinRows rows: each block ends
// with a merge over all its columns, which costs as much as a pass over one row, so more rows
// amortise it. float16, converted into buffers, once used blocks of kBlock elements (4 rows of
// 512 channels, a merge per 4 rows); at kRowBlock its statistics and backward reduction passes
// take 0.47 and 0.67 ms instead of 0.57 and 0.78 (8x512x28x28, 2 threads,
// `python -m benchmarks.cpu_passes --dtypes float16 --shapes 512x28x28 --clock wall`).
// Converted blocks are at most kConvertedCols wide, more rows of fewer columns: the backward
// reduction gathers kTileRows of their rows at a time into L1 (float16, 1 thread, batch 8,
// `python tools/ab_cpu_passes.py`, with the row sweep: 1024x14x14 0.60 -> 0.34 ms, 2048x7x7
// 0.37 -> 0.17; the statistics 0.39 -> 0.38 and 0.21 -> 0.16).
constexpr int64_t kMinRows = 4;
constexpr int64_t kRowBlock = 16384;
constexpr int64_t kConvertedCols = 256;

struct RowBlocks {
  int64_t cols_per_block, rows_per_block, count;

  // Converted blocks of a streamed tensor (chunks.h) span whole rows up to kBlock channels, as
  // blocks read in place do: kConvertedCols-wide blocks of wider rows read memory in pieces. The
  // float16 backward reduction at 8x512x28x28 channels_last took 2.8-3.0 ms that way, 1.6 with
  // whole rows (1 thread, caches evicted before each call, `python tools/ab_cpu_passes.py --cold`).
  template <typename scalar_t, typename acc_t>
  static RowBlocks of(const BnShape& shape) {
    const bool converted = !kReadsInPlace<scalar_t, acc_t>;
    return RowBlocks(shape, converted && !streamed(shape, sizeof(scalar_t)) ? kConvertedCols : kBlock);
  }

  RowBlocks(const BnShape& shape, int64_t max_cols)
      : cols_per_block(std::min(shape.channels, max_cols)),
        rows_per_block(std::max<int64_t>(kMinRows, kRowBlock / cols_per_block)),
        count((shape.reduce_size() + rows_per_block - 1) / rows_per_block) {}

  int64_t numel() const { return rows_per_block * cols_per_block; }
};

// Rows [r0, r0 + n) x columns [c0, c0 + cols) of a channels_last tensor with C channels,
// gathered (and converted) into buf as one contiguous n x cols acc_t array.
template <typename acc_t, typename scalar_t>
inline const acc_t* gather_rows(const scalar_t* base, int64_t C, int64_t r0, int64_t n, int64_t c0, int64_t cols,
                                acc_t* buf) {
  for (int64_t r = 0; r < n; ++r) to_acc(base + (r0 + r) * C + c0, buf + r * cols, cols);
  return buf;
}

// A gather buffer for with_row_block, `rows` rows of a block's columns, left uninitialised; none
// where every block is whole rows of a type read in place. (Zeroed vectors of a whole block,
// three per task in the backward reduction, were written on every call however small the tensor.)
template <typename scalar_t, typename acc_t>
std::unique_ptr<acc_t[]> gather_buffer(const BnShape& shape, const RowBlocks& blocks, int64_t rows) {
  const bool in_place = kReadsInPlace<scalar_t, acc_t> && blocks.cols_per_block == shape.channels;
  return std::unique_ptr<acc_t[]>(new acc_t[in_place ? 0 : rows * blocks.cols_per_block]);
}

// As with_planar_block, for a channels_last block: in place when it spans whole rows.
template <typename acc_t, typename scalar_t, typename F, typename... Buffers>
inline auto with_row_block(int64_t C, int64_t r0, int64_t n, int64_t c0, int64_t cols, F f,
                           std::pair<const scalar_t*, Buffers>... streams) {
  if constexpr (kReadsInPlace<scalar_t, acc_t>) {
    if (cols == C) return f((streams.first ? streams.first + r0 * C : nullptr)...);
  }
  return f((streams.first ? gather_rows(streams.first, C, r0, n, c0, cols, streams.second) : nullptr)...);
}

template <typename scalar_t, typename acc_t>
void stats_channels_last(const StatsArgs<scalar_t, acc_t>& a) {
  const int64_t C = a.shape.channels, rows = a.shape.reduce_size();
  const auto blocks = RowBlocks::of<scalar_t, acc_t>(a.shape);
  const int threads = at::get_num_threads();
  // Per-thread partials, in double (see stats_planar); every channel of a thread has seen the
  // same rows, so one count each.
  std::vector<double> t_mean(threads * C, 0), t_m2(threads * C, 0);
  std::vector<int64_t> t_count(threads, 0);
  at::parallel_for(0, blocks.count, 1, [&](int64_t b0, int64_t b1) {
    const int tid = at::get_thread_num();
    const auto buf = gather_buffer<scalar_t, acc_t>(a.shape, blocks, blocks.rows_per_block);
    std::vector<acc_t> block_mean(blocks.cols_per_block), block_m2(blocks.cols_per_block);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * blocks.rows_per_block, n = std::min(rows - r0, blocks.rows_per_block);
      const acc_t len = static_cast<acc_t>(n);
      const int64_t total = t_count[tid] + n;
      const double block_share = static_cast<double>(n) / static_cast<double>(total);
      const double prev = static_cast<double>(t_count[tid]);
      for (int64_t c0 = 0; c0 < C; c0 += blocks.cols_per_block) {
        const int64_t cols = std::min(blocks.cols_per_block, C - c0);
        acc_t* sum = block_mean.data();
        acc_t* m2_sum = block_m2.data();
        with_row_block<acc_t>(C, r0, n, c0, cols, [&](const auto* x) {
          // Shifted sums, as in block_mean_m2: the block's first row is the shift.
          std::fill(sum, sum + cols, acc_t(0));
          std::fill(m2_sum, m2_sum + cols, acc_t(0));
          for (int64_t r = 0; r < n; ++r) {
#pragma omp simd
            for (int64_t j = 0; j < cols; ++j) sum[j] += load_acc<acc_t>(x[r * cols + j]) - load_acc<acc_t>(x[j]);
          }
#pragma omp simd
          for (int64_t j = 0; j < cols; ++j) sum[j] = load_acc<acc_t>(x[j]) + sum[j] / len;  // the block's mean
          for (int64_t r = 0; r < n; ++r) {
#pragma omp simd
            for (int64_t j = 0; j < cols; ++j) {
              const acc_t d = load_acc<acc_t>(x[r * cols + j]) - sum[j];
              m2_sum[j] += d * d;
            }
          }
          return 0;
        }, std::pair<const scalar_t*, acc_t*>{a.input, buf.get()});
        // Chan merge of the block into this thread's partial, all channels at once.
        double* mean = &t_mean[tid * C + c0];
        double* m2 = &t_m2[tid * C + c0];
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) {
          const double delta = static_cast<double>(sum[j]) - mean[j];
          mean[j] += delta * block_share;
          m2[j] += static_cast<double>(m2_sum[j]) + delta * delta * prev * block_share;
        }
      }
      t_count[tid] = total;
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    MeanM2<double> acc{0, 0, 0};
    for (int t = 0; t < threads; ++t) acc = chan_merge(acc, MeanM2<double>{t_mean[t * C + c], t_m2[t * C + c], t_count[t]});
    a.mean[c] = static_cast<acc_t>(acc.mean);
    a.var[c] = static_cast<acc_t>(acc.m2 / static_cast<double>(acc.count));
  }
}

template <typename scalar_t, typename acc_t>
void stats_kernel(const StatsArgs<scalar_t, acc_t>& a) {
  if (a.shape.channels_last) stats_channels_last(a);
  else stats_planar(a);
}

// The shortest plane reduce_planar reduces in place rather than gathered (see there).
constexpr int64_t kMinPlaneRun = 128;

// sum(g) and sum(g * xc) per channel. Blocks sum in acc_t (vectorised), block totals
// accumulate in double so that long reductions in float32 keep their precision.
// kKeepGrad: g of every element is also written to grad_cache (laid out as the input), so that
// the elementwise pass need not recompute an expensive derivative (grad_cache.h).
template <typename Act, bool kResidual, bool kFromOutput, bool kKeepGrad, typename scalar_t, typename acc_t>
void reduce_planar(const ReduceArgs<scalar_t, acc_t>& a, acc_t* grad_cache) {
  at::parallel_for(0, a.shape.channels, 1, [&](int64_t c0, int64_t c1) {
    acc_t dy_buf[kBlock], saved_buf[kBlock], res_buf[kBlock], g_buf[kKeepGrad ? kBlock : 1];
    for (int64_t c = c0; c < c1; ++c) {
      const acc_t mean = a.mean[c], scale = a.scale[c], bias = a.bias[c], param = a.activation_param;
      double total_g = 0, total_g_xc = 0;
      auto reduce_block = [&](const Segments& seg) {
        // g goes straight to the cache when the block is one run of it, else via g_buf.
        acc_t* g_out = kKeepGrad && seg.count == 1 ? grad_cache + seg.offset : g_buf;
        const SumPair<acc_t> sums = with_planar_block<acc_t>(seg, [&](const auto* dy, const auto* saved, const auto* res) {
          return lane_sum_pair<acc_t>(seg.numel(), [&](int64_t i) {
            const auto t = grad_and_centred<Act, kResidual, kFromOutput>(
                load_acc<acc_t>(dy[i]), load_acc<acc_t>(saved[i]), kResidual ? load_acc<acc_t>(res[i]) : acc_t(0),
                mean, scale, bias, param);  // {xc, g}
            if constexpr (kKeepGrad) g_out[i] = t.z;
            return SumPair<acc_t>{t.z, t.z * t.xc};
          });
        }, std::pair<const scalar_t*, acc_t*>{a.grad_out, dy_buf}, std::pair<const scalar_t*, acc_t*>{a.saved, saved_buf},
           std::pair<const scalar_t*, acc_t*>{a.residual, res_buf});
        if constexpr (kKeepGrad)
          if (seg.count > 1)
            for (int64_t k = 0; k < seg.count; ++k)
              std::copy_n(g_buf + k * seg.len, seg.len, grad_cache + seg.offset + k * seg.stride);
        total_g += sums.first;
        total_g_xc += sums.second;
      };
      for_each_channel_block(a.shape, c, [&](const Segments& seg) {
        // Where g is kept and the input read in place, planes of kMinPlaneRun values or more are
        // reduced one at a time: gathering them copied dy, x and g once more each. The pass timer
        // of tools/ab_cpu_passes.py, float32 SiLU reduce, NCHW, 1 thread: 8x1280x16x16 3.6 ->
        // 2.6 ms built for AVX2, 2.7 -> 1.7 for AVX-512; 8x1024x14x14 1.7 -> 1.1 (AVX-512). Smaller
        // planes, and ReLU's cheap reduce, lose more to the per-plane lane sums than they save
        // (8x2048x7x7 SiLU 0.6 -> 0.85 ms; ReLU 8x1024x14x14 0.31 -> 0.45).
        if constexpr (kReadsInPlace<scalar_t, acc_t> && kKeepGrad) {
          if (seg.count > 1 && seg.len >= kMinPlaneRun) {
            for (int64_t k = 0; k < seg.count; ++k) reduce_block(Segments{seg.offset + k * seg.stride, seg.len, 1, 0});
            return;
          }
        }
        reduce_block(seg);
      });
      a.sum_g[c] = static_cast<acc_t>(total_g);
      a.sum_g_xc[c] = static_cast<acc_t>(total_g_xc);
    }
  });
}

// kRows channels_last rows of `cols` columns from channel c0 on (rows `cols` apart; g, where kept,
// rows g_stride apart) added into sum_g and sum_g_xc: each column's coefficients and sums loaded
// and stored once for all kRows rows (the per-row loop is bound by its loads).
template <int64_t kRows, typename Act, bool kResidual, bool kFromOutput, bool kKeepGrad, typename scalar_t,
          typename acc_t, typename In>
inline void reduce_tile_rows(const ReduceArgs<scalar_t, acc_t>& a, int64_t c0, int64_t cols, const In* dy,
                             const In* saved, const In* res, acc_t* g_out, int64_t g_stride, acc_t* sum_g,
                             acc_t* sum_g_xc) {
  const acc_t *mean = a.mean + c0, *scale = a.scale + c0, *bias = a.bias + c0;
  const acc_t param = a.activation_param;
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) {
    const acc_t m = mean[j], s = scale[j], b = bias[j];
    acc_t g = 0, g_xc = 0;
    for (int64_t r = 0; r < kRows; ++r) {
      const int64_t i = r * cols + j;
      const auto t = grad_and_centred<Act, kResidual, kFromOutput>(
          load_acc<acc_t>(dy[i]), load_acc<acc_t>(saved[i]), kResidual ? load_acc<acc_t>(res[i]) : acc_t(0), m, s,
          b, param);  // {xc, g}
      if constexpr (kKeepGrad) g_out[r * g_stride + j] = t.z;
      g += t.z;
      g_xc += t.z * t.xc;
    }
    sum_g[j] += g;
    sum_g_xc[j] += g_xc;
  }
}

// Rows of `cols` converted columns the backward reduction gathers at once where it walks them one
// row at a time (while g is kept; see kStreamChunk).
inline int64_t gathered_rows(const BnShape& shape, int64_t element_bytes, int64_t cols) {
  if (!streamed(shape, element_bytes)) return kTileRows;
  return std::clamp<int64_t>(kStreamChunk / cols, 1, kTileRows);
}

template <typename Act, bool kResidual, bool kFromOutput, bool kKeepGrad, typename scalar_t, typename acc_t>
void reduce_channels_last(const ReduceArgs<scalar_t, acc_t>& a, acc_t* grad_cache) {
  const int64_t C = a.shape.channels, rows = a.shape.reduce_size();
  const auto blocks = RowBlocks::of<scalar_t, acc_t>(a.shape);
  // Not while g is kept (SiLU's and the other libm activations' backward, and so GroupNorm's):
  // there, sweeping made the GroupNorm + SiLU backward slower (bfloat16 channels_last
  // 8x320x64x64 0.64x, `python tools/ab_group_norm_backward.py`). Converted (float16) input is
  // swept on streamed tensors too, kTileRows gathered rows at a time: one row at a time, its
  // per-column coefficients and sums were loaded and stored per row (float16 relu, 2 threads,
  // AVX2 Zen 3, `python tools/ab_cpu_passes.py --shapes 512x784 128x3136 256x3136`: 8x512x28x28
  // 0.63 -> 0.50 ms, 8x128x56x56 0.60 -> 0.41, 8x256x56x56 1.25 -> 0.85).
  const int64_t sweep =
      kKeepGrad ? 1 : kReadsInPlace<scalar_t, acc_t> ? RowTiles(a.shape, sizeof(scalar_t), false).sweep : kTileRows;

  const int threads = at::get_num_threads();
  std::vector<double> t_g(threads * C, 0), t_g_xc(threads * C, 0);
  at::parallel_for(0, blocks.count, 1, [&](int64_t b0, int64_t b1) {
    const int tid = at::get_thread_num();
    // Converted input is gathered at most kTileRows rows at a time (below).
    const int64_t buf_rows = kReadsInPlace<scalar_t, acc_t> ? blocks.rows_per_block : kTileRows;
    const auto dy_buf = gather_buffer<scalar_t, acc_t>(a.shape, blocks, buf_rows);
    const auto saved_buf = gather_buffer<scalar_t, acc_t>(a.shape, blocks, buf_rows);
    const auto res_buf = gather_buffer<scalar_t, acc_t>(a.shape, blocks, kResidual ? buf_rows : 0);
    std::vector<acc_t> g_sums(blocks.cols_per_block), g_xc_sums(blocks.cols_per_block);
    acc_t* sum_g = g_sums.data();
    acc_t* sum_g_xc = g_xc_sums.data();
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * blocks.rows_per_block, n = std::min(rows - r0, blocks.rows_per_block);
      for (int64_t c0 = 0; c0 < C; c0 += blocks.cols_per_block) {
        const int64_t cols = std::min(blocks.cols_per_block, C - c0);
        std::fill(sum_g, sum_g + cols, acc_t(0));
        std::fill(sum_g_xc, sum_g_xc + cols, acc_t(0));
        // Input read in place is read a block at a time, swept kTileRows rows at once where the
        // tensor stays in cache (see RowTiles); converted input is gathered and swept kTileRows
        // rows at a time (buffers that stay in L1). While g is kept, rows are walked one at a time
        // and converted ones gathered up to kStreamChunk elements at once on a streamed tensor.
        const int64_t group = kReadsInPlace<scalar_t, acc_t> ? n
                              : sweep == kTileRows              ? kTileRows
                                                                : gathered_rows(a.shape, sizeof(scalar_t), cols);
        for (int64_t q0 = 0; q0 < n; q0 += group) {
          const int64_t qn = std::min(group, n - q0);
          with_row_block<acc_t>(C, r0 + q0, qn, c0, cols, [&](const auto* dy, const auto* saved, const auto* res) {
            acc_t* g_out = kKeepGrad ? grad_cache + (r0 + q0) * C + c0 : nullptr;
            int64_t r = 0;
            for (; sweep == kTileRows && r + kTileRows <= qn; r += kTileRows)
              reduce_tile_rows<kTileRows, Act, kResidual, kFromOutput, kKeepGrad>(a, c0, cols, dy + r * cols, saved + r * cols,
                                                                       kResidual ? res + r * cols : nullptr,
                                                                       kKeepGrad ? g_out + r * C : nullptr, C, sum_g, sum_g_xc);
            for (; r < qn; ++r)
              reduce_tile_rows<1, Act, kResidual, kFromOutput, kKeepGrad>(a, c0, cols, dy + r * cols, saved + r * cols,
                                                               kResidual ? res + r * cols : nullptr,
                                                               kKeepGrad ? g_out + r * C : nullptr, C, sum_g, sum_g_xc);
            return 0;
          }, std::pair<const scalar_t*, acc_t*>{a.grad_out, dy_buf.get()},
             std::pair<const scalar_t*, acc_t*>{a.saved, saved_buf.get()},
             std::pair<const scalar_t*, acc_t*>{a.residual, res_buf.get()});
        }
        double* g_total = &t_g[tid * C + c0];
        double* g_xc_total = &t_g_xc[tid * C + c0];
        for (int64_t j = 0; j < cols; ++j) {
          g_total[j] += sum_g[j];
          g_xc_total[j] += sum_g_xc[j];
        }
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double g = 0, g_xc = 0;
    for (int t = 0; t < threads; ++t) {
      g += t_g[t * C + c];
      g_xc += t_g_xc[t * C + c];
    }
    a.sum_g[c] = static_cast<acc_t>(g);
    a.sum_g_xc[c] = static_cast<acc_t>(g_xc);
  }
}

template <typename Act, bool kResidual, bool kFromOutput, bool kKeepGrad = false, typename scalar_t, typename acc_t>
void reduce_kernel(const ReduceArgs<scalar_t, acc_t>& a, acc_t* grad_cache = nullptr) {
  if (a.shape.channels_last) reduce_channels_last<Act, kResidual, kFromOutput, kKeepGrad>(a, grad_cache);
  else reduce_planar<Act, kResidual, kFromOutput, kKeepGrad>(a, grad_cache);
}

}  // namespace cpu
}  // namespace pyfusedbn
