// Cross-entropy over the vocabulary fused with its gradient, on the CPU: the logits are
// overwritten by dlogits so that no second [rows, vocab] buffer is needed.
#pragma once

#include <cstdint>

namespace qlorad::kernels {

// logits: [rows, vocab], overwritten with scale * (softmax - onehot(target)) for rows whose
// target >= 0 and with zeros for ignored rows (target < 0). Returns the sum over target rows of
// -log softmax[target] (in double, not scaled). `scale` is 1 / (target tokens of the whole
// accumulated batch), so accumulation gives the gradient of one large batch.
double CrossEntropyForwardBackward(float* logits, const int32_t* targets, int64_t rows,
                                   int64_t vocab, float scale);

// Loss only (logits untouched): the sum of -log softmax[target] over rows with target >= 0.
double CrossEntropyLoss(const float* logits, const int32_t* targets, int64_t rows, int64_t vocab);

}  // namespace qlorad::kernels
