// Flash attention for training (causal, grouped-query, block-diagonal over packed segments):
// the per-block programs of the CUDA kernels, written once against a small context `C` so that
// the same code runs on the GPU (kernels/cuda/flash_attention.cu: mma.sync tensor-core
// instructions, real shared memory and barriers) and on the CPU under an emulator that runs each
// block's 128 threads as real threads with real barriers and models the instruction's register
// layout (tests/kernels/cuda_block_emulator.h). The CPU twin the results are checked against is
// kernels/cpu/attention_train.h.
//
// Nothing of size T x T is ever stored: the forward keeps one log-sum-exp per (head, query),
// the backward recomputes the probabilities tile by tile (FlashAttention-2, Dao 2023). The
// backward is two kernels, one owning key tiles (dK, dV) and one owning query tiles (dQ), so
// that no gradient needs atomics and results do not depend on scheduling.
//
// As in FlashAttention-2, scores, probabilities and every accumulator live in registers: shared
// memory holds only the bf16 operand tiles (53-88 KB a block at head_dim 128), loaded with
// asynchronous copies that overlap the tensor-core work. A warp owns 16 rows of its block's tile
// and works on them with the m16n8k16 bf16 tensor-core instruction (float accumulation), whose
// register layout (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type") is:
//   lane = 4 g + t (g = group 0..7, t = 0..3);
//   A (16 x 16, row-major): register 0 = (row g, cols 2t, 2t+1), 1 = (row g+8, same cols),
//     2 = (row g, cols 2t+8, 2t+9), 3 = (row g+8, cols 2t+8, 2t+9); lower column in the low half;
//   B (16 x 8, k x n): register 0 = (k 2t, 2t+1; n g), 1 = (k 2t+8, 2t+9; n g);
//   C, D (16 x 8 floats): 0 = (row g, col 2t), 1 = (g, 2t+1), 2 = (g+8, 2t), 3 = (g+8, 2t+1).
// Two adjacent C tiles of probabilities are exactly the A operand of the next product, so P
// (and dS) never leave registers.
//
// The context provides:
//   int thread, block_x, block_y;              // threadIdx.x (0..127), blockIdx.x, blockIdx.y
//   template <typename X> void Store2(X* dst, float lo, float hi);  // two rounded values
//   void SyncBlock();                           // __syncthreads()
//   using Bf16;                                 // the bf16 element type of the tiles
//   uint32_t Pack(float lo, float hi);          // two values rounded to bf16, lo in the low half
//   void LoadMatrix4(const Bf16* row, uint32_t (&r)[4]);       // ldmatrix.x4 (see LoadA)
//   void LoadMatrix4Trans(const Bf16* row, uint32_t (&r)[4]);  // ldmatrix.x4.trans
//   template <typename X> void Copy8(const X* src, Bf16* dst);  // 8 values rounded to bf16
//   void Zero8(Bf16* dst);                      // 8 zeros (dst 16-byte aligned)
//   template <int kBytes> void CopyAsync(void* dst, const void* src, bool zero_fill);  // cp.async
//   void CommitAsync(); template <int N> void WaitAsync();  // commit_group, wait_group N
//   float Exp(float x);                         // e^x, at least as exact as bf16 needs
//   float ShflXor(float v, int mask);           // warp-collective: v of lane ^ mask
//   void Mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);  // d += a b
// Mma, ShflXor and the LoadMatrix4s are warp-collective (all 32 lanes call them).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>
#if defined(QLORAD_CUDA_ON_CPU)
#include <utility>
#include <vector>
#endif

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

#if defined(QLORAD_CUDA_ON_CPU)
// The pointers a launch hands the kernels inside FlashArgs, for the CUDA stand-in's check that
// each is memory the card reaches (tests/cuda_on_cpu). The binding names every member, so one
// added to the struct stops this building until it is listed here too.
template <typename X>
std::vector<std::pair<const char*, const void*>> KernelPointers(const FlashArgs<X>& args) {
  [[maybe_unused]] const auto& [q, k, v, segments, out, lse, dout, delta, dq, dk, dv, T, H, KV,
                                scale] = args;
  return {{"q", q},     {"k", k},     {"v", v},       {"segments", segments},
          {"out", out}, {"lse", lse}, {"dout", dout}, {"delta", delta},
          {"dq", dq},   {"dk", dk},   {"dv", dv}};
}
#endif

constexpr int kFlashThreads = 128;    // 4 warps, each owning 16 rows of a 64-row tile
constexpr int kFlashTile = 64;        // queries per forward / dQ block, keys per key tile
constexpr int kFlashBwdQueries = 32;  // queries per inner tile of the dK/dV kernel

// The segment (packed example) of token t: 0 for every token of an unpacked row and past T.
// Each block reads its fixed rows' segments once into registers and each visited tile's into
// shared memory, instead of two global reads per score.
template <typename X>
QLORAD_FLASH_FN int32_t FlashSegment(const FlashArgs<X>& a, int t) {
  return a.segments == nullptr || t >= a.T ? 0 : a.segments[t];
}

// Key j is visible to query t when j <= t < T and both belong to the same segment.
QLORAD_FLASH_FN bool FlashVisible(int t, int j, int T, int32_t segment_t, int32_t segment_j) {
  return j <= t && t < T && segment_t == segment_j;
}

// The tokens a lane owns in its block's tile (queries, or keys in the dK/dV kernel): its warp
// has 16 rows from `first`, the lane rows first + g and first + g + 8 (g = lane / 4, the rows of
// its accumulator registers), with their segments.
struct FlashLaneRows {
  int first;
  int row[2];
  int32_t segment[2];
};

template <typename X>
QLORAD_FLASH_FN FlashLaneRows LaneRows(const FlashArgs<X>& a, int tile0, int warp, int lane) {
  const int first = tile0 + 16 * warp, r0 = first + lane / 4, r1 = r0 + 8;
  return {first, {r0, r1}, {FlashSegment(a, r0), FlashSegment(a, r1)}};
}

// Shared-memory layouts, in bytes from the block's base: bf16 tiles of head_dim-wide rows,
// padded by 8 elements so that rows stay 16-byte aligned and the fragment loads of a warp's
// lanes fall in distinct banks. Tiles load asynchronously (cp.async) while the warps work on
// something else, so a load's latency hides behind tensor-core work instead of stalling every
// warp between two barriers; each kernel overlaps its loads with the least shared memory it
// can, because shared memory decides how many blocks share an SM (at head_dim 128 the forward
// and dK/dV fit three and two on an A100's 164 KB, every kernel fits the 99 KB of sm_86/sm_89).
template <int HD>
struct FlashLayout {
  static_assert(HD % 16 == 0 && HD <= 128, "head_dim must be a multiple of 16, at most 128");
  static constexpr int kLd = HD + 8;  // bf16 elements per tile row
  static constexpr int kTile = kFlashTile * kLd * 2;
  static constexpr int kQueryTile = kFlashBwdQueries * kLd * 2;
  static constexpr int kTileSegments = kFlashTile * 4;  // one int32 per key of a tile

  // Forward: the block's Q tile, one K tile with its keys' segments and one V tile (V loads
  // while S = Q K^T is computed, the next K while P V is).
  static constexpr int kFwdQ = 0;
  static constexpr int kFwdK = kFwdQ + kTile;
  static constexpr int kFwdV = kFwdK + kTile;
  static constexpr int kFwdSegments = kFwdV + kTile;
  static constexpr int kFwdBytes = kFwdSegments + kTileSegments;

  // A query buffer (dK/dV): one 32-query Q and dO tile and those queries' lse, delta, segments.
  static constexpr int kQueryQ = 0;
  static constexpr int kQueryDo = kQueryQ + kQueryTile;
  static constexpr int kQueryLse = kQueryDo + kQueryTile;
  static constexpr int kQueryDelta = kQueryLse + kFlashBwdQueries * 4;
  static constexpr int kQuerySegments = kQueryDelta + kFlashBwdQueries * 4;
  static constexpr int kQueryBuffer = kQuerySegments + kFlashBwdQueries * 4;

  // dK/dV: the block's K and V tiles, then two query buffers (the next loads while this one is
  // used).
  static constexpr int kKvK = 0;
  static constexpr int kKvV = kKvK + kTile;
  static constexpr int kKvQueries = kKvV + kTile;
  static constexpr int kKvBytes = kKvQueries + 2 * kQueryBuffer;

  // dQ: the block's Q and dO tiles, one V tile, and two K tiles with their keys' segments (the
  // next K loads during the whole tile's work, the next V once dP = dO V^T is done).
  static constexpr int kDqQ = 0;
  static constexpr int kDqDo = kDqQ + kTile;
  static constexpr int kDqV = kDqDo + kTile;
  static constexpr int kDqK = kDqV + kTile;             // K tiles kt % 2
  static constexpr int kDqSegments = kDqK + 2 * kTile;  // their segments, kt % 2
  static constexpr int kDqBytes = kDqSegments + 2 * kTileSegments;
};

// Grids are (heads, tiles): blocks start in index order with x fastest, so every head's block
// of one tile starts before any block of the next tile. The query tile of grid row y is the last
// tile first: a causal query tile i visits i + 1 key tiles, so the heaviest blocks start first
// and the launch's tail is made of light ones. (The dK/dV kernel's key tile j visits tiles - j
// query tiles: already heaviest first.)
QLORAD_FLASH_FN int HeavyFirstTile(int T, int block_y) {
  return (T + kFlashTile - 1) / kFlashTile - 1 - block_y;
}

// The key tiles a query tile starting at q0 visits. Causal: its last query is
// min(T, q0 + 64) - 1, so later keys are never needed.
QLORAD_FLASH_FN int FlashKeyTiles(int T, int q0) {
  const int last = (T < q0 + kFlashTile ? T : q0 + kFlashTile) - 1;
  return last / kFlashTile + 1;
}

// Cooperatively loads rows [row0, row0 + rows) of one head of a [T, heads, HD] tensor into a
// bf16 tile [rows][kLd], eight values (16 bytes of the tile) per step; rows past T become zeros.
// bf16 rows are copied asynchronously (cp.async, zero-filled past T) when the tensor is 16-byte
// aligned: they land by the next WaitAsync. Other sources are converted here and now. Either
// way the tile is ready for every warp after WaitAsync and SyncBlock.
template <int HD, class C, typename X>
QLORAD_FLASH_FN void FlashLoadTile(C& cx, const X* src, int T, int heads, int head, int row0,
                                   int rows, typename C::Bf16* dst) {
  constexpr int kChunks = HD / 8;
  const bool async =
      std::is_same_v<X, typename C::Bf16> && reinterpret_cast<uintptr_t>(src) % 16 == 0;
  for (int i = cx.thread; i < rows * kChunks; i += kFlashThreads) {
    const int r = i / kChunks, c = i % kChunks, t = row0 + r;
    typename C::Bf16* to = dst + r * FlashLayout<HD>::kLd + 8 * c;
    const X* from = t < T ? src + (static_cast<int64_t>(t) * heads + head) * HD + 8 * c : src;
    if (async) {
      cx.template CopyAsync<16>(to, from, t >= T);
    } else if (t < T) {
      cx.Copy8(from, to);
    } else {
      cx.Zero8(to);
    }
  }
}

// Cooperatively loads src[row0 + i] (one float32 or int32 per token) for i < count into dst,
// asynchronously; zeros past T and where there is no src (an unpacked row's segments).
template <class C, typename V>
QLORAD_FLASH_FN void FlashLoadRowValues(C& cx, const V* src, int T, int row0, int count, V* dst) {
  for (int i = cx.thread; i < count; i += kFlashThreads) {
    const int t = row0 + i;
    if (src == nullptr) {
      dst[i] = V{};
    } else {
      cx.template CopyAsync<4>(dst + i, t < T ? src + t : src, t >= T);
    }
  }
}

// Waits for this thread's copies, then the barrier after which every thread's copies (and
// plain stores) are visible to the block, and every warp is done with what it read before.
template <class C>
QLORAD_FLASH_FN void FlashWaitThenSync(C& cx) {
  cx.template WaitAsync<0>();
  cx.SyncBlock();
}

// Fragments come from shared memory through ldmatrix: lanes 8j..8j+7 each give the address of
// one 16-byte row of 8 x 8 matrix j (j < 4) and register j of lane 4 g + t receives that
// matrix's elements (g, 2t) and (g, 2t+1), or with .trans (2t, g) and (2t+1, g): exactly a
// quarter of an A fragment or half of a B fragment, so one instruction loads what four (A, or B
// read along rows) or eight (B read down columns) scalar loads would. Row addresses stay
// 16-byte aligned and, with rows of HD + 8 elements, the eight rows of a matrix fall in distinct
// banks.

// The A fragment of the 16 x 16 block at `tile` (row-major, `ld` elements a row): matrices
// (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15).
template <class C>
QLORAD_FLASH_FN void LoadA(C& cx, const typename C::Bf16* tile, int ld, int lane,
                           uint32_t (&a)[4]) {
  cx.LoadMatrix4(tile + (lane % 16) * ld + 8 * (lane / 16), a);
}

// The four registers of one ldmatrix.x4 as the B fragments of two adjacent 8-column blocks.
QLORAD_FLASH_FN void SplitB(const uint32_t (&r)[4], uint32_t (&b)[2][2]) {
  b[0][0] = r[0];
  b[0][1] = r[1];
  b[1][0] = r[2];
  b[1][1] = r[3];
}

// The B fragments (16 x 8, k x n) of two adjacent 8-column blocks of a tile stored n-major:
// element (k, n) at tile[n ld + k], n < 16. A K tile is this operand of S = Q K^T (n a key, k a
// head dimension). Matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
template <class C>
QLORAD_FLASH_FN void LoadBRows(C& cx, const typename C::Bf16* tile, int ld, int lane,
                               uint32_t (&b)[2][2]) {
  uint32_t r[4];
  cx.LoadMatrix4(tile + (8 * (lane / 16) + lane % 8) * ld + 8 * (lane / 8 % 2), r);
  SplitB(r, b);
}

// The B fragments of two adjacent 8-column blocks of a tile stored k-major: element (k, n) at
// tile[k ld + n], n < 16. A V tile is this operand of O += P V (k a key, n a head dimension).
// Transposed matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
template <class C>
QLORAD_FLASH_FN void LoadBColumns(C& cx, const typename C::Bf16* tile, int ld, int lane,
                                  uint32_t (&b)[2][2]) {
  uint32_t r[4];
  cx.LoadMatrix4Trans(tile + (lane % 16) * ld + 8 * (lane / 16), r);
  SplitB(r, b);
}

// The A fragment made of two C tiles side by side (columns 0-7 and 8-15 of a 16-wide block).
template <class C>
QLORAD_FLASH_FN void PackA(C& cx, const float (&lo)[4], const float (&hi)[4], uint32_t (&a)[4]) {
  a[0] = cx.Pack(lo[0], lo[1]);
  a[1] = cx.Pack(lo[2], lo[3]);
  a[2] = cx.Pack(hi[0], hi[1]);
  a[3] = cx.Pack(hi[2], hi[3]);
}

// acc[n] += A B_n over the warp's 16 rows: A the warp's rows of `a_tile` (row-major, HD wide),
// B_n the n-th 8-row block of `b_tile` read n-major (so acc = A B_tile^T): S = Q K^T,
// dP = dO V^T, S^T = K Q^T, dP^T = V dO^T.
template <int HD, int kN, class C>
QLORAD_FLASH_FN void MmaRowsTimesRowsT(C& cx, const typename C::Bf16* a_tile,
                                       const typename C::Bf16* b_tile, int lane,
                                       float (&acc)[kN][4]) {
  constexpr int kLd = FlashLayout<HD>::kLd;
  for (int ks = 0; ks < HD / 16; ++ks) {
    uint32_t a[4];
    LoadA(cx, a_tile + 16 * ks, kLd, lane, a);
    for (int n = 0; n < kN; n += 2) {
      uint32_t b[2][2];
      LoadBRows(cx, b_tile + 8 * n * kLd + 16 * ks, kLd, lane, b);
      cx.Mma(acc[n], a, b[0]);
      cx.Mma(acc[n + 1], a, b[1]);
    }
  }
}

// acc[d] += P V_d over the warp's 16 rows: P the C tiles p[0..kK) (kK * 8 columns, held in
// registers), V the first kK * 8 rows of `tile` (row-major, HD wide): O += P V, dQ += dS K,
// dV += P^T dO, dK += dS^T Q.
template <int HD, int kK, class C>
QLORAD_FLASH_FN void MmaRegistersTimesRows(C& cx, const float (&p)[kK][4],
                                           const typename C::Bf16* tile, int lane,
                                           float (&acc)[HD / 8][4]) {
  constexpr int kLd = FlashLayout<HD>::kLd;
  for (int kk = 0; kk < kK / 2; ++kk) {
    uint32_t a[4];
    PackA(cx, p[2 * kk], p[2 * kk + 1], a);
    for (int d = 0; d < HD / 8; d += 2) {
      uint32_t b[2][2];
      LoadBColumns(cx, tile + 16 * kk * kLd + 8 * d, kLd, lane, b);
      cx.Mma(acc[d], a, b[0]);
      cx.Mma(acc[d + 1], a, b[1]);
    }
  }
}

// The row (0: g, 1: g + 8) and column within an 8-wide C tile of register i of this lane.
QLORAD_FLASH_FN int FragRow(int i) { return i / 2; }
QLORAD_FLASH_FN int FragCol(int lane, int i) { return 2 * (lane % 4) + (i & 1); }

// Writes a warp's 16 x HD accumulator times `scale` to rows [row0, row0 + 16) of one head of a
// [T, heads, HD] tensor (rows past T are not written), each lane's two adjacent columns in one
// store.
template <int HD, class C, typename X>
QLORAD_FLASH_FN void StoreRows(C& cx, const float (&acc)[HD / 8][4], const float (&scale)[2],
                               int lane, int row0, int T, int heads, int head, X* dst) {
  for (int d = 0; d < HD / 8; ++d) {
    for (int r = 0; r < 2; ++r) {
      const int t = row0 + lane / 4 + 8 * r;
      if (t < T) {
        cx.Store2(dst + (static_cast<int64_t>(t) * heads + head) * HD + 8 * d + 2 * (lane % 4),
                  acc[d][2 * r] * scale[r], acc[d][2 * r + 1] * scale[r]);
      }
    }
  }
}

// Forward of one (head, query tile) block: grid (H, ceil(T / 64)). Each warp owns 16 query rows;
// per key tile it computes S = Q K^T, updates each row's running max and sum (online softmax:
// the four lanes of a group hold a row between them), rescales its output accumulator and adds
// P V. Writes out [T, H, HD] and lse [H, T].
template <int HD, class C, typename X>
QLORAD_FLASH_FN void FlashForwardBlock(C& cx, const FlashArgs<X>& a, unsigned char* smem) {
  using B = typename C::Bf16;
  using Lay = FlashLayout<HD>;
  constexpr int BM = kFlashTile, BN = kFlashTile, kLd = Lay::kLd;
  B* qs = reinterpret_cast<B*>(smem + Lay::kFwdQ);
  B* ks = reinterpret_cast<B*>(smem + Lay::kFwdK);
  B* vs = reinterpret_cast<B*>(smem + Lay::kFwdV);
  int32_t* key_segment = reinterpret_cast<int32_t*>(smem + Lay::kFwdSegments);
  const int h = cx.block_x, q0 = HeavyFirstTile(a.T, cx.block_y) * BM, g = h / (a.H / a.KV);
  const int warp = cx.thread / 32, lane = cx.thread % 32;
  const FlashLaneRows rows = LaneRows(a, q0, warp, lane);  // this lane's two queries

  FlashLoadTile<HD>(cx, a.q, a.T, a.H, h, q0, BM, qs);
  FlashLoadTile<HD>(cx, a.k, a.T, a.KV, g, 0, BN, ks);
  FlashLoadRowValues(cx, a.segments, a.T, 0, BN, key_segment);
  cx.CommitAsync();
  float o[HD / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};  // this lane's share; the group's four are added at the end
  const int key_tiles = FlashKeyTiles(a.T, q0);
  for (int kt = 0; kt < key_tiles; ++kt) {
    const int k0 = kt * BN;
    FlashWaitThenSync(cx);  // K and its segments (and Q) landed; every warp is done with V
    FlashLoadTile<HD>(cx, a.v, a.T, a.KV, g, k0, BN, vs);
    cx.CommitAsync();
    float s[BN / 8][4] = {};
    MmaRowsTimesRowsT<HD>(cx, qs + 16 * warp * kLd, ks, lane, s);

    float tile_max[2] = {-INFINITY, -INFINITY};
    for (int n = 0; n < BN / 8; ++n) {
      for (int i = 0; i < 4; ++i) {
        const int r = FragRow(i), j = 8 * n + FragCol(lane, i);
        const float x = FlashVisible(rows.row[r], k0 + j, a.T, rows.segment[r], key_segment[j])
                            ? s[n][i] * a.scale
                            : -INFINITY;
        s[n][i] = x;
        tile_max[r] = x > tile_max[r] ? x : tile_max[r];
      }
    }
    float alpha[2];
    for (int r = 0; r < 2; ++r) {
      for (int mask = 1; mask <= 2; mask *= 2) {
        const float other = cx.ShflXor(tile_max[r], mask);
        tile_max[r] = other > tile_max[r] ? other : tile_max[r];
      }
      const float new_max = tile_max[r] > row_max[r] ? tile_max[r] : row_max[r];
      // 1 while nothing is visible (a row past T); 0 when the old max was -inf.
      alpha[r] = new_max == -INFINITY ? 1.0f : cx.Exp(row_max[r] - new_max);
      row_max[r] = new_max;
      row_sum[r] *= alpha[r];
    }
    for (int n = 0; n < BN / 8; ++n) {
      for (int i = 0; i < 4; ++i) {
        const int r = FragRow(i);
        const float e = row_max[r] == -INFINITY ? 0.0f : cx.Exp(s[n][i] - row_max[r]);
        s[n][i] = e;
        row_sum[r] += e;
      }
    }
    for (int d = 0; d < HD / 8; ++d) {
      for (int i = 0; i < 4; ++i) o[d][i] *= alpha[FragRow(i)];
    }
    FlashWaitThenSync(cx);  // V landed; every warp is done with K and its segments
    if (kt + 1 < key_tiles) {
      FlashLoadTile<HD>(cx, a.k, a.T, a.KV, g, k0 + BN, BN, ks);
      FlashLoadRowValues(cx, a.segments, a.T, k0 + BN, BN, key_segment);
      cx.CommitAsync();
    }
    MmaRegistersTimesRows<HD>(cx, s, vs, lane, o);
  }
  float inv_sum[2];
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += cx.ShflXor(row_sum[r], 1);
    row_sum[r] += cx.ShflXor(row_sum[r], 2);
    const float l = row_sum[r];
    if (lane % 4 == 0 && rows.row[r] < a.T) {
      a.lse[static_cast<int64_t>(h) * a.T + rows.row[r]] =
          l > 0.0f ? row_max[r] + logf(l) : -INFINITY;
    }
    inv_sum[r] = l > 0.0f ? 1.0f / l : 0.0f;
  }
  StoreRows<HD>(cx, o, inv_sum, lane, rows.first, a.T, a.H, h, a.out);
}

// dK and dV of one (kv head, key tile) block: grid (KV, ceil(T / 64)). Each warp owns 16 keys;
// for every query head of the group and every 32-query tile at or after the key tile it
// recomputes P^T = exp(scale K Q^T - lse), forms dS^T = P^T (V dO^T - delta) and accumulates
// dV += P^T dO and dK += dS^T Q. Writes dk and dv rows of this kv head (=).
template <int HD, class C, typename X>
QLORAD_FLASH_FN void FlashBackwardKvBlock(C& cx, const FlashArgs<X>& a, unsigned char* smem) {
  using B = typename C::Bf16;
  using Lay = FlashLayout<HD>;
  constexpr int BN = kFlashTile, BQ = kFlashBwdQueries, kLd = Lay::kLd;
  B* ks = reinterpret_cast<B*>(smem + Lay::kKvK);
  B* vs = reinterpret_cast<B*>(smem + Lay::kKvV);
  const int k0 = cx.block_y * BN, g = cx.block_x, group = a.H / a.KV;
  const int warp = cx.thread / 32, lane = cx.thread % 32;
  const FlashLaneRows keys = LaneRows(a, k0, warp, lane);  // this lane's two keys
  // The block's steps: every query head of the group, and for each the 32-query tiles at or
  // after k0 (queries before k0 see none of these keys).
  const int first_tile = k0 / BQ, per_head = (a.T + BQ - 1) / BQ - first_tile;
  const int steps = group * per_head;
  auto buffer = [&](int step) { return smem + Lay::kKvQueries + step % 2 * Lay::kQueryBuffer; };
  auto load_queries = [&](int step) {
    const int h = g * group + step / per_head, q0 = (first_tile + step % per_head) * BQ;
    unsigned char* to = buffer(step);
    const int64_t at = static_cast<int64_t>(h) * a.T;
    FlashLoadTile<HD>(cx, a.q, a.T, a.H, h, q0, BQ, reinterpret_cast<B*>(to + Lay::kQueryQ));
    FlashLoadTile<HD>(cx, a.dout, a.T, a.H, h, q0, BQ, reinterpret_cast<B*>(to + Lay::kQueryDo));
    FlashLoadRowValues(cx, a.lse + at, a.T, q0, BQ, reinterpret_cast<float*>(to + Lay::kQueryLse));
    FlashLoadRowValues(cx, a.delta + at, a.T, q0, BQ,
                       reinterpret_cast<float*>(to + Lay::kQueryDelta));
    FlashLoadRowValues(cx, a.segments, a.T, q0, BQ,
                       reinterpret_cast<int32_t*>(to + Lay::kQuerySegments));
  };

  FlashLoadTile<HD>(cx, a.k, a.T, a.KV, g, k0, BN, ks);
  FlashLoadTile<HD>(cx, a.v, a.T, a.KV, g, k0, BN, vs);
  load_queries(0);
  cx.CommitAsync();
  float dk[HD / 8][4] = {}, dv[HD / 8][4] = {};
  for (int step = 0; step < steps; ++step) {
    // This step's queries (and K, V) landed; every warp is done with the previous step's
    // buffer, which the next step's queries now load into.
    FlashWaitThenSync(cx);
    if (step + 1 < steps) {
      load_queries(step + 1);
      cx.CommitAsync();
    }
    const int q0 = (first_tile + step % per_head) * BQ;
    const unsigned char* cur = buffer(step);
    const B* qs = reinterpret_cast<const B*>(cur + Lay::kQueryQ);
    const B* dos = reinterpret_cast<const B*>(cur + Lay::kQueryDo);
    const float* lse = reinterpret_cast<const float*>(cur + Lay::kQueryLse);
    const float* delta = reinterpret_cast<const float*>(cur + Lay::kQueryDelta);
    const int32_t* query_segment = reinterpret_cast<const int32_t*>(cur + Lay::kQuerySegments);
    float st[BQ / 8][4] = {}, dpt[BQ / 8][4] = {};
    MmaRowsTimesRowsT<HD>(cx, ks + 16 * warp * kLd, qs, lane, st);
    MmaRowsTimesRowsT<HD>(cx, vs + 16 * warp * kLd, dos, lane, dpt);
    for (int n = 0; n < BQ / 8; ++n) {
      for (int i = 0; i < 4; ++i) {
        const int c = 8 * n + FragCol(lane, i);  // the query within the tile
        const int r = FragRow(i);
        const bool visible =  // implies key <= t < T
            FlashVisible(q0 + c, keys.row[r], a.T, query_segment[c], keys.segment[r]);
        const float p = visible ? cx.Exp(st[n][i] * a.scale - lse[c]) : 0.0f;
        st[n][i] = p;                            // P^T
        dpt[n][i] = p * (dpt[n][i] - delta[c]);  // dS^T
      }
    }
    MmaRegistersTimesRows<HD>(cx, st, dos, lane, dv);
    MmaRegistersTimesRows<HD>(cx, dpt, qs, lane, dk);
  }
  const float dk_scale[2] = {a.scale, a.scale}, one[2] = {1.0f, 1.0f};
  StoreRows<HD>(cx, dk, dk_scale, lane, keys.first, a.T, a.KV, g, a.dk);
  StoreRows<HD>(cx, dv, one, lane, keys.first, a.T, a.KV, g, a.dv);
}

// dQ of one (head, query tile) block: grid (H, ceil(T / 64)). Each warp owns 16 queries; per key
// tile it recomputes P = exp(scale Q K^T - lse) and dP = dO V^T and accumulates
// dQ += (P (dP - delta)) K. Writes dq rows of this head (=).
template <int HD, class C, typename X>
QLORAD_FLASH_FN void FlashBackwardQBlock(C& cx, const FlashArgs<X>& a, unsigned char* smem) {
  using B = typename C::Bf16;
  using Lay = FlashLayout<HD>;
  constexpr int BM = kFlashTile, BN = kFlashTile, kLd = Lay::kLd;
  B* qs = reinterpret_cast<B*>(smem + Lay::kDqQ);
  B* dos = reinterpret_cast<B*>(smem + Lay::kDqDo);
  B* vs = reinterpret_cast<B*>(smem + Lay::kDqV);
  auto k_tile = [&](int kt) {
    return reinterpret_cast<B*>(smem + Lay::kDqK + kt % 2 * Lay::kTile);
  };
  auto segments_of = [&](int kt) {
    return reinterpret_cast<int32_t*>(smem + Lay::kDqSegments + kt % 2 * Lay::kTileSegments);
  };
  const int h = cx.block_x, q0 = HeavyFirstTile(a.T, cx.block_y) * BM, g = h / (a.H / a.KV);
  auto load_keys = [&](int kt) {  // K tile kt and its keys' segments
    FlashLoadTile<HD>(cx, a.k, a.T, a.KV, g, kt * BN, BN, k_tile(kt));
    FlashLoadRowValues(cx, a.segments, a.T, kt * BN, BN, segments_of(kt));
  };
  const int warp = cx.thread / 32, lane = cx.thread % 32;
  const FlashLaneRows rows = LaneRows(a, q0, warp, lane);
  float lse[2], delta[2];
  for (int r = 0; r < 2; ++r) {
    const bool in = rows.row[r] < a.T;
    lse[r] = in ? a.lse[static_cast<int64_t>(h) * a.T + rows.row[r]] : 0.0f;
    delta[r] = in ? a.delta[static_cast<int64_t>(h) * a.T + rows.row[r]] : 0.0f;
  }

  FlashLoadTile<HD>(cx, a.q, a.T, a.H, h, q0, BM, qs);
  FlashLoadTile<HD>(cx, a.dout, a.T, a.H, h, q0, BM, dos);
  load_keys(0);
  FlashLoadTile<HD>(cx, a.v, a.T, a.KV, g, 0, BN, vs);
  cx.CommitAsync();
  float dq[HD / 8][4] = {};
  const int key_tiles = FlashKeyTiles(a.T, q0);
  for (int kt = 0; kt < key_tiles; ++kt) {
    const int k0 = kt * BN;
    // K, its segments and V of this tile landed; every warp is done with the previous tile, so
    // the other K buffer is free for the next one.
    FlashWaitThenSync(cx);
    const B* ks = k_tile(kt);
    const int32_t* key_segment = segments_of(kt);
    if (kt + 1 < key_tiles) {
      load_keys(kt + 1);
      cx.CommitAsync();
    }
    // dP = dO V^T first, so that the next V loads during the rest of the tile's work.
    float dp[BN / 8][4] = {};
    MmaRowsTimesRowsT<HD>(cx, dos + 16 * warp * kLd, vs, lane, dp);
    cx.SyncBlock();  // every warp is done with V
    if (kt + 1 < key_tiles) {
      FlashLoadTile<HD>(cx, a.v, a.T, a.KV, g, k0 + BN, BN, vs);
      cx.CommitAsync();
    }
    float s[BN / 8][4] = {};
    MmaRowsTimesRowsT<HD>(cx, qs + 16 * warp * kLd, ks, lane, s);
    for (int n = 0; n < BN / 8; ++n) {
      for (int i = 0; i < 4; ++i) {
        const int r = FragRow(i), j = 8 * n + FragCol(lane, i);
        const float p = FlashVisible(rows.row[r], k0 + j, a.T, rows.segment[r], key_segment[j])
                            ? cx.Exp(s[n][i] * a.scale - lse[r])
                            : 0.0f;
        s[n][i] = p * (dp[n][i] - delta[r]);  // dS
      }
    }
    MmaRegistersTimesRows<HD>(cx, s, ks, lane, dq);
  }
  const float scale[2] = {a.scale, a.scale};
  StoreRows<HD>(cx, dq, scale, lane, rows.first, a.T, a.H, h, a.dq);
}

}  // namespace qlorad::kernels::flash
