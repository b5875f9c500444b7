#include "kernels/cpu/dropout.h"

namespace qlorad::kernels {

void DropoutApply(const float* x, int64_t n, float p, uint64_t seed, uint64_t stream, float* out) {
  const float scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    out[i] = DropoutKeep(seed, stream, static_cast<uint64_t>(i), p) ? x[i] * scale : 0.0f;
  }
}

}  // namespace qlorad::kernels
