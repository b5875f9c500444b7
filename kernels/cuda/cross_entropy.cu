#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/train_ops.h"

namespace qlorad::kernels::cuda {
namespace {
using detail::BlockReduce;
using detail::Load;
using detail::Store;

constexpr int kThreads = 512;

// One block per row: max, sum of exponentials, then the gradient written over the logits. The
// [rows, vocab] probabilities are never stored separately.
template <typename T>
__global__ void CrossEntropyKernel(T* __restrict__ logits, const int32_t* __restrict__ targets,
                                   int64_t vocab, float scale, float* __restrict__ row_loss) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  T* row = logits + r * vocab;
  const int32_t target = targets[r];
  if (target < 0) {
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) Store(row, i, 0.0f);
    if (threadIdx.x == 0) row_loss[r] = 0.0f;
    return;
  }
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, Load(row, i));
  mx = BlockReduce<true>(mx, scratch);
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) sum += expf(Load(row, i) - mx);
  sum = BlockReduce<false>(sum, scratch);
  const float target_logit = Load(row, target);
  __syncthreads();  // every thread has read the target's logit before it is overwritten
  if (threadIdx.x == 0) row_loss[r] = logf(sum) + mx - target_logit;
  const float k = scale / sum;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float p = expf(Load(row, i) - mx) * k;
    Store(row, i, i == target ? p - scale : p);
  }
}

}  // namespace

template <typename T>
cudaError_t CrossEntropyForwardBackward(T* logits, const int32_t* targets, int64_t rows,
                                        int64_t vocab, float scale, float* row_loss,
                                        cudaStream_t stream) {
  if (rows < 0 || vocab <= 0 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  QLORAD_LAUNCH(static_cast<unsigned>(rows), kThreads, 0, stream, CrossEntropyKernel<T>, logits,
                targets, vocab, scale, row_loss);
  return cudaGetLastError();
}

template cudaError_t CrossEntropyForwardBackward<float>(float*, const int32_t*, int64_t, int64_t,
                                                        float, float*, cudaStream_t);
template cudaError_t CrossEntropyForwardBackward<__nv_bfloat16>(__nv_bfloat16*, const int32_t*,
                                                                int64_t, int64_t, float, float*,
                                                                cudaStream_t);

}  // namespace qlorad::kernels::cuda
