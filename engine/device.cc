// The Device interface's default compositions (engine/device.h).
#include "engine/device.h"

#include "kernels/cpu/dropout.h"

namespace qlorad {

absl::StatusOr<std::unique_ptr<DeviceLinear>> Device::RandomLinear(int64_t out, int64_t in,
                                                                   uint64_t seed, uint64_t stream,
                                                                   float scale,
                                                                   const Nf4Options& options) {
  if (out <= 0 || in <= 0) return absl::InvalidArgumentError("random weight with no elements");
  std::vector<float> values(out * in);
  kernels::FillUniform(values.data(), out * in, seed, stream, scale);
  return QuantizeLinear(values, out, in, options);
}

void Device::LinearLora(const DeviceLinear& w, const float* x, int64_t tokens, const float* h,
                        const float* b, int64_t r, float scale, float* y) {
  Linear(w, x, tokens, y);
  const int64_t out = w.out_features();
  Gemm(false, true, tokens, out, r, scale, h, r, b, r, 1.0f, y, out);
}

void Device::LinearLoraBackward(const DeviceLinear& w, const float* dy, int64_t tokens,
                                const float* h, const float* b, int64_t r, float scale, float* dx,
                                bool accumulate, float* dh, float* db) {
  LinearBackwardInput(w, dy, tokens, dx, accumulate);
  const int64_t out = w.out_features();
  Gemm(true, false, out, r, tokens, scale, dy, out, h, r, 1.0f, db, r);
  Gemm(false, false, tokens, r, out, scale, dy, out, b, r, 0.0f, dh, r);
}

void Device::LoraDropoutDown(const float* x, int64_t n, int64_t in, const float* a, int64_t r,
                             float p, uint64_t seed, uint64_t stream, float* h, float* scratch) {
  if (p > 0.0f) {
    Dropout(x, n * in, p, seed, stream, scratch);
    x = scratch;
  }
  Gemm(false, true, n, r, in, 1.0f, x, in, a, in, 0.0f, h, r);
}

void Device::LoraDropoutGradA(const float* x, const float* dh, int64_t n, int64_t in, int64_t r,
                              float p, uint64_t seed, uint64_t stream, float* da, float* scratch) {
  if (p > 0.0f) {
    Dropout(x, n * in, p, seed, stream, scratch);  // the forward's mask, made again
    x = scratch;
  }
  Gemm(true, false, r, in, n, 1.0f, dh, r, x, in, 1.0f, da, in);
}

void Device::LoraDropoutBackwardInput(const float* dh, const float* a, int64_t n, int64_t in,
                                      int64_t r, float p, uint64_t seed, uint64_t stream, float* dx,
                                      float* scratch) {
  if (p <= 0.0f) {
    Gemm(false, false, n, in, r, 1.0f, dh, r, a, in, 1.0f, dx, in);
    return;
  }
  Gemm(false, false, n, in, r, 1.0f, dh, r, a, in, 0.0f, scratch, in);
  Dropout(scratch, n * in, p, seed, stream, scratch);
  AddInPlace(dx, scratch, n * in);
}

}  // namespace qlorad
