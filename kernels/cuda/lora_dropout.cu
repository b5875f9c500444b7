#include <cuda_bf16.h>

#include "kernels/cuda/bf16_element.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/lora_dropout.h"
#include "kernels/lora_dropout_body.h"

namespace qlorad::kernels::cuda {
namespace {
namespace lo = kernels::lora;

// The block context of kernels/lora_dropout_body.h on the GPU.
struct LoraBlockContext {
  int thread, block_x, block_y;
  __device__ void SyncBlock() { __syncthreads(); }
  __device__ float ShflXor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
};

__device__ LoraBlockContext Context() {
  return {static_cast<int>(threadIdx.x), static_cast<int>(blockIdx.x),
          static_cast<int>(blockIdx.y)};
}

template <typename X>
__global__ void __launch_bounds__(lo::kLoraThreads) DownKernel(lo::LoraDropoutArgs<X> a) {
  __shared__ float smem[lo::kLoraThreads / 32 * lo::kDownRows * lo::kRankChunk];
  LoraBlockContext cx = Context();
  lo::DownBlock(cx, a, smem);
}

template <typename X>
__global__ void __launch_bounds__(lo::kLoraThreads) GradAKernel(lo::LoraDropoutArgs<X> a) {
  __shared__ __align__(16) float smem[lo::kGradTokens * lo::kMaxRank];
  LoraBlockContext cx = Context();
  lo::GradABlock(cx, a, smem);
}

template <typename X>
__global__ void __launch_bounds__(lo::kLoraThreads) FinishGradAKernel(lo::LoraDropoutArgs<X> a) {
  LoraBlockContext cx = Context();
  lo::FinishGradABlock(cx, a);
}

template <typename X>
__global__ void __launch_bounds__(lo::kLoraThreads) BackwardInputKernel(lo::LoraDropoutArgs<X> a) {
  __shared__ __align__(16) float smem[lo::kInputRows * lo::kMaxRank];
  LoraBlockContext cx = Context();
  lo::BackwardInputBlock(cx, a, smem);
}

unsigned Blocks(int64_t n, int64_t per_block) {
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

bool SizesOk(int64_t n, int64_t in, int64_t r, float p) {
  return LoraDropoutSupports(n, in, r) && p >= 0.0f && p < 1.0f;
}

template <typename X>
lo::LoraDropoutArgs<X> Args(int64_t n, int64_t in, int64_t r, float p, uint64_t seed,
                            uint64_t stream_id) {
  lo::LoraDropoutArgs<X> a;
  a.n = n;
  a.in = in;
  a.r = static_cast<int>(r);
  a.p = p;
  a.scale = 1.0f / (1.0f - p);  // DropoutApply's factor, bit for bit
  a.seed = seed;
  a.stream = stream_id;
  return a;
}

}  // namespace

bool LoraDropoutSupports(int64_t n, int64_t in, int64_t r) {
  // Grid y is at most 65535 (column blocks, token blocks of dA); grid x at most 2^31 - 1.
  return n >= 0 && in >= 0 && r >= 1 && r <= lo::kMaxRank &&
         (in + lo::kLoraThreads - 1) / lo::kLoraThreads <= 65535 &&
         lo::GradTokenBlocks(n) <= 65535 && (n + lo::kDownRows - 1) / lo::kDownRows <= 0x7FFFFFFF;
}

int64_t LoraDropoutPartialFloats(int64_t n, int64_t in, int64_t r) {
  return lo::GradTokenBlocks(n) * r * in;
}

template <typename X>
cudaError_t LoraDropoutDown(const X* x, int64_t n, int64_t in, const float* a, int64_t r, float p,
                            uint64_t seed, uint64_t stream_id, float* h, cudaStream_t stream) {
  if (!SizesOk(n, in, r, p)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  lo::LoraDropoutArgs<X> args = Args<X>(n, in, r, p, seed, stream_id);
  args.x = x;
  args.a = a;
  args.h = h;
  QLORAD_LAUNCH(dim3(Blocks(n, lo::kDownRows), Blocks(r, lo::kRankChunk)), lo::kLoraThreads, 0,
                stream, DownKernel<X>, args);
  return cudaGetLastError();
}

template <typename X>
cudaError_t LoraDropoutGradA(const X* x, const float* dh, int64_t n, int64_t in, int64_t r, float p,
                             uint64_t seed, uint64_t stream_id, float* partial, float* da,
                             cudaStream_t stream) {
  if (!SizesOk(n, in, r, p)) return cudaErrorInvalidValue;
  if (n == 0 || in == 0) return cudaSuccess;
  lo::LoraDropoutArgs<X> args = Args<X>(n, in, r, p, seed, stream_id);
  args.x = x;
  args.dh = dh;
  args.partial = partial;
  args.da = da;
  QLORAD_LAUNCH(dim3(Blocks(in, lo::kLoraThreads), static_cast<unsigned>(lo::GradTokenBlocks(n))),
                lo::kLoraThreads, 0, stream, GradAKernel<X>, args);
  QLORAD_LAUNCH(Blocks(r * in, lo::kLoraThreads), lo::kLoraThreads, 0, stream, FinishGradAKernel<X>,
                args);
  return cudaGetLastError();
}

template <typename X>
cudaError_t LoraDropoutBackwardInput(const float* dh, const float* a, int64_t n, int64_t in,
                                     int64_t r, float p, uint64_t seed, uint64_t stream_id, X* dx,
                                     cudaStream_t stream) {
  if (!SizesOk(n, in, r, p)) return cudaErrorInvalidValue;
  if (n == 0 || in == 0) return cudaSuccess;
  lo::LoraDropoutArgs<X> args = Args<X>(n, in, r, p, seed, stream_id);
  args.dh = dh;
  args.a = a;
  args.dx = dx;
  QLORAD_LAUNCH(dim3(Blocks(n, lo::kInputRows), Blocks(in, lo::kLoraThreads)), lo::kLoraThreads, 0,
                stream, BackwardInputKernel<X>, args);
  return cudaGetLastError();
}

#define QLORAD_INSTANTIATE(X)                                                                    \
  template cudaError_t LoraDropoutDown<X>(const X*, int64_t, int64_t, const float*, int64_t,     \
                                          float, uint64_t, uint64_t, float*, cudaStream_t);      \
  template cudaError_t LoraDropoutGradA<X>(const X*, const float*, int64_t, int64_t, int64_t,    \
                                           float, uint64_t, uint64_t, float*, float*,            \
                                           cudaStream_t);                                        \
  template cudaError_t LoraDropoutBackwardInput<X>(const float*, const float*, int64_t, int64_t, \
                                                   int64_t, float, uint64_t, uint64_t, X*,       \
                                                   cudaStream_t);
QLORAD_INSTANTIATE(float)
QLORAD_INSTANTIATE(__nv_bfloat16)
#undef QLORAD_INSTANTIATE

}  // namespace qlorad::kernels::cuda
