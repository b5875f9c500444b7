#include <utility>
#include <vector>

#include "kernels/cpu/rope.h"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/train_ops.h"

namespace qlorad::kernels::cuda {
namespace {
using detail::GridFor;
using detail::kWide;
using detail::Load;
using detail::Load8;
using detail::Store;
using detail::Store8;
using detail::Wide8;

constexpr int kMaxHalf = 128;  // head_dim up to 256

// inv_freq by value (a kernel parameter), computed once on the host exactly as the CPU twin does.
struct InvFreq {
  float v[kMaxHalf];
};
#if defined(QLORAD_CUDA_ON_CPU)
// No pointers in it, for the CUDA stand-in's launch check (tests/cuda_on_cpu).
std::vector<std::pair<const char*, const void*>> KernelPointers(const InvFreq&) { return {}; }
#endif

// Rotates the pair (a, b) by the angle of position `pos` at frequency `freq` (sign -1: back),
// for the scalar and the eight-wide kernels alike.
__device__ __forceinline__ void Rotate(float pos, float freq, float sign, float* a, float* b) {
  float s, c;
  sincosf(pos * freq, &s, &c);
  s *= sign;
  const float x = *a, y = *b;
  *a = x * c - y * s;
  *b = y * c + x * s;
}

// One thread per (token, head, i < head_dim/2) pair.
template <typename T>
__global__ void RopeKernel(T* __restrict__ x, const int32_t* __restrict__ positions, int64_t pairs,
                           int64_t heads, int64_t head_dim, InvFreq freq, float sign) {
  const int64_t half = head_dim / 2;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < pairs;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k % half;
    const int64_t th = k / half;  // token * heads + head
    const int64_t t = th / heads;
    T* v = x + th * head_dim;
    float a = Load(v, i), b = Load(v, i + half);
    Rotate(static_cast<float>(positions[t]), freq.v[i], sign, &a, &b);
    Store(v, i, a);
    Store(v, i + half, b);
  }
}

// The same per pair, eight consecutive pairs (i .. i+7 with i + half .. i + half + 7) a step,
// where head_dim / 2 is a multiple of 8 and x is aligned.
template <typename T>
__global__ void RopeWideKernel(T* __restrict__ x, const int32_t* __restrict__ positions,
                               int64_t chunks, int64_t heads, int64_t head_dim, InvFreq freq,
                               float sign) {
  const int64_t half = head_dim / 2, per_head = half / kWide;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i0 = (c % per_head) * kWide;
    const int64_t th = c / per_head;  // token * heads + head
    const float pos = static_cast<float>(positions[th / heads]);
    T* v = x + th * head_dim;
    float a[kWide], b[kWide];
    Load8(v + i0, a);
    Load8(v + half + i0, b);
#pragma unroll
    for (int k = 0; k < kWide; ++k) Rotate(pos, freq.v[i0 + k], sign, &a[k], &b[k]);
    Store8(v + i0, a);
    Store8(v + half + i0, b);
  }
}

}  // namespace

template <typename T>
cudaError_t RopeApply(T* x, const int32_t* positions, int64_t tokens, int64_t heads,
                      int64_t head_dim, float theta, bool inverse, cudaStream_t stream) {
  if (tokens < 0 || heads <= 0 || head_dim <= 0 || head_dim % 2 != 0 || head_dim / 2 > kMaxHalf) {
    return cudaErrorInvalidValue;
  }
  const int64_t pairs = tokens * heads * (head_dim / 2);
  if (pairs == 0) return cudaSuccess;
  InvFreq freq{};
  for (int64_t i = 0; i < head_dim / 2; ++i) freq.v[i] = RopeInvFreq(theta, i, head_dim);
  if (Wide8(head_dim / 2, x)) {
    QLORAD_LAUNCH(GridFor(pairs / kWide, 256), 256, 0, stream, RopeWideKernel<T>, x, positions,
                  pairs / kWide, heads, head_dim, freq, inverse ? -1.0f : 1.0f);
  } else {
    QLORAD_LAUNCH(GridFor(pairs, 256), 256, 0, stream, RopeKernel<T>, x, positions, pairs, heads,
                  head_dim, freq, inverse ? -1.0f : 1.0f);
  }
  return cudaGetLastError();
}

template cudaError_t RopeApply<float>(float*, const int32_t*, int64_t, int64_t, int64_t, float,
                                      bool, cudaStream_t);
template cudaError_t RopeApply<__nv_bfloat16>(__nv_bfloat16*, const int32_t*, int64_t, int64_t,
                                              int64_t, float, bool, cudaStream_t);

}  // namespace qlorad::kernels::cuda
