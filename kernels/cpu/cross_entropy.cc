#include "kernels/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/parallel.h"

namespace qlorad::kernels {
namespace {

// log(sum(exp(row))) of one row, max-shifted; float exponentials, double sum.
double LogSumExp(const float* row, int64_t vocab) {
  const float mx = *std::max_element(row, row + vocab);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(row[i] - mx);
  return std::log(sum) + mx;
}

}  // namespace

double CrossEntropyForwardBackward(float* logits, const int32_t* targets, int64_t rows,
                                   int64_t vocab, float scale) {
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) if((rows * vocab) >= kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = logits + r * vocab;
    if (targets[r] < 0) {
      std::fill(row, row + vocab, 0.0f);
      continue;
    }
    // One exponential per logit: keep exp(x - max) in place, then scale by 1/sum.
    const float target_logit = row[targets[r]];
    const float mx = *std::max_element(row, row + vocab);
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
      row[i] = std::exp(row[i] - mx);
      sum += row[i];
    }
    total += std::log(sum) + mx - target_logit;
    const float k = static_cast<float>(scale / sum);
    for (int64_t i = 0; i < vocab; ++i) row[i] *= k;
    row[targets[r]] -= scale;
  }
  return total;
}

double CrossEntropyLoss(const float* logits, const int32_t* targets, int64_t rows, int64_t vocab) {
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) if((rows * vocab) >= kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    total += LogSumExp(logits + r * vocab, vocab) - logits[r * vocab + targets[r]];
  }
  return total;
}

}  // namespace qlorad::kernels
