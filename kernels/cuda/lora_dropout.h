// CUDA launchers of the fused LoRA dropout kernels (kernels/lora_dropout_body.h; CPU twins in
// kernels/cpu/lora_dropout.h, same contracts): LoRA's down-projection of dropout(x) and its
// two gradients without writing dropout(x). Ranks up to kMaxRank (64); none synchronizes with
// the host. cudaErrorInvalidValue for bad sizes, otherwise the launch status.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace qlorad::kernels::cuda {

// Whether the fused kernels take these sizes (ranks up to 64, grids within CUDA's limits);
// where not, a caller runs the unfused composition.
bool LoraDropoutSupports(int64_t n, int64_t in, int64_t r);

// X, the element type of x and dx: float or __nv_bfloat16 (widened exactly; dx rounded once
// after its add). Everything else is float32.
// h [n, r] = dropout(x) A^T, x [n, in], A [r, in].
template <typename X>
cudaError_t LoraDropoutDown(const X* x, int64_t n, int64_t in, const float* a, int64_t r, float p,
                            uint64_t seed, uint64_t stream_id, float* h, cudaStream_t stream);
// da [r, in] += dh^T dropout(x); `partial` is scratch of LoraDropoutPartialFloats(n, in, r).
int64_t LoraDropoutPartialFloats(int64_t n, int64_t in, int64_t r);
template <typename X>
cudaError_t LoraDropoutGradA(const X* x, const float* dh, int64_t n, int64_t in, int64_t r, float p,
                             uint64_t seed, uint64_t stream_id, float* partial, float* da,
                             cudaStream_t stream);
// dx [n, in] += dropout(dh A).
template <typename X>
cudaError_t LoraDropoutBackwardInput(const float* dh, const float* a, int64_t n, int64_t in,
                                     int64_t r, float p, uint64_t seed, uint64_t stream_id, X* dx,
                                     cudaStream_t stream);

}  // namespace qlorad::kernels::cuda
