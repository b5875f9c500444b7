// CUDA pieces of GEMM-based attention and the small device utilities the engine's CUDA device
// needs (float32; the embedding gather and the add also for bf16 activations). The score and
// probability layout is the CPU's: [H, T, S] rows, one row per (head, query), S keys.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace qlorad::kernels::cuda {

// In place over scores [heads * T, S] (already scaled): key j is visible to query t when
// j <= first_pos + t and, with `segments` (device, [S], first_pos must be 0), when
// segments[j] == segments[t]. Writes the softmax over visible keys and zeros elsewhere.
cudaError_t MaskedSoftmaxRows(float* scores, int64_t heads, int64_t T, int64_t S, int64_t first_pos,
                              const int32_t* segments, cudaStream_t stream);

// Softmax backward in place over dp [heads * T, S]: ds = p * (dp - rowsum(p * dp)) * scale,
// zero where p is zero (masked).
cudaError_t SoftmaxBackwardRows(const float* p, float* dp, int64_t rows, int64_t S, float scale,
                                cudaStream_t stream);

// out[t, :] = table[ids[t], :] (ids on the device), rounded to T (float or __nv_bfloat16).
template <typename T>
cudaError_t EmbeddingGather(const float* table, int64_t dim, const int32_t* ids, int64_t tokens,
                            T* out, cudaStream_t stream);
// y = y + x in float, rounded to T once.
template <typename T>
cudaError_t AddInPlace(T* y, const T* x, int64_t n, cudaStream_t stream);
cudaError_t ScaleInPlace(float* x, int64_t n, float alpha, cudaStream_t stream);
cudaError_t FillValue(float* x, int64_t n, float value, cudaStream_t stream);
// x[i] = kernels::UniformValue(seed, stream_id, i, scale): kernels::FillUniform's values, bit
// for bit (random weights made on the card).
cudaError_t FillUniform(float* x, int64_t n, uint64_t seed, uint64_t stream_id, float scale,
                        cudaStream_t stream);
// out[i] = x[i] rounded to bf16 (nearest even): the operand of a bf16 tensor-core GEMM.
cudaError_t ConvertToBf16(const float* x, int64_t n, __nv_bfloat16* out, cudaStream_t stream);
// out[i] = x[i] widened to float32 (exact).
cudaError_t ConvertToF32(const __nv_bfloat16* x, int64_t n, float* out, cudaStream_t stream);
// dst[r * dst_ld + c] = bf16(scale * src[r * src_ld + c]) for c < cols, and 0 for
// cols <= c < padded_cols, r < rows: a block of columns of a wider bf16 matrix (the fused LoRA
// GEMM's operands [x | h] and [W | scale B]).
cudaError_t ConvertRowsToBf16(const float* src, int64_t rows, int64_t cols, int64_t src_ld,
                              float scale, int64_t padded_cols, __nv_bfloat16* dst, int64_t dst_ld,
                              cudaStream_t stream);
// dst[r * dst_ld + c] = src[r * src_ld + c] for c < cols, r < rows, bit for bit, the rest of
// dst untouched: bf16 activations into a block of columns of a wider matrix (the fused LoRA
// GEMM's operand [x | h]). Where every row start is 16-byte aligned and cols is a multiple of
// 8, rows are copied 16 bytes a thread, coalesced: cudaMemcpy2DAsync moved these rows at about 1.5
// TB/s on an H200, a third of its copy bandwidth (docs/benchmarks.md).
cudaError_t CopyRowsBf16(const __nv_bfloat16* src, int64_t rows, int64_t cols, int64_t src_ld,
                         __nv_bfloat16* dst, int64_t dst_ld, cudaStream_t stream);
// *out = sum of x^2 (accumulated in double), on the card: the host reads it when it needs it.
// `partial` is scratch of SumSquaresBlocks(n) doubles.
int SumSquaresBlocks(int64_t n);
cudaError_t SumSquaresInto(const float* x, int64_t n, double* partial, float* out,
                           cudaStream_t stream);
// *out += sum of x (accumulated in double in a fixed order): a micro-batch's row losses added to
// the step's loss on the card.
cudaError_t AddSumInto(const float* x, int64_t n, float* out, cudaStream_t stream);
// row_loss[r] = -log softmax(logits[r])[target] (0 for target < 0); logits untouched.
cudaError_t CrossEntropyRowLoss(const float* logits, const int32_t* targets, int64_t rows,
                                int64_t vocab, float* row_loss, cudaStream_t stream);

}  // namespace qlorad::kernels::cuda
