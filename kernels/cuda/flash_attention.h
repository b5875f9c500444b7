// Flash attention for training on the GPU (kernels/flash_attention_body.h): bf16 tensor-core
// tiles with float32 accumulation and softmax, nothing of size T x T in memory. One training row
// per call; inputs and outputs float32 or bf16 in the engine's layouts. CPU twin:
// kernels/cpu/attention_train.h (which keeps the probabilities instead of the log-sum-exps).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace qlorad::kernels::cuda {

// The longest row the kernels take: query and key tiles of 64 run along the grid's y, which holds
// at most 65535 blocks. Callers fall back to GEMM attention beyond it.
inline constexpr int64_t kFlashAttentionMaxTokens = int64_t{65535} * 64;

// Whether the kernels exist for this head_dim (a multiple of 16, at most 128: 32, 64, 128 are
// instantiated); callers fall back to GEMM attention otherwise.
bool FlashAttentionSupports(int64_t head_dim);

// Dynamic shared memory per block that the largest of the kernels needs at `head_dim` (bytes):
// 87.6 KB at head_dim 128, within every sm_80+ card's opt-in limit (sm_86 and sm_89: 99 KB). A
// card with a lower limit (cudaDevAttrMaxSharedMemoryPerBlockOptin) must use GEMM attention.
int64_t FlashAttentionSharedBytes(int64_t head_dim);

// X, the element type of q, k, v, out, dout and the gradients: float or __nv_bfloat16 (the
// tiles are bf16 either way; bf16 outputs are rounded once). lse and delta are float32.

// q [T, H, hd], k and v [T, KV, hd], segments [T] (device, nullable). Writes out [T, H, hd] and
// lse [H, T] (the log-sum-exp of each query's scaled visible scores, kept for the backward).
template <typename X>
cudaError_t FlashAttentionForward(const X* q, const X* k, const X* v, const int32_t* segments,
                                  int64_t T, int64_t H, int64_t KV, int64_t head_dim, X* out,
                                  float* lse, cudaStream_t stream);

// Gradients from dout [T, H, hd] given the forward's out and lse: dq [T, H, hd], dk and dv
// [T, KV, hd], all written (=). `delta` is [H, T] scratch.
template <typename X>
cudaError_t FlashAttentionBackward(const X* q, const X* k, const X* v, const int32_t* segments,
                                   const X* out, const float* lse, const X* dout, int64_t T,
                                   int64_t H, int64_t KV, int64_t head_dim, float* delta, X* dq,
                                   X* dk, X* dv, cudaStream_t stream);

// What the compiler and the current card make of the three kernels (forward, dK/dV, dQ) at
// head_dim with activations of type X: registers per thread, dynamic shared memory per block
// and resident blocks per SM, for the benchmark's record.
struct FlashKernelInfo {
  const char* name;
  int registers, shared_bytes, blocks_per_sm;
};
template <typename X>
cudaError_t FlashAttentionKernelInfo(int64_t head_dim, FlashKernelInfo (&info)[3]);

}  // namespace qlorad::kernels::cuda
