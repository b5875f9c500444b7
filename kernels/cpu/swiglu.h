// SwiGLU activation of the LLaMA MLP on the CPU: out = silu(gate) * up, silu(g) = g*sigmoid(g).
#pragma once

#include <cstdint>

namespace qlorad::kernels {

// gate, up, out: [n] (out may alias gate or up).
void SwigluForward(const float* gate, const float* up, int64_t n, float* out);

// Backward: dup = dout * silu(gate); dgate = dout * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))).
// Both written (=); they may alias gate/up respectively only if those are no longer needed.
void SwigluBackward(const float* gate, const float* up, const float* dout, int64_t n, float* dgate,
                    float* dup);

}  // namespace qlorad::kernels
