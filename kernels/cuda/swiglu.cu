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

__device__ __forceinline__ float Sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

// One element's formulas, shared by the scalar and the eight-wide kernels.
__device__ __forceinline__ float SwigluValue(float g, float u) { return g * Sigmoid(g) * u; }
__device__ __forceinline__ void SwigluGrads(float g, float u, float d, float* dg, float* du) {
  const float s = Sigmoid(g);
  *du = d * g * s;
  *dg = d * u * s * (1.0f + g * (1.0f - s));
}

template <typename T>
__global__ void SwigluForwardKernel(const T* gate, const T* up, int64_t n, T* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Store(out, i, SwigluValue(Load(gate, i), Load(up, i)));
  }
}

template <typename T>
__global__ void SwigluBackwardKernel(const T* gate, const T* up, const T* dout, int64_t n, T* dgate,
                                     T* dup) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float dg, du;
    // Read everything before writing: dgate/dup may alias gate/up.
    SwigluGrads(Load(gate, i), Load(up, i), Load(dout, i), &dg, &du);
    Store(dup, i, du);
    Store(dgate, i, dg);
  }
}

// The same per element, eight elements a step (detail::Wide8).
template <typename T>
__global__ void SwigluForwardWideKernel(const T* gate, const T* up, int64_t chunks, T* out) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float g[kWide], u[kWide], o[kWide];
    Load8(gate + c * kWide, g);
    Load8(up + c * kWide, u);
#pragma unroll
    for (int k = 0; k < kWide; ++k) o[k] = SwigluValue(g[k], u[k]);
    Store8(out + c * kWide, o);
  }
}

template <typename T>
__global__ void SwigluBackwardWideKernel(const T* gate, const T* up, const T* dout, int64_t chunks,
                                         T* dgate, T* dup) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float g[kWide], u[kWide], d[kWide], dg[kWide], du[kWide];
    Load8(gate + c * kWide, g);
    Load8(up + c * kWide, u);
    Load8(dout + c * kWide, d);
#pragma unroll
    for (int k = 0; k < kWide; ++k) SwigluGrads(g[k], u[k], d[k], &dg[k], &du[k]);
    Store8(dup + c * kWide, du);  // everything was read first: outputs may alias inputs
    Store8(dgate + c * kWide, dg);
  }
}

}  // namespace

template <typename T>
cudaError_t SwigluForward(const T* gate, const T* up, int64_t n, T* out, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (Wide8(n, gate, up, out)) {
    QLORAD_LAUNCH(GridFor(n / kWide, 256), 256, 0, stream, SwigluForwardWideKernel<T>, gate, up,
                  n / kWide, out);
  } else {
    QLORAD_LAUNCH(GridFor(n, 256), 256, 0, stream, SwigluForwardKernel<T>, gate, up, n, out);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t SwigluBackward(const T* gate, const T* up, const T* dout, int64_t n, T* dgate, T* dup,
                           cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (Wide8(n, gate, up, dout, dgate, dup)) {
    QLORAD_LAUNCH(GridFor(n / kWide, 256), 256, 0, stream, SwigluBackwardWideKernel<T>, gate, up,
                  dout, n / kWide, dgate, dup);
  } else {
    QLORAD_LAUNCH(GridFor(n, 256), 256, 0, stream, SwigluBackwardKernel<T>, gate, up, dout, n,
                  dgate, dup);
  }
  return cudaGetLastError();
}

#define QLORAD_INSTANTIATE(T)                                                           \
  template cudaError_t SwigluForward<T>(const T*, const T*, int64_t, T*, cudaStream_t); \
  template cudaError_t SwigluBackward<T>(const T*, const T*, const T*, int64_t, T*, T*, \
                                         cudaStream_t);
QLORAD_INSTANTIATE(float)
QLORAD_INSTANTIATE(__nv_bfloat16)
#undef QLORAD_INSTANTIATE

}  // namespace qlorad::kernels::cuda
