// AdamW on the CPU (Loshchilov & Hutter; torch.optim.AdamW semantics): decoupled weight decay
// p -= lr*wd*p, then m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
// p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
#pragma once

#include <cstdint>

namespace qlorad::kernels {

struct AdamWParams {
  float lr = 2e-4f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;  // 1-based: the step being taken, for bias correction
};

// Updates params, m, v in place from grads (all [n]).
void AdamWStep(float* params, const float* grads, float* m, float* v, int64_t n,
               const AdamWParams& p);

}  // namespace qlorad::kernels
