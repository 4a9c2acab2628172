// Launch geometry of the CUDA kernels and the index math of their loops, in one header with no
// torch and no CUDA header: nvcc compiles it for host and device (the kernels call these
// functions with blockIdx/threadIdx), and tests/test_launch_geometry.py compiles it with a plain
// C++ compiler to run the same functions for every (block, thread) of a launch and prove that
// each element is visited once and each partial slot written once and merged once.
//
// A kernel's work is a set of "columns" (planar: a channel; channels_last: kVec adjacent
// channels), each a sequence of "items" (one kVec-vector per item):
//   planar (NCHW): items are the channel's N * (S / kVec) plane vectors, sample-major. A block
//     of 256 threads works on one channel; consecutive threads take consecutive items, so a
//     warp reads one contiguous run even when a plane is 49 values, and no lane idles.
//   channels_last: items are rows (N * S of them); a block is (bx, by) = (up to 32 columns of
//     one row, rows), so a warp reads 32 x 16 contiguous bytes (several rows when C is small).
// Grid: (column blocks, parts); each column's items are split over `parts` blocks, which the
// reductions turn into `parts` partial slots per channel, merged by a finalize kernel.
#pragma once

#include <stdint.h>

#include "../common/kernel_args.h"  // BnShape (and FBN_HOST_DEVICE)

#if defined(__CUDA_ARCH__)  // nvcc's device pass (host compilers warn on the pragma)
#define FBN_UNROLL _Pragma("unroll")
#else
#define FBN_UNROLL
#endif

namespace pyfusedbn {
namespace cuda {

constexpr int kBlockThreads = 256;
constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y

FBN_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FBN_HOST_DEVICE int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

inline int pow2_at_least(int64_t n, int cap) {
  int p = 1;
  while (p < n && p < cap) p *= 2;
  return p;
}

// Values per access: 16 bytes when the contiguous dimension (C in channels_last, the plane
// otherwise) is a multiple of it and every tensor is 16-byte aligned, else 8 bytes under the same
// conditions (a 14x14 bfloat16 plane: 196 values), else one value. `address_bits` is the OR of
// the tensors' addresses (a view with a storage offset may be misaligned).
inline int pick_vector_width(const BnShape& shape, int elem_bytes, uint64_t address_bits) {
  const int64_t contiguous = shape.channels_last ? shape.channels : shape.spatial;
  for (int bytes = 16; bytes >= 8 && bytes / elem_bytes >= 2; bytes /= 2) {
    const int vec = bytes / elem_bytes;
    if (contiguous % vec == 0 && address_bits % bytes == 0) return vec;
  }
  return 1;
}

// Items each thread loads before using any of them: independent loads in flight hide memory
// latency (a grid-stride loop otherwise keeps one access per thread in flight, which a 49-value
// plane read one float at a time cannot make up for). About 64 bytes per thread, over the
// tensors an item reads (`streams`), at most 8 items.
FBN_HOST_DEVICE constexpr int unroll_for(int vector_bytes, int streams) {
  return 64 / (vector_bytes * streams) >= 8   ? 8
         : 64 / (vector_bytes * streams) >= 4 ? 4
         : 64 / (vector_bytes * streams) >= 2 ? 2
                                              : 1;
}

// Tensors each kernel reads per item, without the residual (which adds one).
constexpr int kStatsStreams = 1;   // x
constexpr int kApplyStreams = 1;   // x
constexpr int kReduceStreams = 2;  // grad_out, saved
constexpr int kElemtStreams = 2;   // grad_out, saved

struct Geometry {
  int64_t grid_x, grid_y;  // (column blocks, parts)
  int block_x, block_y;
  FBN_HOST_DEVICE int64_t parts() const { return grid_y; }
};

FBN_HOST_DEVICE int64_t columns(const BnShape& shape, int vec) {
  return shape.channels_last ? shape.channels / vec : shape.channels;
}
FBN_HOST_DEVICE int64_t items_per_column(const BnShape& shape, int vec) {
  return shape.channels_last ? shape.reduce_size() : shape.batch * (shape.spatial / vec);
}

// target_blocks: how many blocks the launch would like (about the device's resident blocks
// times the waves wanted); the parts are clamped to the items and to gridDim.y's limit, and the
// loops stride over whatever is left.
inline Geometry launch_geometry(const BnShape& shape, int vec, int64_t target_blocks) {
  const int64_t cols = columns(shape, vec), items = items_per_column(shape, vec);
  const int bx = shape.channels_last ? pow2_at_least(cols, 32) : kBlockThreads;
  const int by = kBlockThreads / bx;
  const int64_t column_blocks = shape.channels_last ? ceil_div(cols, bx) : cols;
  const int64_t items_per_step = shape.channels_last ? by : kBlockThreads;  // one block, one pass
  const int64_t max_parts = clamp64(ceil_div(items, items_per_step), 1, kMaxGridY);
  const int64_t parts = clamp64(ceil_div(target_blocks, column_blocks), 1, max_parts);
  return {column_blocks, parts, bx, by};
}

// About one full wave of 256-thread blocks (at most 8 per SM: 2048 threads); the launchers
// lower it to what the kernel's registers allow. Elementwise passes want a few waves. The
// occupancy answer is capped at kMaxBlocksPerSm: the reductions' workspace is sized for it
// (reduction_parts_bound), and an SM with more room (16 blocks) would overrun its partial slots.
constexpr int kMaxBlocksPerSm = 8;
inline int64_t reduction_target_blocks(int num_sms, int blocks_per_sm = kMaxBlocksPerSm) {
  const int per_sm = blocks_per_sm < 1 ? 1 : (blocks_per_sm > kMaxBlocksPerSm ? kMaxBlocksPerSm : blocks_per_sm);
  return static_cast<int64_t>(per_sm) * (num_sms < 1 ? 1 : num_sms);
}
inline int64_t elementwise_target_blocks(int num_sms, int blocks_per_sm = 8) {
  return 4 * reduction_target_blocks(num_sms, blocks_per_sm);
}

// The most partial slots per channel any reduction launch on this shape may use (every vector
// width, the largest target): what the workspace is sized for.
inline int64_t reduction_parts_bound(const BnShape& shape, int num_sms) {
  int64_t parts = 1;
  for (int vec = 1; vec <= 16; vec *= 2) {
    if ((shape.channels_last ? shape.channels : shape.spatial) % vec != 0) continue;
    const int64_t p = launch_geometry(shape, vec, reduction_target_blocks(num_sms)).parts();
    parts = p > parts ? p : parts;
  }
  return parts;
}

// Where one thread is: blockIdx/threadIdx and the launch's dims (device_utils.cuh fills it from
// CUDA's builtins; the geometry test from its loops).
struct ThreadIndex {
  int64_t block_x, block_y;
  int thread_x, thread_y;
  int64_t grid_y;
  int block_dim_x, block_dim_y;
  FBN_HOST_DEVICE int flat() const { return thread_y * block_dim_x + thread_x; }
};

// One thread's share: its column and the items first, first + stride, ... below end.
struct ThreadWalk {
  int64_t column;
  bool active;  // column exists (the last column block of channels_last may be partial)
  int64_t first, stride, end;
};

FBN_HOST_DEVICE ThreadWalk thread_walk(const BnShape& shape, int vec, const ThreadIndex& t) {
  ThreadWalk w;
  if (shape.channels_last) {
    w.column = t.block_x * t.block_dim_x + t.thread_x;
    w.first = t.block_y * t.block_dim_y + t.thread_y;
    w.stride = t.grid_y * t.block_dim_y;
  } else {
    w.column = t.block_x;
    w.first = t.block_y * (t.block_dim_x * t.block_dim_y) + t.flat();
    w.stride = t.grid_y * (t.block_dim_x * t.block_dim_y);
  }
  w.active = w.column < columns(shape, vec);
  w.end = items_per_column(shape, vec);
  return w;
}

// The channel of lane k (0 <= k < kVec) of a thread's accesses.
FBN_HOST_DEVICE int64_t lane_channel(const BnShape& shape, const ThreadWalk& w, int vec, int k) {
  return shape.channels_last ? w.column * vec + k : w.column;
}

// Calls visit(offsets, count) with the element offsets of the thread's next `count` items
// (count <= kUnroll; the first element of each kVec-vector), in order, until its items run out.
// Planar offsets walk (sample, plane vector) with a carry instead of dividing per item.
template <int kVec, int kUnroll, typename Visit>
FBN_HOST_DEVICE void walk_items(const BnShape& shape, const ThreadWalk& w, Visit&& visit) {
  if (!w.active) return;
  const int64_t C = shape.channels;
  int64_t offsets[kUnroll];
  if (shape.channels_last) {
    const int64_t step = w.stride * C;
    int64_t offset = w.first * C + w.column * kVec;
    for (int64_t item = w.first; item < w.end;) {
      int count = 0;
      FBN_UNROLL
      for (int u = 0; u < kUnroll; ++u) {
        if (item < w.end) {
          offsets[u] = offset;
          count = u + 1;
          item += w.stride;
          offset += step;
        }
      }
      visit(offsets, count);
    }
  } else {
    const int64_t S = shape.spatial, vectors = S / kVec;
    const int64_t stride_n = w.stride / vectors, stride_v = w.stride % vectors;
    int64_t n = w.first / vectors, v = w.first % vectors;
    for (int64_t item = w.first; item < w.end;) {
      int count = 0;
      FBN_UNROLL
      for (int u = 0; u < kUnroll; ++u) {
        if (item < w.end) {
          offsets[u] = (n * C + w.column) * S + v * kVec;
          count = u + 1;
          item += w.stride;
          n += stride_n;
          v += stride_v;
          if (v >= vectors) {
            v -= vectors;
            ++n;
          }
        }
      }
      visit(offsets, count);
    }
  }
}

// Reductions: the block merges the values of threads whose flat index is equal modulo
// merge_width (channels_last: one column, all rows; planar: the whole block), and the threads
// with flat index < merge_width hold the results; each writes its lanes' partial slots.
FBN_HOST_DEVICE int merge_width(const BnShape& shape, const ThreadIndex& t) {
  return shape.channels_last ? t.block_dim_x : 1;
}
FBN_HOST_DEVICE bool writes_partials(const BnShape& shape, const ThreadIndex& t, const ThreadWalk& w) {
  return t.flat() < merge_width(shape, t) && w.active;
}
// Partial slots a writing thread fills: one per lane in channels_last (kVec channels), one in
// planar (its lanes are one channel: merged first).
FBN_HOST_DEVICE int partial_lanes(const BnShape& shape, int vec) { return shape.channels_last ? vec : 1; }
// Slot of (part, channel) in each workspace array: parts x C, C fastest (the finalize reads
// consecutive channels).
FBN_HOST_DEVICE int64_t partial_slot(int64_t part, int64_t channel, int64_t C) { return part * C + channel; }

// Finalize: a 2-D block (channels, parts); thread (x, y) merges parts y, y + by, ... of its
// channel, then the block merges over y.
inline int finalize_block_x(int64_t C) { return pow2_at_least(C, 32); }
FBN_HOST_DEVICE int64_t finalize_channel(int64_t block_x, int block_dim_x, int thread_x) {
  return block_x * block_dim_x + thread_x;
}
template <typename Visit>
FBN_HOST_DEVICE void for_each_part(int64_t parts, int thread_y, int block_dim_y, Visit&& visit) {
  for (int64_t p = thread_y; p < parts; p += block_dim_y) visit(p);
}

}  // namespace cuda
}  // namespace pyfusedbn
