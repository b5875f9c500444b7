// LoRA's down-projection through dropout, fused: the dropped-out input is never written.
// PEFT computes lora_B(lora_A(dropout(x))); the unfused form writes dropout(x) [n, in] to
// memory, reads it back for the GEMM, makes it again in the backward for dA, and passes the
// input gradient through one more dropout and one more add: 48 bytes of memory traffic per
// input element and adapted module. These kernels apply the mask where they read x (or write
// dx), from the same counter-based hash as kernels/cpu/dropout.h, in 16 bytes.
//
// The block programs are written once against a small context `C` so that the same code runs
// on the GPU (kernels/cuda/lora_dropout.cu) and on the CPU under the block emulator
// (tests/kernels/lora_dropout_test.cc). The context provides:
//   int thread, block_x, block_y;   // threadIdx.x (0..kLoraThreads-1), blockIdx.x, blockIdx.y
//   void SyncBlock();               // __syncthreads()
//   float ShflXor(float v, int m);  // v of lane (this lane ^ m)
// The CPU twins are kernels/cpu/lora_dropout.h.
#pragma once

#include <cstdint>
#if defined(QLORAD_CUDA_ON_CPU)
#include <utility>
#include <vector>
#endif

#include "kernels/cpu/dropout.h"
#include "kernels/element.h"

#if defined(__CUDACC__)
#define QLORAD_LORA_FN __device__ inline
// Fully unrolled, the register arrays below stay in registers (not local memory).
#define QLORAD_UNROLL _Pragma("unroll")
#else
#define QLORAD_LORA_FN inline
#define QLORAD_UNROLL
#endif

namespace qlorad::kernels::lora {

constexpr int kLoraThreads = 256;
constexpr int kRankChunk = 16;   // rank columns a thread keeps in registers at once
constexpr int kDownRows = 4;     // tokens per block of the down-projection
constexpr int kGradTokens = 64;  // tokens per block of dA's partial sums
constexpr int kInputRows = 8;    // tokens per block of the input gradient
constexpr int kMaxRank = 64;     // the shared memory below is sized for it

// X: the element type of x and dx (the activations, kernels/element.h: float32, or bf16 in
// the CUDA kernels); everything else is float32. dx is rounded once after its add.
template <typename X>
struct LoraDropoutArgs {
  const X* x = nullptr;       // [n, in], the module's input
  const float* a = nullptr;   // [r, in], LoRA A
  const float* dh = nullptr;  // [n, r], the gradient of h = dropout(x) A^T
  int64_t n = 0, in = 0;
  int r = 0;
  float p = 0.0f, scale = 1.0f;  // drop probability, 1 / (1 - p)
  uint64_t seed = 0, stream = 0;
  float* h = nullptr;        // [n, r]
  float* partial = nullptr;  // [GradTokenBlocks(n), r, in]
  float* da = nullptr;       // [r, in]
  X* dx = nullptr;           // [n, in]
};

#if defined(QLORAD_CUDA_ON_CPU)
// The pointers a launch hands the kernels inside LoraDropoutArgs, for the CUDA stand-in's check
// that each is memory the card reaches (tests/cuda_on_cpu).
// The binding names every member, so one added to the struct stops this building until it is
// listed here too.
template <typename X>
std::vector<std::pair<const char*, const void*>> KernelPointers(const LoraDropoutArgs<X>& args) {
  [[maybe_unused]] const auto& [x, a, dh, n, in, r, p, scale, seed, stream, h, partial, da, dx] =
      args;
  return {{"x", x}, {"a", a}, {"dh", dh}, {"h", h}, {"partial", partial}, {"da", da}, {"dx", dx}};
}
#endif

QLORAD_HOST_DEVICE inline int64_t GradTokenBlocks(int64_t n) {
  return (n + kGradTokens - 1) / kGradTokens;
}

// keep[s]: whether element (t + s, i) of the [., in] stream is kept, s = 0, 1 (DropoutKeep's
// decision; row t + 1 may lie past the tensor, its decision is then unused). The hash covers a
// pair of elements, and in a row of even length lanes 2k and 2k + 1, holding columns i and
// i + 1 (i even), share a pair in every row: the even lane hashes row t's pair, the odd lane
// row t + 1's, and each hands the other its 24 bits (exact in a float), half the hashing of
// one hash per element, which dominates these kernels' time. Every lane of the warp calls it,
// with lane parity = column parity.
template <class C>
QLORAD_LORA_FN void KeepTwoRows(C& cx, const DropoutStreamMask& mask, int64_t in, int64_t t,
                                int64_t i, bool (&keep)[2]) {
  if (in % 2 != 0) {  // rows do not start on a pair (the whole block takes this branch)
    keep[0] = mask.Keep(static_cast<uint64_t>(t * in + i));
    keep[1] = mask.Keep(static_cast<uint64_t>((t + 1) * in + i));
    return;
  }
  const bool odd = (i & 1) != 0;
  const uint64_t z =
      DropoutPairBitsKeyed(mask.key, static_cast<uint64_t>(((odd ? t + 1 : t) * in + i) >> 1));
  const float other = cx.ShflXor(static_cast<float>(DropoutHalfBits(z, !odd)), 1);
  const bool own = mask.KeepBits(DropoutHalfBits(z, odd));
  const bool theirs = mask.KeepBits(static_cast<uint32_t>(other));
  keep[0] = odd ? theirs : own;  // selects, not a computed index: keep stays in registers
  keep[1] = odd ? own : theirs;
}

// d[jj] = row[jj] for the `count` (>= 1) rank columns of a chunk that exist, 0 past them. The
// rows sit in shared memory, and every lane reads the same row: on the GPU a full chunk of a
// rank that is a multiple of 4 is four 16-byte reads, not sixteen 4-byte ones (ncu on the H200
// found shared-memory reads the main stall of dA and dx; docs/benchmarks.md). The caller's
// shared array is 16-byte aligned.
QLORAD_LORA_FN void ReadRankChunk(const float* row, int count, bool aligned,
                                  float (&d)[kRankChunk]) {
#if defined(__CUDACC__)
  if (aligned && count >= kRankChunk) {
    QLORAD_UNROLL for (int q = 0; q < kRankChunk / 4; ++q) {
      const float4 v = reinterpret_cast<const float4*>(row)[q];
      d[4 * q] = v.x;
      d[4 * q + 1] = v.y;
      d[4 * q + 2] = v.z;
      d[4 * q + 3] = v.w;
    }
    return;
  }
#else
  (void)aligned;
#endif
  QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) d[jj] = jj < count ? row[jj] : 0.0f;
}

// w[jj] = A[j0 + jj, i] for the chunk's ranks that exist in a column that exists, else 0. An
// existing column and a full rank chunk (every thread but those past the last column, every
// chunk but a last partial one) load without a test per value.
template <typename X>
QLORAD_LORA_FN void ReadAColumn(const LoraDropoutArgs<X>& a, int j0, int64_t i, bool column,
                                float (&w)[kRankChunk]) {
  const float* col = a.a + static_cast<int64_t>(j0) * a.in + i;
  if (column && j0 + kRankChunk <= a.r) {
    QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) w[jj] = col[jj * a.in];
    return;
  }
  QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) {
    w[jj] = column && j0 + jj < a.r ? col[jj * a.in] : 0.0f;
  }
}

// Element (t, i) of dropout(v) given its keep decision: DropoutApply's value.
template <typename X>
QLORAD_LORA_FN float Dropped(const LoraDropoutArgs<X>& a, bool keep, float v) {
  return keep ? v * a.scale : 0.0f;
}

// One step of DownBlock's reduce-scatter over a warp: of the first 2 kHalf values a lane holds,
// it keeps one half (the upper where its lane bit kHalf / 2 is set) and adds the partner lane's
// copy of that half (a compile-time size, so that v stays in registers).
template <int kHalf, class C>
QLORAD_LORA_FN void ReduceScatterStep(C& cx, int lane, float (&v)[64]) {
  const bool upper = (lane & (kHalf / 2)) != 0;
  QLORAD_UNROLL for (int k = 0; k < kHalf; ++k) {
    const float send = upper ? v[k] : v[k + kHalf];
    const float keep = upper ? v[k + kHalf] : v[k];
    v[k] = keep + cx.ShflXor(send, kHalf / 2);  // every lane calls it
  }
}

// h[t, j] = sum_i dropout(x)[t, i] A[j, i] for kDownRows tokens and kRankChunk ranks: grid
// (ceil(n / kDownRows), ceil(r / kRankChunk)). Each thread sums a strided share of i (every
// lane the same number of steps: KeepTwoRows is warp-collective), then the warps' sums meet in
// shared memory (kLoraThreads / 32 * kDownRows * kRankChunk floats).
template <class C, typename X>
QLORAD_LORA_FN void DownBlock(C& cx, const LoraDropoutArgs<X>& a, float* smem) {
  static_assert(kDownRows % 2 == 0, "rows are decided two at a time");
  const int64_t t0 = static_cast<int64_t>(cx.block_x) * kDownRows;
  const int j0 = cx.block_y * kRankChunk;
  const DropoutStreamMask mask(a.seed, a.stream, a.p);
  float acc[kDownRows][kRankChunk];
  QLORAD_UNROLL for (int rr = 0; rr < kDownRows; ++rr) {
    QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) acc[rr][jj] = 0.0f;
  }
  for (int64_t i0 = 0; i0 < a.in; i0 += kLoraThreads) {
    const int64_t i = i0 + cx.thread;
    const bool column = i < a.in;
    float w[kRankChunk];
    ReadAColumn(a, j0, i, column, w);
    QLORAD_UNROLL for (int rr = 0; rr < kDownRows; rr += 2) {
      bool keep[2];
      KeepTwoRows(cx, mask, a.in, t0 + rr, i, keep);
      QLORAD_UNROLL for (int s = 0; s < 2; ++s) {
        const int64_t t = t0 + rr + s;
        const float v =
            column && t < a.n ? Dropped(a, keep[s], Element<X>::Load(a.x[t * a.in + i])) : 0.0f;
        QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) acc[rr + s][jj] += v * w[jj];
      }
    }
  }
  // The warp's 64 sums over its lanes in one butterfly that reduces and scatters: at each of its
  // five steps a lane keeps half of its values and adds the partner lane's copy of that half, so
  // lane L ends with sums 2L and 2L + 1: 62 shuffles, where a WarpSum of each of the 64 took
  // 320. Each sum is WarpSum's, bit for bit: every step adds the same two partial sums. (With
  // ReadAColumn, 53.1 -> 31.9 us at n 2048, in 4096, r 16 on the H200: docs/benchmarks.md.)
  static_assert(kDownRows * kRankChunk == 64, "two sums a lane after the butterfly");
  const int warp = cx.thread / 32, lane = cx.thread % 32;
  float v[kDownRows * kRankChunk];
  QLORAD_UNROLL for (int rr = 0; rr < kDownRows; ++rr) {
    QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) v[rr * kRankChunk + jj] = acc[rr][jj];
  }
  ReduceScatterStep<32>(cx, lane, v);
  ReduceScatterStep<16>(cx, lane, v);
  ReduceScatterStep<8>(cx, lane, v);
  ReduceScatterStep<4>(cx, lane, v);
  ReduceScatterStep<2>(cx, lane, v);
  smem[warp * 64 + 2 * lane] = v[0];  // smem[(warp * kDownRows + rr) * kRankChunk + jj]
  smem[warp * 64 + 2 * lane + 1] = v[1];
  cx.SyncBlock();
  if (cx.thread < kDownRows * kRankChunk) {
    const int rr = cx.thread / kRankChunk, jj = cx.thread % kRankChunk;
    const int64_t t = t0 + rr;
    if (t < a.n && j0 + jj < a.r) {
      float s = 0.0f;
      for (int w = 0; w < kLoraThreads / 32; ++w) s += smem[(w * kDownRows + rr) * kRankChunk + jj];
      a.h[t * a.r + j0 + jj] = s;
    }
  }
}

// partial[b, j, i] = sum over the kGradTokens tokens t of block b of dh[t, j] dropout(x)[t, i]:
// grid (ceil(in / kLoraThreads), GradTokenBlocks(n)), one column i per thread (past the last
// column a thread still takes part in KeepTwoRows), the block's dh rows in shared memory
// (kGradTokens * r floats). FinishGradABlock adds the blocks' partials to dA in a fixed order,
// so results do not depend on scheduling (no atomics).
template <class C, typename X>
QLORAD_LORA_FN void GradABlock(C& cx, const LoraDropoutArgs<X>& a, float* smem) {
  const int64_t i = static_cast<int64_t>(cx.block_x) * kLoraThreads + cx.thread;
  const bool column = i < a.in;
  const int64_t t0 = static_cast<int64_t>(cx.block_y) * kGradTokens;
  const int64_t tokens = a.n - t0 < kGradTokens ? a.n - t0 : kGradTokens;
  const DropoutStreamMask mask(a.seed, a.stream, a.p);
  for (int64_t k = cx.thread; k < tokens * a.r; k += kLoraThreads) smem[k] = a.dh[t0 * a.r + k];
  cx.SyncBlock();
  for (int j0 = 0; j0 < a.r; j0 += kRankChunk) {
    float acc[kRankChunk];
    QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) acc[jj] = 0.0f;
    for (int64_t tt = 0; tt < tokens; tt += 2) {
      bool keep[2];
      KeepTwoRows(cx, mask, a.in, t0 + tt, i, keep);
      QLORAD_UNROLL for (int s = 0; s < 2; ++s) {
        if (!column || tt + s >= tokens) continue;
        const int64_t t = t0 + tt + s;
        const float v = Dropped(a, keep[s], Element<X>::Load(a.x[t * a.in + i]));
        float d[kRankChunk];  // 0 past the rank: those sums are never stored
        ReadRankChunk(smem + (tt + s) * a.r + j0, a.r - j0, a.r % 4 == 0, d);
        QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) acc[jj] += d[jj] * v;
      }
    }
    QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) {
      if (column && j0 + jj < a.r)
        a.partial[(static_cast<int64_t>(cx.block_y) * a.r + j0 + jj) * a.in + i] = acc[jj];
    }
  }
}

// dA[e] += sum over token blocks b (in order) of partial[b, e], e < r * in: grid
// (ceil(r * in / kLoraThreads), 1).
template <class C, typename X>
QLORAD_LORA_FN void FinishGradABlock(C& cx, const LoraDropoutArgs<X>& a) {
  const int64_t e = static_cast<int64_t>(cx.block_x) * kLoraThreads + cx.thread;
  const int64_t size = static_cast<int64_t>(a.r) * a.in;
  if (e >= size) return;
  float s = 0.0f;
  const int64_t blocks = GradTokenBlocks(a.n);
  for (int64_t b = 0; b < blocks; ++b) s += a.partial[b * size + e];
  a.da[e] += s;
}

// dx[t, i] += dropout(dh A)[t, i] for kInputRows tokens: grid (ceil(n / kInputRows),
// ceil(in / kLoraThreads)), one column i per thread (past the last column a thread still takes
// part in KeepTwoRows), the block's dh rows in shared memory (kInputRows * r floats).
template <class C, typename X>
QLORAD_LORA_FN void BackwardInputBlock(C& cx, const LoraDropoutArgs<X>& a, float* smem) {
  static_assert(kInputRows % 2 == 0, "rows are decided two at a time");
  const int64_t t0 = static_cast<int64_t>(cx.block_x) * kInputRows;
  const int64_t i = static_cast<int64_t>(cx.block_y) * kLoraThreads + cx.thread;
  const bool column = i < a.in;
  const int rows = a.n - t0 < kInputRows ? static_cast<int>(a.n - t0) : kInputRows;
  const DropoutStreamMask mask(a.seed, a.stream, a.p);
  for (int64_t k = cx.thread; k < static_cast<int64_t>(rows) * a.r; k += kLoraThreads)
    smem[k] = a.dh[t0 * a.r + k];
  cx.SyncBlock();
  float val[kInputRows];
  QLORAD_UNROLL for (int rr = 0; rr < kInputRows; ++rr) val[rr] = 0.0f;
  for (int j0 = 0; j0 < a.r; j0 += kRankChunk) {
    float w[kRankChunk];
    ReadAColumn(a, j0, i, column, w);
    QLORAD_UNROLL for (int rr = 0; rr < kInputRows; ++rr) {
      if (rr < rows) {
        float d[kRankChunk];  // 0 past the rank, where w is 0 too
        ReadRankChunk(smem + rr * a.r + j0, a.r - j0, a.r % 4 == 0, d);
        QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) val[rr] += d[jj] * w[jj];
      }
    }
  }
  QLORAD_UNROLL for (int rr = 0; rr < kInputRows; rr += 2) {
    bool keep[2];
    KeepTwoRows(cx, mask, a.in, t0 + rr, i, keep);
    QLORAD_UNROLL for (int s = 0; s < 2; ++s) {
      if (column && rr + s < rows) {
        X& d = a.dx[(t0 + rr + s) * a.in + i];
        d = Element<X>::Round(Element<X>::Load(d) + Dropped(a, keep[s], val[rr + s]));
      }
    }
  }
}

}  // namespace qlorad::kernels::lora
