// Rotary position embedding on the CPU, in the Hugging Face layout ("rotate half"): within
// each head, element i pairs with element i + head_dim/2 and both rotate by the angle
// position * theta^(-2i/head_dim). The engine keeps q/k weights in this layout; checkpoints in
// the Meta layout (llama2.c, GGUF) are permuted on load.
#pragma once

#include <cstdint>

namespace qlorad::kernels {

// x: [tokens, heads, head_dim], rotated in place; positions: [tokens]. `inverse` applies the
// opposite rotation (the backward pass of a rotation is its inverse).
void RopeApply(float* x, const int32_t* positions, int64_t tokens, int64_t heads, int64_t head_dim,
               float theta, bool inverse = false);

}  // namespace qlorad::kernels
