#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace qlorad::kernels {

void CausalAttentionForward(const float* q, const float* k, const float* v, int64_t kv_row_stride,
                            const AttentionShape& s, float* out, float* probs) {
  const int64_t group = s.heads / s.kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
#pragma omp parallel for collapse(2) schedule( \
    static) if ((s.heads * s.tokens * (s.first_pos + s.tokens) * s.head_dim) >= kMinParallelWork)
  for (int64_t h = 0; h < s.heads; ++h) {
    for (int64_t t = 0; t < s.tokens; ++t) {
      const int64_t kvh = h / group;
      const int64_t visible = s.first_pos + t + 1;
      const float* qv = q + (t * s.heads + h) * s.head_dim;
      std::vector<float> score(visible);
      float max_score = -INFINITY;
      for (int64_t j = 0; j < visible; ++j) {
        const float* kv = k + j * kv_row_stride + kvh * s.head_dim;
        float dot = 0.0f;
        for (int64_t d = 0; d < s.head_dim; ++d) dot += qv[d] * kv[d];
        score[j] = dot * scale;
        max_score = std::max(max_score, score[j]);
      }
      float denom = 0.0f;
      for (int64_t j = 0; j < visible; ++j) {
        score[j] = std::exp(score[j] - max_score);
        denom += score[j];
      }
      const float inv = 1.0f / denom;
      float* o = out + (t * s.heads + h) * s.head_dim;
      std::fill(o, o + s.head_dim, 0.0f);
      for (int64_t j = 0; j < visible; ++j) {
        const float p = score[j] * inv;
        const float* vv = v + j * kv_row_stride + kvh * s.head_dim;
        for (int64_t d = 0; d < s.head_dim; ++d) o[d] += p * vv[d];
      }
      if (probs != nullptr) {
        float* pr = probs + (h * s.tokens + t) * s.kv_tokens;
        for (int64_t j = 0; j < s.kv_tokens; ++j) pr[j] = j < visible ? score[j] * inv : 0.0f;
      }
    }
  }
}

}  // namespace qlorad::kernels
