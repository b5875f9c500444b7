// Attention for training on the CPU: one sequence (row) of T tokens with all its keys, causal,
// grouped-query, and block-diagonal when several examples are packed into the row: token t
// attends to token j only if j <= t and segment[j] == segment[t]. Forward keeps the softmax
// probabilities for the backward pass.
#pragma once

#include <cstdint>

namespace qlorad::kernels {

struct TrainAttentionShape {
  int64_t tokens = 0;    // T
  int64_t heads = 0;     // H
  int64_t kv_heads = 0;  // KV, H % KV == 0
  int64_t head_dim = 0;
};

// q: [T, H, hd]; k, v: [T, KV, hd]; segments: [T] (null: one example); out: [T, H, hd];
// probs: [H, T, T] (written, zeros where masked).
void AttentionTrainForward(const float* q, const float* k, const float* v, const int32_t* segments,
                           const TrainAttentionShape& s, float* out, float* probs);

// Gradients of the forward above from dout [T, H, hd]: dq [T, H, hd], dk and dv [T, KV, hd],
// all written (=). A kv head's gradient sums over the query heads that share it.
void AttentionTrainBackward(const float* q, const float* k, const float* v, const float* probs,
                            const float* dout, const TrainAttentionShape& s, float* dq, float* dk,
                            float* dv);

}  // namespace qlorad::kernels
