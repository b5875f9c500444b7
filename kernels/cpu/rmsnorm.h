// RMSNorm on the CPU: y = x / sqrt(mean(x^2) + eps) * w, row by row, and its backward pass.
#pragma once

#include <cstdint>

namespace qlorad::kernels {

// x, y: [rows, dim] (may alias); w: [dim]. If `inv_rms` is not null it receives one value per
// row, 1/sqrt(mean(x^2)+eps), which the backward pass reuses.
void RmsNormForward(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* y,
                    float* inv_rms = nullptr);

// Input gradient of RMSNorm with a frozen weight `w` (no weight gradient), from the forward
// pass's `inv_rms`: dx = r * (w*dy) - r^3/dim * x * sum(w*dy*x). dx is written (=), and may
// not alias x or dy.
void RmsNormBackward(const float* x, const float* w, const float* inv_rms, const float* dy,
                     int64_t rows, int64_t dim, float* dx);

}  // namespace qlorad::kernels
