// CPU twins of the fused LoRA dropout kernels (kernels/lora_dropout_body.h,
// kernels/cuda/lora_dropout.h): LoRA's down-projection A [r, in] applied to dropout(x) and its
// two gradients, with dropout(x) the mask of DropoutApply (kernels/cpu/dropout.h) over x
// [n, in] flattened, from (seed, stream). Sums in double: these are the references the GPU
// kernels are checked against.
#pragma once

#include <cstdint>

namespace qlorad::kernels {

// h [n, r] = dropout(x) A^T.
void LoraDropoutDown(const float* x, int64_t n, int64_t in, const float* a, int64_t r, float p,
                     uint64_t seed, uint64_t stream, float* h);
// da [r, in] += dh^T dropout(x), dh [n, r].
void LoraDropoutGradA(const float* x, const float* dh, int64_t n, int64_t in, int64_t r, float p,
                      uint64_t seed, uint64_t stream, float* da);
// dx [n, in] += dropout(dh A): the gradient through the mask of the same stream.
void LoraDropoutBackwardInput(const float* dh, const float* a, int64_t n, int64_t in, int64_t r,
                              float p, uint64_t seed, uint64_t stream, float* dx);

}  // namespace qlorad::kernels
