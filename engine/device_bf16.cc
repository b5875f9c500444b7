// The bf16-activation defaults of Device (engine/device.h): each converts its bf16 operands to
// float32 in one scratch block, runs the float32 operation and rounds its outputs to bf16 once.
// They are the reference a device's native bf16 kernels are tested against, and what the CPU
// runs when a test (or a user) asks it for bf16 activations.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/device.h"
#include "engine/model_config.h"

namespace qlorad {
namespace {

// Consecutive float32 regions of one scratch block.
class Regions {
 public:
  explicit Regions(float* base) : next_(base) {}
  float* Take(int64_t floats) {
    float* r = next_;
    next_ += floats;
    return r;
  }

 private:
  float* next_;
};

}  // namespace

ConversionShape ConversionShape::Of(const LlamaConfig& config, int64_t rank, int64_t rows,
                                    int64_t seq_len) {
  ConversionShape s;
  s.tokens = rows * seq_len;
  s.hidden = config.hidden_size;
  s.intermediate = config.intermediate_size;
  s.rank = rank;
  s.row = {seq_len, config.num_attention_heads, config.num_key_value_heads, config.head_dim()};
  return s;
}

int64_t Device::ConversionScratchFloats(const ConversionShape& shape) const {
  const int64_t tokens = shape.tokens, widest = shape.widest();
  const TrainAttentionDims& row = shape.row;
  // SwigluBackward's five [tokens, widest] copies (every other elementwise or linear default
  // takes at most three of them), or the attention backward's eight per-row tensors.
  const int64_t nq = row.tokens * row.heads * row.head_dim;
  const int64_t nkv = row.tokens * row.kv_heads * row.head_dim;
  return std::max(5 * tokens * widest, 4 * nq + 4 * nkv);
}

absl::Status Device::ReserveConversionScratch(const ConversionShape& shape) {
  const int64_t floats = ConversionScratchFloats(shape);
  if (floats > 0 && ConversionScratch(floats) == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(name(), ": cannot allocate ", floats * 4,
                                                     " bytes to convert bf16 activations"));
  }
  return absl::OkStatus();
}

void Device::Embedding(const float* table, int64_t dim, const int32_t* host_ids, int64_t tokens,
                       Bf16* out) {
  float* s = ConversionScratch(tokens * dim);
  if (s == nullptr) return;
  Embedding(table, dim, host_ids, tokens, s);
  ToBf16(s, tokens * dim, out);
}

void Device::RmsNorm(const Bf16* x, const float* w, int64_t rows, int64_t dim, float eps, Bf16* y,
                     float* inv_rms) {
  const int64_t n = rows * dim;
  float* s = ConversionScratch(2 * n);
  if (s == nullptr) return;
  ToF32(x, n, s);
  RmsNorm(s, w, rows, dim, eps, s + n, inv_rms);
  ToBf16(s + n, n, y);
}

void Device::RmsNormBackward(const Bf16* x, const float* w, const float* inv_rms, const Bf16* dy,
                             int64_t rows, int64_t dim, Bf16* dx) {
  const int64_t n = rows * dim;
  float* s = ConversionScratch(3 * n);
  if (s == nullptr) return;
  ToF32(x, n, s);
  ToF32(dy, n, s + n);
  RmsNormBackward(s, w, inv_rms, s + n, rows, dim, s + 2 * n);
  ToBf16(s + 2 * n, n, dx);
}

void Device::Rope(Bf16* x, const int32_t* host_positions, int64_t tokens, int64_t heads,
                  int64_t head_dim, float theta, bool inverse) {
  const int64_t n = tokens * heads * head_dim;
  float* s = ConversionScratch(n);
  if (s == nullptr) return;
  ToF32(x, n, s);
  Rope(s, host_positions, tokens, heads, head_dim, theta, inverse);
  ToBf16(s, n, x);
}

void Device::AddInPlace(Bf16* y, const Bf16* x, int64_t n) {
  float* s = ConversionScratch(2 * n);
  if (s == nullptr) return;
  ToF32(y, n, s);
  ToF32(x, n, s + n);
  AddInPlace(s, s + n, n);
  ToBf16(s, n, y);
}

void Device::Swiglu(const Bf16* gate, const Bf16* up, int64_t n, Bf16* out) {
  float* s = ConversionScratch(3 * n);
  if (s == nullptr) return;
  ToF32(gate, n, s);
  ToF32(up, n, s + n);
  Swiglu(s, s + n, n, s + 2 * n);
  ToBf16(s + 2 * n, n, out);
}

void Device::SwigluBackward(const Bf16* gate, const Bf16* up, const Bf16* dout, int64_t n,
                            Bf16* dgate, Bf16* dup) {
  float* s = ConversionScratch(5 * n);
  if (s == nullptr) return;
  ToF32(gate, n, s);
  ToF32(up, n, s + n);
  ToF32(dout, n, s + 2 * n);
  SwigluBackward(s, s + n, s + 2 * n, n, s + 3 * n, s + 4 * n);
  ToBf16(s + 3 * n, n, dgate);
  ToBf16(s + 4 * n, n, dup);
}

void Device::AttentionTrainForward(const Bf16* q, const Bf16* k, const Bf16* v,
                                   const int32_t* host_segments, const TrainAttentionDims& d,
                                   Bf16* out, float* saved) {
  const int64_t nq = d.tokens * d.heads * d.head_dim, nkv = d.tokens * d.kv_heads * d.head_dim;
  float* base = ConversionScratch(2 * nq + 2 * nkv);
  if (base == nullptr) return;
  Regions s(base);
  float *fq = s.Take(nq), *fk = s.Take(nkv), *fv = s.Take(nkv), *fo = s.Take(nq);
  ToF32(q, nq, fq);
  ToF32(k, nkv, fk);
  ToF32(v, nkv, fv);
  AttentionTrainForward(fq, fk, fv, host_segments, d, fo, saved);
  ToBf16(fo, nq, out);
}

void Device::AttentionTrainBackward(const Bf16* q, const Bf16* k, const Bf16* v,
                                    const int32_t* host_segments, const Bf16* out,
                                    const float* saved, const Bf16* dout,
                                    const TrainAttentionDims& d, Bf16* dq, Bf16* dk, Bf16* dv) {
  const int64_t nq = d.tokens * d.heads * d.head_dim, nkv = d.tokens * d.kv_heads * d.head_dim;
  float* base = ConversionScratch(4 * nq + 4 * nkv);
  if (base == nullptr) return;
  Regions s(base);
  float *fq = s.Take(nq), *fk = s.Take(nkv), *fv = s.Take(nkv), *fo = s.Take(nq), *fdo = s.Take(nq),
        *fdq = s.Take(nq), *fdk = s.Take(nkv), *fdv = s.Take(nkv);
  ToF32(q, nq, fq);
  ToF32(k, nkv, fk);
  ToF32(v, nkv, fv);
  ToF32(out, nq, fo);
  ToF32(dout, nq, fdo);
  AttentionTrainBackward(fq, fk, fv, host_segments, fo, saved, fdo, d, fdq, fdk, fdv);
  ToBf16(fdq, nq, dq);
  ToBf16(fdk, nkv, dk);
  ToBf16(fdv, nkv, dv);
}

void Device::Linear(const DeviceLinear& w, const Bf16* x, int64_t tokens, Bf16* y) {
  const int64_t nx = tokens * w.in_features(), ny = tokens * w.out_features();
  float* s = ConversionScratch(nx + ny);
  if (s == nullptr) return;
  ToF32(x, nx, s);
  Linear(w, s, tokens, s + nx);
  ToBf16(s + nx, ny, y);
}

void Device::LinearLora(const DeviceLinear& w, const Bf16* x, int64_t tokens, const float* h,
                        const float* b, int64_t r, float scale, Bf16* y) {
  const int64_t nx = tokens * w.in_features(), ny = tokens * w.out_features();
  float* s = ConversionScratch(nx + ny);
  if (s == nullptr) return;
  ToF32(x, nx, s);
  LinearLora(w, s, tokens, h, b, r, scale, s + nx);
  ToBf16(s + nx, ny, y);
}

void Device::LinearBackwardInput(const DeviceLinear& w, const Bf16* dy, int64_t tokens, Bf16* dx,
                                 bool accumulate) {
  const int64_t ndy = tokens * w.out_features(), ndx = tokens * w.in_features();
  float* s = ConversionScratch(ndy + ndx);
  if (s == nullptr) return;
  ToF32(dy, ndy, s);
  if (accumulate) ToF32(dx, ndx, s + ndy);
  LinearBackwardInput(w, s, tokens, s + ndy, accumulate);
  ToBf16(s + ndy, ndx, dx);
}

void Device::LinearLoraBackward(const DeviceLinear& w, const Bf16* dy, int64_t tokens,
                                const float* h, const float* b, int64_t r, float scale, Bf16* dx,
                                bool accumulate, float* dh, float* db) {
  const int64_t ndy = tokens * w.out_features(), ndx = tokens * w.in_features();
  float* s = ConversionScratch(ndy + ndx);
  if (s == nullptr) return;
  ToF32(dy, ndy, s);
  if (accumulate) ToF32(dx, ndx, s + ndy);
  LinearLoraBackward(w, s, tokens, h, b, r, scale, s + ndy, accumulate, dh, db);
  ToBf16(s + ndy, ndx, dx);
}

void Device::LoraDropoutDown(const Bf16* x, int64_t n, int64_t in, const float* a, int64_t r,
                             float p, uint64_t seed, uint64_t stream, float* h, float* scratch) {
  float* s = ConversionScratch(n * in);
  if (s == nullptr) return;
  ToF32(x, n * in, s);
  LoraDropoutDown(s, n, in, a, r, p, seed, stream, h, scratch);
}

void Device::LoraDropoutGradA(const Bf16* x, const float* dh, int64_t n, int64_t in, int64_t r,
                              float p, uint64_t seed, uint64_t stream, float* da, float* scratch) {
  float* s = ConversionScratch(n * in);
  if (s == nullptr) return;
  ToF32(x, n * in, s);
  LoraDropoutGradA(s, dh, n, in, r, p, seed, stream, da, scratch);
}

void Device::LoraDropoutBackwardInput(const float* dh, const float* a, int64_t n, int64_t in,
                                      int64_t r, float p, uint64_t seed, uint64_t stream, Bf16* dx,
                                      float* scratch) {
  float* s = ConversionScratch(n * in);
  if (s == nullptr) return;
  ToF32(dx, n * in, s);
  LoraDropoutBackwardInput(dh, a, n, in, r, p, seed, stream, s, scratch);
  ToBf16(s, n * in, dx);
}

}  // namespace qlorad
