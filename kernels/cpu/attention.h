// Causal grouped-query attention forward on the CPU.
#pragma once

#include <cstdint>

namespace qlorad::kernels {

struct AttentionShape {
  int64_t tokens = 0;     // new query tokens T
  int64_t kv_tokens = 0;  // keys/values available (cache + new), S >= first_pos + T
  int64_t first_pos = 0;  // absolute position of query token 0 within the key sequence
  int64_t heads = 0;      // query heads H
  int64_t kv_heads = 0;   // key/value heads KV; H % KV == 0, head h reads kv head h / (H/KV)
  int64_t head_dim = 0;
};

// q: [T, H, hd]; k, v: [S, KV, hd] (row stride kv_row_stride floats between consecutive key
// tokens, KV*hd when dense); out: [T, H, hd]. Query t attends keys 0..first_pos+t, scaled by
// 1/sqrt(hd). If `probs` is not null it receives the softmax [H, T, S] (zeros above the
// diagonal) for the backward pass.
void CausalAttentionForward(const float* q, const float* k, const float* v, int64_t kv_row_stride,
                            const AttentionShape& shape, float* out, float* probs = nullptr);

}  // namespace qlorad::kernels
