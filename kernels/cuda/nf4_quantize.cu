#include <cmath>
#include <utility>
#include <vector>

#include "kernels/cpu/nf4.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/nf4_quantize.h"
#include "kernels/nf4_code.h"

namespace qlorad::kernels::cuda {
namespace {

struct Thresholds {
  float mid[15];
};
#if defined(QLORAD_CUDA_ON_CPU)
// No pointers in it, for the CUDA stand-in's launch check (tests/cuda_on_cpu).
std::vector<std::pair<const char*, const void*>> KernelPointers(const Thresholds&) { return {}; }
#endif

__device__ __forceinline__ uint8_t Nf4IndexDevice(float x, const Thresholds& t) {
  if (isnan(x)) return 15;
  uint8_t idx = 0;
#pragma unroll
  for (int i = 0; i < 15; ++i) idx += x > t.mid[i] ? 1 : 0;
  return idx;
}

// std::clamp(v, -1, 1) as the CPU twin: NaN stays NaN (code 15 there), where fminf/fmaxf
// would make it -1 (code 0).
__device__ __forceinline__ float Clamp1(float v) {
  return v < -1.0f ? -1.0f : (1.0f < v ? 1.0f : v);
}

// One thread per block of `blocksize` values (blocksize even, so blocks never share a byte),
// with the CPU's exact arithmetic: a full block multiplies by 1/absmax, a partial one divides.
__global__ void Nf4QuantizeKernel(const float* __restrict__ x, int64_t n, int blocksize,
                                  Thresholds t, uint8_t* __restrict__ packed,
                                  float* __restrict__ absmax) {
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t begin = b * blocksize;
    const int64_t end = min(n, begin + blocksize);
    const bool full = end - begin == blocksize;
    float amax = 0.0f;
    for (int64_t i = begin; i < end; ++i) amax = fmaxf(amax, fabsf(x[i]));
    const float denom = fmaxf(amax, 1e-38f);
    absmax[b] = full ? amax : denom;
    const float inv = __frcp_rn(denom);
    for (int64_t i = begin; i < end; i += 2) {
      const float s0 = Clamp1(full ? __fmul_rn(x[i], inv) : __fdiv_rn(x[i], denom));
      uint8_t byte = static_cast<uint8_t>(Nf4IndexDevice(s0, t) << 4);
      if (i + 1 < end) {
        const float s1 = Clamp1(full ? __fmul_rn(x[i + 1], inv) : __fdiv_rn(x[i + 1], denom));
        byte |= Nf4IndexDevice(s1, t);
      } else {
        byte |= kNf4ZeroIndex;  // an odd count: padded with the code of 0.0
      }
      packed[i / 2] = byte;
    }
  }
}

// absmax -= offset, then 8-bit blockwise on the signed dynamic map: one thread per nested block.
__global__ void Quantize8Kernel(float* __restrict__ a, int64_t n, int blocksize, float offset,
                                const float* __restrict__ code, uint8_t* __restrict__ q,
                                float* __restrict__ nested) {
  __shared__ float c[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) c[i] = code[i];
  __syncthreads();
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t begin = b * blocksize;
    const int64_t end = min(n, begin + blocksize);
    float amax = 0.0f;
    for (int64_t i = begin; i < end; ++i) {
      a[i] = __fsub_rn(a[i], offset);
      amax = fmaxf(amax, fabsf(a[i]));
    }
    nested[b] = amax;
    const float inv = __frcp_rn(amax);
    for (int64_t i = begin; i < end; ++i) {
      const float v = __fmul_rn(a[i], inv);
      // First code >= v (lower_bound), then the nearer neighbour; ties take the lower index.
      int lo = 0, hi = 256;
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (c[mid] < v)
          lo = mid + 1;
        else
          hi = mid;
      }
      uint8_t idx;
      if (lo == 0)
        idx = 0;
      else if (lo == 256)
        idx = 255;
      else
        idx = (__fsub_rn(v, c[lo - 1]) <= __fsub_rn(c[lo], v)) ? lo - 1 : lo;
      q[i] = idx;
    }
  }
}

unsigned Grid(int64_t items) {
  const int64_t b = (items + 127) / 128;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}

}  // namespace

cudaError_t Nf4QuantizeDoubleQuant(const float* x, int64_t n, int blocksize, int nested_blocksize,
                                   Nf4QuantizeOutputs* out, cudaStream_t stream) {
  if (x == nullptr || out == nullptr || n <= 0 || blocksize <= 0 || blocksize % 2 != 0 ||
      nested_blocksize <= 0 || !out->packed || !out->absmax_q || !out->nested_absmax ||
      !out->absmax_scratch || !out->code8) {
    return cudaErrorInvalidValue;
  }
  Thresholds t;
  for (int i = 0; i < 15; ++i) {  // the CPU's midpoints: computed in double, rounded once
    t.mid[i] = static_cast<float>((static_cast<double>(kNf4Code[i]) + kNf4Code[i + 1]) / 2.0);
  }
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  QLORAD_LAUNCH(Grid(blocks), 128, 0, stream, Nf4QuantizeKernel, x, n, blocksize, t, out->packed,
                out->absmax_scratch);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  // The offset: the mean of the absmax values, summed in double in the CPU's order.
  std::vector<float> absmax(blocks);
  if ((e = cudaMemcpyAsync(absmax.data(), out->absmax_scratch, blocks * 4, cudaMemcpyDeviceToHost,
                           stream)) != cudaSuccess ||
      (e = cudaStreamSynchronize(stream)) != cudaSuccess) {
    return e;
  }
  double sum = 0.0;
  for (float a : absmax) sum += a;
  out->offset = static_cast<float>(sum / static_cast<double>(blocks));
  const int64_t nested = (blocks + nested_blocksize - 1) / nested_blocksize;
  QLORAD_LAUNCH(Grid(nested), 128, 0, stream, Quantize8Kernel, out->absmax_scratch, blocks,
                nested_blocksize, out->offset, out->code8, out->absmax_q, out->nested_absmax);
  e = cudaGetLastError();
  // Returns once the stream is done: the caller may free `x` and the scratch at once.
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  return e;
}

}  // namespace qlorad::kernels::cuda
