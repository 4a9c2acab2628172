// Runs the CUDA kernels' launch geometry and loop index math (csrc/cuda/launch_geometry.h, the
// functions the kernels themselves call) for every (block, thread) of each launch, on the host,
// and checks what the kernels rely on:
//   every element is visited exactly once, with per-channel coefficients of its own channel;
//   (reductions) every element reaches the partial slot of its channel through the block
//   merge, every partial slot (part, channel) is written exactly once, lies inside the
//   workspace, and is read exactly once by the finalize.
// Input lines: N C S channels_last elem_bytes num_sms blocks_per_sm misaligned.
// Output: one line per launch, "ok ..." or "FAIL ...". Built by tests/test_launch_geometry.py.
#include <cstdio>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/launch_geometry.h"

using namespace pyfusedbn;
using namespace pyfusedbn::cuda;

namespace {

struct Launch {
  const char* kernel;
  bool reduction;
  int streams;  // tensors each item reads
  int64_t target_blocks;
};

std::string describe(const BnShape& s, const Launch& l, int vec, int unroll, const Geometry& g) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s N=%lld C=%lld S=%lld %s vec=%d unroll=%d grid=(%lld,%lld) block=(%d,%d)",
                l.kernel, (long long)s.batch, (long long)s.channels, (long long)s.spatial,
                s.channels_last ? "channels_last" : "planar", vec, unroll, (long long)g.grid_x,
                (long long)g.grid_y, g.block_x, g.block_y);
  return buf;
}

int64_t channel_of(const BnShape& s, int64_t element) {
  return s.channels_last ? element % s.channels : (element / s.spatial) % s.channels;
}

ThreadIndex thread_at(const Geometry& g, int64_t bx, int64_t by, int flat) {
  return {bx, by, flat % g.block_x, flat / g.block_x, g.grid_y, g.block_x, g.block_y};
}

// Returns "" when the launch is right, else what went wrong (the first problem found).
template <int kVec, int kUnroll>
std::string simulate(const BnShape& s, const Launch& l, const Geometry& g, int num_sms) {
  const int64_t numel = s.numel(), C = s.channels;
  char err[512];
  if (g.grid_y < 1 || g.grid_y > kMaxGridY || g.grid_x < 1 || g.grid_x > 2147483647LL)
    return "grid out of CUDA's limits";
  if (g.block_x * g.block_y != kBlockThreads) return "block is not kBlockThreads threads";
  const int width = l.reduction ? merge_width(s, thread_at(g, 0, 0, 0)) : 1;
  if (width < 1 || width > 32 || (width & (width - 1)) != 0 || g.block_x % width != 0)
    return "merge width is not a power of two <= 32 dividing blockDim.x";
  const int64_t capacity = reduction_parts_bound(s, num_sms) * C;  // slots the workspace holds
  std::vector<unsigned char> visits(numel, 0);
  std::vector<int> slot_writes, slot_reads;
  if (l.reduction) {
    if (g.parts() * C > capacity) return "more partial slots than the workspace holds";
    slot_writes.assign(g.parts() * C, 0);
    slot_reads.assign(g.parts() * C, 0);
  }
  std::string problem;
  for (int64_t bx = 0; bx < g.grid_x && problem.empty(); ++bx) {
    for (int64_t by = 0; by < g.grid_y && problem.empty(); ++by) {
      for (int flat = 0; flat < kBlockThreads && problem.empty(); ++flat) {
        const ThreadIndex t = thread_at(g, bx, by, flat);
        const ThreadWalk w = thread_walk(s, kVec, t);
        // Where this thread's values end up after the block merge (reductions).
        const ThreadIndex writer_t = thread_at(g, bx, by, flat % width);
        const ThreadWalk writer = thread_walk(s, kVec, writer_t);
        walk_items<kVec, kUnroll>(s, w, [&](const int64_t (&offsets)[kUnroll], int count) {
          if (!problem.empty()) return;
          if (count < 1 || count > kUnroll) {
            problem = "a chunk of " + std::to_string(count) + " items";
            return;
          }
          for (int u = 0; u < count; ++u) {
            for (int k = 0; k < kVec; ++k) {
              const int64_t e = offsets[u] + k;
              if (e < 0 || e >= numel) {
                std::snprintf(err, sizeof err, "block (%lld,%lld) thread %d reads offset %lld outside %lld elements",
                              (long long)bx, (long long)by, flat, (long long)e, (long long)numel);
                problem = err;
                return;
              }
              if (lane_channel(s, w, kVec, k) != channel_of(s, e)) {
                std::snprintf(err, sizeof err, "element %lld (channel %lld) handled with channel %lld's coefficients",
                              (long long)e, (long long)channel_of(s, e), (long long)lane_channel(s, w, kVec, k));
                problem = err;
                return;
              }
              if (l.reduction && (!writes_partials(s, writer_t, writer) ||
                                  lane_channel(s, writer, kVec, k) != channel_of(s, e))) {
                std::snprintf(err, sizeof err, "element %lld (channel %lld) is merged into no partial of its channel",
                              (long long)e, (long long)channel_of(s, e));
                problem = err;
                return;
              }
              if (++visits[e] > 1) {
                std::snprintf(err, sizeof err, "element %lld visited twice", (long long)e);
                problem = err;
                return;
              }
            }
          }
        });
        if (l.reduction && writes_partials(s, t, w)) {
          for (int k = 0; k < partial_lanes(s, kVec); ++k) {
            const int64_t slot = partial_slot(by, lane_channel(s, w, kVec, k), C);
            if (slot < 0 || slot >= g.parts() * C) {
              problem = "partial slot " + std::to_string(slot) + " outside parts x C";
              break;
            }
            ++slot_writes[slot];
          }
        }
      }
    }
  }
  if (!problem.empty()) return problem;
  for (int64_t e = 0; e < numel; ++e) {
    if (visits[e] != 1) {
      std::snprintf(err, sizeof err, "element %lld (channel %lld) visited %d times", (long long)e,
                    (long long)channel_of(s, e), visits[e]);
      return err;
    }
  }
  if (!l.reduction) return "";
  const int fx = finalize_block_x(C), fy = kBlockThreads / fx;
  for (int64_t block = 0; block < ceil_div(C, fx); ++block) {
    for (int tx = 0; tx < fx; ++tx) {
      const int64_t c = finalize_channel(block, fx, tx);
      if (c >= C) continue;
      for (int ty = 0; ty < fy; ++ty)
        for_each_part(g.parts(), ty, fy, [&](int64_t p) { ++slot_reads[partial_slot(p, c, C)]; });
    }
  }
  for (int64_t slot = 0; slot < g.parts() * C; ++slot) {
    if (slot_writes[slot] != 1 || slot_reads[slot] != 1) {
      std::snprintf(err, sizeof err, "partial slot (part %lld, channel %lld) written %d times, merged %d times",
                    (long long)(slot / C), (long long)(slot % C), slot_writes[slot], slot_reads[slot]);
      return err;
    }
  }
  return "";
}

template <int kVec>
std::string simulate_unroll(int unroll, const BnShape& s, const Launch& l, const Geometry& g, int num_sms) {
  switch (unroll) {
    case 1: return simulate<kVec, 1>(s, l, g, num_sms);
    case 2: return simulate<kVec, 2>(s, l, g, num_sms);
    case 4: return simulate<kVec, 4>(s, l, g, num_sms);
    case 8: return simulate<kVec, 8>(s, l, g, num_sms);
  }
  return "unroll " + std::to_string(unroll) + " not simulated";
}

std::string simulate_any(int vec, int unroll, const BnShape& s, const Launch& l, const Geometry& g, int num_sms) {
  switch (vec) {
    case 1: return simulate_unroll<1>(unroll, s, l, g, num_sms);
    case 2: return simulate_unroll<2>(unroll, s, l, g, num_sms);
    case 4: return simulate_unroll<4>(unroll, s, l, g, num_sms);
    case 8: return simulate_unroll<8>(unroll, s, l, g, num_sms);
  }
  return "vector width " + std::to_string(vec) + " not simulated";
}

}  // namespace

int main() {
  long long N, C, S;
  int channels_last, elem_bytes, num_sms, blocks_per_sm, misaligned;
  int failures = 0;
  while (std::scanf("%lld %lld %lld %d %d %d %d %d", &N, &C, &S, &channels_last, &elem_bytes, &num_sms,
                    &blocks_per_sm, &misaligned) == 8) {
    const BnShape s{N, C, S, channels_last != 0};
    // A misaligned view starts one element past a 16-byte boundary.
    const int vec = pick_vector_width(s, elem_bytes, misaligned ? static_cast<uint64_t>(elem_bytes) : 0);
    const int64_t contiguous = s.channels_last ? C : S;
    const bool vec_ok = contiguous % vec == 0 && vec * elem_bytes <= 16 && (!misaligned || vec == 1);
    // The launches of batch_norm_stats.cu, batch_norm_backward_reduce.cu and batch_norm_elementwise.cu, with and without a residual.
    const int64_t reduce_target = reduction_target_blocks(num_sms, blocks_per_sm);
    const int64_t elementwise_target = elementwise_target_blocks(num_sms, blocks_per_sm);
    const Launch launches[] = {
        {"stats", true, kStatsStreams, reduce_target},
        {"backward_reduce", true, kReduceStreams, reduce_target},
        {"backward_reduce+residual", true, kReduceStreams + 1, reduce_target},
        {"apply", false, kApplyStreams, elementwise_target},
        {"apply+residual", false, kApplyStreams + 1, elementwise_target},
        {"backward_elemt", false, kElemtStreams, elementwise_target},
        {"backward_elemt+residual", false, kElemtStreams + 1, elementwise_target},
    };
    std::map<std::tuple<bool, int, int64_t>, std::string> done;  // launches that walk alike
    for (const Launch& l : launches) {
      const int unroll = unroll_for(vec * elem_bytes, l.streams);
      const Geometry g = launch_geometry(s, vec, l.target_blocks);
      const auto key = std::make_tuple(l.reduction, unroll, l.target_blocks);
      if (!done.count(key))
        done[key] = vec_ok ? simulate_any(vec, unroll, s, l, g, num_sms) : "vector width does not fit the layout";
      const std::string& problem = done[key];
      std::printf("%s %s\n", problem.empty() ? "ok" : "FAIL", describe(s, l, vec, unroll, g).c_str());
      if (!problem.empty()) {
        std::printf("  %s\n", problem.c_str());
        ++failures;
      }
    }
  }
  return failures == 0 ? 0 : 1;
}
