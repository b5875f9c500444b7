#include "kernels/cpu/swiglu.h"

#include <cmath>

#include "kernels/cpu/parallel.h"

namespace qlorad::kernels {

void SwigluForward(const float* gate, const float* up, int64_t n, float* out) {
#pragma omp parallel for schedule(static) if ((n) >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void SwigluBackward(const float* gate, const float* up, const float* dout, int64_t n, float* dgate,
                    float* dup) {
#pragma omp parallel for schedule(static) if ((n) >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i], u = up[i], d = dout[i];
    const float sig = 1.0f / (1.0f + std::exp(-g));
    const float silu = g * sig;
    dgate[i] = d * u * sig * (1.0f + g * (1.0f - sig));
    dup[i] = d * silu;
  }
}

}  // namespace qlorad::kernels
