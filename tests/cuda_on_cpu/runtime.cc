// The CPU stand-in's runtime (include/cuda_runtime.h): memory, errors, and RunGrid, which runs a
// launch's threads as fibers (fiber.h) on the calling thread.
//
// Why fibers and not one OS thread per GPU thread: the kernels' grids are large (a grid-stride
// elementwise kernel over 3 M values is 11,719 blocks of 256 threads) and waking 256 OS
// threads at every block boundary costs ~0.5 ms on two cores, while a fiber switch costs
// ~10 ns (fiber.h). Scheduling is cooperative and deterministic: a thread runs until it reaches a
// barrier (__syncthreads, or the warp's rendezvous inside a shuffle) or returns.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda_runtime.h"
#include "fiber.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define QLORAD_FIBERS_UNDER_ASAN 1
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace qlorad::cuda_on_cpu {
namespace {

// The most recent error, returned and cleared by cudaGetLastError (as the runtime does for
// launch errors); a failed kernel (deadlock, partial-warp shuffle) is also returned by the
// synchronising calls until then.
thread_local cudaError_t last_error = cudaSuccess;

void SetError(cudaError_t e) {
  if (last_error == cudaSuccess) last_error = e;
}

// Device allocations: host memory, 256-byte aligned as cudaMalloc's, each remembered so that a
// cudaFree of anything else fails as on the GPU.
std::mutex allocations_mu;
std::unordered_map<void*, size_t>& Allocations() {
  static auto* m = new std::unordered_map<void*, size_t>;
  return *m;
}

constexpr int kWarp = 32;
constexpr size_t kFiberStack = 256 * 1024;

enum class FiberState { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  FiberContext context;
  char* stack = nullptr;  // kFiberStack bytes, owned by RunGrid's pool
  uint3 index;
  int linear = 0;
  FiberState state = FiberState::kRunnable;
#if defined(QLORAD_FIBERS_UNDER_ASAN)
  void* fake_stack = nullptr;
#endif
};

// One launch's block being run: its fibers and barriers.
struct Block {
  std::vector<Fiber> fibers;
  std::vector<int> run_queue;  // fibers to resume, in order
  size_t next = 0;
  int at_block_barrier = 0;
  std::vector<int> at_warp_barrier;          // per warp
  std::vector<std::vector<uint64_t>> slots;  // shuffle values: two generations per thread
  std::vector<uint8_t> shuffle_generation;   // per thread
  const std::function<void()>* thread = nullptr;
  FiberContext scheduler;
  int current = -1;
  bool failed = false;
  std::string failure;
  // How this block's threads take turns (RunGrid alternates between blocks): `reverse` starts
  // them and releases them from barriers last thread first; `eager` runs the threads a barrier
  // releases before any other runnable thread, so one warp runs ahead of the rest of its block
  // (a missing barrier before shared memory is rewritten then corrupts what a late warp reads),
  // where the default order makes every thread reach each point before any goes past it (a
  // missing barrier before shared memory is read then reads it unwritten).
  bool reverse = false;
  bool eager = false;
#if defined(QLORAD_FIBERS_UNDER_ASAN)
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
  void* scheduler_fake_stack = nullptr;
#endif
};

thread_local Block* running = nullptr;

int WarpSize(const Block& b, int warp) {
  const int threads = static_cast<int>(b.fibers.size());
  return std::min(kWarp, threads - warp * kWarp);
}

// Back to the scheduler from the running fiber (it has just changed its state).
void Yield(bool finished) {
  Block& b = *running;
  Fiber& f = b.fibers[b.current];
#if defined(QLORAD_FIBERS_UNDER_ASAN)
  __sanitizer_start_switch_fiber(finished ? nullptr : &f.fake_stack, b.scheduler_stack_bottom,
                                 b.scheduler_stack_size);
#else
  (void)finished;
#endif
  SwitchFiber(f.context, b.scheduler);
#if defined(QLORAD_FIBERS_UNDER_ASAN)
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

void FiberMain() {
  Block& b = *running;
#if defined(QLORAD_FIBERS_UNDER_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &b.scheduler_stack_bottom, &b.scheduler_stack_size);
#endif
  (*b.thread)();
  b.fibers[b.current].state = FiberState::kDone;
  Yield(/*finished=*/true);
}

// The running fiber completed a barrier: it and every fiber waiting in `state` (of warp `warp`,
// for warp barriers) become runnable, in the block's order.
void Release(Block& b, FiberState state, int warp) {
  const int first = warp < 0 ? 0 : warp * kWarp;
  const int n = warp < 0 ? static_cast<int>(b.fibers.size()) : WarpSize(b, warp);
  std::vector<int> released;
  if (b.eager) released.push_back(b.current);  // the last to arrive goes on first
  for (int k = 0; k < n; ++k) {
    const int i = first + (b.reverse ? n - 1 - k : k);
    Fiber& f = b.fibers[i];
    if (f.state == state) {
      f.state = FiberState::kRunnable;
      released.push_back(i);
    }
  }
  if (!b.eager) released.push_back(b.current);  // ... or after the others
  b.fibers[b.current].state = FiberState::kRunnable;
  b.run_queue.insert(
      b.eager ? b.run_queue.begin() + static_cast<ptrdiff_t>(b.next) : b.run_queue.end(),
      released.begin(), released.end());
}

void Fail(Block& b, std::string why) {
  if (!b.failed) {
    b.failed = true;
    b.failure = std::move(why);
  }
}

std::string Where(const Fiber& f) {
  return "block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
         std::to_string(blockIdx.z) + ") thread (" + std::to_string(f.index.x) + "," +
         std::to_string(f.index.y) + "," + std::to_string(f.index.z) + ")";
}

// Runs the block's fibers until all have returned, or none can go on (a deadlock: Fail).
void RunBlock(Block& b) {
  const int n = static_cast<int>(b.fibers.size());
  for (;;) {
    if (b.next == b.run_queue.size()) {
      b.run_queue.clear();
      b.next = 0;
      int done = 0;
      for (const Fiber& f : b.fibers) done += f.state == FiberState::kDone;
      if (done == n) return;
      // Nobody can run, yet some have not returned: a barrier that not every thread reaches.
      std::string waiting;
      for (const Fiber& f : b.fibers) {
        if (f.state == FiberState::kAtBlockBarrier || f.state == FiberState::kAtWarpBarrier) {
          waiting =
              Where(f) + (f.state == FiberState::kAtBlockBarrier ? " waits at __syncthreads"
                                                                 : " waits in a warp shuffle");
          break;
        }
      }
      Fail(b, "deadlock: " + waiting + ", which " + std::to_string(done) +
                  " returned threads and the threads waiting elsewhere never reach");
      return;
    }
    b.current = b.run_queue[b.next++];
    Fiber& f = b.fibers[b.current];
    threadIdx = f.index;
#if defined(QLORAD_FIBERS_UNDER_ASAN)
    __sanitizer_start_switch_fiber(&b.scheduler_fake_stack, f.stack, kFiberStack);
#endif
    SwitchFiber(b.scheduler, f.context);
#if defined(QLORAD_FIBERS_UNDER_ASAN)
    __sanitizer_finish_switch_fiber(b.scheduler_fake_stack, nullptr, nullptr);
#endif
    if (f.state == FiberState::kDone) {
      // A thread that returns while others wait at __syncthreads: the GPU hangs or misbehaves.
      if (b.at_block_barrier > 0) {
        Fail(b, Where(f) + " returned while " + std::to_string(b.at_block_barrier) +
                    " threads wait at __syncthreads");
      }
    }
  }
}

const char* ErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer:
      return "invalid device pointer";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
  }
  return "unknown error";
}

}  // namespace

void RunGrid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, cudaStream_t /*stream*/,
             const char* kernel_name, const std::function<void()>& thread) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  // The launch limits of every GPU since sm_30 (CUDA C++ Programming Guide, "Technical
  // Specifications"): what the GPU refuses, refuse here too.
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7FFFFFFFu || grid.y > 65535 ||
      grid.z > 65535 || threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 ||
      block.z > 64 || dynamic_shared_bytes > 227 * 1024) {
    std::fprintf(stderr,
                 "cuda_on_cpu: %s: launch of grid (%u,%u,%u) x block (%u,%u,%u) with %zu dynamic "
                 "shared bytes refused\n",
                 kernel_name, grid.x, grid.y, grid.z, block.x, block.y, block.z,
                 dynamic_shared_bytes);
    SetError(cudaErrorInvalidConfiguration);
    return;
  }
  if (running != nullptr) {  // a launch from inside a kernel: dynamic parallelism, unused
    std::fprintf(stderr, "cuda_on_cpu: %s launched from a kernel\n", kernel_name);
    std::abort();
  }
  // Fiber stacks live as long as the thread, reused from launch to launch.
  thread_local std::vector<std::unique_ptr<char[]>> stacks;
  while (stacks.size() < threads) stacks.push_back(std::make_unique<char[]>(kFiberStack));

  Block b;
  b.thread = &thread;
  b.fibers.resize(threads);
  const int warps = static_cast<int>((threads + kWarp - 1) / kWarp);
  b.at_warp_barrier.assign(warps, 0);
  b.slots.assign(2, std::vector<uint64_t>(threads, 0));
  b.shuffle_generation.assign(threads, 0);
  const dim3 saved_block_dim = blockDim, saved_grid_dim = gridDim;
  blockDim = block;
  gridDim = grid;
  running = &b;
  uint64_t block_number = 0;
  for (unsigned bz = 0; bz < grid.z && !b.failed; ++bz) {
    for (unsigned by = 0; by < grid.y && !b.failed; ++by) {
      for (unsigned bx = 0; bx < grid.x && !b.failed; ++bx, ++block_number) {
        blockIdx = {bx, by, bz};
        b.reverse = b.eager = block_number % 2 == 1;
        b.run_queue.clear();
        b.next = 0;
        b.at_block_barrier = 0;
        std::fill(b.at_warp_barrier.begin(), b.at_warp_barrier.end(), 0);
        for (uint64_t k = 0; k < threads; ++k) {
          const int i = static_cast<int>(b.reverse ? threads - 1 - k : k);
          Fiber& f = b.fibers[i];
          f.linear = i;
          f.index = {static_cast<unsigned>(i % block.x),
                     static_cast<unsigned>(i / block.x % block.y),
                     static_cast<unsigned>(i / (uint64_t{block.x} * block.y))};
          f.state = FiberState::kRunnable;
          f.stack = stacks[i].get();
          MakeFiber(f.context, f.stack, kFiberStack, FiberMain);
          b.run_queue.push_back(i);
        }
        RunBlock(b);
      }
    }
  }
  running = nullptr;
  blockDim = saved_block_dim;
  gridDim = saved_grid_dim;
  if (b.failed) {
    std::fprintf(stderr, "cuda_on_cpu: %s: %s\n", kernel_name, b.failure.c_str());
    SetError(cudaErrorLaunchFailure);
  }
}

// ---- device built-ins, called from a fiber ----

void BlockBarrier() {
  Block& b = *running;
  Fiber& f = b.fibers[b.current];
  if (++b.at_block_barrier == static_cast<int>(b.fibers.size())) {
    b.at_block_barrier = 0;
    Release(b, FiberState::kAtBlockBarrier, -1);
  } else {
    f.state = FiberState::kAtBlockBarrier;
  }
  Yield(/*finished=*/false);
}

uint64_t ShuffleXor(unsigned mask, uint64_t v, int lane_mask, int width) {
  Block& b = *running;
  if (b.failed) return v;
  Fiber& f = b.fibers[b.current];
  const int warp = f.linear / kWarp, lanes = WarpSize(b, warp);
  const unsigned all = lanes == 32 ? 0xFFFFFFFFu : (1u << lanes) - 1u;
  if (mask != all || width != kWarp || lane_mask < 0 || lane_mask >= kWarp ||
      (f.linear % kWarp ^ lane_mask) >= lanes) {
    Fail(b, Where(f) + ": a shuffle with mask " + std::to_string(mask) + ", lane mask " +
                std::to_string(lane_mask) + " in a warp of " + std::to_string(lanes) +
                " threads (only whole-warp xor shuffles are modelled)");
    return v;
  }
  // Double-buffered by generation: a lane cannot get two shuffles ahead of its partner, since
  // the next rendezvous waits for it.
  const int g = b.shuffle_generation[f.linear] ^= 1;
  b.slots[g][f.linear] = v;
  if (++b.at_warp_barrier[warp] == lanes) {
    b.at_warp_barrier[warp] = 0;
    Release(b, FiberState::kAtWarpBarrier, warp);
  } else {
    f.state = FiberState::kAtWarpBarrier;
  }
  Yield(/*finished=*/false);
  return b.slots[g][f.linear ^ lane_mask];
}

template <typename T>
T Shuffle(unsigned mask, T v, int lane_mask, int width) {
  static_assert(sizeof(T) <= 8);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = ShuffleXor(mask, bits, lane_mask, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace qlorad::cuda_on_cpu

namespace coc = qlorad::cuda_on_cpu;

void __syncthreads() { coc::BlockBarrier(); }
float __shfl_xor_sync(unsigned mask, float v, int lane_mask, int width) {
  return coc::Shuffle(mask, v, lane_mask, width);
}
double __shfl_xor_sync(unsigned mask, double v, int lane_mask, int width) {
  return coc::Shuffle(mask, v, lane_mask, width);
}
int __shfl_xor_sync(unsigned mask, int v, int lane_mask, int width) {
  return coc::Shuffle(mask, v, lane_mask, width);
}
unsigned __shfl_xor_sync(unsigned mask, unsigned v, int lane_mask, int width) {
  return coc::Shuffle(mask, v, lane_mask, width);
}

// ---- runtime API ----

const char* cudaGetErrorString(cudaError_t e) { return coc::ErrorName(e); }

cudaError_t cudaGetLastError() {
  const cudaError_t e = coc::last_error;
  coc::last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return coc::last_error; }

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
// An H200's (the card the GPU tests are written for): launchers size their grids by these.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = 132;
      return cudaSuccess;
    case cudaDevAttrConcurrentManagedAccess:
      *value = 1;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = 227 * 1024;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

// Launches finish before they return: synchronising only reports a failed kernel.
cudaError_t cudaDeviceSynchronize() { return coc::last_error; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return coc::last_error; }

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  void* q = std::aligned_alloc(256, (std::max<size_t>(bytes, 1) + 255) / 256 * 256);
  if (q == nullptr) return cudaErrorMemoryAllocation;
  // Fresh device memory holds whatever was there: here NaNs (all bits set), never zeros a
  // kernel could rely on.
  std::memset(q, 0xFF, bytes);
  std::lock_guard<std::mutex> lock(coc::allocations_mu);
  coc::Allocations()[q] = bytes;
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(coc::allocations_mu);
    if (coc::Allocations().erase(p) == 0) return cudaErrorInvalidDevicePointer;
  }
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }

cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
