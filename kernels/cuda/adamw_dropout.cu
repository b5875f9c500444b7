// AdamW and dropout: elementwise kernels with the CPU's exact formulas.
#include <cmath>

#include "kernels/cpu/dropout.h"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/train_ops.h"

namespace qlorad::kernels::cuda {
namespace {
using detail::GridFor;
using detail::Load;
using detail::Store;

__global__ void AdamWKernel(float* __restrict__ params, const float* __restrict__ grads,
                            float* __restrict__ m, float* __restrict__ v, int64_t n, float beta1,
                            float beta2, float eps, float decay, float step_size, float bc2_sqrt) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = grads[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] = params[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
  }
}

template <typename T>
__global__ void DropoutKernel(const T* x, int64_t n, float p, float inv_keep, uint64_t seed,
                              uint64_t stream_id, T* out) {
  const DropoutStreamMask mask(seed, stream_id, p);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool keep = mask.Keep(static_cast<uint64_t>(i));
    Store(out, i, keep ? Load(x, i) * inv_keep : 0.0f);
  }
}

}  // namespace

cudaError_t AdamWStep(float* params, const float* grads, float* m, float* v, int64_t n,
                      const AdamWParams& p, cudaStream_t stream) {
  if (n < 0 || p.step < 1) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  // Bias corrections exactly as kernels/cpu/adamw.cc computes them.
  const double bc1 = 1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step));
  const float step_size = static_cast<float>(p.lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = 1.0f - p.lr * p.weight_decay;
  QLORAD_LAUNCH(GridFor(n, 256), 256, 0, stream, AdamWKernel, params, grads, m, v, n, p.beta1,
                p.beta2, p.eps, decay, step_size, bc2_sqrt);
  return cudaGetLastError();
}

template <typename T>
cudaError_t DropoutApply(const T* x, int64_t n, float p, uint64_t seed, uint64_t stream_id, T* out,
                         cudaStream_t stream) {
  if (n < 0 || !(p >= 0.0f && p < 1.0f)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  QLORAD_LAUNCH(GridFor(n, 256), 256, 0, stream, DropoutKernel<T>, x, n, p, 1.0f / (1.0f - p), seed,
                stream_id, out);
  return cudaGetLastError();
}

template cudaError_t DropoutApply<float>(const float*, int64_t, float, uint64_t, uint64_t, float*,
                                         cudaStream_t);
template cudaError_t DropoutApply<__nv_bfloat16>(const __nv_bfloat16*, int64_t, float, uint64_t,
                                                 uint64_t, __nv_bfloat16*, cudaStream_t);

}  // namespace qlorad::kernels::cuda
