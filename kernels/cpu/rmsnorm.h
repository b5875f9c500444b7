// RMSNorm forward on the CPU: y = x / sqrt(mean(x^2) + eps) * w, row by row.
#pragma once

#include <cstdint>

namespace qlorad::kernels {

// x, y: [rows, dim] (may alias); w: [dim]. If `inv_rms` is not null it receives one value per
// row, 1/sqrt(mean(x^2)+eps), which the backward pass reuses.
void RmsNormForward(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* y,
                    float* inv_rms = nullptr);

}  // namespace qlorad::kernels
