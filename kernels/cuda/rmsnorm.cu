#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/train_ops.h"

namespace qlorad::kernels::cuda {
namespace {
using detail::BlockReduce;
using detail::kWide;
using detail::Load;
using detail::Load8;
using detail::Store;
using detail::Store8;
using detail::Wide8;

constexpr int kThreads = 256;

// One element's formulas, shared by the scalar and the eight-wide kernels: the normalized
// value, and the gradient r w dy - k x (k = r^3 / dim * sum(w dy x)).
__device__ __forceinline__ float Normalized(float x, float inv, float w) { return x * inv * w; }
__device__ __forceinline__ float NormGrad(float x, float w, float dy, float r, float k) {
  return r * w * dy - k * x;
}

// One block per row.
template <typename T>
__global__ void RmsNormForwardKernel(const T* __restrict__ x, const float* __restrict__ w,
                                     int64_t dim, float eps, T* __restrict__ y,
                                     float* __restrict__ inv_rms) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = Load(xr, i);
    ss += v * v;
  }
  ss = BlockReduce<false>(ss, scratch);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  if (inv_rms != nullptr && threadIdx.x == 0) inv_rms[row] = inv;
  T* yr = y + row * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    Store(yr, i, Normalized(Load(xr, i), inv, w[i]));
  }
}

template <typename T>
__global__ void RmsNormBackwardKernel(const T* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ inv_rms, const T* __restrict__ dy,
                                      int64_t dim, T* __restrict__ dx) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * dim;
  const T* dyr = dy + row * dim;
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dot += w[i] * Load(dyr, i) * Load(xr, i);
  dot = BlockReduce<false>(dot, scratch);
  const float r = inv_rms[row];
  const float k = r * r * r / static_cast<float>(dim) * dot;
  T* dxr = dx + row * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    Store(dxr, i, NormGrad(Load(xr, i), w[i], Load(dyr, i), r, k));
  }
}

// The same per element, eight elements a step (detail::Wide8: dim a multiple of 8, aligned
// arrays); each thread sums its elements in order, so the row sums differ from the scalar
// kernel's in order only.
template <typename T>
__global__ void RmsNormForwardWideKernel(const T* __restrict__ x, const float* __restrict__ w,
                                         int64_t dim, float eps, T* __restrict__ y,
                                         float* __restrict__ inv_rms) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x, chunks = dim / kWide;
  const T* xr = x + row * dim;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    float v[kWide];
    Load8(xr + c * kWide, v);
#pragma unroll
    for (int k = 0; k < kWide; ++k) ss += v[k] * v[k];
  }
  ss = BlockReduce<false>(ss, scratch);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  if (inv_rms != nullptr && threadIdx.x == 0) inv_rms[row] = inv;
  T* yr = y + row * dim;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    float v[kWide], g[kWide];
    Load8(xr + c * kWide, v);
    Load8(w + c * kWide, g);
#pragma unroll
    for (int k = 0; k < kWide; ++k) v[k] = Normalized(v[k], inv, g[k]);
    Store8(yr + c * kWide, v);
  }
}

template <typename T>
__global__ void RmsNormBackwardWideKernel(const T* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ inv_rms,
                                          const T* __restrict__ dy, int64_t dim,
                                          T* __restrict__ dx) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x, chunks = dim / kWide;
  const T* xr = x + row * dim;
  const T* dyr = dy + row * dim;
  // Chunk c of x, dy and w (both loops read the three).
  auto load = [&](int64_t c, float(&v)[kWide], float(&d)[kWide], float(&g)[kWide]) {
    Load8(xr + c * kWide, v);
    Load8(dyr + c * kWide, d);
    Load8(w + c * kWide, g);
  };
  float dot = 0.0f;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    float v[kWide], d[kWide], g[kWide];
    load(c, v, d, g);
#pragma unroll
    for (int k = 0; k < kWide; ++k) dot += g[k] * d[k] * v[k];
  }
  dot = BlockReduce<false>(dot, scratch);
  const float r = inv_rms[row];
  const float kk = r * r * r / static_cast<float>(dim) * dot;
  T* dxr = dx + row * dim;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    float v[kWide], d[kWide], g[kWide];
    load(c, v, d, g);
#pragma unroll
    for (int k = 0; k < kWide; ++k) v[k] = NormGrad(v[k], g[k], d[k], r, kk);
    Store8(dxr + c * kWide, v);
  }
}

}  // namespace

template <typename T>
cudaError_t RmsNormForward(const T* x, const float* w, int64_t rows, int64_t dim, float eps, T* y,
                           float* inv_rms, cudaStream_t stream) {
  if (rows < 0 || dim <= 0 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (Wide8(dim, x, w, y)) {
    QLORAD_LAUNCH(static_cast<unsigned>(rows), kThreads, 0, stream, RmsNormForwardWideKernel<T>, x,
                  w, dim, eps, y, inv_rms);
  } else {
    QLORAD_LAUNCH(static_cast<unsigned>(rows), kThreads, 0, stream, RmsNormForwardKernel<T>, x, w,
                  dim, eps, y, inv_rms);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t RmsNormBackward(const T* x, const float* w, const float* inv_rms, const T* dy,
                            int64_t rows, int64_t dim, T* dx, cudaStream_t stream) {
  if (rows < 0 || dim <= 0 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (Wide8(dim, x, w, dy, dx)) {
    QLORAD_LAUNCH(static_cast<unsigned>(rows), kThreads, 0, stream, RmsNormBackwardWideKernel<T>, x,
                  w, inv_rms, dy, dim, dx);
  } else {
    QLORAD_LAUNCH(static_cast<unsigned>(rows), kThreads, 0, stream, RmsNormBackwardKernel<T>, x, w,
                  inv_rms, dy, dim, dx);
  }
  return cudaGetLastError();
}

#define QLORAD_INSTANTIATE(T)                                                                      \
  template cudaError_t RmsNormForward<T>(const T*, const float*, int64_t, int64_t, float, T*,      \
                                         float*, cudaStream_t);                                    \
  template cudaError_t RmsNormBackward<T>(const T*, const float*, const float*, const T*, int64_t, \
                                          int64_t, T*, cudaStream_t);
QLORAD_INSTANTIATE(float)
QLORAD_INSTANTIATE(__nv_bfloat16)
#undef QLORAD_INSTANTIATE

}  // namespace qlorad::kernels::cuda
