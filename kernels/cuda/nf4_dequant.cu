#include "kernels/cuda/bf16_element.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/nf4_dequant.h"
#include "kernels/nf4_code.h"

namespace qlorad::kernels::cuda {
namespace {

__constant__ float kNf4CodeDevice[16] = {QLORAD_NF4_CODE_VALUES};

// Rounded after the product and after the sum, as the CPU twin (built with -ffp-contract=off)
// and bitsandbytes: nvcc would otherwise fuse them into one FMA, a different scale in a few
// blocks in ten. The _rn intrinsics are never contracted.
__device__ __forceinline__ float BlockScale(const Nf4DqArgs& a, const float* code8, int64_t b) {
  return __fadd_rn(__fmul_rn(code8[a.absmax_q[b]], a.nested_absmax[b / a.nested_blocksize]),
                   a.offset);
}

// Vectorized path: each thread reads 16 packed bytes (32 values, half of a 64-block) with one
// 16-byte load and writes 32 outputs with 16-byte stores.
// The NF4 table sits in shared memory: a warp's 32 lanes look up to 16 different entries at
// once, which constant memory serves one address at a time, while 16 consecutive floats in
// shared memory lie in 16 different banks and are read in one pass.
template <typename T>
__global__ void DequantVec16(Nf4DqArgs a, int64_t chunks, T* __restrict__ out) {
  __shared__ float code8[256];
  __shared__ float code4[16];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) code8[i] = a.code8[i];
  if (threadIdx.x < 16) code4[threadIdx.x] = kNf4CodeDevice[threadIdx.x];
  __syncthreads();
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 raw = reinterpret_cast<const uint4*>(a.packed)[c];
    const int64_t first = c * 32;
    const float scale = BlockScale(a, code8, first / a.blocksize);
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    alignas(16) T vals[32];  // read back as uint4 below, should it leave the registers
#pragma unroll
    for (int w = 0; w < 4; ++w) {
#pragma unroll
      for (int byte = 0; byte < 4; ++byte) {
        const uint32_t v = (words[w] >> (8 * byte)) & 0xFFu;
        vals[w * 8 + byte * 2] = Element<T>::Round(code4[v >> 4] * scale);
        vals[w * 8 + byte * 2 + 1] = Element<T>::Round(code4[v & 0xFu] * scale);
      }
    }
    constexpr int kPerStore = 16 / sizeof(T);
    // A chunk lies inside one row when cols is a multiple of 32 (Launch checks).
    const int64_t at = a.cols > 0 ? first / a.cols * a.ld + first % a.cols : first;
    uint4* dst = reinterpret_cast<uint4*>(out + at);
#pragma unroll
    for (int s = 0; s < 32 / kPerStore; ++s) dst[s] = reinterpret_cast<const uint4*>(vals)[s];
  }
}

// Scalar path for the tail (or unaligned pointers): one element per thread.
template <typename T>
__global__ void DequantScalar(Nf4DqArgs a, int64_t begin, T* __restrict__ out) {
  for (int64_t i = begin + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < a.n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint8_t byte = a.packed[i / 2];
    const uint8_t q = (i % 2 == 0) ? (byte >> 4) : (byte & 0xF);
    const int64_t at = a.cols > 0 ? i / a.cols * a.ld + i % a.cols : i;
    out[at] = Element<T>::Round(kNf4CodeDevice[q] * BlockScale(a, a.code8, i / a.blocksize));
  }
}

template <typename T>
cudaError_t Launch(const Nf4DqArgs& a, T* out, cudaStream_t stream) {
  if (a.packed == nullptr || a.absmax_q == nullptr || a.nested_absmax == nullptr ||
      a.code8 == nullptr || out == nullptr || a.n < 0 || a.blocksize <= 0 || a.blocksize % 2 != 0 ||
      a.nested_blocksize <= 0 || a.cols < 0 ||
      (a.cols > 0 && (a.ld < a.cols || a.n % a.cols != 0))) {
    return cudaErrorInvalidValue;
  }
  if (a.n == 0) return cudaSuccess;
  const bool aligned =
      reinterpret_cast<uintptr_t>(a.packed) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  // A 32-value chunk must lie inside one absmax block (and one row, with 16-byte aligned rows).
  const bool rows_ok = a.cols == 0 || (a.cols % 32 == 0 && (a.ld * sizeof(T)) % 16 == 0);
  const bool vec_ok = aligned && a.blocksize % 32 == 0 && rows_ok;
  const int64_t chunks = vec_ok ? a.n / 32 : 0;
  constexpr int kThreads = 256;
  if (chunks > 0) {
    int device = 0, sms = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    const int64_t want = (chunks + kThreads - 1) / kThreads;
    const int grid = static_cast<int>(want < sms * 16LL ? want : sms * 16LL);
    QLORAD_LAUNCH(grid, kThreads, 0, stream, DequantVec16<T>, a, chunks, out);
  }
  const int64_t begin = chunks * 32;
  if (begin < a.n) {
    const int64_t rest = a.n - begin;
    const int grid = static_cast<int>(
        (rest + kThreads - 1) / kThreads < 4096 ? (rest + kThreads - 1) / kThreads : 4096);
    QLORAD_LAUNCH(grid, kThreads, 0, stream, DequantScalar<T>, a, begin, out);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t Nf4DequantizeDoubleQuantBf16(const Nf4DqArgs& args, __nv_bfloat16* out,
                                         cudaStream_t stream) {
  return Launch(args, out, stream);
}

cudaError_t Nf4DequantizeDoubleQuantF32(const Nf4DqArgs& args, float* out, cudaStream_t stream) {
  return Launch(args, out, stream);
}

}  // namespace qlorad::kernels::cuda
