// The CPU Device: float32 compute, GEMMs through kernels::GemmF32 (BLAS when available), NF4
// weights dequantized into one workspace that grows to the largest layer. bf16 activations, when
// a graph asks for them, go through Device's conversion defaults (the reference for a GPU's).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/device.h"
#include "engine/dtype.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_train.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/nf4.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace qlorad {
namespace {

struct Counters {
  std::atomic<int64_t> base_weights{0};
  std::atomic<int64_t> adapters{0};
  std::atomic<int64_t> optimizer{0};
  std::atomic<int64_t> activations{0};
};

class CpuBuffer : public DeviceBuffer {
 public:
  CpuBuffer(std::shared_ptr<Counters> counters, std::atomic<int64_t>* counter, int64_t n)
      : counters_(std::move(counters)), counter_(counter), data_(n) {
    *counter_ += n * 4;
  }
  CpuBuffer(std::shared_ptr<Counters> counters, std::atomic<int64_t>* counter, std::vector<float> v)
      : counters_(std::move(counters)), counter_(counter), data_(std::move(v)) {
    *counter_ += static_cast<int64_t>(data_.size()) * 4;
  }
  ~CpuBuffer() override { *counter_ -= static_cast<int64_t>(data_.size()) * 4; }
  float* data() override { return data_.data(); }
  const float* data() const override { return data_.data(); }
  int64_t size() const override { return static_cast<int64_t>(data_.size()); }

 private:
  std::shared_ptr<Counters> counters_;  // keeps `counter_` alive
  std::atomic<int64_t>* counter_;
  std::vector<float> data_;
};

class CpuLinear : public DeviceLinear {
 public:
  CpuLinear(std::shared_ptr<Counters> counters, Nf4Tensor nf4, std::vector<float> values,
            bool quantized, int64_t out, int64_t in)
      : counters_(std::move(counters)),
        nf4_(std::move(nf4)),
        values_(std::move(values)),
        quantized_(quantized),
        out_(out),
        in_(in) {
    counters_->base_weights += bytes();
  }
  ~CpuLinear() override { counters_->base_weights -= bytes(); }
  int64_t out_features() const override { return out_; }
  int64_t in_features() const override { return in_; }
  bool quantized() const override { return quantized_; }
  int64_t bytes() const override {
    return quantized_ ? nf4_.StorageBytes() : static_cast<int64_t>(values_.size()) * 4;
  }
  const Nf4Tensor& nf4() const { return nf4_; }
  const std::vector<float>& values() const { return values_; }

 private:
  std::shared_ptr<Counters> counters_;
  Nf4Tensor nf4_;
  std::vector<float> values_;
  bool quantized_;
  int64_t out_, in_;
};

class CpuDevice : public Device {
 public:
  explicit CpuDevice(int threads, CpuDeviceFaults faults = {})
      : threads_(threads), faults_(std::move(faults)) {
    EnterThread();
  }

  void EnterThread() override {
#ifdef _OPENMP
    if (threads_ > 0) omp_set_num_threads(threads_);
#endif
  }

  std::string name() const override {
    // No index: every CPU device object (the daemon's cpu:N workers, the inference device)
    // computes on the same host.
    return absl::StrCat("cpu (gemm: ", kernels::GemmBackendName(), ")");
  }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Alloc(int64_t floats, BufferKind kind) override {
    if (floats < 0) return absl::InvalidArgumentError("negative allocation");
    std::atomic<int64_t>* counter =
        kind == BufferKind::kAdapter ? &counters_->adapters
        : kind == BufferKind::kOptimizer || kind == BufferKind::kPagedOptimizer
            ? &counters_->optimizer
            : &counters_->activations;
    try {
      return std::unique_ptr<DeviceBuffer>(new CpuBuffer(counters_, counter, floats));
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cpu: cannot allocate ", floats * 4, " bytes"));
    }
  }
  void CopyFromHost(const float* host, int64_t n, float* device) override {
    std::memcpy(device, host, n * sizeof(float));
  }
  void CopyToHost(const float* device, int64_t n, float* host) override {
    if (host_reads_++ == faults_.after_host_reads) pending_ = faults_.status;  // once
    if (!pending_.ok()) {  // a failed device's read, as the CUDA device's
      std::fill(host, host + n, std::numeric_limits<float>::quiet_NaN());
      return;
    }
    std::memcpy(host, device, n * sizeof(float));
  }

  absl::Status TakeError() override {
    if (absl::IsUnavailable(pending_)) return pending_;  // lost for good
    return std::exchange(pending_, absl::OkStatus());
  }

  absl::StatusOr<std::unique_ptr<DeviceLinear>> UploadLinear(const Nf4Tensor* nf4,
                                                             const std::vector<float>* values,
                                                             int64_t out, int64_t in) override {
    if (nf4 != nullptr) {
      if (nf4->numel != out * in) return absl::InvalidArgumentError("NF4 weight size mismatch");
      return std::unique_ptr<DeviceLinear>(new CpuLinear(counters_, *nf4, {}, true, out, in));
    }
    if (values == nullptr || static_cast<int64_t>(values->size()) != out * in) {
      return absl::InvalidArgumentError("float32 weight size mismatch");
    }
    return std::unique_ptr<DeviceLinear>(new CpuLinear(counters_, {}, *values, false, out, in));
  }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> UploadF32(const std::vector<float>& v) override {
    return std::unique_ptr<DeviceBuffer>(new CpuBuffer(counters_, &counters_->base_weights, v));
  }

  void Linear(const DeviceLinear& w, const float* x, int64_t tokens, float* y) override {
    const auto& lin = static_cast<const CpuLinear&>(w);
    const Nf4Tensor& q = lin.nf4();
    if (lin.quantized() && q.double_quant &&
        kernels::Nf4MatVecSupports(lin.in_features(), q.blocksize, tokens)) {
      // Generation's token at a time: the weights decoded as they are read, not dequantized
      // whole first (a GEMV over float32 weights would read eight times the bytes).
      kernels::Nf4DoubleQuantMatVec(q.packed.data(), q.absmax_q.data(), q.nested_absmax.data(),
                                    kernels::SignedDynamicMap().data(), q.offset,
                                    lin.out_features(), lin.in_features(), q.blocksize,
                                    q.nested_blocksize, x, tokens, y);
      return;
    }
    MatmulTransposed(Weights(lin), lin.out_features(), lin.in_features(), x, tokens, y);
  }

  void LinearBackwardInput(const DeviceLinear& w, const float* dy, int64_t tokens, float* dx,
                           bool accumulate) override {
    const auto& lin = static_cast<const CpuLinear&>(w);
    kernels::GemmF32(false, false, tokens, lin.in_features(), lin.out_features(), 1.0f, dy,
                     lin.out_features(), Weights(lin), lin.in_features(), accumulate ? 1.0f : 0.0f,
                     dx, lin.in_features());
  }

  void MatmulTransposed(const float* w, int64_t out, int64_t in, const float* x, int64_t tokens,
                        float* y) override {
    kernels::GemmF32(false, true, tokens, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
  }

  void Embedding(const float* table, int64_t dim, const int32_t* ids, int64_t tokens,
                 float* out) override {
    for (int64_t t = 0; t < tokens; ++t) std::memcpy(out + t * dim, table + ids[t] * dim, dim * 4);
  }
  void RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* y,
               float* inv_rms) override {
    kernels::RmsNormForward(x, w, rows, dim, eps, y, inv_rms);
  }
  void Rope(float* x, const int32_t* positions, int64_t tokens, int64_t heads, int64_t head_dim,
            float theta, bool inverse) override {
    kernels::RopeApply(x, positions, tokens, heads, head_dim, theta, inverse);
  }
  void CausalAttention(const float* q, const float* k, const float* v, const AttentionDims& d,
                       float* out) override {
    kernels::AttentionShape s{d.tokens, d.kv_tokens, d.first_pos, d.heads, d.kv_heads, d.head_dim};
    kernels::CausalAttentionForward(q, k, v, d.kv_heads * d.head_dim, s, out);
  }
  void Swiglu(const float* gate, const float* up, int64_t n, float* out) override {
    kernels::SwigluForward(gate, up, n, out);
  }
  void AddInPlace(float* y, const float* x, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  }
  // The CPU keeps float32 activations unless asked (TrainingGraphOptions); its bf16 operations
  // are Device's conversion defaults around these two.
  void ToBf16(const float* x, int64_t n, Bf16* out) override {
#pragma omp parallel for if (n >= kernels::kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) out[i].bits = F32ToBf16(x[i]);
  }
  void ToF32(const Bf16* x, int64_t n, float* out) override {
#pragma omp parallel for if (n >= kernels::kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) out[i] = Bf16ToF32(x[i].bits);
  }

  void Gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
            int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) override {
    kernels::GemmF32(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  void RmsNormBackward(const float* x, const float* w, const float* inv_rms, const float* dy,
                       int64_t rows, int64_t dim, float* dx) override {
    kernels::RmsNormBackward(x, w, inv_rms, dy, rows, dim, dx);
  }
  void AttentionTrainForward(const float* q, const float* k, const float* v,
                             const int32_t* segments, const TrainAttentionDims& d, float* out,
                             float* probs) override {
    kernels::AttentionTrainForward(q, k, v, segments, {d.tokens, d.heads, d.kv_heads, d.head_dim},
                                   out, probs);
  }
  void AttentionTrainBackward(const float* q, const float* k, const float* v,
                              const int32_t* /*segments: zeros in probs*/, const float* /*out*/,
                              const float* probs, const float* dout, const TrainAttentionDims& d,
                              float* dq, float* dk, float* dv) override {
    kernels::AttentionTrainBackward(q, k, v, probs, dout,
                                    {d.tokens, d.heads, d.kv_heads, d.head_dim}, dq, dk, dv);
  }
  void SwigluBackward(const float* gate, const float* up, const float* dout, int64_t n,
                      float* dgate, float* dup) override {
    kernels::SwigluBackward(gate, up, dout, n, dgate, dup);
  }
  void CrossEntropyForwardBackward(float* logits, const int32_t* targets, int64_t rows,
                                   int64_t vocab, float scale, float* loss_sum) override {
    *loss_sum = static_cast<float>(
        *loss_sum + kernels::CrossEntropyForwardBackward(logits, targets, rows, vocab, scale));
  }
  double CrossEntropyLoss(const float* logits, const int32_t* targets, int64_t rows,
                          int64_t vocab) override {
    return kernels::CrossEntropyLoss(logits, targets, rows, vocab);
  }
  void Dropout(const float* x, int64_t n, float p, uint64_t seed, uint64_t stream,
               float* out) override {
    kernels::DropoutApply(x, n, p, seed, stream, out);
  }
  void AdamW(float* params, const float* grads, float* m, float* v, int64_t n,
             const kernels::AdamWParams& p) override {
    kernels::AdamWStep(params, grads, m, v, n, p);
  }
  void SumSquares(const float* x, int64_t n, float* out) override {
    double s = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : s) if ((n) >= kernels::kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
    *out = static_cast<float>(s);
  }
  void Scale(float* x, int64_t n, float alpha) override {
    for (int64_t i = 0; i < n; ++i) x[i] *= alpha;
  }
  void Fill(float* x, int64_t n, float value) override { std::fill(x, x + n, value); }

  DeviceMemoryUsage memory_usage() const override {
    DeviceMemoryUsage u;
    u.base_weights = counters_->base_weights;
    u.adapters = counters_->adapters;
    u.optimizer_device = counters_->optimizer;  // host memory is this device's memory
    u.activations = counters_->activations;
    u.workspace =
        static_cast<int64_t>(workspace_.capacity() + conversion_.capacity()) * sizeof(float);
    return u;
  }

 protected:
  float* ConversionScratch(int64_t floats) override {
    try {
      if (static_cast<int64_t>(conversion_.size()) < floats) conversion_.resize(floats);
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
    return conversion_.data();
  }

 private:
  const int threads_;  // 0: OpenMP's default
  // The weight as float32: the values themselves, or the NF4 weight dequantized into the
  // workspace (valid until the next call).
  const float* Weights(const CpuLinear& lin) {
    if (!lin.quantized()) return lin.values().data();
    const int64_t n = lin.out_features() * lin.in_features();
    if (static_cast<int64_t>(workspace_.size()) < n) workspace_.resize(n);
    lin.nf4().DequantizeTo(workspace_.data());
    return workspace_.data();
  }

  std::shared_ptr<Counters> counters_ = std::make_shared<Counters>();
  CpuDeviceFaults faults_;
  int64_t host_reads_ = 0;
  absl::Status pending_;  // the injected fault, until taken (kUnavailable: never)
  std::vector<float> workspace_;
  std::vector<float> conversion_;  // Device's bf16 defaults' float32 copies
};

}  // namespace

std::unique_ptr<Device> CreateCpuDevice(int threads) {
  return std::make_unique<CpuDevice>(threads);
}

std::unique_ptr<Device> CreateCpuDevice(int threads, CpuDeviceFaults faults) {
  return std::make_unique<CpuDevice>(threads, std::move(faults));
}

}  // namespace qlorad
