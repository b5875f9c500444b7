#include "kernels/cpu/rope.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace qlorad::kernels {

void RopeApply(float* x, const int32_t* positions, int64_t tokens, int64_t heads, int64_t head_dim,
               float theta, bool inverse) {
  const int64_t half = head_dim / 2;
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = RopeInvFreq(theta, i, head_dim);
  const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if ((tokens * heads * head_dim) >= kMinParallelWork)
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<float> cos_t(half), sin_t(half);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(positions[t]) * inv_freq[i];
      cos_t[i] = std::cos(angle);
      sin_t[i] = sign * std::sin(angle);
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i];
        const float b = v[i + half];
        v[i] = a * cos_t[i] - b * sin_t[i];
        v[i + half] = b * cos_t[i] + a * sin_t[i];
      }
    }
  }
}

}  // namespace qlorad::kernels
