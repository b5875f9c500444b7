#include "kernels/cpu/swiglu.h"

#include <cmath>

namespace qlorad::kernels {

void SwigluForward(const float* gate, const float* up, int64_t n, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace qlorad::kernels
