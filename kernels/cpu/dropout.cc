#include "kernels/cpu/dropout.h"

#include "kernels/cpu/parallel.h"

namespace qlorad::kernels {

void DropoutApply(const float* x, int64_t n, float p, uint64_t seed, uint64_t stream, float* out) {
  const float scale = 1.0f / (1.0f - p);
  const float threshold = p * 16777216.0f;  // keep when the 24 random bits >= p * 2^24
#pragma omp parallel for schedule(static) if ((n) >= kMinParallelWork)
  for (int64_t pair = 0; pair < (n + 1) / 2; ++pair) {
    // DropoutKeep's bits, computed once per pair of elements.
    const uint64_t z = DropoutPairBits(seed, stream, static_cast<uint64_t>(pair));
    const int64_t i = 2 * pair;
    out[i] = static_cast<float>(DropoutHalfBits(z, false)) >= threshold ? x[i] * scale : 0.0f;
    if (i + 1 < n)
      out[i + 1] =
          static_cast<float>(DropoutHalfBits(z, true)) >= threshold ? x[i + 1] * scale : 0.0f;
  }
}

void FillUniform(float* x, int64_t n, uint64_t seed, uint64_t stream, float scale) {
#pragma omp parallel for schedule(static) if ((n) >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i)
    x[i] = UniformValue(seed, stream, static_cast<uint64_t>(i), scale);
}

}  // namespace qlorad::kernels
