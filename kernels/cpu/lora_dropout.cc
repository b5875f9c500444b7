#include "kernels/cpu/lora_dropout.h"

#include <cstddef>
#include <vector>

#include "kernels/cpu/dropout.h"

namespace qlorad::kernels {
namespace {

// Row t of dropout(v) (v [n, in]) into out.
void DroppedRow(const float* v, int64_t t, int64_t in, float p, uint64_t seed, uint64_t stream,
                float* out) {
  const float scale = 1.0f / (1.0f - p);
  for (int64_t i = 0; i < in; ++i) {
    out[i] = DropoutKeep(seed, stream, static_cast<uint64_t>(t * in + i), p) ? v[i] * scale : 0.0f;
  }
}

}  // namespace

void LoraDropoutDown(const float* x, int64_t n, int64_t in, const float* a, int64_t r, float p,
                     uint64_t seed, uint64_t stream, float* h) {
#pragma omp parallel
  {
    std::vector<float> row(in);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      DroppedRow(x + t * in, t, in, p, seed, stream, row.data());
      for (int64_t j = 0; j < r; ++j) {
        double s = 0.0;
        for (int64_t i = 0; i < in; ++i) s += static_cast<double>(row[i]) * a[j * in + i];
        h[t * r + j] = static_cast<float>(s);
      }
    }
  }
}

void LoraDropoutGradA(const float* x, const float* dh, int64_t n, int64_t in, int64_t r, float p,
                      uint64_t seed, uint64_t stream, float* da) {
  std::vector<double> sum(static_cast<size_t>(r * in), 0.0);
  std::vector<float> row(in);
  for (int64_t t = 0; t < n; ++t) {
    DroppedRow(x + t * in, t, in, p, seed, stream, row.data());
    for (int64_t j = 0; j < r; ++j) {
      const double d = dh[t * r + j];
      for (int64_t i = 0; i < in; ++i) sum[j * in + i] += d * row[i];
    }
  }
  for (int64_t e = 0; e < r * in; ++e) da[e] = static_cast<float>(da[e] + sum[e]);
}

void LoraDropoutBackwardInput(const float* dh, const float* a, int64_t n, int64_t in, int64_t r,
                              float p, uint64_t seed, uint64_t stream, float* dx) {
#pragma omp parallel
  {
    std::vector<float> row(in), dropped(in);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t i = 0; i < in; ++i) {
        double s = 0.0;
        for (int64_t j = 0; j < r; ++j) s += static_cast<double>(dh[t * r + j]) * a[j * in + i];
        row[i] = static_cast<float>(s);
      }
      DroppedRow(row.data(), t, in, p, seed, stream, dropped.data());
      for (int64_t i = 0; i < in; ++i) dx[t * in + i] += dropped[i];
    }
  }
}

}  // namespace qlorad::kernels
