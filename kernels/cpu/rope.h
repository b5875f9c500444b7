// Rotary position embedding on the CPU, in the Hugging Face layout ("rotate half"): within
// each head, element i pairs with element i + head_dim/2 and both rotate by the angle
// position * theta^(-2i/head_dim). The engine keeps q/k weights in this layout; checkpoints in
// the Meta layout (llama2.c, GGUF) are permuted on load.
#pragma once

#include <cmath>
#include <cstdint>

namespace qlorad::kernels {

// inv_freq[i] = 1 / theta^(2i/head_dim), in float32 as transformers computes it. The CUDA twin
// takes the same host-computed table, so both rotate by the same angles.
inline float RopeInvFreq(float theta, int64_t i, int64_t head_dim) {
  return 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
}

// x: [tokens, heads, head_dim], rotated in place; positions: [tokens]. `inverse` applies the
// opposite rotation (the backward pass of a rotation is its inverse).
void RopeApply(float* x, const int32_t* positions, int64_t tokens, int64_t heads, int64_t head_dim,
               float theta, bool inverse = false);

}  // namespace qlorad::kernels
