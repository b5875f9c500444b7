// Runs a CUDA block program written against the context of kernels/flash_attention_body.h (or
// kernels/lora_dropout_body.h) on the CPU: each block's threads are real threads sharing one
// shared-memory buffer, with real barriers for __syncthreads, so a missing barrier or a wrong
// index shows up as a wrong result here rather than only on a GPU. bf16 rounds to nearest even
// as the GPU's conversions do. The warp-collective instructions are modelled lane by lane from
// the PTX ISA: Mma (mma.m16n8k16, bf16 in, float accumulation, "Matrix Fragments for
// mma.m16n8k16 with floating point type"), LoadMatrix4 (ldmatrix.x4 and .trans) and ShflXor:
// each lane hands in only its own registers or row address, so a lane that loads the wrong
// elements computes a wrong result here too. cp.async copies land late or early (AsyncCopies).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "kernels/element.h"

namespace qlorad::testing {

// A reusable barrier for `count` threads (an atomic generation counter: waiting threads sleep
// on it through the kernel's futex, far cheaper than a mutex and condition variable when 256
// emulated threads share two cores).
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void Wait() {
    // Read before arriving: the generation cannot move on until this thread has arrived.
    const uint32_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);  // published by the release below
      generation_.fetch_add(1, std::memory_order_release);
      generation_.notify_all();
      return;
    }
    generation_.wait(generation, std::memory_order_acquire);
  }

 private:
  const int count_;
  std::atomic<int> arrived_{0};
  std::atomic<uint32_t> generation_{0};
};

struct EmulatedBf16 {
  uint16_t bits = 0;
};

inline EmulatedBf16 FloatToBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return {static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return {static_cast<uint16_t>(u >> 16)};
}

inline float Bf16ToFloat(EmulatedBf16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

}  // namespace qlorad::testing

// bf16 activations in the emulated block programs, as Element<__nv_bfloat16> on the GPU.
template <>
struct qlorad::kernels::Element<qlorad::testing::EmulatedBf16> {
  static float Load(qlorad::testing::EmulatedBf16 v) { return qlorad::testing::Bf16ToFloat(v); }
  static qlorad::testing::EmulatedBf16 Round(float v) { return qlorad::testing::FloatToBf16(v); }
};

namespace qlorad::testing {

struct EmulatedBlockShared {
  explicit EmulatedBlockShared(int threads)
      : block(threads), lanes(threads), fragments(threads), rows(threads) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Barrier>(32));
  }
  Barrier block;
  std::vector<std::unique_ptr<Barrier>> warps;
  // Where the block's threads are not host threads but the CUDA stand-in's fibers
  // (tests/cuda_on_cpu): its __syncthreads and __syncwarp in place of the barriers above.
  void (*sync_block)() = nullptr;
  void (*sync_warp)() = nullptr;
  std::atomic<int> violations{0};  // misaligned accesses, copies never waited for
  std::vector<float> lanes;        // one slot per thread for warp reductions and shuffles
  std::vector<std::array<uint32_t, 6>> fragments;  // one thread's A and B registers for Mma
  std::vector<const EmulatedBf16*> rows;           // one thread's row address for LoadMatrix4
};

inline uint32_t Bf16Pair(EmulatedBf16 lo, EmulatedBf16 hi) {
  return static_cast<uint32_t>(lo.bits) | static_cast<uint32_t>(hi.bits) << 16;
}
inline float PairHalf(uint32_t pair, int half) {
  return Bf16ToFloat({static_cast<uint16_t>(half == 0 ? pair & 0xFFFFu : pair >> 16)});
}

// How the emulator lands asynchronous copies (cp.async): kDeferred holds each group back until
// a WaitAsync lets it through, as late as the hardware may (a read before the wait sees the
// poison); kImmediate lands each copy when issued, as early as it may, and slows the block's
// first warp down (its rows are never past T), so that the others run ahead into the next
// tile's copies: a copy into a buffer that a warp still reads (a missing barrier) corrupts what
// it reads.
enum class AsyncCopies { kDeferred, kImmediate };

struct EmulatedContext {
  using Bf16 = EmulatedBf16;
  int thread = 0, block_x = 0, block_y = 0;
  EmulatedBlockShared* shared = nullptr;
  AsyncCopies async_copies = AsyncCopies::kDeferred;

  struct Copy {
    void* dst;
    const void* src;
    int bytes;
    bool zero_fill;
    void Land() const {
      if (zero_fill) {
        std::memset(dst, 0, bytes);
      } else {
        std::memcpy(dst, src, bytes);
      }
    }
  };
  std::vector<Copy> open_group;           // issued, not yet committed
  std::vector<std::vector<Copy>> groups;  // committed, oldest first, not yet landed

  // cp.async of kBytes (4 or 16, both addresses aligned to it), zeros when zero_fill.
  template <int kBytes>
  void CopyAsync(void* dst, const void* src, bool zero_fill) {
    if (reinterpret_cast<uintptr_t>(dst) % kBytes != 0 ||
        reinterpret_cast<uintptr_t>(src) % kBytes != 0) {
      ++shared->violations;
    }
    const Copy c{dst, src, kBytes, zero_fill};
    if (async_copies == AsyncCopies::kImmediate) {
      c.Land();
    } else {
      open_group.push_back(c);
    }
  }
  void CommitAsync() {
    groups.push_back(std::move(open_group));
    open_group.clear();
  }
  // cp.async.wait_group N: every committed group but the newest N has landed.
  template <int N>
  void WaitAsync() {
    while (groups.size() > static_cast<size_t>(N)) {
      for (const Copy& c : groups.front()) c.Land();
      groups.erase(groups.begin());
    }
  }
  bool CopiesPending() const {
    if (!open_group.empty()) return true;
    for (const auto& g : groups) {
      if (!g.empty()) return true;
    }
    return false;
  }

  void SyncBlock() {
    if (shared->sync_block != nullptr) return shared->sync_block();
    shared->block.Wait();
  }
  void SyncWarp() {
    if (shared->sync_warp != nullptr) return shared->sync_warp();
    shared->warps[thread / 32]->Wait();
  }
  // Warp-collective (all 32 lanes call it): the sum of v over the warp, in every lane.
  float WarpSum(float v) {
    shared->lanes[thread] = v;
    SyncWarp();
    float s = 0.0f;
    for (int l = thread / 32 * 32; l < thread / 32 * 32 + 32; ++l) s += shared->lanes[l];
    SyncWarp();  // no lane overwrites its slot before every lane has read it
    return s;
  }
  static Bf16 ToBf16(float x) { return FloatToBf16(x); }

  // The flash-attention primitives (kernels/flash_attention_body.h). Misaligned accesses are
  // counted as violations: the GPU would fault or read the wrong bytes.
  static uint32_t Pack(float lo, float hi) { return Bf16Pair(ToBf16(lo), ToBf16(hi)); }
  // ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lanes 8j..8j+7 give the rows of matrix
  // j; register j of lane 4 g + t gets its elements (g, 2t), (g, 2t+1), or transposed (2t, g),
  // (2t+1, g), the lower one in the low half. Rows must be 16-byte aligned.
  void LoadMatrix4(const Bf16* row, uint32_t (&r)[4]) { LoadMatrices(row, false, r); }
  void LoadMatrix4Trans(const Bf16* row, uint32_t (&r)[4]) { LoadMatrices(row, true, r); }
  void LoadMatrices(const Bf16* row, bool transpose, uint32_t (&r)[4]) {
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0) ++shared->violations;
    shared->rows[thread] = row;
    SyncWarp();
    const int base = thread & ~31, g = thread % 32 / 4, t = thread % 4;
    for (int j = 0; j < 4; ++j) {
      const Bf16* const* rows = &shared->rows[base + 8 * j];
      r[j] = transpose ? Bf16Pair(rows[2 * t][g], rows[2 * t + 1][g])
                       : Bf16Pair(rows[g][2 * t], rows[g][2 * t + 1]);
    }
    SyncWarp();  // every lane has read the addresses before any lane publishes new ones
  }
  template <typename X>
  void Copy8(const X* src, Bf16* dst) {
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0) ++shared->violations;
    for (int i = 0; i < 8; ++i) dst[i] = ToBf16(kernels::Element<X>::Load(src[i]));
  }
  template <typename X>
  void Store2(X* dst, float lo, float hi) {
    dst[0] = kernels::Element<X>::Round(lo);
    dst[1] = kernels::Element<X>::Round(hi);
  }
  void Zero8(Bf16* dst) {
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0) ++shared->violations;
    for (int i = 0; i < 8; ++i) dst[i] = Bf16{};
  }
  static float Exp(float x) { return std::exp(x); }
  float ShflXor(float v, int mask) {
    shared->lanes[thread] = v;
    SyncWarp();
    const float other = shared->lanes[(thread & ~31) | ((thread % 32) ^ mask)];
    SyncWarp();  // no lane overwrites its slot before its partner has read it
    return other;
  }
  // d += A B for the warp's m16n8k16 tile: every lane publishes its registers, then computes
  // its own four outputs from the lanes that hold each element under the instruction's layout.
  void Mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    if (async_copies == AsyncCopies::kImmediate && thread < 32) {
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    shared->fragments[thread] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    SyncWarp();
    const int base = thread & ~31, lane = thread % 32, g = lane / 4, t = lane % 4;
    // A (m, k): lane 4 (m % 8) + (k % 8) / 2, register (m >= 8) + 2 (k >= 8), half k % 2.
    auto A = [&](int m, int k) {
      const auto& f = shared->fragments[base + 4 * (m % 8) + (k % 8) / 2];
      return PairHalf(f[(m >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2);
    };
    // B (k, n): lane 4 n + (k % 8) / 2, register 4 + (k >= 8), half k % 2.
    auto Bv = [&](int k, int n) {
      const auto& f = shared->fragments[base + 4 * n + (k % 8) / 2];
      return PairHalf(f[4 + (k >= 8 ? 1 : 0)], k % 2);
    };
    float out[4];
    for (int i = 0; i < 4; ++i) {
      const int m = g + 8 * (i / 2), n = 2 * t + (i & 1);
      float sum = 0.0f;
      for (int k = 0; k < 16; ++k) sum += A(m, k) * Bv(k, n);
      out[i] = d[i] + sum;
    }
    SyncWarp();  // every lane has read the fragments before any lane publishes new ones
    for (int i = 0; i < 4; ++i) d[i] = out[i];
  }
};

// Runs `program(context, shared_memory)` for every block of a grid_x x grid_y grid, one block
// at a time, each with `threads` threads and `smem_bytes` of shared memory (128-byte aligned, as
// on the GPU) filled with a poison pattern (a program must not read what it did not write).
// The same `threads` host threads run every block in turn, meeting at a barrier between blocks.
// `async_copies` says how cp.async copies land. Returns the number of violations: misaligned
// operands and copies a block never waited for.
template <class Program>
int RunEmulatedGrid(int grid_x, int grid_y, int threads, int smem_bytes, Program program,
                    AsyncCopies async_copies = AsyncCopies::kDeferred) {
  std::vector<unsigned char> smem(static_cast<size_t>(smem_bytes) + 128);
  unsigned char* base = smem.data() + (128 - reinterpret_cast<uintptr_t>(smem.data()) % 128);
  EmulatedBlockShared shared(threads);
  Barrier between_blocks(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int by = 0; by < grid_y; ++by) {
        for (int bx = 0; bx < grid_x; ++bx) {
          if (t == 0) std::fill(smem.begin(), smem.end(), 0xFF);  // NaNs
          between_blocks.Wait();  // fresh shared memory before any thread starts the block
          EmulatedContext cx;
          cx.thread = t;
          cx.block_x = bx;
          cx.block_y = by;
          cx.shared = &shared;
          cx.async_copies = async_copies;
          program(cx, base);
          if (cx.CopiesPending()) ++shared.violations;  // a copy the block never waited for
          between_blocks.Wait();  // every thread is done with the block before the next one
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  return shared.violations.load();
}

}  // namespace qlorad::testing
