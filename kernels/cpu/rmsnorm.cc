#include "kernels/cpu/rmsnorm.h"

#include <cmath>

#include "kernels/cpu/parallel.h"

namespace qlorad::kernels {

void RmsNormForward(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* y,
                    float* inv_rms) {
#pragma omp parallel for schedule(static) if ((rows * dim) >= kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    double ss = 0.0;  // Accumulate in double: rows can be long and values large.
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / dim) + eps);
    if (inv_rms != nullptr) inv_rms[r] = inv;
    for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

void RmsNormBackward(const float* x, const float* w, const float* inv_rms, const float* dy,
                     int64_t rows, int64_t dim, float* dx) {
#pragma omp parallel for schedule(static) if ((rows * dim) >= kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    const float* dyr = dy + r * dim;
    float* dxr = dx + r * dim;
    const float inv = inv_rms[r];
    double dot = 0.0;
    for (int64_t i = 0; i < dim; ++i) dot += static_cast<double>(w[i]) * dyr[i] * xr[i];
    const float c = static_cast<float>(dot) * inv * inv * inv / static_cast<float>(dim);
    for (int64_t i = 0; i < dim; ++i) dxr[i] = inv * w[i] * dyr[i] - c * xr[i];
  }
}

}  // namespace qlorad::kernels
