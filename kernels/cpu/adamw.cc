#include "kernels/cpu/adamw.h"

#include <cmath>

#include "kernels/cpu/parallel.h"

namespace qlorad::kernels {

void AdamWStep(float* params, const float* grads, float* m, float* v, int64_t n,
               const AdamWParams& p) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step));
  const float step_size = static_cast<float>(p.lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = 1.0f - p.lr * p.weight_decay;
#pragma omp parallel for schedule(static) if ((n) >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grads[i];
    m[i] = p.beta1 * m[i] + (1.0f - p.beta1) * g;
    v[i] = p.beta2 * v[i] + (1.0f - p.beta2) * g * g;
    params[i] = params[i] * decay - step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + p.eps);
  }
}

}  // namespace qlorad::kernels
