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
//   float WarpSum(float v);         // the sum of v over the 32 lanes, in every lane
// The CPU twins are kernels/cpu/lora_dropout.h.
#pragma once

#include <cstdint>

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
constexpr int kRankChunk = 16;    // rank columns a thread keeps in registers at once
constexpr int kDownRows = 4;      // tokens per block of the down-projection
constexpr int kGradTokens = 128;  // tokens per block of dA's partial sums
constexpr int kInputRows = 8;     // tokens per block of the input gradient
constexpr int kMaxRank = 64;      // the shared memory below is sized for it

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

QLORAD_HOST_DEVICE inline int64_t GradTokenBlocks(int64_t n) {
  return (n + kGradTokens - 1) / kGradTokens;
}

// Element (t, i) of dropout(v): the mask of element t * in + i of the stream, as DropoutApply
// (each block program makes `mask` once from a.seed, a.stream and a.p).
template <typename X>
QLORAD_LORA_FN float Dropped(const LoraDropoutArgs<X>& a, const DropoutStreamMask& mask, int64_t t,
                             int64_t i, float v) {
  return mask.Keep(static_cast<uint64_t>(t * a.in + i)) ? v * a.scale : 0.0f;
}

// h[t, j] = sum_i dropout(x)[t, i] A[j, i] for kDownRows tokens and kRankChunk ranks: grid
// (ceil(n / kDownRows), ceil(r / kRankChunk)). Each thread sums a strided share of i, then
// the warps' sums meet in shared memory (kLoraThreads / 32 * kDownRows * kRankChunk floats).
template <class C, typename X>
QLORAD_LORA_FN void DownBlock(C& cx, const LoraDropoutArgs<X>& a, float* smem) {
  const int64_t t0 = static_cast<int64_t>(cx.block_x) * kDownRows;
  const int j0 = cx.block_y * kRankChunk;
  const DropoutStreamMask mask(a.seed, a.stream, a.p);
  float acc[kDownRows][kRankChunk];
  QLORAD_UNROLL for (int rr = 0; rr < kDownRows; ++rr) {
    QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) acc[rr][jj] = 0.0f;
  }
  for (int64_t i = cx.thread; i < a.in; i += kLoraThreads) {
    float w[kRankChunk];
    QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) {
      w[jj] = j0 + jj < a.r ? a.a[static_cast<int64_t>(j0 + jj) * a.in + i] : 0.0f;
    }
    QLORAD_UNROLL for (int rr = 0; rr < kDownRows; ++rr) {
      const int64_t t = t0 + rr;
      const float v = t < a.n ? Dropped(a, mask, t, i, Element<X>::Load(a.x[t * a.in + i])) : 0.0f;
      QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) acc[rr][jj] += v * w[jj];
    }
  }
  const int warp = cx.thread / 32, lane = cx.thread % 32;
  QLORAD_UNROLL for (int rr = 0; rr < kDownRows; ++rr) {
    QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) {
      const float s = cx.WarpSum(acc[rr][jj]);  // every lane calls it
      if (lane == 0) smem[(warp * kDownRows + rr) * kRankChunk + jj] = s;
    }
  }
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
// grid (ceil(in / kLoraThreads), GradTokenBlocks(n)), one column i per thread, the block's dh
// rows in shared memory (kGradTokens * r floats). FinishGradABlock adds the blocks' partials
// to dA in a fixed order, so results do not depend on scheduling (no atomics).
template <class C, typename X>
QLORAD_LORA_FN void GradABlock(C& cx, const LoraDropoutArgs<X>& a, float* smem) {
  const int64_t i = static_cast<int64_t>(cx.block_x) * kLoraThreads + cx.thread;
  const int64_t t0 = static_cast<int64_t>(cx.block_y) * kGradTokens;
  const int64_t tokens = a.n - t0 < kGradTokens ? a.n - t0 : kGradTokens;
  const DropoutStreamMask mask(a.seed, a.stream, a.p);
  for (int64_t k = cx.thread; k < tokens * a.r; k += kLoraThreads) smem[k] = a.dh[t0 * a.r + k];
  cx.SyncBlock();
  if (i >= a.in) return;  // no barrier follows
  for (int j0 = 0; j0 < a.r; j0 += kRankChunk) {
    float acc[kRankChunk];
    QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) acc[jj] = 0.0f;
    for (int64_t tt = 0; tt < tokens; ++tt) {
      const float v = Dropped(a, mask, t0 + tt, i, Element<X>::Load(a.x[(t0 + tt) * a.in + i]));
      const float* d = smem + tt * a.r + j0;
      QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) {
        if (j0 + jj < a.r) acc[jj] += d[jj] * v;
      }
    }
    QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) {
      if (j0 + jj < a.r)
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
// ceil(in / kLoraThreads)), one column i per thread, the block's dh rows in shared memory
// (kInputRows * r floats).
template <class C, typename X>
QLORAD_LORA_FN void BackwardInputBlock(C& cx, const LoraDropoutArgs<X>& a, float* smem) {
  const int64_t t0 = static_cast<int64_t>(cx.block_x) * kInputRows;
  const int64_t i = static_cast<int64_t>(cx.block_y) * kLoraThreads + cx.thread;
  const int rows = a.n - t0 < kInputRows ? static_cast<int>(a.n - t0) : kInputRows;
  const DropoutStreamMask mask(a.seed, a.stream, a.p);
  for (int64_t k = cx.thread; k < static_cast<int64_t>(rows) * a.r; k += kLoraThreads)
    smem[k] = a.dh[t0 * a.r + k];
  cx.SyncBlock();
  if (i >= a.in) return;  // no barrier follows
  float val[kInputRows];
  QLORAD_UNROLL for (int rr = 0; rr < kInputRows; ++rr) val[rr] = 0.0f;
  for (int j0 = 0; j0 < a.r; j0 += kRankChunk) {
    float w[kRankChunk];
    QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) {
      w[jj] = j0 + jj < a.r ? a.a[static_cast<int64_t>(j0 + jj) * a.in + i] : 0.0f;
    }
    QLORAD_UNROLL for (int rr = 0; rr < kInputRows; ++rr) {
      if (rr < rows) {
        QLORAD_UNROLL for (int jj = 0; jj < kRankChunk; ++jj) {
          if (j0 + jj < a.r) val[rr] += smem[rr * a.r + j0 + jj] * w[jj];
        }
      }
    }
  }
  QLORAD_UNROLL for (int rr = 0; rr < kInputRows; ++rr) {
    const int64_t t = t0 + rr;
    if (rr < rows) {
      X& d = a.dx[t * a.in + i];
      d = Element<X>::Round(Element<X>::Load(d) + Dropped(a, mask, t, i, val[rr]));
    }
  }
}

}  // namespace qlorad::kernels::lora
