// Flash attention for training (causal, grouped-query, block-diagonal over packed segments):
// the per-block programs of the CUDA kernels, written once against a small context `C` so that
// the same code runs on the GPU (kernels/cuda/flash_attention.cu: tensor-core WMMA tiles, real
// shared memory and barriers) and on the CPU under an emulator that runs each block's 128
// threads as real threads with real barriers (tests/kernels/flash_attention_emulation_test.cc).
// The CPU twin the results are checked against is kernels/cpu/attention_train.h.
//
// Nothing of size T x T is ever stored: the forward keeps one log-sum-exp per (head, query),
// the backward recomputes the probabilities tile by tile (FlashAttention-2, Dao 2023). The
// backward is two kernels, one owning key tiles (dK, dV) and one owning query tiles (dQ), so
// that no gradient needs atomics and results do not depend on scheduling.
//
// The context provides:
//   int thread, block_x, block_y;              // threadIdx.x (0..127), blockIdx.x, blockIdx.y
//   void SyncBlock(); void SyncWarp();          // __syncthreads(), __syncwarp()
//   using Bf16; static Bf16 ToBf16(float);      // round to nearest even
//   template <bool kBColMajor> void WarpMma16(a, lda, b, ldb, ksteps, c, ldc, accumulate);
// WarpMma16 is warp-collective (all 32 lanes call it): C[16x16] (float, row-major, ldc) =
// (accumulate ? C : 0) + sum over ks < ksteps of A_ks B_ks, A_ks the 16x16 bf16 block at
// a + 16 ks (row-major, lda) and B_ks the 16x16 block at b + 16 ks ldb (row-major: element
// (kk, n) at b[kk ldb + n]) or, when kBColMajor, at b + 16 ks with element (kk, n) at
// b[n ldb + kk]. Pointers must be 32-byte aligned and leading dimensions multiples of 8
// (bf16) or 4 (float): the layouts below keep every tile so.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/element.h"

#if defined(__CUDACC__)
#define QLORAD_FLASH_FN __device__ inline
#else
#define QLORAD_FLASH_FN inline
#endif

namespace qlorad::kernels::flash {

// One training row: T tokens, all of them keys (no cache). X: the element type of q, k, v,
// out, dout and the gradients (kernels/element.h: float32, or bf16 in the CUDA kernels);
// lse and delta are float32.
template <typename X>
struct FlashArgs {
  const X* q = nullptr;               // [T, H, HD]
  const X* k = nullptr;               // [T, KV, HD]
  const X* v = nullptr;               // [T, KV, HD]
  const int32_t* segments = nullptr;  // [T] or null (one example in the row)
  X* out = nullptr;                   // [T, H, HD]  (forward output; backward input)
  float* lse = nullptr;               // [H, T] log-sum-exp of each query's scaled scores
  const X* dout = nullptr;            // [T, H, HD]
  const float* delta = nullptr;       // [H, T] rowsum(dout * out) (DeltaKernel)
  X* dq = nullptr;                    // [T, H, HD] written
  X* dk = nullptr;                    // [T, KV, HD] written
  X* dv = nullptr;                    // [T, KV, HD] written
  int T = 0, H = 0, KV = 0;
  float scale = 1.0f;  // 1 / sqrt(HD)
};

constexpr int kFlashThreads = 128;    // 4 warps, each owning 16 rows of a 64-row tile
constexpr int kFlashTile = 64;        // queries per forward / dQ block, keys per key tile
constexpr int kFlashBwdQueries = 32;  // queries per inner tile of the dK/dV kernel

// Key j is visible to query t (both < T) when j <= t and both belong to the same segment.
template <typename X>
QLORAD_FLASH_FN bool FlashVisible(const FlashArgs<X>& a, int t, int j) {
  return j <= t && t < a.T && (a.segments == nullptr || a.segments[j] == a.segments[t]);
}

// Shared-memory layouts, in bytes from the block's base; every region starts 32-byte aligned
// because every region is a multiple of 16 rows of 16-byte multiples.
template <int HD>
struct FlashLayout {
  static_assert(HD % 16 == 0 && HD <= 128, "head_dim must be a multiple of 16, at most 128");
  static constexpr int kLdH = HD + 8;                // bf16 rows of head_dim values (padded: banks)
  static constexpr int kLdHF = HD + 4;               // float rows of head_dim values
  static constexpr int kLdT = kFlashTile + 4;        // float rows of 64 scores
  static constexpr int kLdTB = kFlashTile + 8;       // bf16 rows of 64 scores
  static constexpr int kLdQ = kFlashBwdQueries + 4;  // float rows of 32 scores
  static constexpr int kLdQB = kFlashBwdQueries + 8;  // bf16 rows of 32 scores
  static constexpr int kBf = 2, kF = 4;

  // Forward: Q, K, V tiles (bf16), S (float), P (bf16), O accumulator (float), row max, row sum.
  static constexpr int kFwdQ = 0;
  static constexpr int kFwdK = kFwdQ + kFlashTile * kLdH * kBf;
  static constexpr int kFwdV = kFwdK + kFlashTile * kLdH * kBf;
  static constexpr int kFwdS = kFwdV + kFlashTile * kLdH * kBf;
  static constexpr int kFwdP = kFwdS + kFlashTile * kLdT * kF;
  static constexpr int kFwdO = kFwdP + kFlashTile * kLdTB * kBf;
  static constexpr int kFwdM = kFwdO + kFlashTile * kLdHF * kF;
  static constexpr int kFwdL = kFwdM + kFlashTile * kF;
  static constexpr int kFwdRed = kFwdL + kFlashTile * kF;  // per warp, lane: a partial max or sum
  static constexpr int kFwdBytes = kFwdRed + kFlashThreads * kF;

  // dK/dV: K, V tiles (bf16), dK, dV accumulators (float), a 32-query Q and dO tile (bf16),
  // S^T and dP^T (float), P^T and dS^T (bf16), the 32 queries' lse and delta.
  static constexpr int kKvK = 0;
  static constexpr int kKvV = kKvK + kFlashTile * kLdH * kBf;
  static constexpr int kKvDk = kKvV + kFlashTile * kLdH * kBf;
  static constexpr int kKvDv = kKvDk + kFlashTile * kLdHF * kF;
  static constexpr int kKvQ = kKvDv + kFlashTile * kLdHF * kF;
  static constexpr int kKvDo = kKvQ + kFlashBwdQueries * kLdH * kBf;
  static constexpr int kKvS = kKvDo + kFlashBwdQueries * kLdH * kBf;
  static constexpr int kKvDp = kKvS + kFlashTile * kLdQ * kF;
  static constexpr int kKvP = kKvDp + kFlashTile * kLdQ * kF;
  static constexpr int kKvDs = kKvP + kFlashTile * kLdQB * kBf;
  static constexpr int kKvLse = kKvDs + kFlashTile * kLdQB * kBf;
  static constexpr int kKvDelta = kKvLse + kFlashBwdQueries * kF;
  static constexpr int kKvBytes = kKvDelta + kFlashBwdQueries * kF;

  // dQ: Q, dO, K, V tiles (bf16), dQ accumulator (float), S and dP (float), dS (bf16), the 64
  // queries' lse and delta.
  static constexpr int kDqQ = 0;
  static constexpr int kDqDo = kDqQ + kFlashTile * kLdH * kBf;
  static constexpr int kDqK = kDqDo + kFlashTile * kLdH * kBf;
  static constexpr int kDqV = kDqK + kFlashTile * kLdH * kBf;
  static constexpr int kDqAcc = kDqV + kFlashTile * kLdH * kBf;
  static constexpr int kDqS = kDqAcc + kFlashTile * kLdHF * kF;
  static constexpr int kDqDp = kDqS + kFlashTile * kLdT * kF;
  static constexpr int kDqDs = kDqDp + kFlashTile * kLdT * kF;
  static constexpr int kDqLse = kDqDs + kFlashTile * kLdTB * kBf;
  static constexpr int kDqDelta = kDqLse + kFlashTile * kF;
  static constexpr int kDqBytes = kDqDelta + kFlashTile * kF;
};

// Cooperatively converts rows [row0, row0 + rows) of one head of a [T, heads, HD] float tensor
// into a bf16 tile [rows][ld]; rows past T become zeros.
// The query tile of block x: the last tile first. A causal query tile i visits i + 1 key tiles,
// and blocks start in index order, so the heaviest tiles start first and the launch's tail is
// made of light ones. (The dK/dV kernel's key tile j visits tiles - j query tiles: already
// heaviest first.)
QLORAD_FLASH_FN int HeavyFirstTile(int T, int block_x) {
  return (T + kFlashTile - 1) / kFlashTile - 1 - block_x;
}

template <int HD, class C, typename X>
QLORAD_FLASH_FN void FlashLoadTile(C& cx, const X* src, int T, int heads, int head, int row0,
                                   int rows, typename C::Bf16* dst, int ld) {
  for (int i = cx.thread; i < rows * HD; i += kFlashThreads) {
    const int r = i / HD, d = i % HD, t = row0 + r;
    const float x =
        t < T ? Element<X>::Load(src[(static_cast<int64_t>(t) * heads + head) * HD + d]) : 0.0f;
    dst[r * ld + d] = C::ToBf16(x);
  }
}

// Forward of one (query tile, head) block: grid (ceil(T / 64), H). Each warp owns 16 query rows;
// per key tile it computes S = Q K^T on tensor cores, two lanes per row update the running max
// and sum of their row (online softmax) and rescale the row's output accumulator, then the warp
// adds P V. Writes out [T, H, HD] and lse [H, T].
template <int HD, class C, typename X>
QLORAD_FLASH_FN void FlashForwardBlock(C& cx, const FlashArgs<X>& a, unsigned char* smem) {
  using B = typename C::Bf16;
  using Lay = FlashLayout<HD>;
  constexpr int BM = kFlashTile, BN = kFlashTile;
  B* qs = reinterpret_cast<B*>(smem + Lay::kFwdQ);
  B* ks = reinterpret_cast<B*>(smem + Lay::kFwdK);
  B* vs = reinterpret_cast<B*>(smem + Lay::kFwdV);
  float* s = reinterpret_cast<float*>(smem + Lay::kFwdS);
  B* p = reinterpret_cast<B*>(smem + Lay::kFwdP);
  float* o = reinterpret_cast<float*>(smem + Lay::kFwdO);
  float* row_max = reinterpret_cast<float*>(smem + Lay::kFwdM);
  float* row_sum = reinterpret_cast<float*>(smem + Lay::kFwdL);
  const int h = cx.block_y, q0 = HeavyFirstTile(a.T, cx.block_x) * BM, g = h / (a.H / a.KV);
  const int warp = cx.thread / 32, lane = cx.thread % 32;

  FlashLoadTile<HD>(cx, a.q, a.T, a.H, h, q0, BM, qs, Lay::kLdH);
  for (int i = cx.thread; i < BM * Lay::kLdHF; i += kFlashThreads) o[i] = 0.0f;
  for (int i = cx.thread; i < BM; i += kFlashThreads) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.0f;
  }
  // Causal: the tile's last query is min(T, q0 + BM) - 1, so later keys are never needed.
  const int last = (a.T < q0 + BM ? a.T : q0 + BM) - 1;
  const int key_tiles = last / BN + 1;
  for (int kt = 0; kt < key_tiles; ++kt) {
    const int k0 = kt * BN;
    cx.SyncBlock();  // every warp is done with the previous K and V tiles
    FlashLoadTile<HD>(cx, a.k, a.T, a.KV, g, k0, BN, ks, Lay::kLdH);
    FlashLoadTile<HD>(cx, a.v, a.T, a.KV, g, k0, BN, vs, Lay::kLdH);
    cx.SyncBlock();
    for (int c = 0; c < BN / 16; ++c) {
      cx.template WarpMma16<true>(qs + 16 * warp * Lay::kLdH, Lay::kLdH, ks + 16 * c * Lay::kLdH,
                                  Lay::kLdH, HD / 16, s + 16 * warp * Lay::kLdT + 16 * c, Lay::kLdT,
                                  false);
    }
    cx.SyncWarp();
    {
      // Two lanes per row: lane l takes row l % 16 and half l / 16 of the columns; they combine
      // their partial max and sum through `red` (one float per lane of this warp).
      const int r = 16 * warp + lane % 16, t = q0 + r, half = lane / 16;
      const int j0 = half * (BN / 2), j1 = j0 + BN / 2;
      float* srow = s + r * Lay::kLdT;
      B* prow = p + r * Lay::kLdTB;
      float* red = reinterpret_cast<float*>(smem + Lay::kFwdRed) + 32 * warp;
      float part = -INFINITY;
      for (int j = j0; j < j1; ++j) {
        const float x = FlashVisible(a, t, k0 + j) ? srow[j] * a.scale : -INFINITY;
        srow[j] = x;
        part = x > part ? x : part;
      }
      red[lane] = part;
      cx.SyncWarp();
      const float other = red[lane ^ 16];
      const float tile_max = part > other ? part : other;
      const float old_max = row_max[r];
      const float new_max = tile_max > old_max ? tile_max : old_max;
      float alpha = 1.0f, sum = 0.0f;
      if (new_max == -INFINITY) {  // nothing visible yet (a row past T)
        for (int j = j0; j < j1; ++j) prow[j] = C::ToBf16(0.0f);
      } else {
        alpha = expf(old_max - new_max);  // 0 when old_max is -inf
        for (int j = j0; j < j1; ++j) {
          const float e = expf(srow[j] - new_max);
          sum += e;
          prow[j] = C::ToBf16(e);
        }
      }
      cx.SyncWarp();  // both halves have read red (maxima) and row_max/row_sum
      red[lane] = sum;
      cx.SyncWarp();
      if (half == 0) {
        row_max[r] = new_max;
        row_sum[r] = row_sum[r] * alpha + sum + red[lane + 16];
      }
      float* orow = o + r * Lay::kLdHF;
      for (int d = half * (HD / 2); d < (half + 1) * (HD / 2); ++d) orow[d] *= alpha;
    }
    cx.SyncWarp();
    for (int c = 0; c < HD / 16; ++c) {
      cx.template WarpMma16<false>(p + 16 * warp * Lay::kLdTB, Lay::kLdTB, vs + 16 * c, Lay::kLdH,
                                   BN / 16, o + 16 * warp * Lay::kLdHF + 16 * c, Lay::kLdHF, true);
    }
  }
  cx.SyncBlock();
  if (lane < 16) {
    const int r = 16 * warp + lane, t = q0 + r;
    const float l = row_sum[r];
    if (t < a.T)
      a.lse[static_cast<int64_t>(h) * a.T + t] = l > 0.0f ? row_max[r] + logf(l) : -INFINITY;
    row_sum[r] = l > 0.0f ? 1.0f / l : 0.0f;  // now the row's normalizer
  }
  cx.SyncBlock();
  for (int i = cx.thread; i < BM * HD; i += kFlashThreads) {
    const int r = i / HD, d = i % HD, t = q0 + r;
    if (t < a.T) {
      a.out[(static_cast<int64_t>(t) * a.H + h) * HD + d] =
          Element<X>::Round(o[r * Lay::kLdHF + d] * row_sum[r]);
    }
  }
}

// dK and dV of one (key tile, kv head) block: grid (ceil(T / 64), KV). Each warp owns 16 keys;
// for every query head of the group and every 32-query tile at or after the key tile it
// recomputes P^T = exp(scale K Q^T - lse), forms dS^T = P^T (V dO^T - delta) and accumulates
// dV += P^T dO and dK += dS^T Q. Writes dk and dv rows of this kv head (=).
template <int HD, class C, typename X>
QLORAD_FLASH_FN void FlashBackwardKvBlock(C& cx, const FlashArgs<X>& a, unsigned char* smem) {
  using B = typename C::Bf16;
  using Lay = FlashLayout<HD>;
  constexpr int BN = kFlashTile, BQ = kFlashBwdQueries;
  B* ks = reinterpret_cast<B*>(smem + Lay::kKvK);
  B* vs = reinterpret_cast<B*>(smem + Lay::kKvV);
  float* dk = reinterpret_cast<float*>(smem + Lay::kKvDk);
  float* dv = reinterpret_cast<float*>(smem + Lay::kKvDv);
  B* qs = reinterpret_cast<B*>(smem + Lay::kKvQ);
  B* dos = reinterpret_cast<B*>(smem + Lay::kKvDo);
  float* st = reinterpret_cast<float*>(smem + Lay::kKvS);
  float* dpt = reinterpret_cast<float*>(smem + Lay::kKvDp);
  B* pt = reinterpret_cast<B*>(smem + Lay::kKvP);
  B* dst = reinterpret_cast<B*>(smem + Lay::kKvDs);
  float* lse = reinterpret_cast<float*>(smem + Lay::kKvLse);
  float* delta = reinterpret_cast<float*>(smem + Lay::kKvDelta);
  const int k0 = cx.block_x * BN, g = cx.block_y, group = a.H / a.KV;
  const int warp = cx.thread / 32, lane = cx.thread % 32;

  FlashLoadTile<HD>(cx, a.k, a.T, a.KV, g, k0, BN, ks, Lay::kLdH);
  FlashLoadTile<HD>(cx, a.v, a.T, a.KV, g, k0, BN, vs, Lay::kLdH);
  for (int i = cx.thread; i < BN * Lay::kLdHF; i += kFlashThreads) dk[i] = dv[i] = 0.0f;
  const int query_tiles = (a.T + BQ - 1) / BQ;
  for (int hh = 0; hh < group; ++hh) {
    const int h = g * group + hh;
    for (int qt = k0 / BQ; qt < query_tiles; ++qt) {  // queries before k0 see none of these keys
      const int q0 = qt * BQ;
      cx.SyncBlock();  // every warp is done with the previous Q and dO tiles
      FlashLoadTile<HD>(cx, a.q, a.T, a.H, h, q0, BQ, qs, Lay::kLdH);
      FlashLoadTile<HD>(cx, a.dout, a.T, a.H, h, q0, BQ, dos, Lay::kLdH);
      for (int i = cx.thread; i < BQ; i += kFlashThreads) {
        const int t = q0 + i;
        lse[i] = t < a.T ? a.lse[static_cast<int64_t>(h) * a.T + t] : 0.0f;
        delta[i] = t < a.T ? a.delta[static_cast<int64_t>(h) * a.T + t] : 0.0f;
      }
      cx.SyncBlock();
      for (int c = 0; c < BQ / 16; ++c) {
        cx.template WarpMma16<true>(ks + 16 * warp * Lay::kLdH, Lay::kLdH, qs + 16 * c * Lay::kLdH,
                                    Lay::kLdH, HD / 16, st + 16 * warp * Lay::kLdQ + 16 * c,
                                    Lay::kLdQ, false);
        cx.template WarpMma16<true>(vs + 16 * warp * Lay::kLdH, Lay::kLdH, dos + 16 * c * Lay::kLdH,
                                    Lay::kLdH, HD / 16, dpt + 16 * warp * Lay::kLdQ + 16 * c,
                                    Lay::kLdQ, false);
      }
      cx.SyncWarp();
      {  // two lanes per key row, each half of the queries
        const int r = 16 * warp + lane % 16, j = k0 + r, half = lane / 16;
        for (int i = half * (BQ / 2); i < (half + 1) * (BQ / 2); ++i) {
          const int t = q0 + i;
          const bool visible = FlashVisible(a, t, j);  // implies j <= t < T
          const float pr = visible ? expf(st[r * Lay::kLdQ + i] * a.scale - lse[i]) : 0.0f;
          pt[r * Lay::kLdQB + i] = C::ToBf16(pr);
          dst[r * Lay::kLdQB + i] = C::ToBf16(pr * (dpt[r * Lay::kLdQ + i] - delta[i]));
        }
      }
      cx.SyncWarp();
      for (int c = 0; c < HD / 16; ++c) {
        cx.template WarpMma16<false>(pt + 16 * warp * Lay::kLdQB, Lay::kLdQB, dos + 16 * c,
                                     Lay::kLdH, BQ / 16, dv + 16 * warp * Lay::kLdHF + 16 * c,
                                     Lay::kLdHF, true);
        cx.template WarpMma16<false>(dst + 16 * warp * Lay::kLdQB, Lay::kLdQB, qs + 16 * c,
                                     Lay::kLdH, BQ / 16, dk + 16 * warp * Lay::kLdHF + 16 * c,
                                     Lay::kLdHF, true);
      }
    }
  }
  cx.SyncBlock();
  for (int i = cx.thread; i < BN * HD; i += kFlashThreads) {
    const int r = i / HD, d = i % HD, j = k0 + r;
    if (j < a.T) {
      const int64_t at = (static_cast<int64_t>(j) * a.KV + g) * HD + d;
      a.dk[at] = Element<X>::Round(dk[r * Lay::kLdHF + d] * a.scale);
      a.dv[at] = Element<X>::Round(dv[r * Lay::kLdHF + d]);
    }
  }
}

// dQ of one (query tile, head) block: grid (ceil(T / 64), H). Each warp owns 16 queries; per key
// tile it recomputes P = exp(scale Q K^T - lse) and dP = dO V^T and accumulates
// dQ += (P (dP - delta)) K. Writes dq rows of this head (=).
template <int HD, class C, typename X>
QLORAD_FLASH_FN void FlashBackwardQBlock(C& cx, const FlashArgs<X>& a, unsigned char* smem) {
  using B = typename C::Bf16;
  using Lay = FlashLayout<HD>;
  constexpr int BM = kFlashTile, BN = kFlashTile;
  B* qs = reinterpret_cast<B*>(smem + Lay::kDqQ);
  B* dos = reinterpret_cast<B*>(smem + Lay::kDqDo);
  B* ks = reinterpret_cast<B*>(smem + Lay::kDqK);
  B* vs = reinterpret_cast<B*>(smem + Lay::kDqV);
  float* acc = reinterpret_cast<float*>(smem + Lay::kDqAcc);
  float* s = reinterpret_cast<float*>(smem + Lay::kDqS);
  float* dp = reinterpret_cast<float*>(smem + Lay::kDqDp);
  B* ds = reinterpret_cast<B*>(smem + Lay::kDqDs);
  float* lse = reinterpret_cast<float*>(smem + Lay::kDqLse);
  float* delta = reinterpret_cast<float*>(smem + Lay::kDqDelta);
  const int h = cx.block_y, q0 = HeavyFirstTile(a.T, cx.block_x) * BM, g = h / (a.H / a.KV);
  const int warp = cx.thread / 32, lane = cx.thread % 32;

  FlashLoadTile<HD>(cx, a.q, a.T, a.H, h, q0, BM, qs, Lay::kLdH);
  FlashLoadTile<HD>(cx, a.dout, a.T, a.H, h, q0, BM, dos, Lay::kLdH);
  for (int i = cx.thread; i < BM * Lay::kLdHF; i += kFlashThreads) acc[i] = 0.0f;
  for (int i = cx.thread; i < BM; i += kFlashThreads) {
    const int t = q0 + i;
    lse[i] = t < a.T ? a.lse[static_cast<int64_t>(h) * a.T + t] : 0.0f;
    delta[i] = t < a.T ? a.delta[static_cast<int64_t>(h) * a.T + t] : 0.0f;
  }
  const int last = (a.T < q0 + BM ? a.T : q0 + BM) - 1;
  const int key_tiles = last / BN + 1;
  for (int kt = 0; kt < key_tiles; ++kt) {
    const int k0 = kt * BN;
    cx.SyncBlock();
    FlashLoadTile<HD>(cx, a.k, a.T, a.KV, g, k0, BN, ks, Lay::kLdH);
    FlashLoadTile<HD>(cx, a.v, a.T, a.KV, g, k0, BN, vs, Lay::kLdH);
    cx.SyncBlock();
    for (int c = 0; c < BN / 16; ++c) {
      cx.template WarpMma16<true>(qs + 16 * warp * Lay::kLdH, Lay::kLdH, ks + 16 * c * Lay::kLdH,
                                  Lay::kLdH, HD / 16, s + 16 * warp * Lay::kLdT + 16 * c, Lay::kLdT,
                                  false);
      cx.template WarpMma16<true>(dos + 16 * warp * Lay::kLdH, Lay::kLdH, vs + 16 * c * Lay::kLdH,
                                  Lay::kLdH, HD / 16, dp + 16 * warp * Lay::kLdT + 16 * c,
                                  Lay::kLdT, false);
    }
    cx.SyncWarp();
    {  // two lanes per query row, each half of the keys
      const int r = 16 * warp + lane % 16, t = q0 + r, half = lane / 16;
      for (int j = half * (BN / 2); j < (half + 1) * (BN / 2); ++j) {
        const float pr =
            FlashVisible(a, t, k0 + j) ? expf(s[r * Lay::kLdT + j] * a.scale - lse[r]) : 0.0f;
        ds[r * Lay::kLdTB + j] = C::ToBf16(pr * (dp[r * Lay::kLdT + j] - delta[r]));
      }
    }
    cx.SyncWarp();
    for (int c = 0; c < HD / 16; ++c) {
      cx.template WarpMma16<false>(ds + 16 * warp * Lay::kLdTB, Lay::kLdTB, ks + 16 * c, Lay::kLdH,
                                   BN / 16, acc + 16 * warp * Lay::kLdHF + 16 * c, Lay::kLdHF,
                                   true);
    }
  }
  cx.SyncBlock();
  for (int i = cx.thread; i < BM * HD; i += kFlashThreads) {
    const int r = i / HD, d = i % HD, t = q0 + r;
    if (t < a.T) {
      a.dq[(static_cast<int64_t>(t) * a.H + h) * HD + d] =
          Element<X>::Round(acc[r * Lay::kLdHF + d] * a.scale);
    }
  }
}

}  // namespace qlorad::kernels::flash
