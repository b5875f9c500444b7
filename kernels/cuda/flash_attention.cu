#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/bf16_element.cuh"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/flash_context.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/flash_attention_body.h"

namespace qlorad::kernels::cuda {
namespace {
namespace fl = kernels::flash;

template <int HD, typename X>
__global__ void __launch_bounds__(fl::kFlashThreads) ForwardKernel(fl::FlashArgs<X> a) {
  QLORAD_DYNAMIC_SHARED(smem);
  FlashBlockContext cx = FlashBlockContext::OfThisThread();
  fl::FlashForwardBlock<HD>(cx, a, smem);
}

template <int HD, typename X>
__global__ void __launch_bounds__(fl::kFlashThreads) BackwardKvKernel(fl::FlashArgs<X> a) {
  QLORAD_DYNAMIC_SHARED(smem);
  FlashBlockContext cx = FlashBlockContext::OfThisThread();
  fl::FlashBackwardKvBlock<HD>(cx, a, smem);
}

template <int HD, typename X>
__global__ void __launch_bounds__(fl::kFlashThreads) BackwardQKernel(fl::FlashArgs<X> a) {
  QLORAD_DYNAMIC_SHARED(smem);
  FlashBlockContext cx = FlashBlockContext::OfThisThread();
  fl::FlashBackwardQBlock<HD>(cx, a, smem);
}

// delta[h, t] = sum_d dout[t, h, d] out[t, h, d]: one warp per (head, query), its lanes
// reading the row's HD contiguous floats together.
template <int HD, typename X>
__global__ void DeltaKernel(fl::FlashArgs<X> a, float* delta) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= static_cast<int64_t>(a.H) * a.T) return;
  const int h = static_cast<int>(row / a.T), t = static_cast<int>(row % a.T);
  const int64_t base = (static_cast<int64_t>(t) * a.H + h) * HD;
  float s = 0.0f;
  for (int d = threadIdx.x % 32; d < HD; d += 32)
    s += Element<X>::Load(a.dout[base + d]) * Element<X>::Load(a.out[base + d]);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) delta[row] = s;
}

// Launches `kernel` over (heads, ceil(T / 64)) with `smem` dynamic shared bytes, raising the
// kernel's shared-memory limit first (over 48 KiB needs the opt-in).
template <typename Kernel, typename X>
cudaError_t Launch(Kernel kernel, int smem, int64_t T, int64_t heads, const fl::FlashArgs<X>& a,
                   cudaStream_t stream) {
  const cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(heads),
                  static_cast<unsigned>((T + fl::kFlashTile - 1) / fl::kFlashTile));
  QLORAD_LAUNCH(grid, fl::kFlashThreads, smem, stream, kernel, a);
  return cudaGetLastError();
}

template <typename X>
fl::FlashArgs<X> Args(const X* q, const X* k, const X* v, const int32_t* segments, int64_t T,
                      int64_t H, int64_t KV, int64_t head_dim) {
  fl::FlashArgs<X> a;
  a.q = q;
  a.k = k;
  a.v = v;
  a.segments = segments;
  a.T = static_cast<int>(T);
  a.H = static_cast<int>(H);
  a.KV = static_cast<int>(KV);
  a.scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  return a;
}

bool ValidShape(int64_t T, int64_t H, int64_t KV, int64_t head_dim) {
  static_assert(kFlashAttentionMaxTokens == int64_t{65535} * fl::kFlashTile);
  return T > 0 && T <= kFlashAttentionMaxTokens && H > 0 && H < (int64_t{1} << 31) && KV > 0 &&
         H % KV == 0 && FlashAttentionSupports(head_dim);
}

template <int HD, typename X>
cudaError_t Forward(const fl::FlashArgs<X>& a, cudaStream_t stream) {
  return Launch(ForwardKernel<HD, X>, fl::FlashLayout<HD>::kFwdBytes, a.T, a.H, a, stream);
}

template <int HD, typename X>
cudaError_t Backward(const fl::FlashArgs<X>& a, float* delta, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(a.H) * a.T;
  const auto delta_kernel = DeltaKernel<HD, X>;  // one macro argument
  QLORAD_LAUNCH(static_cast<unsigned>((rows + 7) / 8), 256, 0, stream, delta_kernel, a, delta);
  cudaError_t e = cudaGetLastError();
  fl::FlashArgs<X> b = a;
  b.delta = delta;
  if (e == cudaSuccess)
    e = Launch(BackwardKvKernel<HD, X>, fl::FlashLayout<HD>::kKvBytes, a.T, a.KV, b, stream);
  if (e == cudaSuccess)
    e = Launch(BackwardQKernel<HD, X>, fl::FlashLayout<HD>::kDqBytes, a.T, a.H, b, stream);
  return e;
}

}  // namespace

bool FlashAttentionSupports(int64_t head_dim) {
  return head_dim == 32 || head_dim == 64 || head_dim == 128;
}

template <int HD>
int64_t SharedBytes() {
  using Lay = fl::FlashLayout<HD>;
  return std::max({Lay::kFwdBytes, Lay::kKvBytes, Lay::kDqBytes});
}

int64_t FlashAttentionSharedBytes(int64_t head_dim) {
  switch (head_dim) {
    case 32:
      return SharedBytes<32>();
    case 64:
      return SharedBytes<64>();
    case 128:
      return SharedBytes<128>();
    default:
      return 0;
  }
}

template <typename X>
cudaError_t FlashAttentionForward(const X* q, const X* k, const X* v, const int32_t* segments,
                                  int64_t T, int64_t H, int64_t KV, int64_t head_dim, X* out,
                                  float* lse, cudaStream_t stream) {
  if (!ValidShape(T, H, KV, head_dim)) return cudaErrorInvalidValue;
  fl::FlashArgs<X> a = Args(q, k, v, segments, T, H, KV, head_dim);
  a.out = out;
  a.lse = lse;
  switch (head_dim) {
    case 32:
      return Forward<32>(a, stream);
    case 64:
      return Forward<64>(a, stream);
    default:
      return Forward<128>(a, stream);
  }
}

template <typename X>
cudaError_t FlashAttentionBackward(const X* q, const X* k, const X* v, const int32_t* segments,
                                   const X* out, const float* lse, const X* dout, int64_t T,
                                   int64_t H, int64_t KV, int64_t head_dim, float* delta, X* dq,
                                   X* dk, X* dv, cudaStream_t stream) {
  if (!ValidShape(T, H, KV, head_dim)) return cudaErrorInvalidValue;
  fl::FlashArgs<X> a = Args(q, k, v, segments, T, H, KV, head_dim);
  a.out = const_cast<X*>(out);  // read only in the backward
  a.lse = const_cast<float*>(lse);
  a.dout = dout;
  a.dq = dq;
  a.dk = dk;
  a.dv = dv;
  switch (head_dim) {
    case 32:
      return Backward<32>(a, delta, stream);
    case 64:
      return Backward<64>(a, delta, stream);
    default:
      return Backward<128>(a, delta, stream);
  }
}

namespace {

template <typename Kernel>
cudaError_t Describe(const char* name, Kernel kernel, int smem, FlashKernelInfo* info) {
  cudaFuncAttributes attr{};
  cudaError_t e = cudaFuncGetAttributes(&attr, kernel);
  if (e == cudaSuccess) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  }
  int blocks = 0;
  if (e == cudaSuccess) {
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, fl::kFlashThreads, smem);
  }
  *info = {name, attr.numRegs, smem, blocks};
  return e;
}

template <int HD, typename X>
cudaError_t DescribeAll(FlashKernelInfo (&info)[3]) {
  using Lay = fl::FlashLayout<HD>;
  cudaError_t e = Describe("forward", ForwardKernel<HD, X>, Lay::kFwdBytes, &info[0]);
  if (e == cudaSuccess) e = Describe("dk_dv", BackwardKvKernel<HD, X>, Lay::kKvBytes, &info[1]);
  if (e == cudaSuccess) e = Describe("dq", BackwardQKernel<HD, X>, Lay::kDqBytes, &info[2]);
  return e;
}

}  // namespace

template <typename X>
cudaError_t FlashAttentionKernelInfo(int64_t head_dim, FlashKernelInfo (&info)[3]) {
  switch (head_dim) {
    case 32:
      return DescribeAll<32, X>(info);
    case 64:
      return DescribeAll<64, X>(info);
    case 128:
      return DescribeAll<128, X>(info);
    default:
      return cudaErrorInvalidValue;
  }
}

#define QLORAD_INSTANTIATE(X)                                                                   \
  template cudaError_t FlashAttentionForward<X>(const X*, const X*, const X*, const int32_t*,   \
                                                int64_t, int64_t, int64_t, int64_t, X*, float*, \
                                                cudaStream_t);                                  \
  template cudaError_t FlashAttentionBackward<X>(                                               \
      const X*, const X*, const X*, const int32_t*, const X*, const float*, const X*, int64_t,  \
      int64_t, int64_t, int64_t, float*, X*, X*, X*, cudaStream_t);                             \
  template cudaError_t FlashAttentionKernelInfo<X>(int64_t, FlashKernelInfo(&)[3]);
QLORAD_INSTANTIATE(float)
QLORAD_INSTANTIATE(__nv_bfloat16)
#undef QLORAD_INSTANTIATE

}  // namespace qlorad::kernels::cuda
