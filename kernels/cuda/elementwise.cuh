// Shared device helpers of the CUDA kernels: float <-> storage type (float or bf16; all math in
// float), block-wide reductions, and launch sizes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/bf16_element.cuh"

namespace qlorad::kernels::cuda::detail {

// Element i widened to float, and v rounded into element i (kernels/element.h: exact for
// float, nearest even for bf16).
template <typename T>
__device__ __forceinline__ float Load(const T* p, int64_t i) {
  return Element<T>::Load(p[i]);
}
template <typename T>
__device__ __forceinline__ void Store(T* p, int64_t i, float v) {
  p[i] = Element<T>::Round(v);
}

// The sum (or max) over the warp by a butterfly of xor shuffles, in every lane. On the CPU
// stand-in (tests/cuda_on_cpu) the same butterfly, the same operations in the same order, is
// computed from one rendezvous of the warp: five shuffles cost five rendezvous there, which made
// the reductions most of a training step's emulated time.
__device__ __forceinline__ float WarpSum(float v) {
#if defined(QLORAD_CUDA_ON_CPU)
  return ::qlorad::cuda_on_cpu::WarpButterfly(v, /*max=*/false);
#else
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
#endif
}
__device__ __forceinline__ float WarpMax(float v) {
#if defined(QLORAD_CUDA_ON_CPU)
  return ::qlorad::cuda_on_cpu::WarpButterfly(v, /*max=*/true);
#else
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
#endif
}

// Sum (or max) over the block; every thread gets the result. `scratch`: 32 floats of shared
// memory. blockDim.x must be a multiple of 32.
template <bool kMax>
__device__ __forceinline__ float BlockReduce(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = kMax ? WarpMax(v) : WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = lane < warps ? scratch[lane] : (kMax ? -INFINITY : 0.0f);
  return kMax ? WarpMax(v) : WarpSum(v);
}

// A grid for `n` independent elements: grid-stride loops cover the rest.
inline unsigned GridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}

// The wide path of the elementwise kernels: eight consecutive elements through 16-byte memory
// operations (one for bf16, two for float); each element's formula is shared with the scalar
// path (reductions, as in RMSNorm, sum in another order). A launcher takes it where every
// array is 16-byte aligned and the sizes are multiples of eight (Wide8), which the engine's
// buffers and model widths are.
constexpr int kWide = 8;

inline bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
template <typename... P>
bool Wide8(int64_t n, const P*... p) {
  return n % kWide == 0 && (Aligned16(p) && ...);
}

template <typename T>
__device__ __forceinline__ void Load8(const T* p, float (&v)[kWide]);
template <>
__device__ __forceinline__ void Load8<float>(const float* p, float (&v)[kWide]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
template <>
__device__ __forceinline__ void Load8<__nv_bfloat16>(const __nv_bfloat16* p, float (&v)[kWide]) {
  const uint4 w = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&w);
#pragma unroll
  for (int k = 0; k < kWide / 2; ++k) {
    const float2 f = __bfloat1622float2(h[k]);
    v[2 * k] = f.x;
    v[2 * k + 1] = f.y;
  }
}

template <typename T>
__device__ __forceinline__ void Store8(T* p, const float (&v)[kWide]);
template <>
__device__ __forceinline__ void Store8<float>(float* p, const float (&v)[kWide]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <>
__device__ __forceinline__ void Store8<__nv_bfloat16>(__nv_bfloat16* p, const float (&v)[kWide]) {
  uint4 w;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&w);
#pragma unroll
  for (int k = 0; k < kWide / 2; ++k) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
  *reinterpret_cast<uint4*>(p) = w;
}

}  // namespace qlorad::kernels::cuda::detail
