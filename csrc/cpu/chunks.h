// How the CPU kernels walk a tensor: in contiguous chunks small enough for L1, viewed in the
// accumulate type. 16-bit input is converted chunk by chunk into a stack buffer (to_acc), the
// compute loops then run on acc_t pointers only (the same vectorised code as float32 input) and
// 16-bit results are converted back in bulk (from_acc); input already in acc_t is used in place,
// and so is bfloat16 input (read_view: its load is a shift). Converting float16 element by element
// inside the compute loops instead costs 3-8x, and rounding bfloat16 results there 2-4x; on AVX2
// machines the elementwise passes convert float16 in registers, a block of 8 at a time
// (kConvertsInRegisters, for_each_register_block).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <type_traits>

#include "../common/kernel_args.h"
#include "convert.h"

namespace pyfusedbn {
namespace cpu {

// Elements per chunk of the elementwise passes (a few acc_t buffers of this size stay in L1).
constexpr int64_t kChunk = 1024;
// Elements per parallel task in the elementwise passes.
constexpr int64_t kGrain = 32768;

// The n values at src as acc_t: src itself when it already holds acc_t, else converted into buf.
template <typename acc_t, typename scalar_t>
inline const acc_t* acc_view(const scalar_t* src, acc_t* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    to_acc(src, buf, n);
    return buf;
  }
}

// Whether the compute loops read scalar_t where it lies (load_acc per element) rather than a
// bulk-converted acc_t copy. For bfloat16 the per-element load is a shift, cheaper than a round
// trip through a buffer; float16's per-element conversion is not, so it is converted.
template <typename scalar_t, typename acc_t>
constexpr bool kReadsInPlace = std::is_same_v<scalar_t, acc_t> || std::is_same_v<scalar_t, c10::BFloat16>;

// The n values at src as the compute loops read them (through load_acc): src itself where
// kReadsInPlace, else converted into buf.
template <typename acc_t, typename scalar_t>
inline auto read_view(const scalar_t* src, acc_t* buf, int64_t n) {
  if constexpr (kReadsInPlace<scalar_t, acc_t>) {
    return src;
  } else {
    to_acc(src, buf, n);
    return static_cast<const acc_t*>(buf);
  }
}

// Where to compute n results destined for dst: dst itself when it holds acc_t, else buf, which
// flush() then rounds into dst.
template <typename acc_t, typename scalar_t>
inline acc_t* acc_target(scalar_t* dst, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) return dst;
  else return buf;
}

template <typename scalar_t, typename acc_t>
inline void flush(const acc_t* buf, scalar_t* dst, int64_t n) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>) from_acc(buf, dst, n);
}

// A contiguous chunk of rows x cols elements at `offset`. Planar (NCHW): each row is (part of) one
// (n, c) plane, row r's channel is (first + r) % C, one coefficient per row. channels_last: each
// row is (part of) one row of C channels, column j's channel is first + j.
struct Chunk {
  int64_t offset;
  int64_t rows;
  int64_t cols;
  int64_t first;
  bool planar;

  int64_t numel() const { return rows * cols; }
};

// A tensor over kSweepBytes is streamed from memory by each pass; a smaller one stays in cache
// (L2 + L3) between passes.
constexpr int64_t kSweepBytes = int64_t(4) << 20;

inline bool streamed(const BnShape& shape, int64_t element_bytes) { return shape.numel() * element_bytes > kSweepBytes; }

// Elements per chunk or tile of converted (float16) input on a streamed tensor: converting kChunk
// elements of each stream before computing on them cost 1.3-2x there, in every elementwise pass
// and layout (1 thread, batch 8, float16 8x256x56x56,
// `python tools/ab_cpu_passes.py`: channels_last apply 2.5 -> 1.6 ms, backward elementwise
// 4.9 -> 2.8-3.6; NCHW apply 2.0 -> 1.1-1.3, backward elementwise 2.6 -> 1.9-2.1). In cache,
// kChunk stays the faster (NCHW 8x1024x14x14 apply 0.21 -> 0.28 at 256).
constexpr int64_t kStreamChunk = 256;

// Elements per chunk of scalar_t input converted to acc_t (see kStreamChunk).
template <typename scalar_t, typename acc_t>
inline int64_t chunk_elements(const BnShape& shape) {
  const bool buffered = !kReadsInPlace<scalar_t, acc_t> && !kConvertsInRegisters<scalar_t, acc_t>;
  return buffered && streamed(shape, sizeof(scalar_t)) ? kStreamChunk : kChunk;
}

// Calls body(chunk) over every element once, split for threads, in chunks of at most kChunk
// elements: small planes (7x7, 14x14) and narrow channels_last rows grouped, several per chunk, so
// the bulk conversions and loop set-up are paid per chunk rather than per plane or row; longer
// ones cut into pieces of `chunk` (<= kChunk) elements.
template <typename Body>
inline void for_each_chunk(const BnShape& shape, Body body, int64_t chunk = kChunk) {
  const int64_t C = shape.channels, S = shape.spatial;
  const int64_t rows = shape.channels_last ? shape.reduce_size() : shape.batch * C;
  const int64_t width = shape.channels_last ? C : S;
  const bool planar = !shape.channels_last;
  if (width <= kChunk) {
    const int64_t rows_per_chunk = kChunk / width;
    const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
    const int64_t grain = std::max<int64_t>(1, kGrain / (rows_per_chunk * width));
    at::parallel_for(0, chunks, grain, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t r0 = k * rows_per_chunk, n = std::min(rows_per_chunk, rows - r0);
        body(Chunk{r0 * width, n, width, planar ? r0 % C : 0, planar});
      }
    });
  } else {
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / width), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j0 = 0; j0 < width; j0 += chunk)
          body(Chunk{r * width + j0, 1, std::min(chunk, width - j0), planar ? r % C : j0, planar});
    });
  }
}

// channels_last tiles for the elementwise passes. Their loops are bound by loads (the data
// streams plus two to six per-channel coefficients per element), so on a tensor that stays in
// cache they sweep kTileRows rows at once and load each column's coefficients once per sweep:
// then a tile is up to kChunk elements, `rows` (a multiple of kTileRows) x `cols` (<= kChunk /
// kTileRows) columns. On a larger tensor, streamed from memory, interleaving rows costs more
// than the loads it saves, and tiles are the former chunks: whole rows (or kChunk-column pieces
// of one) swept one row at a time. A tile's rows lie C apart in the tensor and `cols` apart in
// a conversion buffer. (1 thread, batch 8, `python tools/ab_cpu_passes.py`: the backward
// elementwise pass in float16 at 1024x14x14 0.73 -> 0.44 ms and in bfloat16 0.53 -> 0.40 ms;
// swept at 256x56x56, 12.8 MB a tensor, bfloat16 took 2.26 -> 3.69 ms, hence kSweepBytes.)
constexpr int64_t kTileRows = 4;

struct Tile {
  int64_t row;   // first row (n, s)
  int64_t rows;
  int64_t col;   // first channel
  int64_t cols;
  int64_t sweep;  // rows swept at once: kTileRows or 1
};

struct RowTiles {
  int64_t sweep, cols, rows, row_tiles, col_tiles;

  // Results stored in place rows a multiple of 4 KiB apart would alias the loads of the next
  // rows (same low 12 address bits) and stall them: float32 at 2048x7x7 went 0.32 -> 0.41 ms.
  static bool sweeps(const BnShape& shape, int64_t element_bytes, bool writes_in_place) {
    const bool aliased = writes_in_place && shape.channels * element_bytes % 4096 == 0;
    return !aliased && !streamed(shape, element_bytes);
  }

  // chunk: elements per tile when not swept (chunk_elements).
  RowTiles(const BnShape& shape, int64_t element_bytes, bool writes_in_place, int64_t chunk = kChunk)
      : sweep(sweeps(shape, element_bytes, writes_in_place) ? kTileRows : 1),
        cols(std::min(shape.channels, sweep == 1 ? chunk : kChunk / sweep)),
        rows(std::max<int64_t>(sweep, (sweep == 1 ? chunk : kChunk) / cols / sweep * sweep)),
        row_tiles((shape.reduce_size() + rows - 1) / rows),
        col_tiles((shape.channels + cols - 1) / cols) {}
};

// Calls body(tile) over every element of a channels_last tensor of scalar_t once, split for
// threads. acc_t: the results' type (scalar_t results are stored in place).
template <typename scalar_t, typename acc_t, typename Body>
inline void for_each_tile(const BnShape& shape, Body body) {
  const bool writes_in_place = std::is_same_v<scalar_t, acc_t> || kConvertsInRegisters<scalar_t, acc_t>;
  const RowTiles t(shape, sizeof(scalar_t), writes_in_place, chunk_elements<scalar_t, acc_t>(shape));
  const int64_t R = shape.reduce_size(), C = shape.channels;
  at::parallel_for(0, t.row_tiles * t.col_tiles, std::max<int64_t>(1, kGrain / kChunk), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b / t.col_tiles * t.rows, c0 = b % t.col_tiles * t.cols;
      body(Tile{r0, std::min(t.rows, R - r0), c0, std::min(t.cols, C - c0), t.sweep});
    }
  });
}

// Calls rows(kRows) for a tile's rows in order, kRows a std::integral_constant: kTileRows rows at
// once while the tile is swept (RowTiles) and as many are left, then one at a time.
template <typename Body>
inline void for_each_sweep(const Tile& t, Body rows) {
  int64_t r = 0;
  for (; t.sweep == kTileRows && r + kTileRows <= t.rows; r += kTileRows)
    rows(std::integral_constant<int64_t, kTileRows>());
  for (; r < t.rows; ++r) rows(std::integral_constant<int64_t, 1>());
}

// One stream of a tile as the compute loops see it: `p` at the tile's first element, rows
// `stride` apart.
template <typename T>
struct Rows {
  T* p;
  int64_t stride;
};

// Runs compute(in, out, j, n) on column j's block of kRows rows, for every block of `len` columns
// (for_each_block): `in` holds each input stream's values there as acc_t in kRegisterBlock-wide
// Rows (kConvertsInRegisters: kept in registers once inlined), `out` receives the results, then
// rounded into the output streams. Only the first kInUsed and kOutUsed streams are read and
// written: the others are absent (a residual the layer does not have). A run-time check there
// instead kept the blocks on the stack.
// kPadTail: the last (len % kRegisterBlock) columns are computed as a whole block, zero-filled
// past the row's end, and only the row's results are stored; for a compute that reads nothing
// per column (a planar row's coefficients are one value), so the lanes past the end read no
// memory. It spares each row a second, run-time-length copy of the loop (float16 8x2048x49, one
// tail value per 49-value row, backward elementwise 0.34 ms with it, 0.32 padded, 0.21 converted
// in bulk: planes that short keep the bulk conversions, kPlanarRegisterCols; 2 threads, AVX2 Zen 3).
template <int64_t kRows, size_t kInUsed, size_t kOutUsed, bool kPadTail, typename acc_t, typename scalar_t,
          size_t kIn, size_t kOut, typename Compute>
inline void for_each_register_block(const std::array<Rows<const scalar_t>, kIn>& in,
                                    const std::array<Rows<scalar_t>, kOut>& out, int64_t len, Compute compute) {
  for_each_block(len, [&](int64_t j, auto n) {
    acc_t in_values[kIn][kRows * kRegisterBlock], out_values[kOut][kRows * kRegisterBlock];
    std::array<Rows<const acc_t>, kIn> in_blocks;
    std::array<Rows<acc_t>, kOut> out_blocks;
    for (size_t s = 0; s < kIn; ++s) in_blocks[s] = {in_values[s], kRegisterBlock};
    for (size_t s = 0; s < kOut; ++s) out_blocks[s] = {out_values[s], kRegisterBlock};
    for (size_t s = 0; s < kInUsed; ++s)
      for (int64_t r = 0; r < kRows; ++r) {
        acc_t* values = in_values[s] + r * kRegisterBlock;
        load_block(in[s].p + r * in[s].stride + j, values, n);
        if constexpr (kPadTail && !std::is_same_v<decltype(n), FullRegisterBlock>)
          for (int64_t i = n; i < kRegisterBlock; ++i) values[i] = acc_t(0);
      }
    if constexpr (kPadTail) compute(in_blocks, out_blocks, j, FullRegisterBlock());
    else compute(in_blocks, out_blocks, j, n);
    for (size_t s = 0; s < kOutUsed; ++s)
      for (int64_t r = 0; r < kRows; ++r)
        store_block(out_values[s] + r * kRegisterBlock, out[s].p + r * out[s].stride + j, n);
  });
}

// A tile of src (C channels) as the compute loops read it: in place where kReadsInPlace, else
// converted row by row into buf.
template <typename acc_t, typename scalar_t>
inline auto read_tile(const scalar_t* src, int64_t C, const Tile& t, acc_t* buf) {
  const scalar_t* first = src + t.row * C + t.col;
  if constexpr (kReadsInPlace<scalar_t, acc_t>) {
    return Rows<const scalar_t>{first, C};
  } else {
    for (int64_t r = 0; r < t.rows; ++r) to_acc(first + r * C, buf + r * t.cols, t.cols);
    return Rows<const acc_t>{buf, t.cols};
  }
}

// Where to compute a tile's results for dst: dst itself when it holds acc_t, else buf, which
// flush_tile then rounds into dst.
template <typename acc_t, typename scalar_t>
inline Rows<acc_t> tile_target(scalar_t* dst, int64_t C, const Tile& t, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) return {dst + t.row * C + t.col, C};
  else return {buf, t.cols};
}

template <typename scalar_t, typename acc_t>
inline void flush_tile(const acc_t* buf, scalar_t* dst, int64_t C, const Tile& t) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>)
    for (int64_t r = 0; r < t.rows; ++r) from_acc(buf + r * t.cols, dst + (t.row + r) * C + t.col, t.cols);
}

}  // namespace cpu
}  // namespace pyfusedbn
