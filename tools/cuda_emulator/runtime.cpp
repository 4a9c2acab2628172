// The emulator's scheduler (cuda_emu/runtime.h): a launch runs its blocks one after another in
// the configured order; a block's threads are fibers that run until they reach a barrier, a warp
// operation or their end, and the scheduler releases a barrier when every thread of the block
// waits at it and a warp operation when every lane of its mask has reached it.
#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>

#include "cuda_emu/runtime.h"
#include "fiber.h"

namespace emu {

enum class State { Runnable, AtBarrier, AtWarp, Exited };

struct ThreadState {
  Uint3 idx;
  int flat = 0;
  State state = State::Runnable;
  Fiber context;
  const char* wait_file = nullptr;  // the barrier or warp operation waited at
  int wait_line = 0;
  WarpOp op = WarpOp::Down;
  unsigned mask = 0;
  int arg = 0, width = 32;
  uint64_t bits = 0;    // the value offered to a warp operation, then its result
};

namespace {

struct Launch {
  const char* kernel = "";
  const char* entered = nullptr;  // the __global__ function's name, once a thread has started it
  const char* file = "";
  int line = 0;
  dim3 grid, block;
  Uint3 block_idx{0, 0, 0};
  size_t static_shared = 0;
  std::map<const SharedSite*, std::vector<unsigned char>> shared;
};

Launch* current_launch = nullptr;
Fiber scheduler_context;
std::vector<std::unique_ptr<char[]>> stacks;
const KernelBody* current_body = nullptr;
std::mt19937_64 rng;
std::set<std::string> launched_kernels;

const char* name_of(State s) {
  switch (s) {
    case State::Runnable: return "running";
    case State::AtBarrier: return "at __syncthreads";
    case State::AtWarp: return "at a warp operation";
    default: return "exited";
  }
}

std::string where(const ThreadState& t) {
  std::ostringstream out;
  out << "thread (" << t.idx.x << "," << t.idx.y << "," << t.idx.z << ") " << name_of(t.state);
  if (t.state == State::AtBarrier || t.state == State::AtWarp) out << " " << t.wait_file << ":" << t.wait_line;
  return out.str();
}

void thread_entry() {
  current_body->invoke(current_body->closure);
  current_thread->state = State::Exited;
  fiber_switch(&current_thread->context, &scheduler_context);
}

template <typename T>
void order_in_place(std::vector<T>& items) {
  if (config().order == Order::Reverse) std::reverse(items.begin(), items.end());
  else if (config().order == Order::Random) std::shuffle(items.begin(), items.end(), rng);
}

// Releases warp operations whose lanes have all arrived; true if any was released.
bool release_warp_ops(std::vector<ThreadState>& threads) {
  bool released = false;
  const int count = static_cast<int>(threads.size());
  for (int first = 0; first < count; first += 32) {
    const int lanes = std::min(32, count - first);
    for (int lane = 0; lane < lanes; ++lane) {
      ThreadState& t = threads[first + lane];
      if (t.state != State::AtWarp) continue;
      current_thread = &t;
      if (!(t.mask >> lane & 1u)) fail(t.wait_file, t.wait_line, "warp operation's mask does not name its own lane");
      if (t.width < 1 || t.width > 32 || (t.width & (t.width - 1)))
        fail(t.wait_file, t.wait_line, "warp operation width " + std::to_string(t.width) + " is not a power of two <= 32");
      bool ready = true;
      for (int other = 0; other < 32; ++other) {
        if (!(t.mask >> other & 1u)) continue;
        if (other >= lanes) fail(t.wait_file, t.wait_line, "warp operation's mask names absent lane " + std::to_string(other));
        const ThreadState& o = threads[first + other];
        if (o.state == State::Exited)
          fail(t.wait_file, t.wait_line, "warp operation's mask names exited lane " + std::to_string(other));
        if (o.state != State::AtWarp) { ready = false; continue; }
        if (o.wait_file != t.wait_file || o.wait_line != t.wait_line || o.mask != t.mask || o.op != t.op)
          fail(t.wait_file, t.wait_line, "lanes of one mask at different warp operations: lane " +
                                             std::to_string(other) + " " + where(o));
      }
      if (!ready) continue;
      uint64_t results[32];
      for (int other = 0; other < 32; ++other) {
        if (!(t.mask >> other & 1u)) continue;
        const ThreadState& o = threads[first + other];
        const int w = o.width, base = other / w * w;
        int source = other;
        switch (o.op) {
          case WarpOp::Down: source = other % w + o.arg < w ? other + o.arg : other; break;
          case WarpOp::Up: source = other % w >= o.arg ? other - o.arg : other; break;
          case WarpOp::Xor: source = (other ^ o.arg) < base + w ? other ^ o.arg : other; break;
          case WarpOp::Idx: source = base + ((o.arg % w) + w) % w; break;
        }
        if (source < 0 || source >= 32 || !(t.mask >> source & 1u)) {
          current_thread = &threads[first + other];
          fail(o.wait_file, o.wait_line, "warp operation reads lane " + std::to_string(source) + ", not in its mask");
        }
        results[other] = threads[first + source].bits;
      }
      for (int other = 0; other < 32; ++other) {
        if (!(t.mask >> other & 1u)) continue;
        threads[first + other].bits = results[other];
        threads[first + other].state = State::Runnable;
      }
      released = true;
    }
  }
  return released;
}

void run_block(std::vector<ThreadState>& threads, const std::vector<int>& order) {
  for (size_t i = 0; i < threads.size(); ++i) {
    ThreadState& t = threads[i];
    fiber_start(&t.context, stacks[i].get(), config().stack_bytes, thread_entry);
  }
  for (;;) {
    bool progressed = false;
    for (int i : order) {
      ThreadState& t = threads[i];
      if (t.state != State::Runnable) continue;
      current_thread = &t;
      fiber_switch(&scheduler_context, &t.context);
      progressed = true;
    }
    current_thread = nullptr;
    if (release_warp_ops(threads)) progressed = true;
    int exited = 0, at_barrier = 0;
    const ThreadState* barrier = nullptr;
    for (const ThreadState& t : threads) {
      exited += t.state == State::Exited;
      if (t.state == State::AtBarrier) {
        ++at_barrier;
        barrier = &t;
      }
    }
    if (exited == static_cast<int>(threads.size())) return;
    if (at_barrier > 0 && at_barrier + exited == static_cast<int>(threads.size())) {
      current_thread = const_cast<ThreadState*>(barrier);
      for (const ThreadState& t : threads) {
        if (t.state == State::Exited)
          fail(barrier->wait_file, barrier->wait_line, "__syncthreads skipped by " + where(t) + " (it returned)");
        if (t.wait_file != barrier->wait_file || t.wait_line != barrier->wait_line)
          fail(barrier->wait_file, barrier->wait_line, "threads at different __syncthreads: " + where(t));
      }
      for (ThreadState& t : threads) t.state = State::Runnable;
      progressed = true;
    }
    if (!progressed) {
      std::string states;
      int listed = 0;
      for (const ThreadState& t : threads)
        if (t.state != State::Exited && listed++ < 8) states += "\n  " + where(t);
      if (listed > 8) states += "\n  (" + std::to_string(listed - 8) + " more)";
      current_thread = nullptr;
      fail(current_launch->file, current_launch->line, "deadlock; threads not exited:" + states);
    }
  }
}

}  // namespace

ThreadState* current_thread = nullptr;

Config& config() {
  static Config c;
  return c;
}

bool parse_order(const char* text) {
  const std::string s = text;
  if (s == "forward") config().order = Order::Forward;
  else if (s == "reverse") config().order = Order::Reverse;
  else if (s.rfind("random:", 0) == 0) {
    config().order = Order::Random;
    config().seed = std::stoull(s.substr(7));
    rng.seed(config().seed);
  } else return false;
  return true;
}

const Uint3& thread_idx() { return current_thread->idx; }
const Uint3& block_idx() { return current_launch->block_idx; }
const dim3& block_dim() { return current_launch->block; }
const dim3& grid_dim() { return current_launch->grid; }

void fail(const char* file, int line, const std::string& what) {
  std::ostringstream out;
  out << "cuda-emu: " << file << ":" << line << ": " << what;
  if (current_launch) {
    const Launch& l = *current_launch;
    out << "\n  in kernel " << (l.entered ? l.entered : l.kernel) << " launched at " << l.file << ":" << l.line << " grid (" << l.grid.x << ","
        << l.grid.y << "," << l.grid.z << ") block (" << l.block.x << "," << l.block.y << "," << l.block.z << ")";
    if (current_thread)
      out << ", block (" << l.block_idx.x << "," << l.block_idx.y << "," << l.block_idx.z << ") thread ("
          << current_thread->idx.x << "," << current_thread->idx.y << "," << current_thread->idx.z << ")";
  }
  std::fprintf(stderr, "%s\n", out.str().c_str());
  std::fflush(stderr);
  std::_Exit(86);
}

void* SharedSite::lookup(size_t bytes, size_t align, const char* name, const char* file, int line) {
  if (!current_thread) fail(file, line, std::string("__shared__ ") + name + " used outside a kernel");
  auto found = current_launch->shared.find(this);
  if (found == current_launch->shared.end()) {
    current_launch->static_shared += (bytes + align - 1) / align * align;
    if (current_launch->static_shared > 48 * 1024)
      fail(file, line, "static shared memory over 48 KiB (" + std::to_string(current_launch->static_shared) +
                           " bytes) at __shared__ " + name);
    found = current_launch->shared.emplace(this, std::vector<unsigned char>(bytes + align, 0xff)).first;
  }
  const auto address = reinterpret_cast<uintptr_t>(found->second.data());
  return reinterpret_cast<void*>((address + align - 1) / align * align);
}

void kernel_entered(const char* name) {
  if (current_launch->entered) return;
  current_launch->entered = name;
  launched_kernels.insert(name);
}

std::string kernels_launched() {
  std::string out;
  for (const std::string& k : launched_kernels) out += (out.empty() ? "" : " ") + k;
  return out;
}

void syncthreads(const char* file, int line) {
  ThreadState& t = *current_thread;
  t.state = State::AtBarrier;
  t.wait_file = file;
  t.wait_line = line;
  fiber_switch(&t.context, &scheduler_context);
}

uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t bits, int arg, int width, const char* file, int line) {
  ThreadState& t = *current_thread;
  t.state = State::AtWarp;
  t.op = op;
  t.mask = mask;
  t.bits = bits;
  t.arg = arg;
  t.width = width;
  t.wait_file = file;
  t.wait_line = line;
  fiber_switch(&t.context, &scheduler_context);
  return t.bits;
}

void run_launch(const KernelBody& body, const char* kernel, const char* file, int line, dim3 grid, dim3 block,
                size_t shared_bytes) {
  Launch launch;
  launch.kernel = kernel;
  launch.file = file;
  launch.line = line;
  launch.grid = grid;
  launch.block = block;
  current_launch = &launch;
  current_thread = nullptr;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
    fail(file, line, "block of " + std::to_string(threads) + " threads: a GPU refuses it");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    fail(file, line, "grid out of CUDA's limits: a GPU refuses it");
  if (shared_bytes > 0) fail(file, line, "dynamic shared memory is not emulated");
  ++config().launches;
  while (stacks.size() < threads) stacks.emplace_back(new char[config().stack_bytes]);
  std::vector<ThreadState> states(threads);
  std::vector<int> order(threads);
  for (uint64_t i = 0; i < threads; ++i) {
    states[i].flat = static_cast<int>(i);
    states[i].idx = {static_cast<unsigned>(i % block.x), static_cast<unsigned>(i / block.x % block.y),
                     static_cast<unsigned>(i / (uint64_t(block.x) * block.y))};
    order[i] = static_cast<int>(i);
  }
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> block_order(blocks);
  for (uint64_t b = 0; b < blocks; ++b) block_order[b] = b;
  order_in_place(block_order);
  current_body = &body;
  for (uint64_t b : block_order) {
    launch.block_idx = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                        static_cast<unsigned>(b / (uint64_t(grid.x) * grid.y))};
    launch.shared.clear();
    launch.static_shared = 0;
    for (ThreadState& s : states) s.state = State::Runnable;
    order_in_place(order);
    run_block(states, order);
  }
  current_launch = nullptr;
  current_thread = nullptr;
}

}  // namespace emu
