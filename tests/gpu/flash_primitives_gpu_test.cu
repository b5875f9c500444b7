// Each primitive of the flash-attention GPU context (kernels/cuda/flash_context.cuh) on the card,
// against the PTX ISA layouts that the CPU block emulator (tests/kernels/cuda_block_emulator.h)
// models and the emulation tests prove the block programs right under; the expectations are
// written out here again from the same tables. The whole kernels are
// checked by flash_attention_gpu_test; when that fails, this one says whether the hardware
// disagrees with a modelled instruction (and which) or the block programs are wrong.
//   mma.m16n8k16: A, B, C/D register layouts (PTX ISA fragment tables), lower column in the low
//     half of each A/B register;
//   ldmatrix.x4 (and .trans): lanes 8j..8j+7 give matrix j's rows; register j of lane 4g + t
//     holds (g, 2t), (g, 2t+1), or (2t, g), (2t+1, g) transposed;
//   cp.async 16 and 4 bytes with zero fill, commit_group, wait_group 0;
//   Pack (lo in the low half, rounded to nearest even), Store2, ShflXor.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/cuda/flash_context.cuh"
#include "tests/gpu/gpu_check.h"

namespace qlorad {
namespace {

using Ctx = kernels::cuda::FlashBlockContext;

// bf16 bits rounded to nearest even, and back, by the host side of cuda_bf16.h.
uint16_t Bits(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
float Widen(uint16_t b) { return __bfloat162float(__ushort_as_bfloat16(b)); }

// One warp: lane l builds its A (16 x 16) and B (16 x 8) registers from global memory by the
// modelled layout, starts D from C by the modelled C layout, and writes D back the same way.
__global__ void MmaKernel(const uint16_t* a, const uint16_t* b, const float* c, float* d) {
  Ctx cx = Ctx::OfThisThread();
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto pair = [](uint16_t lo, uint16_t hi) { return uint32_t(lo) | uint32_t(hi) << 16; };
  const uint32_t ra[4] = {pair(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]),
                          pair(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]),
                          pair(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]),
                          pair(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9])};
  // b is k-major: element (k, n) at b[k * 8 + n].
  const uint32_t rb[2] = {pair(b[(2 * t) * 8 + g], b[(2 * t + 1) * 8 + g]),
                          pair(b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g])};
  float acc[4];
  for (int i = 0; i < 4; ++i) acc[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + (i & 1)];
  cx.Mma(acc, ra, rb);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * 8 + 2 * t + (i & 1)] = acc[i];
}

// One warp: a 16 x 16 tile (leading dimension 24, as the flash tiles pad rows) in shared
// memory; every lane gives the LoadA row address and records both ldmatrix forms.
__global__ void LoadMatrixKernel(const uint16_t* tile, uint32_t* plain, uint32_t* transposed) {
  Ctx cx = Ctx::OfThisThread();
  __shared__ __align__(16) __nv_bfloat16 s[16 * 24];
  const int lane = threadIdx.x;
  for (int i = lane; i < 16 * 24; i += 32) s[i] = __ushort_as_bfloat16(tile[i]);
  __syncthreads();
  const __nv_bfloat16* row = s + (lane % 16) * 24 + 8 * (lane / 16);
  uint32_t r[4];
  cx.LoadMatrix4(row, r);
  for (int j = 0; j < 4; ++j) plain[lane * 4 + j] = r[j];
  cx.LoadMatrix4Trans(row, r);
  for (int j = 0; j < 4; ++j) transposed[lane * 4 + j] = r[j];
}

// 128 threads: 16-byte copies (every third zero-filled) and 4-byte copies (every fifth
// zero-filled) into shared memory, one group, wait_group 0, a barrier, then everything out.
__global__ void CopyAsyncKernel(const uint4* src16, const uint32_t* src4, uint4* out16,
                                uint32_t* out4) {
  Ctx cx = Ctx::OfThisThread();
  __shared__ uint4 s16[128];
  __shared__ uint32_t s4[128];
  const int i = threadIdx.x;
  cx.CopyAsync<16>(&s16[i], &src16[i], i % 3 == 0);
  cx.CopyAsync<4>(&s4[i], &src4[i], i % 5 == 0);
  cx.CommitAsync();
  cx.WaitAsync<0>();
  cx.SyncBlock();
  out16[127 - i] = s16[127 - i];
  out4[127 - i] = s4[127 - i];
}

// Values bf16 cannot hold: thirds, and exact ties between two bf16 neighbours (1 + 2^-8 rounds
// down to 1, 1 + 3 2^-8 up to 1 + 2^-6: to the even mantissa).
__host__ __device__ float Inexact(int lane) { return 1.0f + lane / 3.0f; }
__host__ __device__ float Tie(int lane) { return 1.0f + (lane % 2 == 0 ? 1.0f : 3.0f) / 256.0f; }

// One warp: Pack, Store2 (bf16 and float32) and ShflXor over both masks the kernels use.
__global__ void SmallKernel(uint32_t* packed, __nv_bfloat16* bf16_pairs, float* float_pairs,
                            float* shuffled) {
  Ctx cx = Ctx::OfThisThread();
  const int lane = threadIdx.x;
  packed[lane] = cx.Pack(Inexact(lane), -Tie(lane));
  cx.Store2(bf16_pairs + 2 * lane, Tie(lane), -Inexact(lane));
  cx.Store2(float_pairs + 2 * lane, Inexact(lane), -1.0f);
  shuffled[lane] =
      cx.ShflXor(static_cast<float>(lane), 1) + 100.0f * cx.ShflXor(static_cast<float>(lane), 2);
}

void CheckMma(std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> a(16 * 16), b(16 * 8);
  std::vector<float> c(16 * 8);
  for (auto& x : a) x = Bits(normal(rng));
  for (auto& x : b) x = Bits(normal(rng));
  for (auto& x : c) x = normal(rng);
  gpu_check::DeviceArray<uint16_t> da(a), db(b);
  gpu_check::DeviceArray<float> dc(c), dd(c.size());
  MmaKernel<<<1, 32>>>(da.p, db.p, dc.p, dd.p);
  CUDA_OK(cudaGetLastError());
  const std::vector<float> d = dd.Get();
  double worst = 0.0;
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 8; ++n) {
      double ref = c[m * 8 + n], mag = std::abs(ref);
      for (int k = 0; k < 16; ++k) {
        const double p = double(Widen(a[m * 16 + k])) * Widen(b[k * 8 + n]);
        ref += p;
        mag += std::abs(p);
      }
      worst = std::max(worst, std::abs(d[m * 8 + n] - ref) / mag);
    }
  }
  // Products of bf16 are exact in float; only float accumulation rounds (a few 2^-24).
  GPU_CHECK(worst < 1e-5, "mma.m16n8k16 disagrees with the modelled A/B/C layouts: worst %g",
            worst);
}

void CheckLoadMatrix() {
  std::vector<uint16_t> tile(16 * 24);
  for (int r = 0; r < 16; ++r) {
    for (int col = 0; col < 24; ++col) tile[r * 24 + col] = static_cast<uint16_t>(r * 256 + col);
  }
  gpu_check::DeviceArray<uint16_t> dt(tile);
  gpu_check::DeviceArray<uint32_t> plain(128), transposed(128);
  LoadMatrixKernel<<<1, 32>>>(dt.p, plain.p, transposed.p);
  CUDA_OK(cudaGetLastError());
  const std::vector<uint32_t> p = plain.Get(), tr = transposed.Get();
  // Matrix j's row i is the row lane 8j + i gave: tile row (8j + i) % 16, column 8 ((8j+i)/16).
  // The tile's values are distinct bit patterns, so a register holding the wrong element, or
  // the right ones in the wrong halves, differs.
  auto element = [&](int j, int i, int col) {
    const int lane = 8 * j + i;
    return uint32_t(tile[(lane % 16) * 24 + 8 * (lane / 16) + col]);
  };
  int wrong_plain = 0, wrong_transposed = 0;
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int j = 0; j < 4; ++j) {
      const uint32_t want = element(j, g, 2 * t) | element(j, g, 2 * t + 1) << 16;
      const uint32_t want_t = element(j, 2 * t, g) | element(j, 2 * t + 1, g) << 16;
      wrong_plain += p[lane * 4 + j] != want;
      wrong_transposed += tr[lane * 4 + j] != want_t;
    }
  }
  GPU_CHECK(wrong_plain == 0, "ldmatrix.x4: %d of 128 registers differ from the model",
            wrong_plain);
  GPU_CHECK(wrong_transposed == 0, "ldmatrix.x4.trans: %d of 128 registers differ from the model",
            wrong_transposed);
}

void CheckCopyAsync(std::mt19937_64& rng) {
  std::vector<uint32_t> src16(128 * 4), src4(128);
  for (auto& x : src16) x = static_cast<uint32_t>(rng()) | 1u;  // never zero
  for (auto& x : src4) x = static_cast<uint32_t>(rng()) | 1u;
  gpu_check::DeviceArray<uint32_t> d16(src16), d4(src4), o16(src16.size()), o4(src4.size());
  CopyAsyncKernel<<<1, 128>>>(reinterpret_cast<const uint4*>(d16.p), d4.p,
                              reinterpret_cast<uint4*>(o16.p), o4.p);
  CUDA_OK(cudaGetLastError());
  const std::vector<uint32_t> r16 = o16.Get(), r4 = o4.Get();
  int wrong = 0;
  for (int i = 0; i < 128; ++i) {
    for (int w = 0; w < 4; ++w) wrong += r16[i * 4 + w] != (i % 3 == 0 ? 0u : src16[i * 4 + w]);
    wrong += r4[i] != (i % 5 == 0 ? 0u : src4[i]);
  }
  GPU_CHECK(wrong == 0, "cp.async (16 and 4 bytes, zero fill, wait_group 0): %d words differ",
            wrong);
}

void CheckSmall() {
  gpu_check::DeviceArray<uint32_t> packed(32);
  gpu_check::DeviceArray<uint16_t> bf16_pairs(64);
  gpu_check::DeviceArray<float> float_pairs(64), shuffled(32);
  SmallKernel<<<1, 32>>>(packed.p, reinterpret_cast<__nv_bfloat16*>(bf16_pairs.p), float_pairs.p,
                         shuffled.p);
  CUDA_OK(cudaGetLastError());
  const auto pk = packed.Get();
  const auto bp = bf16_pairs.Get();
  const auto fp = float_pairs.Get();
  const auto sh = shuffled.Get();
  int wrong = 0;
  for (int l = 0; l < 32; ++l) {
    wrong += pk[l] != (uint32_t(Bits(Inexact(l))) | uint32_t(Bits(-Tie(l))) << 16);
    wrong += bp[2 * l] != Bits(Tie(l)) || bp[2 * l + 1] != Bits(-Inexact(l));
    wrong += fp[2 * l] != Inexact(l) || fp[2 * l + 1] != -1.0f;
    wrong += sh[l] != static_cast<float>(l ^ 1) + 100.0f * static_cast<float>(l ^ 2);
  }
  GPU_CHECK(wrong == 0, "Pack / Store2 / ShflXor: %d lanes differ", wrong);
}

}  // namespace
}  // namespace qlorad

int main() {
  if (!qlorad::gpu_check::HaveCudaDevice()) return 77;
  std::mt19937_64 rng(qlorad::gpu_check::FreshSeed());
  qlorad::CheckMma(rng);
  qlorad::CheckLoadMatrix();
  qlorad::CheckCopyAsync(rng);
  qlorad::CheckSmall();
  CUDA_OK(cudaDeviceSynchronize());
  return qlorad::gpu_check::Finish("flash_primitives_gpu_test");
}
