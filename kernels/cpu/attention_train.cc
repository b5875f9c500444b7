#include "kernels/cpu/attention_train.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"

namespace qlorad::kernels {
namespace {

bool Visible(const int32_t* segments, int64_t t, int64_t j) {
  return j <= t && (segments == nullptr || segments[j] == segments[t]);
}

}  // namespace

// Per query head: S = scale * Q_h K_g^T and O_h = P V_g as GEMMs over the strided [T, H, hd]
// layouts (g = the head's kv group); the mask and the softmax run row by row in between.
void AttentionTrainForward(const float* q, const float* k, const float* v, const int32_t* segments,
                           const TrainAttentionShape& s, float* out, float* probs) {
  const int64_t T = s.tokens, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  const int64_t group = H / KV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / group;
    float* p = probs + h * T * T;
    GemmF32(false, true, T, T, hd, scale, q + h * hd, H * hd, k + g * hd, KV * hd, 0.0f, p, T);
#pragma omp parallel for schedule(static) if ((T * T) >= kMinParallelWork)
    for (int64_t t = 0; t < T; ++t) {
      float* row = p + t * T;
      float mx = -INFINITY;
      for (int64_t j = 0; j <= t; ++j) {
        if (Visible(segments, t, j)) mx = std::max(mx, row[j]);
      }
      float denom = 0.0f;
      for (int64_t j = 0; j < T; ++j) {
        row[j] = Visible(segments, t, j) ? std::exp(row[j] - mx) : 0.0f;
        denom += row[j];
      }
      const float inv = 1.0f / denom;
      for (int64_t j = 0; j <= t; ++j) row[j] *= inv;
    }
    GemmF32(false, false, T, hd, T, 1.0f, p, T, v + g * hd, KV * hd, 0.0f, out + h * hd, H * hd);
  }
}

// dV_g += P^T dO_h; dP = dO_h V_g^T; dS = P (dP - rowsum(P dP)) * scale; dQ_h = dS K_g;
// dK_g += dS^T Q_h.
void AttentionTrainBackward(const float* q, const float* k, const float* v, const float* probs,
                            const float* dout, const TrainAttentionShape& s, float* dq, float* dk,
                            float* dv) {
  const int64_t T = s.tokens, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  const int64_t group = H / KV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::fill(dk, dk + T * KV * hd, 0.0f);
  std::fill(dv, dv + T * KV * hd, 0.0f);
  std::vector<float> ds(T * T);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / group;
    const float* p = probs + h * T * T;
    const float* go = dout + h * hd;
    GemmF32(true, false, T, hd, T, 1.0f, p, T, go, H * hd, 1.0f, dv + g * hd, KV * hd);
    GemmF32(false, true, T, T, hd, 1.0f, go, H * hd, v + g * hd, KV * hd, 0.0f, ds.data(), T);
#pragma omp parallel for schedule(static) if ((T * T) >= kMinParallelWork)
    for (int64_t t = 0; t < T; ++t) {
      const float* pr = p + t * T;
      float* dr = ds.data() + t * T;
      float dot = 0.0f;
      for (int64_t j = 0; j <= t; ++j) dot += pr[j] * dr[j];
      for (int64_t j = 0; j < T; ++j) dr[j] = j <= t ? pr[j] * (dr[j] - dot) * scale : 0.0f;
    }
    GemmF32(false, false, T, hd, T, 1.0f, ds.data(), T, k + g * hd, KV * hd, 0.0f, dq + h * hd,
            H * hd);
    GemmF32(true, false, T, hd, T, 1.0f, ds.data(), T, q + h * hd, H * hd, 1.0f, dk + g * hd,
            KV * hd);
  }
}

}  // namespace qlorad::kernels
