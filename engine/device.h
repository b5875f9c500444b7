// The backend interface (DESIGN.md): one Device per CPU socket group or GPU. The model code is
// written once against it; the CPU implementation (float32, BLAS) is the numerical reference
// and a CUDA implementation (bf16 compute, fp32 accumulation) follows with the same contracts.
//
// Buffers hold float32 values (or bf16 activations packed two to a float) in the device's
// memory; pointers passed to ops are device pointers. A Device is not thread-safe: one thread
// drives it at a time (it owns one dequantization workspace).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/nf4_tensor.h"
#include "kernels/cpu/adamw.h"

namespace qlorad {

// Memory the engine holds on a device, by category (the metrics DESIGN.md lists).
struct DeviceMemoryUsage {
  int64_t base_weights = 0;
  int64_t adapters = 0;          // LoRA parameters and their gradients
  int64_t optimizer_device = 0;  // AdamW moments resident on the device
  int64_t optimizer_host = 0;    // AdamW moments paged out to host memory
  int64_t activations = 0;
  int64_t workspace = 0;
  // The device's own figures (cudaMemGetInfo on a GPU); 0 where the device has none.
  int64_t device_total = 0, device_free = 0;
  // The most the engine has held on the device at once since it was made (all the categories
  // above, optimizer state paged out to the host included, and transient staging): what a memory
  // limit must allow. 0 where it is not tracked.
  int64_t peak_held = 0;
};

// The engine's categories above by name (metrics labels), in a fixed order.
inline std::array<std::pair<const char*, int64_t>, 6> MemoryCategories(const DeviceMemoryUsage& u) {
  return {{{"base_weights", u.base_weights},
           {"adapters", u.adapters},
           {"optimizer_device", u.optimizer_device},
           {"optimizer_host", u.optimizer_host},
           {"activations", u.activations},
           {"workspace", u.workspace}}};
}

// What a buffer holds, for the accounting above and for paging. kPagedOptimizer is optimizer
// state that may move to host memory between steps (SetResident): CUDA managed memory where the
// card can page it. kOptimizer stays where it is allocated (plain device memory: managed memory
// is taken only where paging is asked for).
enum class BufferKind { kActivations, kAdapter, kOptimizer, kPagedOptimizer };

// A buffer of 4-byte words in device memory (float32 values, or bf16 activations two to a
// word), freed when destroyed.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  virtual float* data() = 0;
  virtual const float* data() const = 0;
  virtual int64_t size() const = 0;  // in floats
};

// A bfloat16 value by its bits (the layout of CUDA's __nv_bfloat16): the element type of the
// activations of a graph that keeps them in bf16 (Device::PrefersBf16Activations).
struct Bf16 {
  uint16_t bits;
};

// A frozen base-model linear weight [out, in] as the device holds it: NF4 + double quant
// (dequantized into the workspace for each use) or float32.
class DeviceLinear {
 public:
  virtual ~DeviceLinear() = default;
  virtual int64_t out_features() const = 0;
  virtual int64_t in_features() const = 0;
  virtual bool quantized() const = 0;
  virtual int64_t bytes() const = 0;
};

struct AttentionDims {
  int64_t tokens = 0, kv_tokens = 0, first_pos = 0, heads = 0, kv_heads = 0, head_dim = 0;
};

// One training row: T tokens with all their keys (no cache), heads as in AttentionDims.
struct LlamaConfig;

struct TrainAttentionDims {
  int64_t tokens = 0, heads = 0, kv_heads = 0, head_dim = 0;
};

// What a training graph's bf16 conversion scratch depends on: its tokens, its activation
// widths, its LoRA rank and its attention rows' shape.
struct ConversionShape {
  int64_t tokens = 0, hidden = 0, intermediate = 0, rank = 0;
  TrainAttentionDims row;
  int64_t widest() const { return hidden > intermediate ? hidden : intermediate; }
  // A graph of `config` with LoRA `rank` over micro-batches of `rows` x `seq_len`.
  static ConversionShape Of(const LlamaConfig& config, int64_t rank, int64_t rows, int64_t seq_len);
};

// The attention probabilities [H, T, T] of one row: what GEMM attention keeps for its backward,
// the most any device keeps.
inline int64_t AttentionProbabilityFloats(const TrainAttentionDims& d) {
  return d.heads * d.tokens * d.tokens;
}

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string name() const = 0;
  // Called by a thread before it computes on this device. A CPU device's thread count belongs to
  // the calling thread (OpenMP's setting), so a device made on one thread and used from another
  // (the daemon's inference device, from gRPC threads) computed with that thread's count: all
  // the cores.
  virtual void EnterThread() {}

  virtual absl::StatusOr<std::unique_ptr<DeviceBuffer>> Alloc(
      int64_t floats, BufferKind kind = BufferKind::kActivations) = 0;
  // Paged optimizer memory (QLoRA): a kPagedOptimizer buffer can move to host memory while its job
  // does not need it (false) and back before the optimizer step (true). No-op on the CPU.
  virtual void SetResident(DeviceBuffer& buffer, bool resident) {
    (void)buffer;
    (void)resident;
  }
  virtual void CopyFromHost(const float* host, int64_t n, float* device) = 0;
  virtual void CopyToHost(const float* device, int64_t n, float* host) = 0;

  // Places a frozen weight on the device: `nf4` when not null, else the float32 `values`.
  virtual absl::StatusOr<std::unique_ptr<DeviceLinear>> UploadLinear(
      const Nf4Tensor* nf4, const std::vector<float>* values, int64_t out, int64_t in) = 0;
  // Places a frozen weight given as float32 values [out, in], NF4-quantized with `options`:
  // the bytes QuantizeNf4 makes on the host (a GPU quantizes on the card, bit-exact, which
  // loads a large model in a fraction of the time).
  virtual absl::StatusOr<std::unique_ptr<DeviceLinear>> QuantizeLinear(
      const std::vector<float>& values, int64_t out, int64_t in, const Nf4Options& options) {
    absl::StatusOr<Nf4Tensor> q = QuantizeNf4(values.data(), {out, in}, options);
    if (!q.ok()) return q.status();
    return UploadLinear(&*q, nullptr, out, in);
  }
  // A frozen weight [out, in] of kernels::FillUniform's values (stream `stream` of `seed`, in
  // [-scale, scale)), NF4-quantized with `options`, made where the device computes: a
  // benchmark's 7B model then never passes through host memory. This default makes the values
  // on the host and quantizes them there.
  virtual absl::StatusOr<std::unique_ptr<DeviceLinear>> RandomLinear(int64_t out, int64_t in,
                                                                     uint64_t seed, uint64_t stream,
                                                                     float scale,
                                                                     const Nf4Options& options);
  // Places a float32 tensor (norm weights, embeddings) on the device.
  virtual absl::StatusOr<std::unique_ptr<DeviceBuffer>> UploadF32(const std::vector<float>& v) = 0;

  // y[t, :] = W x[t, :] for t < tokens (x: [tokens, in], y: [tokens, out]); an NF4 weight is
  // dequantized into the workspace first.
  virtual void Linear(const DeviceLinear& w, const float* x, int64_t tokens, float* y) = 0;
  // y[t, :] = x[t, :] W^T for a float32 matrix W [out, in] held in a buffer (tied LM head).
  virtual void MatmulTransposed(const float* w, int64_t out, int64_t in, const float* x,
                                int64_t tokens, float* y) = 0;
  virtual void Embedding(const float* table, int64_t dim, const int32_t* host_ids, int64_t tokens,
                         float* out) = 0;
  // `inv_rms` (optional, [rows]) keeps 1/rms of each row for the backward pass.
  virtual void RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                       float* y, float* inv_rms = nullptr) = 0;
  // Rotates [tokens, heads, head_dim] in place (Hugging Face layout); `inverse` rotates back,
  // which is the backward pass of the rotation.
  virtual void Rope(float* x, const int32_t* host_positions, int64_t tokens, int64_t heads,
                    int64_t head_dim, float theta, bool inverse = false) = 0;
  // q: [T, H, hd]; k, v: [S, KV, hd] dense; out: [T, H, hd].
  virtual void CausalAttention(const float* q, const float* k, const float* v,
                               const AttentionDims& dims, float* out) = 0;
  virtual void Swiglu(const float* gate, const float* up, int64_t n, float* out) = 0;
  virtual void AddInPlace(float* y, const float* x, int64_t n) = 0;

  // --- Training. Gradient contract (as in llm.c): parameter gradients accumulate (+=),
  // activation gradients are written (=) unless the method says otherwise.

  // y = W x + scale h B^T: a frozen linear W [out, in] with its LoRA up-projection B [out, r]
  // applied to h [tokens, r]. This default is Linear and then one GEMM that reads and writes y
  // again; a GPU runs it as one GEMM over [x | h] and [W | scale B].
  virtual void LinearLora(const DeviceLinear& w, const float* x, int64_t tokens, const float* h,
                          const float* b, int64_t r, float scale, float* y);

  // The backward of LinearLora: dx (=, or += when `accumulate`) dy W; dh = scale dy B; db +=
  // scale dy^T h (dy [tokens, out], h [tokens, r]). This default is LinearBackwardInput and two
  // float32-operand GEMMs; a GPU rounds dy to bf16 once for all three.
  virtual void LinearLoraBackward(const DeviceLinear& w, const float* dy, int64_t tokens,
                                  const float* h, const float* b, int64_t r, float scale, float* dx,
                                  bool accumulate, float* dh, float* db);

  // Row-major C = alpha * op(A) op(B) + beta * C on device pointers.
  virtual void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc) = 0;
  // dx[t, :] (=, or += when `accumulate`) dy[t, :] W for the frozen W [out, in] (dequantized
  // into the workspace first when NF4).
  virtual void LinearBackwardInput(const DeviceLinear& w, const float* dy, int64_t tokens,
                                   float* dx, bool accumulate) = 0;
  virtual void RmsNormBackward(const float* x, const float* w, const float* inv_rms,
                               const float* dy, int64_t rows, int64_t dim, float* dx) = 0;
  // Floats of `saved` that one row's attention keeps between forward and backward: the
  // probabilities [H, T, T] on the CPU, one log-sum-exp per (head, query) where a device runs
  // flash attention. A function of the dims and the device's fixed properties: any thread may
  // ask (the daemon's admission estimate does).
  virtual int64_t AttentionSavedFloats(const TrainAttentionDims& d) const {
    return AttentionProbabilityFloats(d);
  }
  // Causal (block-diagonal by `host_segments` when not null) attention of one row; `saved`
  // (AttentionSavedFloats) is kept for the backward pass.
  virtual void AttentionTrainForward(const float* q, const float* k, const float* v,
                                     const int32_t* host_segments, const TrainAttentionDims& d,
                                     float* out, float* saved) = 0;
  // Gradients of the forward above (q, k, v, segments, out and saved as it had them) from dout:
  // dq [T, H, hd], dk and dv [T, KV, hd], written (=).
  virtual void AttentionTrainBackward(const float* q, const float* k, const float* v,
                                      const int32_t* host_segments, const float* out,
                                      const float* saved, const float* dout,
                                      const TrainAttentionDims& d, float* dq, float* dk,
                                      float* dv) = 0;
  virtual void SwigluBackward(const float* gate, const float* up, const float* dout, int64_t n,
                              float* dgate, float* dup) = 0;
  // Overwrites logits [rows, vocab] with scale * (softmax - onehot) (zero rows where the host
  // target is < 0) and adds the summed loss of the target rows to `loss_sum` (one float in
  // device memory): the trainer reads a step's loss once, not per micro-batch.
  virtual void CrossEntropyForwardBackward(float* logits, const int32_t* host_targets, int64_t rows,
                                           int64_t vocab, float scale, float* loss_sum) = 0;
  virtual double CrossEntropyLoss(const float* logits, const int32_t* host_targets, int64_t rows,
                                  int64_t vocab) = 0;
  // out[i] = x[i] / (1-p) or 0, from a counter-based stream (kernels/cpu/dropout.h).
  virtual void Dropout(const float* x, int64_t n, float p, uint64_t seed, uint64_t stream,
                       float* out) = 0;
  // LoRA's down-projection through dropout and its gradients (kernels/cpu/lora_dropout.h):
  // h [n, r] = dropout(x) A^T; da [r, in] += dh^T dropout(x); dx [n, in] += dropout(dh A),
  // dropout being Dropout's mask of (p, seed, stream) over [n, in], none when p = 0 (the plain
  // GEMMs, for evaluation and training without dropout). `scratch` holds n * in
  // floats the device may use: these defaults write dropout(x) there and run GEMMs; a GPU fuses
  // the mask into its kernels instead (four float passes over the input instead of twelve).
  virtual void LoraDropoutDown(const float* x, int64_t n, int64_t in, const float* a, int64_t r,
                               float p, uint64_t seed, uint64_t stream, float* h, float* scratch);
  virtual void LoraDropoutGradA(const float* x, const float* dh, int64_t n, int64_t in, int64_t r,
                                float p, uint64_t seed, uint64_t stream, float* da, float* scratch);
  virtual void LoraDropoutBackwardInput(const float* dh, const float* a, int64_t n, int64_t in,
                                        int64_t r, float p, uint64_t seed, uint64_t stream,
                                        float* dx, float* scratch);
  // --- bf16 activations: the operations above with bfloat16 activations (inputs, outputs and
  // activation gradients), float32 math inside, float32 weights, LoRA parameters, gradients,
  // 1/rms and attention state. Outputs are rounded to bf16 (nearest even) once. The defaults
  // (engine/device_bf16.cc) convert to float32, run the float32 operation and round the result,
  // which defines the numbers a native bf16 kernel must match within float32 rounding; a GPU
  // overrides them with kernels that read and write bf16, half the bytes.
  // Whether a training graph with this attention shape (its tokens unused) should keep its
  // activations in bf16 on this device: where the device has bf16 kernels for its layers.
  virtual bool PrefersBf16Activations(const TrainAttentionDims& d) const {
    (void)d;
    return false;
  }
  // The float32 scratch the conversion defaults take for a graph of this shape: the most any of
  // them takes, or 0 where the device's own bf16 kernels cover every operation of the graph.
  // The graph reserves it when it allocates and the daemon counts it in a job's memory.
  virtual int64_t ConversionScratchFloats(const ConversionShape& shape) const;
  // Makes sure the conversion defaults will find their scratch for a graph of this shape: a
  // graph with bf16 activations calls it when it allocates, so that a device short of memory
  // fails there, with a status, rather than inside an operation.
  virtual absl::Status ReserveConversionScratch(const ConversionShape& shape);
  virtual void ToBf16(const float* x, int64_t n, Bf16* out) = 0;
  virtual void ToF32(const Bf16* x, int64_t n, float* out) = 0;
  virtual void Embedding(const float* table, int64_t dim, const int32_t* host_ids, int64_t tokens,
                         Bf16* out);
  virtual void RmsNorm(const Bf16* x, const float* w, int64_t rows, int64_t dim, float eps, Bf16* y,
                       float* inv_rms = nullptr);
  virtual void RmsNormBackward(const Bf16* x, const float* w, const float* inv_rms, const Bf16* dy,
                               int64_t rows, int64_t dim, Bf16* dx);
  virtual void Rope(Bf16* x, const int32_t* host_positions, int64_t tokens, int64_t heads,
                    int64_t head_dim, float theta, bool inverse = false);
  virtual void AddInPlace(Bf16* y, const Bf16* x, int64_t n);
  virtual void Swiglu(const Bf16* gate, const Bf16* up, int64_t n, Bf16* out);
  virtual void SwigluBackward(const Bf16* gate, const Bf16* up, const Bf16* dout, int64_t n,
                              Bf16* dgate, Bf16* dup);
  virtual void AttentionTrainForward(const Bf16* q, const Bf16* k, const Bf16* v,
                                     const int32_t* host_segments, const TrainAttentionDims& d,
                                     Bf16* out, float* saved);
  virtual void AttentionTrainBackward(const Bf16* q, const Bf16* k, const Bf16* v,
                                      const int32_t* host_segments, const Bf16* out,
                                      const float* saved, const Bf16* dout,
                                      const TrainAttentionDims& d, Bf16* dq, Bf16* dk, Bf16* dv);
  virtual void Linear(const DeviceLinear& w, const Bf16* x, int64_t tokens, Bf16* y);
  virtual void LinearLora(const DeviceLinear& w, const Bf16* x, int64_t tokens, const float* h,
                          const float* b, int64_t r, float scale, Bf16* y);
  virtual void LinearBackwardInput(const DeviceLinear& w, const Bf16* dy, int64_t tokens, Bf16* dx,
                                   bool accumulate);
  virtual void LinearLoraBackward(const DeviceLinear& w, const Bf16* dy, int64_t tokens,
                                  const float* h, const float* b, int64_t r, float scale, Bf16* dx,
                                  bool accumulate, float* dh, float* db);
  virtual void LoraDropoutDown(const Bf16* x, int64_t n, int64_t in, const float* a, int64_t r,
                               float p, uint64_t seed, uint64_t stream, float* h, float* scratch);
  virtual void LoraDropoutGradA(const Bf16* x, const float* dh, int64_t n, int64_t in, int64_t r,
                                float p, uint64_t seed, uint64_t stream, float* da, float* scratch);
  virtual void LoraDropoutBackwardInput(const float* dh, const float* a, int64_t n, int64_t in,
                                        int64_t r, float p, uint64_t seed, uint64_t stream,
                                        Bf16* dx, float* scratch);

  virtual void AdamW(float* params, const float* grads, float* m, float* v, int64_t n,
                     const kernels::AdamWParams& p) = 0;
  // out[0] (device memory) = sum of x^2, accumulated in double.
  virtual void SumSquares(const float* x, int64_t n, float* out) = 0;
  virtual void Scale(float* x, int64_t n, float alpha) = 0;
  virtual void Fill(float* x, int64_t n, float value) = 0;

  virtual DeviceMemoryUsage memory_usage() const = 0;
  // Frees the scratch buffers the device keeps between operations, grown to the largest asked for
  // (they grow again when next needed), and returns the bytes freed: for a device with a memory
  // limit, after one large request. Only between operations: no scratch pointer is held then.
  // Not on a device whose trainer reserved its conversion scratch (ReserveConversionScratch):
  // that reservation would be gone.
  virtual int64_t ReleaseScratch() { return 0; }

  // The first failure of the device's queued work since the last call (a kernel launch or
  // fault, an allocation, a library call), then cleared. Operations are queued and return
  // nothing, so whoever reads results (a loss, logits, weights) asks here before trusting
  // them. kUnavailable: the device is lost for the rest of the process (a CUDA kernel fault
  // poisons its context, and every later call fails too), so its work must move to another
  // device; any other code (kResourceExhausted: out of device memory) fails only the work that
  // met it. The CPU device reports none (unless told to, for tests: CpuDeviceFaults).
  virtual absl::Status TakeError() { return absl::OkStatus(); }

 protected:
  // `floats` of device memory for the bf16 defaults' float32 copies, grown as needed and valid
  // until the next call, counted as workspace; null where it cannot be had (a default then
  // writes nothing; ReserveConversionScratch makes that a status up front).
  virtual float* ConversionScratch(int64_t floats) = 0;
};

// The CPU reference backend. `threads` <= 0 keeps the OpenMP/BLAS default.
std::unique_ptr<Device> CreateCpuDevice(int threads = 0);

// A fault for the CPU device to report, for tests of what callers do when a device fails (a
// GPU fault cannot be caused on demand): after `after_host_reads` reads of results
// (CopyToHost), every read returns NaN, as a failed CUDA device's do, and TakeError returns
// `status` (once, or for good when it is kUnavailable).
struct CpuDeviceFaults {
  int64_t after_host_reads = -1;  // < 0: never
  absl::Status status;
};
std::unique_ptr<Device> CreateCpuDevice(int threads, CpuDeviceFaults faults);

}  // namespace qlorad
