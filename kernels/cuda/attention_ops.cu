#include "kernels/cpu/dropout.h"
#include "kernels/cuda/attention_ops.h"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/launch.cuh"

namespace qlorad::kernels::cuda {
namespace {
using detail::BlockReduce;
using detail::GridFor;

constexpr int kRowThreads = 256;

__device__ __forceinline__ bool Visible(int64_t t, int64_t j, int64_t first_pos,
                                        const int32_t* segments) {
  return j <= first_pos + t && (segments == nullptr || segments[j] == segments[t]);
}

// One block per (head, query) row.
__global__ void MaskedSoftmaxKernel(float* scores, int64_t T, int64_t S, int64_t first_pos,
                                    const int32_t* segments) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int64_t t = row % T;
  float* r = scores + row * S;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) {
    if (Visible(t, j, first_pos, segments)) mx = fmaxf(mx, r[j]);
  }
  mx = BlockReduce<true>(mx, scratch);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) {
    const float e = Visible(t, j, first_pos, segments) ? expf(r[j] - mx) : 0.0f;
    r[j] = e;
    sum += e;
  }
  sum = BlockReduce<false>(sum, scratch);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) r[j] *= inv;
}

__global__ void SoftmaxBackwardKernel(const float* p, float* dp, int64_t S, float scale) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* pr = p + row * S;
  float* dr = dp + row * S;
  float dot = 0.0f;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) dot += pr[j] * dr[j];
  dot = BlockReduce<false>(dot, scratch);
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) {
    dr[j] = pr[j] != 0.0f ? pr[j] * (dr[j] - dot) * scale : 0.0f;
  }
}

template <typename T>
__global__ void GatherKernel(const float* table, int64_t dim, const int32_t* ids, int64_t n,
                             T* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    detail::Store(out, i, table[static_cast<int64_t>(ids[i / dim]) * dim + i % dim]);
  }
}

// float <-> bf16, one element a step (widened exactly, rounded to nearest even).
template <typename From, typename To>
__global__ void ConvertKernel(const From* __restrict__ x, int64_t n, To* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    detail::Store(out, i, detail::Load(x, i));
  }
}

__global__ void ConvertRowsBf16Kernel(const float* __restrict__ src, int64_t rows, int64_t cols,
                                      int64_t src_ld, float scale, int64_t padded,
                                      __nv_bfloat16* __restrict__ dst, int64_t dst_ld) {
  // Rows across blockIdx.x and threadIdx.y (grid-stride), columns along threadIdx.x: no
  // division per element, and narrow rows (LoRA's r columns) pack 8 rows into a block.
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.y) + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    for (int64_t c = threadIdx.x; c < padded; c += blockDim.x) {
      dst[r * dst_ld + c] = __float2bfloat16_rn(c < cols ? scale * src[r * src_ld + c] : 0.0f);
    }
  }
}

// Rows of bf16 into a wider matrix: kUnit values a copy, 8 (16 bytes) where every row start
// is 16-byte aligned and rows are whole 16-byte units (cols a multiple of 8), else 1. Rows across
// blockIdx.x and threadIdx.y, units along threadIdx.x.
template <int kUnit>
__global__ void CopyRowsBf16Kernel(const __nv_bfloat16* __restrict__ src, int64_t rows,
                                   int64_t units, int64_t src_ld, __nv_bfloat16* __restrict__ dst,
                                   int64_t dst_ld) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.y) + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const __nv_bfloat16* from = src + r * src_ld;
    __nv_bfloat16* to = dst + r * dst_ld;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      if constexpr (kUnit == 8) {
        reinterpret_cast<uint4*>(to)[u] = reinterpret_cast<const uint4*>(from)[u];
      } else {
        to[u] = from[u];
      }
    }
  }
}

template <typename T>
__global__ void AddWideKernel(T* y, const T* x, int64_t chunks) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float a[detail::kWide], b[detail::kWide];
    detail::Load8(y + c * detail::kWide, a);
    detail::Load8(x + c * detail::kWide, b);
#pragma unroll
    for (int k = 0; k < detail::kWide; ++k) a[k] += b[k];
    detail::Store8(y + c * detail::kWide, a);
  }
}

// Rows of `dim` (a multiple of 8) gathered eight values a step.
template <typename T>
__global__ void GatherWideKernel(const float* table, int64_t dim, const int32_t* ids,
                                 int64_t chunks, T* out) {
  const int64_t row_chunks = dim / detail::kWide;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = c / row_chunks, j = (c % row_chunks) * detail::kWide;
    float v[detail::kWide];
    detail::Load8(table + static_cast<int64_t>(ids[t]) * dim + j, v);
    detail::Store8(out + t * dim + j, v);
  }
}

// float <-> bf16 eight values a step.
template <typename From, typename To>
__global__ void ConvertWideKernel(const From* x, int64_t chunks, To* out) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v[detail::kWide];
    detail::Load8(x + c * detail::kWide, v);
    detail::Store8(out + c * detail::kWide, v);
  }
}

template <typename T>
__global__ void AddKernel(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    detail::Store(y, i, detail::Load(y, i) + detail::Load(x, i));
  }
}

__global__ void ScaleKernel(float* x, int64_t n, float alpha) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] *= alpha;
  }
}

__global__ void FillKernel(float* x, int64_t n, float value) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = value;
  }
}

__global__ void FillUniformKernel(float* x, int64_t n, uint64_t seed, uint64_t stream_id,
                                  float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = UniformValue(seed, stream_id, static_cast<uint64_t>(i), scale);
  }
}

constexpr int kSumThreads = 256;

// The block's sum of each thread's `s` (kSumThreads threads), valid in thread 0, in a fixed
// order: the same inputs give the same bits on every run.
__device__ double BlockSumDouble(double s) {
  __shared__ double warp_sums[kSumThreads / 32];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kSumThreads / 32; ++w) total += warp_sums[w];
  }
  return total;
}

__global__ void SumSquaresKernel(const float* x, int64_t n, double* partial) {
  double s = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    s += static_cast<double>(x[i]) * x[i];
  }
  const double total = BlockSumDouble(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// One block of kSumThreads: the sum of v[0, n) (double, fixed order) written to *out, or added
// to it.
template <typename T>
__global__ void FinishSumKernel(const T* v, int64_t n, float* out, bool accumulate) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) s += static_cast<double>(v[i]);
  const double total = BlockSumDouble(s);
  if (threadIdx.x == 0) *out = static_cast<float>(accumulate ? *out + total : total);
}

__global__ void RowLossKernel(const float* logits, const int32_t* targets, int64_t vocab,
                              float* row_loss) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const int32_t target = targets[r];
  if (target < 0) {
    if (threadIdx.x == 0) row_loss[r] = 0.0f;
    return;
  }
  const float* row = logits + r * vocab;
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, row[i]);
  mx = BlockReduce<true>(mx, scratch);
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) sum += expf(row[i] - mx);
  sum = BlockReduce<false>(sum, scratch);
  if (threadIdx.x == 0) row_loss[r] = logf(sum) + mx - row[target];
}

bool RowsOk(int64_t rows) { return rows >= 0 && rows <= 0x7fffffff; }

}  // namespace

cudaError_t MaskedSoftmaxRows(float* scores, int64_t heads, int64_t T, int64_t S, int64_t first_pos,
                              const int32_t* segments, cudaStream_t stream) {
  if (heads <= 0 || T < 0 || S <= 0 || !RowsOk(heads * T) || (segments && first_pos != 0))
    return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  QLORAD_LAUNCH(static_cast<unsigned>(heads * T), kRowThreads, 0, stream, MaskedSoftmaxKernel,
                scores, T, S, first_pos, segments);
  return cudaGetLastError();
}

cudaError_t SoftmaxBackwardRows(const float* p, float* dp, int64_t rows, int64_t S, float scale,
                                cudaStream_t stream) {
  if (!RowsOk(rows) || S <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  QLORAD_LAUNCH(static_cast<unsigned>(rows), kRowThreads, 0, stream, SoftmaxBackwardKernel, p, dp,
                S, scale);
  return cudaGetLastError();
}

template <typename T>
cudaError_t EmbeddingGather(const float* table, int64_t dim, const int32_t* ids, int64_t tokens,
                            T* out, cudaStream_t stream) {
  if (dim <= 0 || tokens < 0) return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  if (detail::Wide8(dim, table, out)) {
    const int64_t chunks = tokens * dim / detail::kWide;
    QLORAD_LAUNCH(GridFor(chunks, 256), 256, 0, stream, GatherWideKernel, table, dim, ids, chunks,
                  out);
  } else {
    QLORAD_LAUNCH(GridFor(tokens * dim, 256), 256, 0, stream, GatherKernel, table, dim, ids,
                  tokens * dim, out);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t AddInPlace(T* y, const T* x, int64_t n, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (detail::Wide8(n, y, x)) {
    QLORAD_LAUNCH(GridFor(n / detail::kWide, 256), 256, 0, stream, AddWideKernel, y, x,
                  n / detail::kWide);
  } else {
    QLORAD_LAUNCH(GridFor(n, 256), 256, 0, stream, AddKernel, y, x, n);
  }
  return cudaGetLastError();
}

#define QLORAD_INSTANTIATE(T)                                                                 \
  template cudaError_t EmbeddingGather<T>(const float*, int64_t, const int32_t*, int64_t, T*, \
                                          cudaStream_t);                                      \
  template cudaError_t AddInPlace<T>(T*, const T*, int64_t, cudaStream_t);
QLORAD_INSTANTIATE(float)
QLORAD_INSTANTIATE(__nv_bfloat16)
#undef QLORAD_INSTANTIATE

cudaError_t ScaleInPlace(float* x, int64_t n, float alpha, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  QLORAD_LAUNCH(GridFor(n, 256), 256, 0, stream, ScaleKernel, x, n, alpha);
  return cudaGetLastError();
}

cudaError_t FillValue(float* x, int64_t n, float value, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  QLORAD_LAUNCH(GridFor(n, 256), 256, 0, stream, FillKernel, x, n, value);
  return cudaGetLastError();
}

cudaError_t FillUniform(float* x, int64_t n, uint64_t seed, uint64_t stream_id, float scale,
                        cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  QLORAD_LAUNCH(GridFor(n, 256), 256, 0, stream, FillUniformKernel, x, n, seed, stream_id, scale);
  return cudaGetLastError();
}

namespace {
template <typename From, typename To>
cudaError_t Convert(const From* x, int64_t n, To* out, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (detail::Wide8(n, x, out)) {
    QLORAD_LAUNCH(GridFor(n / detail::kWide, 256), 256, 0, stream, ConvertWideKernel, x,
                  n / detail::kWide, out);
  } else {
    QLORAD_LAUNCH(GridFor(n, 256), 256, 0, stream, ConvertKernel, x, n, out);
  }
  return cudaGetLastError();
}
}  // namespace

cudaError_t ConvertToBf16(const float* x, int64_t n, __nv_bfloat16* out, cudaStream_t stream) {
  return Convert(x, n, out, stream);
}

cudaError_t ConvertToF32(const __nv_bfloat16* x, int64_t n, float* out, cudaStream_t stream) {
  return Convert(x, n, out, stream);
}

cudaError_t ConvertRowsToBf16(const float* src, int64_t rows, int64_t cols, int64_t src_ld,
                              float scale, int64_t padded_cols, __nv_bfloat16* dst, int64_t dst_ld,
                              cudaStream_t stream) {
  if (rows < 0 || cols < 0 || padded_cols < cols || src_ld < cols || dst_ld < padded_cols)
    return cudaErrorInvalidValue;
  if (rows == 0 || padded_cols == 0) return cudaSuccess;
  const dim3 block(padded_cols <= 32 ? 32 : 256, padded_cols <= 32 ? 8 : 1);
  const int64_t blocks = (rows + block.y - 1) / block.y;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
  QLORAD_LAUNCH(grid, block, 0, stream, ConvertRowsBf16Kernel, src, rows, cols, src_ld, scale,
                padded_cols, dst, dst_ld);
  return cudaGetLastError();
}

cudaError_t CopyRowsBf16(const __nv_bfloat16* src, int64_t rows, int64_t cols, int64_t src_ld,
                         __nv_bfloat16* dst, int64_t dst_ld, cudaStream_t stream) {
  if (src == nullptr || dst == nullptr || rows < 0 || cols < 0 || src_ld < cols || dst_ld < cols)
    return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0) return cudaSuccess;
  const bool wide = cols % 8 == 0 && src_ld % 8 == 0 && dst_ld % 8 == 0 &&
                    reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  const int64_t units = wide ? cols / 8 : cols;
  const dim3 block(units <= 32 ? 32 : 256, units <= 32 ? 8 : 1);
  const int64_t blocks = (rows + block.y - 1) / block.y;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
  if (wide) {
    QLORAD_LAUNCH(grid, block, 0, stream, CopyRowsBf16Kernel<8>, src, rows, units, src_ld, dst,
                  dst_ld);
  } else {
    QLORAD_LAUNCH(grid, block, 0, stream, CopyRowsBf16Kernel<1>, src, rows, units, src_ld, dst,
                  dst_ld);
  }
  return cudaGetLastError();
}

int SumSquaresBlocks(int64_t n) {
  const int64_t b = (n + kSumThreads * 8 - 1) / (kSumThreads * 8);
  return static_cast<int>(b < 1 ? 1 : (b > 1024 ? 1024 : b));
}

cudaError_t SumSquaresInto(const float* x, int64_t n, double* partial, float* out,
                           cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  const int blocks = SumSquaresBlocks(n);
  QLORAD_LAUNCH(blocks, kSumThreads, 0, stream, SumSquaresKernel, x, n, partial);
  QLORAD_LAUNCH(1, kSumThreads, 0, stream, FinishSumKernel<double>, partial, blocks, out, false);
  return cudaGetLastError();
}

cudaError_t AddSumInto(const float* x, int64_t n, float* out, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  QLORAD_LAUNCH(1, kSumThreads, 0, stream, FinishSumKernel<float>, x, n, out, true);
  return cudaGetLastError();
}

cudaError_t CrossEntropyRowLoss(const float* logits, const int32_t* targets, int64_t rows,
                                int64_t vocab, float* row_loss, cudaStream_t stream) {
  if (!RowsOk(rows) || vocab <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  QLORAD_LAUNCH(static_cast<unsigned>(rows), 512, 0, stream, RowLossKernel, logits, targets, vocab,
                row_loss);
  return cudaGetLastError();
}

}  // namespace qlorad::kernels::cuda
