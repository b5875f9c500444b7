#include "kernels/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>

namespace qlorad::kernels {
namespace {

// log(sum(exp(x))) of one row, max-shifted.
double LogSumExp(const float* row, int64_t vocab, float* max_out) {
  const float mx = *std::max_element(row, row + vocab);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(row[i] - mx));
  *max_out = mx;
  return std::log(sum) + mx;
}

}  // namespace

double CrossEntropyForwardBackward(float* logits, const int32_t* targets, int64_t rows,
                                   int64_t vocab, float scale) {
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = logits + r * vocab;
    if (targets[r] < 0) {
      std::fill(row, row + vocab, 0.0f);
      continue;
    }
    float mx;
    const double lse = LogSumExp(row, vocab, &mx);
    total += lse - row[targets[r]];
    for (int64_t i = 0; i < vocab; ++i) {
      row[i] = static_cast<float>(std::exp(static_cast<double>(row[i]) - lse)) * scale;
    }
    row[targets[r]] -= scale;
  }
  return total;
}

double CrossEntropyLoss(const float* logits, const int32_t* targets, int64_t rows, int64_t vocab) {
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    float mx;
    total += LogSumExp(logits + r * vocab, vocab, &mx) - logits[r * vocab + targets[r]];
  }
  return total;
}

}  // namespace qlorad::kernels
