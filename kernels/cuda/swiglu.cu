#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/train_ops.h"

namespace qlorad::kernels::cuda {
namespace {
using detail::GridFor;
using detail::Load;
using detail::Store;

__device__ __forceinline__ float Sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T>
__global__ void SwigluForwardKernel(const T* gate, const T* up, int64_t n, T* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = Load(gate, i);
    Store(out, i, g * Sigmoid(g) * Load(up, i));
  }
}

template <typename T>
__global__ void SwigluBackwardKernel(const T* gate, const T* up, const T* dout, int64_t n, T* dgate,
                                     T* dup) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = Load(gate, i), u = Load(up, i), d = Load(dout, i);
    const float s = Sigmoid(g);
    // Read everything before writing: dgate/dup may alias gate/up.
    Store(dup, i, d * g * s);
    Store(dgate, i, d * u * s * (1.0f + g * (1.0f - s)));
  }
}

}  // namespace

template <typename T>
cudaError_t SwigluForward(const T* gate, const T* up, int64_t n, T* out, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  SwigluForwardKernel<T><<<GridFor(n, 256), 256, 0, stream>>>(gate, up, n, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t SwigluBackward(const T* gate, const T* up, const T* dout, int64_t n, T* dgate, T* dup,
                           cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  SwigluBackwardKernel<T><<<GridFor(n, 256), 256, 0, stream>>>(gate, up, dout, n, dgate, dup);
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
