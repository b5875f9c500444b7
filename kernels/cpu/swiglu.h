// SwiGLU activation of the LLaMA MLP on the CPU: out = silu(gate) * up, silu(g) = g*sigmoid(g).
#pragma once

#include <cstdint>

namespace qlorad::kernels {

// gate, up, out: [n] (out may alias gate or up).
void SwigluForward(const float* gate, const float* up, int64_t n, float* out);

}  // namespace qlorad::kernels
