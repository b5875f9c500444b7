// CUDA twins of the CPU training kernels (kernels/cpu/{rmsnorm,rope,swiglu,cross_entropy,
// adamw,dropout}.h): the same contracts, on a stream, for float32 or bfloat16 activations with
// float32 math inside; norm weights, inv_rms, losses and the optimizer state stay float32.
// Every function returns cudaErrorInvalidValue for bad sizes, otherwise the launch status; none
// synchronizes with the host.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/adamw.h"

namespace qlorad::kernels::cuda {

// y = x / sqrt(mean(x^2) + eps) * w per row; inv_rms (nullable) gets 1/sqrt(mean(x^2)+eps).
template <typename T>
cudaError_t RmsNormForward(const T* x, const float* w, int64_t rows, int64_t dim, float eps, T* y,
                           float* inv_rms, cudaStream_t stream);
// dx = r * (w*dy) - r^3/dim * x * sum(w*dy*x), with r from the forward pass.
template <typename T>
cudaError_t RmsNormBackward(const T* x, const float* w, const float* inv_rms, const T* dy,
                            int64_t rows, int64_t dim, T* dx, cudaStream_t stream);

// Rotary embedding in the Hugging Face "rotate half" layout, in place; `inverse` rotates back.
template <typename T>
cudaError_t RopeApply(T* x, const int32_t* positions, int64_t tokens, int64_t heads,
                      int64_t head_dim, float theta, bool inverse, cudaStream_t stream);

// out = silu(gate) * up; backward dup = dout * silu(g), dgate = dout * up * s * (1 + g (1 - s)).
template <typename T>
cudaError_t SwigluForward(const T* gate, const T* up, int64_t n, T* out, cudaStream_t stream);
template <typename T>
cudaError_t SwigluBackward(const T* gate, const T* up, const T* dout, int64_t n, T* dgate, T* dup,
                           cudaStream_t stream);

// logits [rows, vocab] overwritten with scale * (softmax - onehot(target)) (zeros for rows with
// target < 0); row_loss[r] = -log softmax[target] (0 for ignored rows), float32, for the caller
// to sum when it reads the loss.
template <typename T>
cudaError_t CrossEntropyForwardBackward(T* logits, const int32_t* targets, int64_t rows,
                                        int64_t vocab, float scale, float* row_loss,
                                        cudaStream_t stream);

// torch.optim.AdamW semantics, float32 throughout (bias corrections computed as the CPU does).
cudaError_t AdamWStep(float* params, const float* grads, float* m, float* v, int64_t n,
                      const AdamWParams& p, cudaStream_t stream);

// out[i] = keep(i) ? x[i] / (1-p) : 0 with the CPU's counter-based mask (kernels/cpu/dropout.h),
// so forward and backward, CPU and GPU, drop the same elements.
template <typename T>
cudaError_t DropoutApply(const T* x, int64_t n, float p, uint64_t seed, uint64_t stream_id, T* out,
                         cudaStream_t stream);

}  // namespace qlorad::kernels::cuda
