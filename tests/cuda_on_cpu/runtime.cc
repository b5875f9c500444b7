// The CPU stand-in's runtime (include/cuda_runtime.h): memory, errors, and RunGrid, which runs a
// launch's threads as fibers (fiber.h) on the calling thread.
//
// Why fibers and not one OS thread per GPU thread: the kernels' grids are large (a grid-stride
// elementwise kernel over 3 M values is 11,719 blocks of 256 threads) and waking 256 OS
// threads at every block boundary costs ~0.5 ms on two cores, while a fiber switch costs
// ~10 ns (fiber.h). Scheduling is cooperative and deterministic: a thread runs until it reaches a
// barrier (__syncthreads, or the warp's rendezvous inside a shuffle) or returns.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "fiber.h"

// Streams: launches finish before they return, so a stream orders nothing; it belongs to the
// card current when it was made, and work given to it while another card is current fails, as
// on the GPU (cudaErrorInvalidResourceHandle).
struct CUstream_st {
  int card;
};

#if defined(__has_feature)
#if __has_feature(address_sanitizer)  // older clang does not define __SANITIZE_ADDRESS__
#define QLORAD_FIBERS_UNDER_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define QLORAD_FIBERS_UNDER_ASAN 1
#endif
#if defined(QLORAD_FIBERS_UNDER_ASAN)
#include <pthread.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace qlorad::cuda_on_cpu {
namespace {

// A test's setting of the stand-in (README.md): `fallback` where unset; a value that is not a
// whole number from 1 to `max` stops the process, naming it.
uint64_t Setting(const char* name, uint64_t fallback, uint64_t max) {
  const char* v = std::getenv(name);
  if (v == nullptr) return fallback;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v, &end, 10);
  if (end == v || *end != '\0' || v[0] == '-' || n == 0 || n > max) {
    std::fprintf(stderr, "cuda_on_cpu: %s='%s' is not a whole number from 1 to %llu\n", name, v,
                 static_cast<unsigned long long>(max));
    std::abort();
  }
  return n;
}

// The cards: one, or QLORAD_CUDA_ON_CPU_DEVICES (up to kMaxCards), each with its own memory and
// its own context; a thread works on its current card (cudaSetDevice), card 0 until it sets one.
constexpr int kMaxCards = 8;
int CardCount() {
  static const int n = static_cast<int>(Setting("QLORAD_CUDA_ON_CPU_DEVICES", 1, kMaxCards));
  return n;
}
thread_local int current_card = 0;

// What the process asked of the runtime (Counts): where the host waits for a card, and the calls
// a steady training step should not make.
std::atomic<uint64_t> synchronizes{0}, copies_to_host{0}, allocations{0}, frees{0}, launches{0};

// Errors as the runtime keeps them: every failing call records the most recent error, which
// cudaGetLastError returns and clears; a failed kernel (a deadlock, a partial-warp shuffle, a
// violation: a fault on the GPU) is sticky instead: every later call on that card returns it, as
// a card's context is lost after a fault (the other cards' are not).
thread_local cudaError_t last_error = cudaSuccess;
std::atomic<cudaError_t> sticky_error[kMaxCards];  // zero: cudaSuccess
// A fault in a kernel the host has not waited for yet (an injected "async" fault): as on the
// GPU, the launch and the calls after it return success (their work does not run: the context
// is gone) until the host waits for the card (Wait), which makes it sticky and reports it.
std::atomic<cudaError_t> pending_fault[kMaxCards];

// What an API call on `card` (the current one unless said) that did `e` returns.
cudaError_t Api(cudaError_t e, int card = current_card) {
  const cudaError_t sticky = sticky_error[card].load();
  if (sticky != cudaSuccess) return sticky;
  if (e != cudaSuccess) last_error = e;
  return e;
}

// A fault on the current card (`e`): reported now and by every later call on the card.
void Fault(cudaError_t e) {
  Api(e);
  sticky_error[current_card] = e;
}

// The host waits for `card`'s work: a pending fault shows from now on (sticky).
void ShowPendingFault(int card) {
  if (const cudaError_t p = pending_fault[card].exchange(cudaSuccess); p != cudaSuccess) {
    sticky_error[card] = p;
  }
}

// What a call that waits for `card` returns.
cudaError_t Wait(int card) {
  ++synchronizes;
  ShowPendingFault(card);
  return Api(cudaSuccess, card);
}

// Device allocations: host memory of exactly the size asked for (so that the sanitizer build
// catches an access one past the end), 256-byte aligned as cudaMalloc's, each remembered (with
// its size, and whether it is managed memory) so that a cudaFree of anything else, or advice on
// memory that is not managed, fails as on the GPU.
struct Allocation {
  size_t bytes;
  bool managed;
  int card;
};
// The card's memory: 16 GiB, or QLORAD_CUDA_ON_CPU_MEMORY_BYTES (a test's small card, which
// runs out of memory).
size_t CardBytes() {
  static const size_t bytes =
      Setting("QLORAD_CUDA_ON_CPU_MEMORY_BYTES", size_t{16} << 30, uint64_t{1} << 48);
  return bytes;
}
// The card's size as reported (total memory): CardBytes, or QLORAD_CUDA_ON_CPU_TOTAL_BYTES for a
// larger card of which other processes hold all but CardBytes.
size_t ReportedTotalBytes() {
  static const size_t bytes = std::max(
      CardBytes(),
      static_cast<size_t>(Setting("QLORAD_CUDA_ON_CPU_TOTAL_BYTES", 0, uint64_t{1} << 48)));
  return bytes;
}

std::mutex allocations_mu;
size_t allocated_bytes[kMaxCards] = {};  // each card's; guarded by allocations_mu
// By address, so that the allocation holding a pointer is one lookup (ManagedRange).
std::map<const char*, Allocation>& Allocations() {
  static auto* m = new std::map<const char*, Allocation>;
  return *m;
}

// Gives allocation `it` back (allocations_mu held); the next one.
std::map<const char*, Allocation>::iterator Release(
    std::map<const char*, Allocation>::iterator it) {
  allocated_bytes[it->second.card] -= it->second.bytes;
  std::free(const_cast<char*>(it->first));
  return Allocations().erase(it);
}

cudaError_t Allocate(void** p, size_t bytes, bool managed) {
  *p = nullptr;
  // A faulted card allocates nothing (its error is what the call returns).
  if (const cudaError_t sticky = sticky_error[current_card].load(); sticky != cudaSuccess) {
    return sticky;
  }
  std::lock_guard<std::mutex> lock(allocations_mu);
  size_t& allocated = allocated_bytes[current_card];
  if (bytes > CardBytes() - allocated) return cudaErrorMemoryAllocation;
  void* q = nullptr;
  if (posix_memalign(&q, 256, std::max<size_t>(bytes, 1)) != 0) return cudaErrorMemoryAllocation;
  // Fresh device memory holds whatever was there: here NaNs (all bits set), never zeros a
  // kernel could rely on.
  std::memset(q, 0xFF, bytes);
  Allocations()[static_cast<const char*>(q)] = {bytes, managed, current_card};
  allocated += bytes;
  *p = q;
  return cudaSuccess;
}

// The allocation holding [p, p + bytes) (bytes 0: p up to one past its end), or null. The
// caller holds allocations_mu.
const Allocation* Holding(const void* p, size_t bytes) {
  const auto* q = static_cast<const char*>(p);
  auto it = Allocations().upper_bound(q);  // the first allocation past p
  if (it == Allocations().begin()) return nullptr;
  --it;  // the last one at or before p
  return q + bytes <= it->first + it->second.bytes ? &it->second : nullptr;
}

// Whether [p, p + bytes) lies in one managed allocation.
bool ManagedRange(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(allocations_mu);
  const Allocation* a = Holding(p, bytes);
  return a != nullptr && a->managed;
}

constexpr int kWarp = 32;
constexpr size_t kFiberStack = 256 * 1024;

// A fiber's stack: mapped memory with an inaccessible page below it, so that an overflow faults
// rather than overwriting the heap.
class FiberStack {
 public:
  FiberStack() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kFiberStack + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED || mprotect(p, page, PROT_NONE) != 0) {
      std::fprintf(stderr, "cuda_on_cpu: cannot map a fiber stack\n");
      std::abort();
    }
    mapping_ = static_cast<char*>(p);
    guard_ = page;
  }
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;
  ~FiberStack() { munmap(mapping_, kFiberStack + guard_); }
  char* base() const { return mapping_ + guard_; }  // kFiberStack usable bytes

 private:
  char* mapping_ = nullptr;
  size_t guard_ = 0;
};

// What a warp's lanes meet for: all lanes of a rendezvous must be at the same kind.
enum class WarpCollective { kNone, kShuffle, kButterfly, kSyncWarp };

enum class FiberState { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  FiberContext context;
  char* stack = nullptr;  // kFiberStack bytes, owned by RunGrid's pool
  uint3 index;
  FiberState state = FiberState::kRunnable;
  void* fake_stack = nullptr;  // ASan's, while the fiber is switched out
};

// One launch's block being run: its fibers and barriers.
struct Block {
  std::vector<Fiber> fibers;
  std::deque<int> run_queue;  // runnable fibers, the next to run first
  std::vector<int> released;  // Release's scratch
  int at_block_barrier = 0;
  std::vector<int> at_warp_barrier;           // per warp
  std::vector<WarpCollective> warp_kind;      // per warp: what its waiting lanes meet for
  std::vector<std::vector<uint64_t>> slots;   // shuffle values: two generations per thread
  std::vector<uint8_t> shuffle_generation;    // per thread
  std::vector<std::vector<float>> butterfly;  // per generation, per warp: 32 in, 32 out
  const std::function<void()>* thread = nullptr;
  // The launch's dynamic shared memory: exactly its bytes, 128-byte aligned.
  std::unique_ptr<unsigned char, decltype(&std::free)> dynamic_shared{nullptr, &std::free};
  size_t dynamic_bytes = 0;
  FiberContext scheduler;
  int current = -1;
  bool failed = false;
  std::string failure;
  // How this block's threads take turns (RunGrid alternates from block to block and launch to
  // launch). In order: threads start, and leave every barrier, first to last, queued behind
  // the runnable ones, so every thread reaches each point before any goes past it (a missing
  // barrier before shared memory is read then reads it unwritten). `reversed`: last to first,
  // ahead of the runnable ones, a warp's last lane to meet first, so one warp runs ahead of
  // the rest of its block (a missing barrier before shared memory is rewritten then corrupts
  // what a late warp reads); with both, it does not matter which thread writes.
  bool reversed = false;
  // The calling thread's stack and ASan's fake stack for it (read under ASan only).
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
  void* scheduler_fake_stack = nullptr;
};

thread_local Block* running = nullptr;

int WarpSize(const Block& b, int warp) {
  const int threads = static_cast<int>(b.fibers.size());
  return std::min(kWarp, threads - warp * kWarp);
}

void Fail(Block& b, std::string why) {
  if (!b.failed) {
    b.failed = true;
    b.failure = std::move(why);
  }
}

void Switch(FiberContext& from, void** from_fake_stack, FiberContext& to, const void* to_stack,
            size_t to_size);

// From fiber `f` back to the scheduler; `fake_stack`: where ASan keeps f's, none for a fiber
// that never resumes.
void ToScheduler(Block& b, Fiber& f, void** fake_stack) {
  Switch(f.context, fake_stack, b.scheduler, b.scheduler_stack_bottom, b.scheduler_stack_size);
}

// Fails the launch from the running fiber and abandons the block there: no thread of it runs
// on with what a failed collective left, which could index memory anywhere.
[[noreturn]] void FailHere(Block& b, std::string why) {
  Fail(b, std::move(why));
  b.run_queue.clear();
  ToScheduler(b, b.fibers[b.current], nullptr);
  std::abort();  // never resumed
}

std::string Where(const Fiber& f) {
  return "block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
         std::to_string(blockIdx.z) + ") thread (" + std::to_string(f.index.x) + "," +
         std::to_string(f.index.y) + "," + std::to_string(f.index.z) + ")";
}

// Saves the running context in `from` (with its fake stack under ASan: none for a fiber that
// has returned) and resumes `to`, whose stack is [to_stack, to_stack + to_size).
void Switch(FiberContext& from, [[maybe_unused]] void** from_fake_stack, FiberContext& to,
            [[maybe_unused]] const void* to_stack, [[maybe_unused]] size_t to_size) {
#if defined(QLORAD_FIBERS_UNDER_ASAN)
  __sanitizer_start_switch_fiber(from_fake_stack, to_stack, to_size);
  SwitchFiber(from, to);
  __sanitizer_finish_switch_fiber(from_fake_stack == nullptr ? nullptr : *from_fake_stack, nullptr,
                                  nullptr);
#else
  SwitchFiber(from, to);
#endif
}

// From the running fiber (it has just changed its state): straight on to the next runnable
// fiber, or back to the scheduler when there is none (the block is done, or deadlocked).
// Returns when another fiber resumes this one.
void Yield(bool finished) {
  Block& b = *running;
  Fiber& f = b.fibers[b.current];
  // A thread that returns while others wait at __syncthreads: the GPU hangs or misbehaves.
  if (finished && b.at_block_barrier > 0) {
    FailHere(b, Where(f) + " returned while " + std::to_string(b.at_block_barrier) +
                    " threads wait at __syncthreads");
  }
  void** fake = finished ? nullptr : &f.fake_stack;
  if (b.run_queue.empty()) {
    ToScheduler(b, f, fake);
    return;
  }
  const int next = b.run_queue.front();
  b.run_queue.pop_front();
  if (next == b.current) return;  // the barrier it completed lets it go on first
  Fiber& to = b.fibers[next];
  b.current = next;
  threadIdx = to.index;
  Switch(f.context, fake, to.context, to.stack, kFiberStack);
}

void FiberMain() {
  Block& b = *running;
#if defined(QLORAD_FIBERS_UNDER_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
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
  b.released.clear();
  // A warp's last lane to meet goes on first in eager blocks (its warp runs ahead); otherwise
  // the completing thread takes its place in the block's order.
  const bool completer_first = b.reversed && warp >= 0;
  if (completer_first) b.released.push_back(b.current);
  b.fibers[b.current].state = completer_first ? FiberState::kRunnable : state;
  for (int k = 0; k < n; ++k) {
    const int i = first + (b.reversed ? n - 1 - k : k);
    Fiber& f = b.fibers[i];
    if (f.state == state) {
      f.state = FiberState::kRunnable;
      b.released.push_back(i);
    }
  }
  if (b.reversed) {
    b.run_queue.insert(b.run_queue.begin(), b.released.begin(), b.released.end());
  } else {
    b.run_queue.insert(b.run_queue.end(), b.released.begin(), b.released.end());
  }
}

// Runs the block's fibers until all have returned, or none can go on (a deadlock: Fail). The
// fibers switch among themselves (Yield); control comes back here when none is runnable.
void RunBlock(Block& b) {
  const int n = static_cast<int>(b.fibers.size());
  b.current = b.run_queue.front();
  b.run_queue.pop_front();
  Fiber& first = b.fibers[b.current];
  threadIdx = first.index;
  Switch(b.scheduler, &b.scheduler_fake_stack, first.context, first.stack, kFiberStack);
  if (b.failed) return;  // abandoned where it failed (FailHere)
  int done = 0;
  for (const Fiber& f : b.fibers) done += f.state == FiberState::kDone;
  if (done == n) return;
  // Nobody can run, yet some have not returned: a barrier that not every thread reaches.
  std::string waiting;
  for (const Fiber& f : b.fibers) {
    if (f.state == FiberState::kAtBlockBarrier || f.state == FiberState::kAtWarpBarrier) {
      waiting = Where(f) + (f.state == FiberState::kAtBlockBarrier ? " waits at __syncthreads"
                                                                   : " waits in a warp shuffle");
      break;
    }
  }
  Fail(b, "deadlock: " + waiting + ", which " + std::to_string(done) +
              " returned threads and the threads waiting elsewhere never reach");
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
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorIllegalAddress:
      return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
  }
  return "unknown error";
}

// QLORAD_CUDA_ON_CPU_PROFILE=1: at exit, each kernel's launches, threads run and time on stderr
// (where a test's time goes: some kernels cost far more here than on a GPU).
struct KernelProfile {
  uint64_t launches = 0, threads = 0;
  double seconds = 0.0;
};
// Threads launch at once in the daemon (a worker per card, the inference device): the map is
// theirs under profile_mu, the exit report's too.
std::mutex profile_mu;
std::map<std::string, KernelProfile>* Profile() {
  static std::map<std::string, KernelProfile>* profile = [] {
    const char* on = std::getenv("QLORAD_CUDA_ON_CPU_PROFILE");
    if (on == nullptr || std::string(on) != "1") return static_cast<decltype(profile)>(nullptr);
    auto* p = new std::map<std::string, KernelProfile>;
    std::atexit([] {
      std::vector<std::pair<std::string, KernelProfile>> rows;
      {
        std::lock_guard<std::mutex> lock(profile_mu);
        rows.assign(Profile()->begin(), Profile()->end());
      }
      std::sort(rows.begin(), rows.end(),
                [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
      for (const auto& [name, k] : rows) {
        std::fprintf(stderr, "cuda_on_cpu profile: %8.2f s %8llu launches %12llu threads  %s\n",
                     k.seconds, static_cast<unsigned long long>(k.launches),
                     static_cast<unsigned long long>(k.threads), name.c_str());
      }
    });
    return p;
  }();
  return profile;
}

// QLORAD_CUDA_ON_CPU_FAULT_FILE=PATH: the first launch that finds PATH removes it and faults
// as a GPU does on an illegal address (an Xid): the kernel does not run and the error is sticky
// on that card. If the file starts with a card's number, only a launch on that card does; if it
// says "async", the fault shows at the host's next wait for the card, not at the launch
// (pending_fault). A test creates the file when it wants a card lost
// (tests/integration/cuda_on_cpu_daemon_test.cc; written whole, renamed into place); removing
// it makes one launch fault, however many threads launch.
enum class Injected { kNone, kNow, kAtNextWait };
Injected InjectedFault() {
  static const char* const path = std::getenv("QLORAD_CUDA_ON_CPU_FAULT_FILE");
  if (path == nullptr) return Injected::kNone;
  std::FILE* f = std::fopen(path, "r");
  if (f == nullptr) return Injected::kNone;
  char text[16] = {};
  const size_t n = std::fread(text, 1, sizeof text - 1, f);
  std::fclose(f);
  if (n > 0 && text[0] >= '0' && text[0] <= '9' && std::atoi(text) != current_card) {
    return Injected::kNone;
  }
  if (unlink(path) != 0) return Injected::kNone;
  return std::strstr(text, "async") != nullptr ? Injected::kAtNextWait : Injected::kNow;
}

}  // namespace

void RunGrid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, cudaStream_t stream,
             const char* kernel_name, const std::vector<KernelPointer>& pointers,
             const std::function<void()>& thread) {
  const auto started = std::chrono::steady_clock::now();
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
    Api(cudaErrorInvalidConfiguration);
    return;
  }
  if (stream != nullptr && stream->card != current_card) {
    std::fprintf(stderr, "cuda_on_cpu: %s: launched on card %d into a stream of card %d\n",
                 kernel_name, current_card, stream->card);
    Api(cudaErrorInvalidResourceHandle);
    return;
  }
  if (AdmitWork(kernel_name, pointers) != Admission::kRun) return;
  if (const Injected injected = InjectedFault(); injected != Injected::kNone) {
    std::fprintf(stderr, "cuda_on_cpu: %s: injected fault%s (QLORAD_CUDA_ON_CPU_FAULT_FILE)\n",
                 kernel_name, injected == Injected::kAtNextWait ? ", shown at the next wait" : "");
    if (injected == Injected::kNow) {
      Fault(cudaErrorIllegalAddress);
    } else {
      pending_fault[current_card] = cudaErrorIllegalAddress;
    }
    return;
  }
  if (running != nullptr) {  // a launch from inside a kernel: dynamic parallelism, unused
    std::fprintf(stderr, "cuda_on_cpu: %s launched from a kernel\n", kernel_name);
    std::abort();
  }
  ++launches;
  // Fiber stacks live as long as the thread, reused from launch to launch.
  thread_local std::vector<std::unique_ptr<FiberStack>> stacks;
  while (stacks.size() < threads) stacks.push_back(std::make_unique<FiberStack>());
  // Launches alternate which of a block's two turn orders its first block takes, and run
  // their blocks first to last or last to first (no block may depend on another's writes).
  static std::atomic<uint64_t> launch_number{0};
  const uint64_t launch = launch_number++;

  Block b;
  b.thread = &thread;
  b.fibers.resize(threads);
  const int warps = static_cast<int>((threads + kWarp - 1) / kWarp);
  b.at_warp_barrier.assign(warps, 0);
  b.warp_kind.assign(warps, WarpCollective::kNone);
  b.slots.assign(2, std::vector<uint64_t>(threads, 0));
  b.shuffle_generation.assign(threads, 0);
  b.butterfly.assign(2, std::vector<float>(static_cast<size_t>(warps) * 2 * kWarp, 0.0f));
  if (dynamic_shared_bytes > 0) {
    void* p = nullptr;
    if (posix_memalign(&p, 128, dynamic_shared_bytes) != 0) {
      std::fprintf(stderr, "cuda_on_cpu: no memory for %zu shared bytes\n", dynamic_shared_bytes);
      std::abort();
    }
    b.dynamic_shared.reset(static_cast<unsigned char*>(p));
    b.dynamic_bytes = dynamic_shared_bytes;
  }
  const dim3 saved_block_dim = blockDim, saved_grid_dim = gridDim;
  blockDim = block;
  gridDim = grid;
  running = &b;
#if defined(QLORAD_FIBERS_UNDER_ASAN)
  // The calling thread's stack, which fibers switch back to (ASan must know its bounds).
  pthread_attr_t attr;
  void* stack_low = nullptr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &stack_low, &b.scheduler_stack_size);
    pthread_attr_destroy(&attr);
  }
  b.scheduler_stack_bottom = stack_low;
#endif
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  for (uint64_t k = 0; k < blocks && !b.failed; ++k) {
    const uint64_t block_number = launch % 2 == 1 ? blocks - 1 - k : k;
    blockIdx = {static_cast<unsigned>(block_number % grid.x),
                static_cast<unsigned>(block_number / grid.x % grid.y),
                static_cast<unsigned>(block_number / (uint64_t{grid.x} * grid.y))};
    b.reversed = (launch + k) % 2 == 1;
    if (b.dynamic_bytes > 0) std::memset(b.dynamic_shared.get(), 0xFF, b.dynamic_bytes);
    b.run_queue.clear();
    b.at_block_barrier = 0;
    std::fill(b.at_warp_barrier.begin(), b.at_warp_barrier.end(), 0);
    for (uint64_t t = 0; t < threads; ++t) {
      const int i = static_cast<int>(b.reversed ? threads - 1 - t : t);
      Fiber& f = b.fibers[i];
      f.index = {static_cast<unsigned>(i % block.x), static_cast<unsigned>(i / block.x % block.y),
                 static_cast<unsigned>(i / (uint64_t{block.x} * block.y))};
      f.state = FiberState::kRunnable;
      f.stack = stacks[i]->base();
#if defined(QLORAD_FIBERS_UNDER_ASAN)
      // A fiber abandoned mid-call (a finished one never returns from its last switch) leaves
      // its frames' poison on the stack.
      ASAN_UNPOISON_MEMORY_REGION(f.stack, kFiberStack);
#endif
      // Each stack's top at a different cache set: stacks of the same size all begin on the
      // same sets, and the fibers' frames, touched at every switch, evicted each other.
      MakeFiber(f.context, f.stack, kFiberStack - static_cast<size_t>(i) * 1088 % 65536, FiberMain);
      b.run_queue.push_back(i);
    }
    RunBlock(b);
  }
  running = nullptr;
  blockDim = saved_block_dim;
  gridDim = saved_grid_dim;
  if (auto* profile = Profile(); profile != nullptr) {
    std::lock_guard<std::mutex> lock(profile_mu);
    KernelProfile& k = (*profile)[kernel_name];
    ++k.launches;
    k.threads += threads * grid.x * grid.y * grid.z;
    k.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  }
  if (b.failed) {
    std::fprintf(stderr, "cuda_on_cpu: %s: %s\n", kernel_name, b.failure.c_str());
    Fault(cudaErrorLaunchFailure);
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

// The running thread's warp meets for `kind`: it waits until every lane of its warp has arrived
// (at the same kind of collective: a lane at another one fails the launch).
void WarpRendezvous(Block& b, Fiber& f, WarpCollective kind) {
  const int warp = b.current / kWarp;
  if (b.at_warp_barrier[warp] == 0) {
    b.warp_kind[warp] = kind;
  } else if (b.warp_kind[warp] != kind) {
    FailHere(b, Where(f) +
                    " meets its warp at another warp collective than the lanes that "
                    "wait for it (a shuffle, a butterfly reduction or __syncwarp)");
  }
  if (++b.at_warp_barrier[warp] == WarpSize(b, warp)) {
    b.at_warp_barrier[warp] = 0;
    Release(b, FiberState::kAtWarpBarrier, warp);
  } else {
    f.state = FiberState::kAtWarpBarrier;
  }
  Yield(/*finished=*/false);
}

// Whether `mask` names every lane of the running thread's warp; if not, the launch fails there.
void WholeWarp(Block& b, Fiber& f, unsigned mask, const char* what) {
  const int lanes = WarpSize(b, b.current / kWarp);
  const unsigned all = lanes == 32 ? 0xFFFFFFFFu : (1u << lanes) - 1u;
  if (mask == all) return;
  FailHere(b, Where(f) + ": " + what + " with mask " + std::to_string(mask) + " in a warp of " +
                  std::to_string(lanes) + " threads (only whole warps are modelled)");
}

uint64_t ShuffleXor(unsigned mask, uint64_t v, int lane_mask, int width) {
  Block& b = *running;
  Fiber& f = b.fibers[b.current];
  WholeWarp(b, f, mask, "a shuffle");
  if (width != kWarp || lane_mask < 0 || lane_mask >= kWarp ||
      (b.current % kWarp ^ lane_mask) >= WarpSize(b, b.current / kWarp)) {
    FailHere(b, Where(f) + ": a shuffle of width " + std::to_string(width) + " with lane mask " +
                    std::to_string(lane_mask) + " (only whole-warp xor shuffles are modelled)");
  }
  // Double-buffered by generation: a lane cannot get two shuffles ahead of its partner, since
  // the next rendezvous waits for it.
  const int g = b.shuffle_generation[b.current] ^= 1;
  b.slots[g][b.current] = v;
  WarpRendezvous(b, f, WarpCollective::kShuffle);
  return b.slots[g][b.current ^ lane_mask];
}

float WarpButterfly(float v, bool max) {
  Block& b = *running;
  Fiber& f = b.fibers[b.current];
  WholeWarp(b, f, 0xFFFFFFFFu, "a butterfly reduction");
  const int g = b.shuffle_generation[b.current] ^= 1, warp = b.current / kWarp;
  float* in = &b.butterfly[g][static_cast<size_t>(warp) * 2 * kWarp];
  float* out = in + kWarp;
  in[b.current % kWarp] = v;
  if (b.at_warp_barrier[warp] + 1 == kWarp) {
    // The last lane to arrive runs every lane's value through the five rounds, as the shuffles
    // would leave them; the others read their own.
    float x[kWarp];
    std::copy(in, in + kWarp, out);
    for (int o = 16; o > 0; o >>= 1) {
      for (int l = 0; l < kWarp; ++l) x[l] = max ? fmaxf(out[l], out[l ^ o]) : out[l] + out[l ^ o];
      std::copy(x, x + kWarp, out);
    }
  }
  WarpRendezvous(b, f, WarpCollective::kButterfly);
  return out[b.current % kWarp];
}

void SyncWarp(unsigned mask) {
  Block& b = *running;
  Fiber& f = b.fibers[b.current];
  WholeWarp(b, f, mask, "__syncwarp");
  WarpRendezvous(b, f, WarpCollective::kSyncWarp);
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

unsigned char* DynamicShared() {
  if (running == nullptr) {
    std::fprintf(stderr, "cuda_on_cpu: dynamic shared memory outside a kernel\n");
    std::abort();
  }
  return running->dynamic_shared.get();
}

void ReportViolation(const char* what) {
  if (running == nullptr) {
    std::fprintf(stderr, "cuda_on_cpu: %s (outside a kernel)\n", what);
    std::abort();
  }
  FailHere(*running, Where(running->fibers[running->current]) + ": " + what);
}

// Whether the current card's work may touch `p`, argument `argument` of `what` (its member
// `member` where the argument is a struct): null, its own allocation or managed memory. Anything
// else faults the card (AdmitWork).
bool ReachableOrFault(const void* p, const char* what, int argument, const char* member) {
  if (p == nullptr) return true;
  std::string why;
  {
    std::lock_guard<std::mutex> lock(allocations_mu);
    const Allocation* a = Holding(p, 0);
    if (a == nullptr) {
      why = "is not device memory (a host pointer, or freed)";
    } else if (a->card != current_card && !a->managed) {
      why = "is card " + std::to_string(a->card) + "'s memory";
    } else {
      return true;
    }
  }
  std::fprintf(stderr, "cuda_on_cpu: %s on card %d: pointer argument %d%s%s %s\n", what,
               current_card, argument, member != nullptr ? " ." : "",
               member != nullptr ? member : "", why.c_str());
  Fault(cudaErrorIllegalAddress);
  return false;
}

Admission AdmitWork(const char* what, const std::vector<KernelPointer>& pointers) {
  if (sticky_error[current_card].load() != cudaSuccess) return Admission::kFaulted;
  if (pending_fault[current_card].load() != cudaSuccess) return Admission::kPending;
  for (const KernelPointer& k : pointers) {
    if (!ReachableOrFault(k.p, what, k.argument, k.member)) return Admission::kFaulted;
  }
  return Admission::kRun;
}

ApiCounts Counts() {
  return {synchronizes.load(), copies_to_host.load(), allocations.load(), frees.load(),
          launches.load()};
}

int StreamCard(cudaStream_t stream) { return stream != nullptr ? stream->card : current_card; }

}  // namespace qlorad::cuda_on_cpu

namespace coc = qlorad::cuda_on_cpu;

void __syncthreads() { coc::BlockBarrier(); }
void __syncwarp(unsigned mask) { coc::SyncWarp(mask); }
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

// Every call below returns through coc::Api: a sticky fault first, else its own result,
// recorded as the most recent error when it failed.
cudaError_t cudaGetLastError() {
  const cudaError_t sticky = coc::sticky_error[coc::current_card].load();
  if (sticky != cudaSuccess) return sticky;
  const cudaError_t e = coc::last_error;
  coc::last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  const cudaError_t sticky = coc::sticky_error[coc::current_card].load();
  return sticky != cudaSuccess ? sticky : coc::last_error;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = coc::CardCount();
  return coc::Api(cudaSuccess);
}
cudaError_t cudaGetDevice(int* device) {
  *device = coc::current_card;
  return coc::Api(cudaSuccess);
}
// An H200's (the card the GPU tests are written for): launchers size their grids by these.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= coc::CardCount()) return coc::Api(cudaErrorInvalidValue);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = 132;
      return coc::Api(cudaSuccess);
    case cudaDevAttrConcurrentManagedAccess:
      *value = 1;
      return coc::Api(cudaSuccess);
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = 227 * 1024;
      return coc::Api(cudaSuccess);
  }
  return coc::Api(cudaErrorInvalidValue);
}

// Launches finish before they return: synchronising only reports a fault.
cudaError_t cudaDeviceSynchronize() { return coc::Wait(coc::current_card); }
// The card's context is made anew: its memory is freed (its streams, events and cuBLAS handles
// go stale too; nothing here tracks them).
cudaError_t cudaDeviceReset() {
  {
    std::lock_guard<std::mutex> lock(coc::allocations_mu);
    auto& all = coc::Allocations();
    for (auto it = all.begin(); it != all.end();) {
      if (it->second.card != coc::current_card) {
        ++it;
        continue;
      }
      it = coc::Release(it);
    }
  }
  coc::sticky_error[coc::current_card] = cudaSuccess;
  coc::pending_fault[coc::current_card] = cudaSuccess;
  coc::last_error = cudaSuccess;
  return cudaSuccess;
}
// A stream's errors are its card's, whichever card is current.
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  return coc::Wait(coc::StreamCard(stream));
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  ++coc::allocations;
  return coc::Api(coc::Allocate(p, bytes, false));
}
cudaError_t cudaMallocManaged(void** p, size_t bytes, unsigned) {
  ++coc::allocations;
  return coc::Api(coc::Allocate(p, bytes, true));
}
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return coc::Api(cudaSuccess);
  ++coc::frees;
  {
    std::lock_guard<std::mutex> lock(coc::allocations_mu);
    auto it = coc::Allocations().find(static_cast<const char*>(p));
    if (it == coc::Allocations().end()) return coc::Api(cudaErrorInvalidDevicePointer);
    coc::Release(it);
  }
  return coc::Api(cudaSuccess);
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(coc::allocations_mu);
  *total_bytes = coc::ReportedTotalBytes();
  *free_bytes = coc::CardBytes() - coc::allocated_bytes[coc::current_card];
  return coc::Api(cudaSuccess);
}
cudaError_t cudaMemAdvise(const void* p, size_t bytes, cudaMemoryAdvise, cudaMemLocation) {
  return coc::Api(coc::ManagedRange(p, bytes) ? cudaSuccess : cudaErrorInvalidValue);
}
cudaError_t cudaMemPrefetchAsync(const void* p, size_t bytes, cudaMemLocation, unsigned,
                                 cudaStream_t) {
  return coc::Api(coc::ManagedRange(p, bytes) ? cudaSuccess : cudaErrorInvalidValue);
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= coc::CardCount()) return coc::Api(cudaErrorInvalidDevice);
  coc::current_card = device;
  return coc::Api(cudaSuccess);
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= coc::CardCount()) return coc::Api(cudaErrorInvalidDevice);
  *prop = {};
  std::snprintf(prop->name, sizeof(prop->name), "CUDA stand-in on the CPU (tests/cuda_on_cpu)");
  prop->totalGlobalMem = coc::ReportedTotalBytes();
  prop->multiProcessorCount = 132;
  prop->major = 9;
  prop->minor = 0;
  return coc::Api(cudaSuccess);
}

// Events read the host clock.
// An event belongs to the card current when it was made, and is recorded only into that card's
// streams (cudaErrorInvalidResourceHandle otherwise, as the runtime documents).
struct CUevent_st {
  int card;
  std::chrono::steady_clock::time_point at;
  bool recorded = false;
};
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  *stream = new CUstream_st{coc::current_card};
  return coc::Api(cudaSuccess);
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete stream;
  return coc::Api(cudaSuccess);
}
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st{coc::current_card, {}, false};
  return coc::Api(cudaSuccess);
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return coc::Api(cudaSuccess);
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (coc::StreamCard(stream) != event->card) return coc::Api(cudaErrorInvalidResourceHandle);
  event->at = std::chrono::steady_clock::now();
  event->recorded = true;
  return coc::Api(cudaSuccess);
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  if (!start->recorded || !stop->recorded) return coc::Api(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(stop->at - start->at).count();
  return coc::Api(cudaSuccess);
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  return coc::Api(cudaMalloc(p, bytes));
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return coc::Api(cudaFree(p)); }

// The synchronous forms wait for the card.
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  std::memset(p, value, bytes);
  return coc::Wait(coc::current_card);
}
// A copy to pageable host memory waits for the stream's work first (it is counted as a copy to
// the host, not as a wait): a pending fault shows there.
// On a faulted card nothing is copied: a pending fault's copy to the host reports it, any other
// copy is queued work that never runs.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  coc::copies_to_host += kind == cudaMemcpyDeviceToHost;
  const int card = coc::StreamCard(stream);
  if (kind == cudaMemcpyDeviceToHost) coc::ShowPendingFault(card);
  const bool faulted = coc::sticky_error[card].load() != cudaSuccess ||
                       coc::pending_fault[card].load() != cudaSuccess;
  if (bytes > 0 && !faulted) std::memmove(dst, src, bytes);
  return coc::Api(cudaSuccess, card);
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
  return e != cudaSuccess ? e : coc::Wait(coc::current_card);
}
