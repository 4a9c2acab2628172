// A CUDA execution emulator for the host (plain C++17, no CUDA toolkit): the project's kernel
// files compile against it with g++ after tools/cuda_emulator/rewrite.py has turned each
// `kernel<<<grid, block, smem, stream>>>(args)` into ::emu::launch(...) and each `__shared__`
// declaration into per-block storage. Each block's threads run as fibers (ucontext) that switch
// only at __syncthreads and at the *_sync warp operations, in a chosen order (forward, reverse,
// random:SEED) for threads and for blocks, so a missing barrier shows as a different result.
//
// It stops the process (exit code 86, "cuda-emu:" on stderr, with kernel, file:line, block and
// thread) on what a GPU would refuse or hang on: a launch configuration out of CUDA's limits, a
// barrier that some threads of the block skip or reach at another __syncthreads, a warp
// operation whose mask names an exited or absent lane (or lanes at another operation), a
// deadlock. It cannot see inter-block races under real concurrency, memory ordering, register
// pressure or speed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace emu {

struct Uint3 {
  unsigned int x, y, z;
};

}  // namespace emu

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
using uint3 = emu::Uint3;

using cudaStream_t = struct emu_stream*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9, cudaErrorInvalidValue = 1 };
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }

namespace emu {

// Scheduling order of a block's threads and of a launch's blocks.
enum class Order { Forward, Reverse, Random };

// The emulated device and the run's settings (set by the test driver before any launch).
struct Config {
  Order order = Order::Forward;
  uint64_t seed = 0;
  int occupancy = 8;          // cudaOccupancyMaxActiveBlocksPerMultiprocessor's answer
  int num_sms = 132;          // cudaDeviceGetAttribute(cudaDevAttrMultiProcessorCount)
  size_t stack_bytes = 256 * 1024;
  int64_t launches = 0;       // launches run so far (tests count them)
};
Config& config();
// "forward", "reverse" or "random:SEED"; false if the text is none of these.
bool parse_order(const char* text);

// Where the running thread is (valid inside a kernel).
struct ThreadState;
extern ThreadState* current_thread;
const Uint3& thread_idx();
const Uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// Stops the process with the current kernel, block and thread (if any) named.
[[noreturn]] void fail(const char* file, int line, const std::string& what);

// Per-block static shared memory: one SharedSite per __shared__ declaration (a function-local
// static, so one per template instantiation); get<T>() returns the running block's copy, filled
// with 0xff bytes (NaN floats, -1 integers) at the block's start.
struct SharedSite {
  void* lookup(size_t bytes, size_t align, const char* name, const char* file, int line);
  template <typename T>
  T& get(const char* name, const char* file, int line) {
    return *static_cast<T*>(lookup(sizeof(T), alignof(T), name, file, line));
  }
};

void syncthreads(const char* file, int line);

// Called first by every kernel body (rewrite.py inserts it): names the running kernel.
void kernel_entered(const char* name);
// The kernels that ran so far, space-separated and sorted.
std::string kernels_launched();

// A warp operation: waits until every lane of `mask` has reached the same operation, then
// returns the value of lane `source(lane)` (or its own where source is -1).
enum class WarpOp { Down, Up, Xor, Idx };
uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t bits, int arg, int width, const char* file, int line);

struct KernelBody {
  void (*invoke)(void*);
  void* closure;
};
void run_launch(const KernelBody& body, const char* kernel, const char* file, int line, dim3 grid, dim3 block,
                size_t shared_bytes);

template <typename F>
void launch(F&& body, const char* kernel, const char* file, int line, dim3 grid, dim3 block,
            size_t shared_bytes = 0, cudaStream_t = nullptr) {
  KernelBody k{[](void* f) { (*static_cast<std::remove_reference_t<F>*>(f))(); }, &body};
  run_launch(k, kernel, file, line, grid, block, shared_bytes);
}

template <typename T>
T shuffle(WarpOp op, unsigned mask, T value, int arg, int width, const char* file, int line) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "warp shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_exchange(op, mask, bits, arg, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#define warpSize 32

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu::syncthreads(file, line);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  return emu::shuffle(emu::WarpOp::Down, mask, v, static_cast<int>(delta), width, file, line);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  return emu::shuffle(emu::WarpOp::Up, mask, v, static_cast<int>(delta), width, file, line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  return emu::shuffle(emu::WarpOp::Xor, mask, v, lane_mask, width, file, line);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  return emu::shuffle(emu::WarpOp::Idx, mask, v, src_lane, width, file, line);
}

template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel*, int block_threads, size_t) {
  if (block_threads < 1 || block_threads > 1024) return cudaErrorInvalidValue;
  *blocks = emu::config().occupancy;
  return cudaSuccess;
}
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = emu::config().num_sms;
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
