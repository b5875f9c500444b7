// The CUDA Device (engine/cuda_device.h). All work goes to one stream; the host waits only when
// it reads a result (copies to the host, an evaluation's loss): a training step's loss and
// gradient norm stay on the card until the trainer reads both at once.
#include "engine/cuda_device.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cuda_op_profiler.h"
#include "kernels/cpu/nf4.h"
#include "kernels/cuda/attention_ops.h"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/lora_dropout.h"
#include "kernels/cuda/nf4_dequant.h"
#include "kernels/cuda/nf4_quantize.h"
#include "kernels/cuda/train_ops.h"

namespace qlorad {
namespace {
namespace kc = kernels::cuda;

struct Counters {
  int64_t base_weights = 0, adapters = 0, optimizer_device = 0, optimizer_host = 0, activations = 0;
  // Every byte this device object holds (the categories above and its scratch), and the most it
  // may hold (CudaDeviceOptions::memory_limit_bytes; 0: what the card gives). Atomic because a
  // buffer may be dropped by another thread than the one allocating (the limit check and the
  // add are not one step: allocations on one device object come from one thread at a time).
  std::atomic<int64_t> held{0};
  std::atomic<int64_t> peak{0};  // the most `held` has been
  int64_t limit = 0;
};

// Device memory owned by one object, released when it goes away: on the card it came from,
// made current for the free (the thread that drops the last owner, the daemon's main thread at
// shutdown say, may have another card current). Counted in its device's `held`, and refused as
// out of memory beyond the device's limit.
class CudaMemory {
 public:
  explicit CudaMemory(Counters* counters, bool managed = false)
      : counters_(counters), managed_(managed) {}
  CudaMemory(const CudaMemory&) = delete;
  CudaMemory& operator=(const CudaMemory&) = delete;
  // cudaFree waits for the device, so work still reading the memory finishes first.
  ~CudaMemory() { Free(); }
  cudaError_t Allocate(size_t bytes) {
    Free();
    const auto wanted = static_cast<int64_t>(bytes);
    if (counters_->limit > 0 && counters_->held.load() + wanted > counters_->limit) {
      return cudaErrorMemoryAllocation;  // as the card itself would refuse it
    }
    cudaGetDevice(&device_);  // the caller made its card current
    const cudaError_t e = managed_ ? cudaMallocManaged(&p_, bytes > 0 ? bytes : 1)
                                   : cudaMalloc(&p_, bytes > 0 ? bytes : 1);
    if (e == cudaSuccess) {
      bytes_ = bytes;
      const int64_t now = counters_->held += wanted;
      int64_t peak = counters_->peak.load();
      while (now > peak && !counters_->peak.compare_exchange_weak(peak, now)) {
      }
    }
    return e;
  }
  void Release() { Free(); }
  void* get() const { return p_; }
  size_t bytes() const { return bytes_; }
  bool managed() const { return managed_; }

 private:
  // The card stays current afterwards: restoring a thread that had none would make a context
  // on card 0, and every device call makes its own card current first anyway.
  void Free() {
    if (p_ != nullptr) {
      int current = -1;
      if (cudaGetDevice(&current) != cudaSuccess || current != device_) cudaSetDevice(device_);
      cudaFree(p_);
      counters_->held -= static_cast<int64_t>(bytes_);
    }
    p_ = nullptr;
    bytes_ = 0;
  }

  Counters* counters_;  // the device's, which outlives its memory
  void* p_ = nullptr;
  size_t bytes_ = 0;
  bool managed_ = false;
  int device_ = 0;
};

class CudaBuffer : public DeviceBuffer {
 public:
  // Paged optimizer state lives in managed memory so that it can move to the host.
  CudaBuffer(std::shared_ptr<Counters> counters, int64_t Counters::*category, int64_t floats,
             bool managed = false)
      : counters_(std::move(counters)),
        category_(category),
        floats_(floats),
        mem_(counters_.get(), managed) {}
  // Moves the bytes between categories (paging) without reallocating.
  void Recount(int64_t Counters::*category) {
    (*counters_).*category_ -= floats_ * 4;
    category_ = category;
    (*counters_).*category_ += floats_ * 4;
  }
  int64_t Counters::*category() const { return category_; }
  ~CudaBuffer() override { (*counters_).*category_ -= floats_ * 4; }
  cudaError_t Allocate() {
    const cudaError_t e = mem_.Allocate(static_cast<size_t>(floats_) * 4);
    if (e == cudaSuccess)
      (*counters_).*category_ += floats_ * 4;
    else
      floats_ = 0;
    return e;
  }
  float* data() override { return static_cast<float*>(mem_.get()); }
  const float* data() const override { return static_cast<const float*>(mem_.get()); }
  bool managed() const { return mem_.managed(); }
  int64_t size() const override { return floats_; }

 private:
  std::shared_ptr<Counters> counters_;
  int64_t Counters::*category_;
  int64_t floats_;
  CudaMemory mem_;
};

// Ints copied from the host (token ids, positions, segments, targets) and what they were.
struct HostIntsCopy {
  explicit HostIntsCopy(Counters* counters) : device(counters) {}
  CudaMemory device;
  std::vector<int32_t> held;
};

class CudaLinear : public DeviceLinear {
 public:
  CudaLinear(std::shared_ptr<Counters> counters, int64_t out, int64_t in, bool quantized)
      : counters_(std::move(counters)),
        packed(counters_.get()),
        absmax_q(counters_.get()),
        nested(counters_.get()),
        values(counters_.get()),
        out_(out),
        in_(in),
        quantized_(quantized) {}
  ~CudaLinear() override { counters_->base_weights -= counted_; }
  // Adds this weight's bytes to the device's base-weight count (taken back when it goes).
  void Count() {
    counted_ = bytes();
    counters_->base_weights += counted_;
  }
  int64_t out_features() const override { return out_; }
  int64_t in_features() const override { return in_; }
  bool quantized() const override { return quantized_; }
  int64_t bytes() const override {
    return static_cast<int64_t>(packed.bytes() + absmax_q.bytes() + nested.bytes() +
                                values.bytes());
  }

 private:
  std::shared_ptr<Counters> counters_;  // before the memory below, which counts into it

 public:
  CudaMemory packed, absmax_q, nested, values;  // NF4 + double quant, or float32 values
  float offset = 0.0f;
  int blocksize = 64, nested_blocksize = 256;
  int64_t numel = 0;

 private:
  int64_t counted_ = 0;
  int64_t out_, in_;
  bool quantized_;
};

class CudaDevice : public Device {
 public:
  static absl::StatusOr<std::unique_ptr<Device>> Create(int ordinal,
                                                        const CudaDeviceOptions& options) {
    auto d = std::unique_ptr<CudaDevice>(new CudaDevice(ordinal, options));
    cudaError_t e = cudaSetDevice(ordinal);
    if (e != cudaSuccess) {
      return absl::UnavailableError(absl::StrCat("cuda:", ordinal, ": ", cudaGetErrorString(e)));
    }
    cudaDeviceProp prop{};
    if ((e = cudaGetDeviceProperties(&prop, ordinal)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&d->stream_, cudaStreamNonBlocking)) != cudaSuccess) {
      return absl::UnavailableError(absl::StrCat("cuda:", ordinal, ": ", cudaGetErrorString(e)));
    }
    d->device_name_ = prop.name;
    // The kernels use bf16 tensor cores, ldmatrix and cp.async, and are built for sm_80 and up.
    if (prop.major < 8) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cuda:", ordinal, " (", prop.name, ") has compute capability ", prop.major, ".",
          prop.minor, "; qlorad's kernels need 8.0 or newer (A100, H100, H200, L40, RTX 30xx up)"));
    }
    cudaDeviceGetAttribute(&d->max_shared_optin_, cudaDevAttrMaxSharedMemoryPerBlockOptin, ordinal);
    // Paging optimizer state needs prefetches that the card takes while it computes; where it
    // cannot (some virtualised or Windows setups), the state stays resident.
    int concurrent_managed = 0;
    cudaDeviceGetAttribute(&concurrent_managed, cudaDevAttrConcurrentManagedAccess, ordinal);
    d->pageable_ = concurrent_managed != 0;
    if (cublasCreate(&d->blas_) != CUBLAS_STATUS_SUCCESS) {
      return absl::UnavailableError(absl::StrCat("cuda:", ordinal, ": cuBLAS did not start"));
    }
    cublasSetStream(d->blas_, d->stream_);
    // Plain float32 GEMMs stay exactly float32 (no TF32) unless bf16 GEMMs are asked for.
    cublasSetMathMode(d->blas_, options.bf16_gemm ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH);
    const auto& code8 = kernels::SignedDynamicMap();
    if ((e = d->code8_.Allocate(256 * 4)) != cudaSuccess ||
        (e = d->UploadBytes(d->code8_.get(), code8.data(), 256 * 4)) != cudaSuccess ||
        (e = d->partial_.Allocate(1024 * sizeof(double))) != cudaSuccess) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cuda:", ordinal, ": ", cudaGetErrorString(e)));
    }
    // One kernel, run to the end, before any job trusts the card: a build without code for it
    // (or a driver that cannot load that code) fails here, with the reason, not mid-job.
    if ((e = kc::FillValue(static_cast<float*>(d->partial_.get()), 1, 0.0f, d->stream_)) !=
            cudaSuccess ||
        (e = cudaStreamSynchronize(d->stream_)) != cudaSuccess) {
      cudaGetLastError();
      return absl::FailedPreconditionError(
          absl::StrCat("cuda:", ordinal, " (", prop.name, ", compute capability ", prop.major, ".",
                       prop.minor, ") cannot run qlorad's kernels: ", cudaGetErrorString(e)));
    }
    return std::unique_ptr<Device>(std::move(d));
  }

  ~CudaDevice() override {
    cudaSetDevice(ordinal_);
    if (blas_ != nullptr) cublasDestroy(blas_);
    if (stream_ != nullptr) {
      SyncStream();
      cudaStreamDestroy(stream_);
    }
  }

  std::string name() const override {
    return absl::StrCat("cuda:", ordinal_, " (", device_name_,
                        options_.bf16_gemm ? ", bf16 GEMMs" : ", float32 GEMMs", FlashNote(),
                        LimitNote(), ")");
  }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Alloc(int64_t floats, BufferKind kind) override {
    if (floats < 0) return absl::InvalidArgumentError("negative allocation");
    Enter();
    const bool optimizer = kind == BufferKind::kOptimizer || kind == BufferKind::kPagedOptimizer;
    const bool managed = kind == BufferKind::kPagedOptimizer && pageable_;
    if (managed) {
      // Managed memory can oversubscribe the card silently; never ask for more than is free.
      // What is queued lands first (the fill of the buffer before, say): only then does the
      // free memory count it.
      SyncStream();
      size_t free_bytes = 0, total = 0;
      cudaMemGetInfo(&free_bytes, &total);
      if (static_cast<size_t>(floats) * 4 > free_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat(name(), ": optimizer state of ",
                                                         floats * 4, " bytes exceeds the ",
                                                         free_bytes, " bytes free"));
      }
    }
    auto b = std::make_unique<CudaBuffer>(counters_,
                                          optimizer ? &Counters::optimizer_device
                                          : kind == BufferKind::kAdapter ? &Counters::adapters
                                                                         : &Counters::activations,
                                          floats, managed);
    if (const cudaError_t e = b->Allocate(); e != cudaSuccess) {
      return Refused(e, absl::StrCat("cannot allocate ", floats * 4, " bytes"));
    }
    return std::unique_ptr<DeviceBuffer>(std::move(b));
  }

  void SetResident(DeviceBuffer& buffer, bool resident) override {
    const auto timed = Time("optimizer paging");
    auto& b = static_cast<CudaBuffer&>(buffer);
    const bool now = b.category() != &Counters::optimizer_host;
    if (b.category() != &Counters::optimizer_device && b.category() != &Counters::optimizer_host)
      return;  // only optimizer state pages
    if (now == resident || b.size() == 0 || !b.managed()) return;
    Enter();
    if (resident) {
      // Never more managed memory on the card than it has free (other jobs may have filled it
      // while this one was paged out): the state then stays on the host, where the optimizer
      // step reads it over the bus, and the next step tries again.
      // A prefetch still under way (the other moment's) is not in the free memory yet: it is
      // counted here until the step's wait for its loss. No wait of its own: a step waits once.
      size_t free_bytes = 0, total = 0;
      if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess ||
          static_cast<size_t>(b.size()) * 4 + prefetching_in_ > free_bytes) {
        cudaGetLastError();
        return;
      }
    }
    cudaError_t advised, prefetched;
#if CUDART_VERSION >= 13000
    cudaMemLocation target{};
    target.type = resident ? cudaMemLocationTypeDevice : cudaMemLocationTypeHost;
    target.id = resident ? ordinal_ : 0;
    advised = cudaMemAdvise(b.data(), b.size() * 4, cudaMemAdviseSetPreferredLocation, target);
    prefetched = cudaMemPrefetchAsync(b.data(), b.size() * 4, target, 0, stream_);
#else
    const int target = resident ? ordinal_ : cudaCpuDeviceId;
    advised = cudaMemAdvise(b.data(), b.size() * 4, cudaMemAdviseSetPreferredLocation, target);
    prefetched = cudaMemPrefetchAsync(b.data(), b.size() * 4, target, stream_);
#endif
    Check(advised, "page advise");
    Check(prefetched, "page prefetch");
    // Counted where it went only once it went: the memory figures stay true to the card.
    if (advised == cudaSuccess && prefetched == cudaSuccess) {
      b.Recount(resident ? &Counters::optimizer_device : &Counters::optimizer_host);
      if (resident) prefetching_in_ += static_cast<size_t>(b.size()) * 4;
    }
  }

  // Host bytes to the device, in order with the work on stream_ and landed on return. A plain
  // cudaMemcpy runs on the legacy default stream, which a non-blocking stream_ does not wait
  // for, and from pageable memory it may return before its DMA lands.
  cudaError_t UploadBytes(void* device, const void* host, size_t bytes) {
    const cudaError_t e = cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream_);
    return e != cudaSuccess ? e : SyncStream();
  }

  void CopyFromHost(const float* host, int64_t n, float* device) override {
    const auto timed = Time("copy to device");
    Enter();
    Check(cudaMemcpyAsync(device, host, n * 4, cudaMemcpyHostToDevice, stream_), "copy to device");
    Check(SyncStream(), "copy to device");  // `host` may go away on return
  }

  void CopyToHost(const float* device, int64_t n, float* host) override {
    const auto timed = Time("copy to host");
    Enter();
    Check(cudaMemcpyAsync(host, device, n * 4, cudaMemcpyDeviceToHost, stream_), "copy to host");
    Check(SyncStream(), "copy to host");
    if (!error_.ok()) std::fill(host, host + n, std::numeric_limits<float>::quiet_NaN());
  }

  absl::StatusOr<std::unique_ptr<DeviceLinear>> UploadLinear(const Nf4Tensor* nf4,
                                                             const std::vector<float>* values,
                                                             int64_t out, int64_t in) override {
    Enter();
    if (nf4 != nullptr && nf4->numel != out * in)
      return absl::InvalidArgumentError("NF4 weight size mismatch");
    // NF4 without double quantization is rare (our models always use it): keep it as floats.
    std::vector<float> dequantized;
    if (nf4 != nullptr && !nf4->double_quant) {
      dequantized = nf4->Dequantize();
      values = &dequantized;
    }
    const bool quantized = nf4 != nullptr && nf4->double_quant;
    if (!quantized && (values == nullptr || static_cast<int64_t>(values->size()) != out * in))
      return absl::InvalidArgumentError("float32 weight size mismatch");
    auto lin = std::make_unique<CudaLinear>(counters_, out, in, quantized);
    cudaError_t e = cudaSuccess;
    auto put = [&](CudaMemory& m, const void* src, size_t bytes) {
      if (e == cudaSuccess) e = m.Allocate(bytes);
      if (e == cudaSuccess) e = UploadBytes(m.get(), src, bytes);
    };
    if (quantized) {
      put(lin->packed, nf4->packed.data(), nf4->packed.size());
      put(lin->absmax_q, nf4->absmax_q.data(), nf4->absmax_q.size());
      put(lin->nested, nf4->nested_absmax.data(), nf4->nested_absmax.size() * 4);
      lin->offset = nf4->offset;
      lin->blocksize = nf4->blocksize;
      lin->nested_blocksize = nf4->nested_blocksize;
      lin->numel = nf4->numel;
    } else {
      put(lin->values, values->data(), values->size() * 4);
    }
    if (e != cudaSuccess) return Refused(e, "cannot place a weight");
    lin->Count();
    return std::unique_ptr<DeviceLinear>(std::move(lin));
  }

  // NF4 + double quantization on the card (kernels/cuda/nf4_quantize.h, bit-exact with the
  // host's): the float32 values pass through a transient staging buffer.
  absl::StatusOr<std::unique_ptr<DeviceLinear>> QuantizeLinear(const std::vector<float>& values,
                                                               int64_t out, int64_t in,
                                                               const Nf4Options& o) override {
    if (!QuantizesOnCard(out * in, o) || static_cast<int64_t>(values.size()) != out * in) {
      return Device::QuantizeLinear(values, out, in, o);
    }
    return QuantizeOnCard(out, in, o, [&](float* staging) {
      return cudaMemcpyAsync(staging, values.data(), out * in * 4, cudaMemcpyHostToDevice, stream_);
    });
  }

  // The values made in the staging buffer by kernels/cuda FillUniform: no host memory at all.
  absl::StatusOr<std::unique_ptr<DeviceLinear>> RandomLinear(int64_t out, int64_t in, uint64_t seed,
                                                             uint64_t stream_id, float scale,
                                                             const Nf4Options& o) override {
    if (out <= 0 || in <= 0 || !QuantizesOnCard(out * in, o)) {
      return Device::RandomLinear(out, in, seed, stream_id, scale, o);
    }
    return QuantizeOnCard(out, in, o, [&](float* staging) {
      return kc::FillUniform(staging, out * in, seed, stream_id, scale, stream_);
    });
  }

  // The quantization kernels take double quantization with blocks of 64 (the dequantization
  // kernel's vectorized path wants them).
  static bool QuantizesOnCard(int64_t n, const Nf4Options& o) {
    return o.double_quant && n > 0 && o.blocksize == 64;
  }

  // Quantizes the [out, in] values that `fill` puts (in order on stream_) in a staging buffer.
  absl::StatusOr<std::unique_ptr<DeviceLinear>> QuantizeOnCard(
      int64_t out, int64_t in, const Nf4Options& o,
      const std::function<cudaError_t(float* staging)>& fill) {
    const int64_t n = out * in;
    Enter();
    const int64_t blocks = (n + o.blocksize - 1) / o.blocksize;
    const int64_t nested = (blocks + o.nested_blocksize - 1) / o.nested_blocksize;
    auto lin = std::make_unique<CudaLinear>(counters_, out, in, true);
    CudaMemory staging(counters_.get()), absmax(counters_.get());
    cudaError_t e = lin->packed.Allocate((n + 1) / 2);
    if (e == cudaSuccess) e = lin->absmax_q.Allocate(blocks);
    if (e == cudaSuccess) e = lin->nested.Allocate(nested * 4);
    if (e == cudaSuccess) e = staging.Allocate(n * 4);
    if (e == cudaSuccess) e = absmax.Allocate(blocks * 4);
    if (e == cudaSuccess) e = fill(static_cast<float*>(staging.get()));
    kc::Nf4QuantizeOutputs q;
    q.packed = static_cast<uint8_t*>(lin->packed.get());
    q.absmax_q = static_cast<uint8_t*>(lin->absmax_q.get());
    q.nested_absmax = static_cast<float*>(lin->nested.get());
    q.absmax_scratch = static_cast<float*>(absmax.get());
    q.code8 = static_cast<const float*>(code8_.get());
    if (e == cudaSuccess) {  // returns once the stream is done, so staging can go
      e = kc::Nf4QuantizeDoubleQuant(static_cast<const float*>(staging.get()), n, o.blocksize,
                                     o.nested_blocksize, &q, stream_);
    }
    if (e != cudaSuccess) {
      SyncStream();  // nothing may still read staging when it is freed
      return Refused(e, "cannot quantize a weight");
    }
    lin->offset = q.offset;
    lin->blocksize = o.blocksize;
    lin->nested_blocksize = o.nested_blocksize;
    lin->numel = n;
    lin->Count();
    return std::unique_ptr<DeviceLinear>(std::move(lin));
  }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> UploadF32(const std::vector<float>& v) override {
    Enter();
    auto b = std::make_unique<CudaBuffer>(counters_, &Counters::base_weights,
                                          static_cast<int64_t>(v.size()));
    cudaError_t e = b->Allocate();
    if (e == cudaSuccess) e = UploadBytes(b->data(), v.data(), v.size() * 4);
    if (e != cudaSuccess) return Refused(e, "cannot place a tensor");
    return std::unique_ptr<DeviceBuffer>(std::move(b));
  }

  void Linear(const DeviceLinear& w, const float* x, int64_t tokens, float* y) override {
    const auto& lin = static_cast<const CudaLinear&>(w);
    if (Bf16Linear(lin)) {
      // y = x W^T on bf16 tensor cores: the weight dequantized straight to bf16 (half the bytes
      // of float32), the activations rounded to bf16 as the GEMM would round them anyway.
      const __nv_bfloat16* xb = Bf16Copy(x, tokens * lin.in_features());
      const __nv_bfloat16* wb = WeightsBf16(lin);
      if (xb == nullptr || wb == nullptr) return;
      GemmBf16(false, true, tokens, lin.out_features(), lin.in_features(), 1.0f, xb,
               lin.in_features(), wb, lin.in_features(), 0.0f, y, lin.out_features());
      return;
    }
    MatmulTransposed(Weights(lin), lin.out_features(), lin.in_features(), x, tokens, y);
  }

  // The fused LoRA linear (FusedLoraGemm), x rounded into its operand.
  void LinearLora(const DeviceLinear& w, const float* x, int64_t tokens, const float* h,
                  const float* b, int64_t r, float scale, float* y) override {
    const auto& lin = static_cast<const CudaLinear&>(w);
    const int64_t in = lin.in_features();
    if (!Bf16Linear(lin) || in % 8 != 0 || r < 1)
      return Device::LinearLora(w, x, tokens, h, b, r, scale, y);
    FusedLoraGemm(lin, tokens, h, b, r, scale, y, [&](__nv_bfloat16* xs, int64_t k) {
      const auto timed = Time("round activations to bf16");
      Check(kc::ConvertRowsToBf16(x, tokens, in, in, 1.0f, in, xs, k, stream_), "to bf16");
    });
  }

  void MatmulTransposed(const float* w, int64_t out, int64_t in, const float* x, int64_t tokens,
                        float* y) override {
    Gemm(false, true, tokens, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
  }

  void Embedding(const float* table, int64_t dim, const int32_t* host_ids, int64_t tokens,
                 float* out) override {
    const auto timed = Time("embedding");
    const int32_t* ids = HostInts(host_ids, tokens, &ids_);
    Check(kc::EmbeddingGather(table, dim, ids, tokens, out, stream_), "embedding");
  }

  void RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* y,
               float* inv_rms) override {
    const auto timed = Time("rmsnorm");
    Enter();
    // x and y must not alias: the kernels take them __restrict__ (no caller passes one buffer).
    Check(kc::RmsNormForward<float>(x, w, rows, dim, eps, y, inv_rms, stream_), "rmsnorm");
  }

  void Rope(float* x, const int32_t* host_positions, int64_t tokens, int64_t heads,
            int64_t head_dim, float theta, bool inverse) override {
    const auto timed = Time("rope");
    const int32_t* pos = HostInts(host_positions, tokens, &positions_);
    Check(kc::RopeApply<float>(x, pos, tokens, heads, head_dim, theta, inverse, stream_), "rope");
  }

  void CausalAttention(const float* q, const float* k, const float* v, const AttentionDims& d,
                       float* out) override {
    const auto timed = Time("attention (inference)");
    const int64_t H = d.heads, KV = d.kv_heads, hd = d.head_dim, T = d.tokens, S = d.kv_tokens;
    float* scores = Scratch(&scores_, H * T * S);
    if (scores == nullptr) return;
    AttentionCore(q, k, v, H, KV, hd, T, S, d.first_pos, nullptr, scores, out);
  }

  void Swiglu(const float* gate, const float* up, int64_t n, float* out) override {
    const auto timed = Time("swiglu");
    Enter();
    Check(kc::SwigluForward<float>(gate, up, n, out, stream_), "swiglu");
  }

  void AddInPlace(float* y, const float* x, int64_t n) override {
    const auto timed = Time("add");
    Enter();
    Check(kc::AddInPlace(y, x, n, stream_), "add");
  }

  void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
            const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) override {
    const auto timed = Time("gemm, float32 operands");
    Enter();
    if (m == 0 || n == 0) return;
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    const cublasStatus_t s = cublasGemmEx(
        blas_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
        static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b, CUDA_R_32F,
        static_cast<int>(ldb), a, CUDA_R_32F, static_cast<int>(lda), &beta, c, CUDA_R_32F,
        static_cast<int>(ldc),
        options_.bf16_gemm ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F_PEDANTIC,
        CUBLAS_GEMM_DEFAULT);
    CheckBlas(s, "cuBLAS GEMM");
  }

  void LinearBackwardInput(const DeviceLinear& w, const float* dy, int64_t tokens, float* dx,
                           bool accumulate) override {
    const auto& lin = static_cast<const CudaLinear&>(w);
    if (Bf16Linear(lin)) {
      const __nv_bfloat16* dyb = Bf16Copy(dy, tokens * lin.out_features());
      if (dyb != nullptr) BackwardInputBf16(lin, dyb, tokens, dx, accumulate);
      return;
    }
    Gemm(false, false, tokens, lin.in_features(), lin.out_features(), 1.0f, dy, lin.out_features(),
         Weights(lin), lin.in_features(), accumulate ? 1.0f : 0.0f, dx, lin.in_features());
  }

  // dy rounded to bf16 once for the three GEMMs (dx = dy W, dB += scale dy^T h, dh = scale dy B),
  // where the unfused default reads the float32 dy three times.
  void LinearLoraBackward(const DeviceLinear& w, const float* dy, int64_t tokens, const float* h,
                          const float* b, int64_t r, float scale, float* dx, bool accumulate,
                          float* dh, float* db) override {
    const auto& lin = static_cast<const CudaLinear&>(w);
    if (!Bf16Linear(lin))
      return Device::LinearLoraBackward(w, dy, tokens, h, b, r, scale, dx, accumulate, dh, db);
    const __nv_bfloat16* dyb = Bf16Copy(dy, tokens * lin.out_features());
    if (dyb != nullptr) LoraBackwardBf16(lin, dyb, tokens, h, b, r, scale, dx, accumulate, dh, db);
  }

  void RmsNormBackward(const float* x, const float* w, const float* inv_rms, const float* dy,
                       int64_t rows, int64_t dim, float* dx) override {
    const auto timed = Time("rmsnorm backward");
    Enter();
    Check(kc::RmsNormBackward<float>(x, w, inv_rms, dy, rows, dim, dx, stream_), "rmsnorm bwd");
  }

  int64_t AttentionSavedFloats(const TrainAttentionDims& d) const override {
    return Flash(d) ? d.heads * d.tokens : AttentionProbabilityFloats(d);
  }

  void AttentionTrainForward(const float* q, const float* k, const float* v,
                             const int32_t* host_segments, const TrainAttentionDims& d, float* out,
                             float* saved) override {
    const auto timed = Time(Flash(d) ? "flash attention forward" : "gemm attention forward");
    Enter();
    const int32_t* segments =
        host_segments != nullptr ? HostInts(host_segments, d.tokens, &segments_) : nullptr;
    if (Flash(d)) {
      Check(kc::FlashAttentionForward(q, k, v, segments, d.tokens, d.heads, d.kv_heads, d.head_dim,
                                      out, saved, stream_),
            "flash attention");
      return;
    }
    AttentionCore(q, k, v, d.heads, d.kv_heads, d.head_dim, d.tokens, d.tokens, 0, segments, saved,
                  out);
  }

  // dV_g += P_h^T dO_h; dP = dO_h V_g^T; dS = P (dP - rowsum(P dP)) scale; dQ_h = dS K_g;
  // dK_g += dS^T Q_h (as kernels/cpu/attention_train.cc).
  void AttentionTrainBackward(const float* q, const float* k, const float* v,
                              const int32_t* host_segments, const float* out, const float* saved,
                              const float* dout, const TrainAttentionDims& d, float* dq, float* dk,
                              float* dv) override {
    const auto timed = Time(Flash(d) ? "flash attention backward" : "gemm attention backward");
    Enter();
    if (Flash(d)) {
      const int32_t* segments =
          host_segments != nullptr ? HostInts(host_segments, d.tokens, &segments_) : nullptr;
      float* delta = Scratch(&delta_, d.heads * d.tokens);
      if (delta == nullptr) return;
      Check(kc::FlashAttentionBackward(q, k, v, segments, out, saved, dout, d.tokens, d.heads,
                                       d.kv_heads, d.head_dim, delta, dq, dk, dv, stream_),
            "flash attention backward");
      return;
    }
    const float* probs = saved;
    const int64_t H = d.heads, KV = d.kv_heads, hd = d.head_dim, T = d.tokens;
    const int64_t group = H / KV;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    float* dp = Scratch(&scores_, T * T);
    if (dp == nullptr) return;
    Fill(dk, T * KV * hd, 0.0f);
    Fill(dv, T * KV * hd, 0.0f);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / group;
      const float* p = probs + h * T * T;
      Gemm(true, false, T, hd, T, 1.0f, p, T, dout + h * hd, H * hd, 1.0f, dv + g * hd, KV * hd);
      Gemm(false, true, T, T, hd, 1.0f, dout + h * hd, H * hd, v + g * hd, KV * hd, 0.0f, dp, T);
      Check(kc::SoftmaxBackwardRows(p, dp, T, T, scale, stream_), "softmax bwd");
      Gemm(false, false, T, hd, T, 1.0f, dp, T, k + g * hd, KV * hd, 0.0f, dq + h * hd, H * hd);
      Gemm(true, false, T, hd, T, 1.0f, dp, T, q + h * hd, H * hd, 1.0f, dk + g * hd, KV * hd);
    }
  }

  void SwigluBackward(const float* gate, const float* up, const float* dout, int64_t n,
                      float* dgate, float* dup) override {
    const auto timed = Time("swiglu backward");
    Enter();
    Check(kc::SwigluBackward<float>(gate, up, dout, n, dgate, dup, stream_), "swiglu bwd");
  }

  void CrossEntropyForwardBackward(float* logits, const int32_t* host_targets, int64_t rows,
                                   int64_t vocab, float scale, float* loss_sum) override {
    const auto timed = Time("cross-entropy");
    const int32_t* targets = HostInts(host_targets, rows, &targets_);
    float* loss = Scratch(&row_loss_, rows);
    if (loss == nullptr) return;
    Check(
        kc::CrossEntropyForwardBackward<float>(logits, targets, rows, vocab, scale, loss, stream_),
        "cross-entropy");
    Check(kc::AddSumInto(loss, rows, loss_sum, stream_), "loss sum");
  }

  double CrossEntropyLoss(const float* logits, const int32_t* host_targets, int64_t rows,
                          int64_t vocab) override {
    const auto timed = Time("cross-entropy (loss only)");
    const int32_t* targets = HostInts(host_targets, rows, &targets_);
    float* loss = Scratch(&row_loss_, rows);
    if (loss == nullptr) return std::numeric_limits<double>::quiet_NaN();
    Check(kc::CrossEntropyRowLoss(logits, targets, rows, vocab, loss, stream_), "loss");
    return SumRowLoss(loss, rows);
  }

  void Dropout(const float* x, int64_t n, float p, uint64_t seed, uint64_t stream,
               float* out) override {
    const auto timed = Time("dropout");
    Enter();
    Check(kc::DropoutApply<float>(x, n, p, seed, stream, out, stream_), "dropout");
  }

  // The mask applied where x is read (or dx written): dropout(x) is never stored.
  void LoraDropoutDown(const float* x, int64_t n, int64_t in, const float* a, int64_t r, float p,
                       uint64_t seed, uint64_t stream, float* h, float* scratch) override {
    if (p <= 0.0f || !kc::LoraDropoutSupports(n, in, r))
      return Device::LoraDropoutDown(x, n, in, a, r, p, seed, stream, h, scratch);
    FusedDropoutDown(x, n, in, a, r, p, seed, stream, h);
  }
  void LoraDropoutGradA(const float* x, const float* dh, int64_t n, int64_t in, int64_t r, float p,
                        uint64_t seed, uint64_t stream, float* da, float* scratch) override {
    if (p <= 0.0f || !kc::LoraDropoutSupports(n, in, r))
      return Device::LoraDropoutGradA(x, dh, n, in, r, p, seed, stream, da, scratch);
    FusedDropoutGradA(x, dh, n, in, r, p, seed, stream, da);
  }
  void LoraDropoutBackwardInput(const float* dh, const float* a, int64_t n, int64_t in, int64_t r,
                                float p, uint64_t seed, uint64_t stream, float* dx,
                                float* scratch) override {
    if (p <= 0.0f || !kc::LoraDropoutSupports(n, in, r))
      return Device::LoraDropoutBackwardInput(dh, a, n, in, r, p, seed, stream, dx, scratch);
    FusedDropoutBackwardInput(dh, a, n, in, r, p, seed, stream, dx);
  }

  // --- bf16 activations (Device's contracts): the same kernels instantiated for bf16, GEMMs
  // that read bf16 activations and write bf16 outputs directly. What has no bf16 form here (GEMM
  // attention, float32 weights, sizes the fused kernels do not take) takes Device's conversion
  // defaults.
  // Where flash attention runs the head_dim (GEMM attention has no bf16 form here).
  bool PrefersBf16Activations(const TrainAttentionDims& d) const override {
    return options_.bf16_gemm && options_.bf16_activations && Flash(d);
  }
  // Where this device prefers bf16 and its fused LoRA dropout takes the rank, its kernels cover
  // the graph (NF4 or float32 weights, widths that keep 16-byte rows): nothing to reserve. Else
  // (a graph asked for bf16 with GEMM attention or without bf16 GEMMs, or a rank over 64) the
  // defaults' scratch, taken now so that a shortage is this status rather than a failed device.
  // None where the bf16 kernels cover the graph: flash attention, widths that keep 16-byte
  // rows, a rank the fused LoRA dropout takes.
  int64_t ConversionScratchFloats(const ConversionShape& shape) const override {
    if (PrefersBf16Activations(shape.row) && shape.hidden % 8 == 0 && shape.intermediate % 8 == 0 &&
        kc::LoraDropoutSupports(shape.tokens, shape.widest(), shape.rank)) {
      return 0;
    }
    return Device::ConversionScratchFloats(shape);
  }
  // As Device's, but a failed allocation is not sticky: the job fails, not the device.
  absl::Status ReserveConversionScratch(const ConversionShape& shape) override {
    const int64_t floats = ConversionScratchFloats(shape);
    if (floats == 0) return absl::OkStatus();
    Enter();
    if (const cudaError_t e = Grow(&conversion_, static_cast<size_t>(floats) * 4);
        e != cudaSuccess) {
      return Refused(
          e, absl::StrCat("cannot allocate ", floats * 4, " bytes to convert bf16 activations"));
    }
    return absl::OkStatus();
  }
  void ToBf16(const float* x, int64_t n, Bf16* out) override {
    const auto timed = Time("round to bf16");
    Check(kc::ConvertToBf16(x, n, B(out), stream_), "to bf16");
  }
  void ToF32(const Bf16* x, int64_t n, float* out) override {
    const auto timed = Time("widen bf16 to float32");
    Check(kc::ConvertToF32(B(x), n, out, stream_), "to float32");
  }
  void Embedding(const float* table, int64_t dim, const int32_t* host_ids, int64_t tokens,
                 Bf16* out) override {
    const auto timed = Time("embedding");
    const int32_t* ids = HostInts(host_ids, tokens, &ids_);
    Check(kc::EmbeddingGather(table, dim, ids, tokens, B(out), stream_), "embedding");
  }
  void RmsNorm(const Bf16* x, const float* w, int64_t rows, int64_t dim, float eps, Bf16* y,
               float* inv_rms) override {
    const auto timed = Time("rmsnorm");
    Check(kc::RmsNormForward(B(x), w, rows, dim, eps, B(y), inv_rms, stream_), "rmsnorm");
  }
  void RmsNormBackward(const Bf16* x, const float* w, const float* inv_rms, const Bf16* dy,
                       int64_t rows, int64_t dim, Bf16* dx) override {
    const auto timed = Time("rmsnorm backward");
    Check(kc::RmsNormBackward(B(x), w, inv_rms, B(dy), rows, dim, B(dx), stream_), "rmsnorm bwd");
  }
  void Rope(Bf16* x, const int32_t* host_positions, int64_t tokens, int64_t heads, int64_t head_dim,
            float theta, bool inverse) override {
    const auto timed = Time("rope");
    const int32_t* pos = HostInts(host_positions, tokens, &positions_);
    Check(kc::RopeApply(B(x), pos, tokens, heads, head_dim, theta, inverse, stream_), "rope");
  }
  void AddInPlace(Bf16* y, const Bf16* x, int64_t n) override {
    const auto timed = Time("add");
    Check(kc::AddInPlace(B(y), B(x), n, stream_), "add");
  }
  void Swiglu(const Bf16* gate, const Bf16* up, int64_t n, Bf16* out) override {
    const auto timed = Time("swiglu");
    Check(kc::SwigluForward(B(gate), B(up), n, B(out), stream_), "swiglu");
  }
  void SwigluBackward(const Bf16* gate, const Bf16* up, const Bf16* dout, int64_t n, Bf16* dgate,
                      Bf16* dup) override {
    const auto timed = Time("swiglu backward");
    Check(kc::SwigluBackward(B(gate), B(up), B(dout), n, B(dgate), B(dup), stream_), "swiglu bwd");
  }

  // Flash attention reads and writes bf16 directly; GEMM attention takes Device's conversion
  // defaults (its probabilities are float32 anyway).
  void AttentionTrainForward(const Bf16* q, const Bf16* k, const Bf16* v,
                             const int32_t* host_segments, const TrainAttentionDims& d, Bf16* out,
                             float* saved) override {
    if (!Flash(d)) return Device::AttentionTrainForward(q, k, v, host_segments, d, out, saved);
    const auto timed = Time("flash attention forward");
    const int32_t* segments =
        host_segments != nullptr ? HostInts(host_segments, d.tokens, &segments_) : nullptr;
    Check(kc::FlashAttentionForward(B(q), B(k), B(v), segments, d.tokens, d.heads, d.kv_heads,
                                    d.head_dim, B(out), saved, stream_),
          "flash attention");
  }
  void AttentionTrainBackward(const Bf16* q, const Bf16* k, const Bf16* v,
                              const int32_t* host_segments, const Bf16* out, const float* saved,
                              const Bf16* dout, const TrainAttentionDims& d, Bf16* dq, Bf16* dk,
                              Bf16* dv) override {
    if (!Flash(d)) {
      return Device::AttentionTrainBackward(q, k, v, host_segments, out, saved, dout, d, dq, dk,
                                            dv);
    }
    const auto timed = Time("flash attention backward");
    const int32_t* segments =
        host_segments != nullptr ? HostInts(host_segments, d.tokens, &segments_) : nullptr;
    float* delta = Scratch(&delta_, d.heads * d.tokens);
    if (delta == nullptr) return;
    Check(kc::FlashAttentionBackward(B(q), B(k), B(v), segments, B(out), saved, B(dout), d.tokens,
                                     d.heads, d.kv_heads, d.head_dim, delta, B(dq), B(dk), B(dv),
                                     stream_),
          "flash attention backward");
  }

  void Linear(const DeviceLinear& w, const Bf16* x, int64_t tokens, Bf16* y) override {
    const auto& lin = static_cast<const CudaLinear&>(w);
    if (!options_.bf16_gemm) return Device::Linear(w, x, tokens, y);
    const __nv_bfloat16* wb = WeightsBf16(lin);
    if (wb == nullptr) return;
    GemmBf16(false, true, tokens, lin.out_features(), lin.in_features(), 1.0f, B(x),
             lin.in_features(), wb, lin.in_features(), 0.0f, B(y), lin.out_features());
  }

  // The fused LoRA linear (FusedLoraGemm), x's rows copied into its operand (bf16 already: a
  // copy, not a conversion).
  void LinearLora(const DeviceLinear& w, const Bf16* x, int64_t tokens, const float* h,
                  const float* b, int64_t r, float scale, Bf16* y) override {
    const auto& lin = static_cast<const CudaLinear&>(w);
    const int64_t in = lin.in_features();
    if (!options_.bf16_gemm || in % 8 != 0 || r < 1)
      return Device::LinearLora(w, x, tokens, h, b, r, scale, y);
    FusedLoraGemm(lin, tokens, h, b, r, scale, B(y), [&](__nv_bfloat16* xs, int64_t k) {
      const auto timed = Time("copy activations into the LoRA operand");
      Check(kc::CopyRowsBf16(B(x), tokens, in, in, xs, k, stream_), "activations into [x | h]");
    });
  }

  void LinearBackwardInput(const DeviceLinear& w, const Bf16* dy, int64_t tokens, Bf16* dx,
                           bool accumulate) override {
    const auto& lin = static_cast<const CudaLinear&>(w);
    if (!options_.bf16_gemm) return Device::LinearBackwardInput(w, dy, tokens, dx, accumulate);
    BackwardInputBf16(lin, B(dy), tokens, B(dx), accumulate);
  }

  void LinearLoraBackward(const DeviceLinear& w, const Bf16* dy, int64_t tokens, const float* h,
                          const float* b, int64_t r, float scale, Bf16* dx, bool accumulate,
                          float* dh, float* db) override {
    const auto& lin = static_cast<const CudaLinear&>(w);
    if (!options_.bf16_gemm)
      return Device::LinearLoraBackward(w, dy, tokens, h, b, r, scale, dx, accumulate, dh, db);
    LoraBackwardBf16(lin, B(dy), tokens, h, b, r, scale, B(dx), accumulate, dh, db);
  }

  // With dropout, the fused kernels reading bf16 x (and updating bf16 dx); without (p = 0),
  // bf16 GEMMs on the activations as they are, A and dh rounded to bf16 (what a float32-data
  // GEMM on bf16 tensor cores rounds them to). Sizes the fused kernels do not take go to
  // Device's conversion defaults.
  void LoraDropoutDown(const Bf16* x, int64_t n, int64_t in, const float* a, int64_t r, float p,
                       uint64_t seed, uint64_t stream, float* h, float* scratch) override {
    if (p > 0.0f) {
      if (!kc::LoraDropoutSupports(n, in, r))
        return Device::LoraDropoutDown(x, n, in, a, r, p, seed, stream, h, scratch);
      return FusedDropoutDown(B(x), n, in, a, r, p, seed, stream, h);
    }
    const __nv_bfloat16* ab = Bf16Copy(a, r * in);
    if (ab == nullptr) return;
    GemmBf16(false, true, n, r, in, 1.0f, B(x), in, ab, in, 0.0f, h, r);
  }
  void LoraDropoutGradA(const Bf16* x, const float* dh, int64_t n, int64_t in, int64_t r, float p,
                        uint64_t seed, uint64_t stream, float* da, float* scratch) override {
    if (p > 0.0f) {
      if (!kc::LoraDropoutSupports(n, in, r))
        return Device::LoraDropoutGradA(x, dh, n, in, r, p, seed, stream, da, scratch);
      return FusedDropoutGradA(B(x), dh, n, in, r, p, seed, stream, da);
    }
    const __nv_bfloat16* dhb = Bf16Copy(dh, n * r);
    if (dhb == nullptr) return;
    GemmBf16(true, false, r, in, n, 1.0f, dhb, r, B(x), in, 1.0f, da, in);
  }
  void LoraDropoutBackwardInput(const float* dh, const float* a, int64_t n, int64_t in, int64_t r,
                                float p, uint64_t seed, uint64_t stream, Bf16* dx,
                                float* scratch) override {
    if (p > 0.0f) {
      if (!kc::LoraDropoutSupports(n, in, r))
        return Device::LoraDropoutBackwardInput(dh, a, n, in, r, p, seed, stream, dx, scratch);
      return FusedDropoutBackwardInput(dh, a, n, in, r, p, seed, stream, B(dx));
    }
    const __nv_bfloat16 *dhb = nullptr, *ab = nullptr;
    if (!LoraOperandsBf16(dh, n * r, a, r * in, &dhb, &ab)) return;
    GemmBf16(false, false, n, in, r, 1.0f, dhb, r, ab, in, 1.0f, B(dx), in);
  }

  void AdamW(float* params, const float* grads, float* m, float* v, int64_t n,
             const kernels::AdamWParams& p) override {
    const auto timed = Time("adamw");
    Enter();
    Check(kc::AdamWStep(params, grads, m, v, n, p, stream_), "adamw");
  }

  void SumSquares(const float* x, int64_t n, float* out) override {
    const auto timed = Time("sum of squares");
    Enter();
    Check(kc::SumSquaresInto(x, n, static_cast<double*>(partial_.get()), out, stream_),
          "sum of squares");
  }

  void Scale(float* x, int64_t n, float alpha) override {
    const auto timed = Time("scale");
    Enter();
    Check(kc::ScaleInPlace(x, n, alpha, stream_), "scale");
  }

  void Fill(float* x, int64_t n, float value) override {
    const auto timed = Time("fill");
    Enter();
    Check(kc::FillValue(x, n, value, stream_), "fill");
  }

  bool StartProfile() {
    Enter();
    profiler_.Start();
    return true;
  }
  std::vector<CudaOpTime> TakeProfile() {
    Enter();
    return profiler_.Take(stream_);
  }

  int64_t ReleaseScratch() override {
    Enter();
    Check(SyncStream(), "release scratch");  // nothing queued still reads it
    int64_t freed = 0;
    for (CudaMemory* m : {&workspace_, &scores_, &row_loss_, &delta_, &workspace_bf16_, &act_bf16_,
                          &lora_partial_, &lora_bf16_, &conversion_}) {
      freed += static_cast<int64_t>(m->bytes());
      m->Release();
    }
    for (HostIntsCopy* c : {&ids_, &positions_, &targets_, &segments_}) {
      freed += static_cast<int64_t>(c->device.bytes());
      c->device.Release();
      c->held.clear();  // nothing is held on the card any more
    }
    return freed;
  }

  DeviceMemoryUsage memory_usage() const override {
    DeviceMemoryUsage u;
    u.base_weights = counters_->base_weights;
    u.adapters = counters_->adapters;
    u.optimizer_device = counters_->optimizer_device;
    u.optimizer_host = counters_->optimizer_host;
    u.activations = counters_->activations;
    u.peak_held = counters_->peak.load();
    size_t free_bytes = 0, total = 0;
    // cudaMemGetInfo reports the calling thread's current device, which on a thread that has
    // not yet run work here (or ran another card's) is not this one.
    if (cudaSetDevice(ordinal_) == cudaSuccess &&
        cudaMemGetInfo(&free_bytes, &total) == cudaSuccess) {
      u.device_total = static_cast<int64_t>(total);
      u.device_free = static_cast<int64_t>(free_bytes);
    }
    // Everything held that is in no category above: the scratch and the fixed tables (every
    // allocation is a CudaMemory counted in `held`; between operations nothing is in transit).
    u.workspace = counters_->held.load() - u.base_weights - u.adapters - u.optimizer_device -
                  u.optimizer_host - u.activations;
    return u;
  }

 protected:
  // The bf16 defaults' float32 copies (an operation without a bf16 kernel here: GEMM attention,
  // float32 weights, LoRA dropout), in a scratch buffer whose failure fails the device's work.
  float* ConversionScratch(int64_t floats) override { return Scratch(&conversion_, floats); }

 private:
  CudaDevice(int ordinal, const CudaDeviceOptions& options) : ordinal_(ordinal), options_(options) {
    counters_->limit = std::max<int64_t>(0, options.memory_limit_bytes);
  }

  // Flash attention where asked for, bf16 GEMMs are on, head_dim has kernels and the card gives
  // a block the shared memory they need (fixed for the device's life, as the training graph
  // sizes its buffers by AttentionSavedFloats).
  bool Flash(const TrainAttentionDims& d) const {
    return options_.flash_attention && options_.bf16_gemm &&
           kc::FlashAttentionSupports(d.head_dim) && d.tokens <= kc::kFlashAttentionMaxTokens &&
           kc::FlashAttentionSharedBytes(d.head_dim) <= max_shared_optin_;
  }
  // The share of the card this device object keeps to, where it has one.
  std::string LimitNote() const {
    const int64_t limit = counters_->limit;
    if (limit <= 0) return "";
    return limit % (1 << 20) == 0 ? absl::StrCat(", limited to ", limit >> 20, " MiB")
                                  : absl::StrCat(", limited to ", limit, " bytes");
  }

  std::string FlashNote() const {
    for (int hd : {128, 64, 32}) {
      if (Flash({1, 1, 1, hd})) return absl::StrCat(", flash attention to head_dim ", hd);
    }
    return "";
  }

  // Times the enclosing operation when profiling (StartCudaOpProfile).
  // Selects the device first: the events belong to the device of the stream they time.
  CudaOpProfiler::Scope Time(const char* name) {
    Enter();
    return {&profiler_, name, stream_};
  }

  // The calling thread may be new to this device (the daemon's worker, a test thread).
  void Enter() { cudaSetDevice(ordinal_); }

  // Records the first failure (printed once) for TakeError; results read after it are NaN.
  void Fail(const std::string& what, absl::StatusCode code = absl::StatusCode::kInternal) {
    if (!error_.ok()) return;
    std::fprintf(stderr, "qlorad: %s: %s\n", name().c_str(), what.c_str());
    error_ = absl::Status(code, absl::StrCat(name(), ": ", what));
  }
  void Check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
      Fail(absl::StrCat(what, ": ", cudaGetErrorString(e)),
           e == cudaErrorMemoryAllocation ? absl::StatusCode::kResourceExhausted
                                          : absl::StatusCode::kInternal);
    }
  }
  // A refused allocation or upload, as a status for the caller: out of memory fails only the
  // caller's work; any other error (a fault this call met first) is also recorded, so that
  // TakeError's probe can find the device lost.
  absl::Status Refused(cudaError_t e, const std::string& what) {
    if (e != cudaErrorMemoryAllocation) Fail(absl::StrCat(what, ": ", cudaGetErrorString(e)));
    cudaGetLastError();  // not sticky where it was memory: the job fails, not the device
    return absl::ResourceExhaustedError(
        absl::StrCat(name(), ": ", what, ": ", cudaGetErrorString(e)));
  }
  void CheckBlas(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS) {
      Fail(absl::StrCat(what, " failed (status ", s, ")"),
           s == CUBLAS_STATUS_ALLOC_FAILED ? absl::StatusCode::kResourceExhausted
                                           : absl::StatusCode::kInternal);
    }
  }

 public:
  // A failure that left the context working (out of memory, a bad launch) is cleared and
  // returned; one that did not (a kernel fault: every later call returns it, the CUDA runtime
  // says the process must restart) makes the device lost for good.
  // Healthy, it costs no wait: every call that waits for the stream checks what it returns, so
  // a fault is recorded by the next read of a result at the latest.
  absl::Status TakeError() override {
    if (lost_) return error_;
    Enter();
    // The thread's last error (a refused launch), cleared here where it is not sticky.
    if (const cudaError_t last = cudaGetLastError(); last != cudaSuccess) Check(last, "a launch");
    if (error_.ok()) return absl::OkStatus();
    // A probe: a fault poisons the context, and the stream then fails for good.
    if (const cudaError_t probe = SyncStream(); probe != cudaSuccess) {
      lost_ = true;
      error_ = absl::UnavailableError(absl::StrCat(name(), " is lost until qlorad restarts (",
                                                   cudaGetErrorString(probe),
                                                   "); its first error: ", error_.message()));
      return error_;
    }
    return std::exchange(error_, absl::OkStatus());
  }

 private:
  // A scratch buffer of at least `floats`, grown (never shrunk) as needed; null after a failure.
  // Waits for everything queued on stream_. Prefetches included: what SetResident paged in has
  // landed, and counts in the free memory from here (prefetching_in_ counts what has not).
  cudaError_t SyncStream() {
    const cudaError_t e = cudaStreamSynchronize(stream_);
    if (e == cudaSuccess) prefetching_in_ = 0;
    return e;
  }
  // Grows m to at least `bytes`, waiting for the stream first: the old buffer may still be in use.
  cudaError_t Grow(CudaMemory* m, size_t bytes) {
    if (m->bytes() >= bytes) return cudaSuccess;
    Check(SyncStream(), "scratch");
    return m->Allocate(bytes);
  }
  float* Scratch(CudaMemory* m, int64_t floats) {
    Enter();
    if (const cudaError_t e = Grow(m, static_cast<size_t>(floats) * 4); e != cudaSuccess) {
      Check(e, "scratch allocation");
      return nullptr;
    }
    return static_cast<float*>(m->get());
  }

  // `n` host ints in a device scratch buffer. The same positions (or segments) are asked for
  // by every layer's RoPE (attention) forward and backward: a copy whose bytes the buffer
  // already holds is skipped, which leaves a 32-layer step one copy of each instead of ~200.
  const int32_t* HostInts(const int32_t* host, int64_t n, HostIntsCopy* c) {
    Enter();  // the caller's kernel launch follows, even when no copy does
    if (static_cast<int64_t>(c->held.size()) == n && n > 0 &&
        std::memcmp(c->held.data(), host, n * sizeof(int32_t)) == 0) {
      return static_cast<const int32_t*>(c->device.get());
    }
    c->held.clear();
    float* d = Scratch(&c->device, n);  // int32 and float have the same size
    if (d == nullptr) return nullptr;
    // A copy from pageable memory returns once the bytes are staged, so the host array may
    // change afterwards; the scratch buffer is reused in stream order. No wait needed.
    const cudaError_t e = cudaMemcpyAsync(d, host, n * 4, cudaMemcpyHostToDevice, stream_);
    Check(e, "copy ids");
    if (e == cudaSuccess) c->held.assign(host, host + n);
    return reinterpret_cast<const int32_t*>(d);
  }

  double SumRowLoss(const float* loss, int64_t rows) {
    std::vector<float> host(rows);
    Check(cudaMemcpyAsync(host.data(), loss, rows * 4, cudaMemcpyDeviceToHost, stream_), "loss");
    Check(SyncStream(), "loss");
    if (!error_.ok()) return std::numeric_limits<double>::quiet_NaN();
    double total = 0.0;
    for (float l : host) total += l;
    return total;
  }

  // Device's Bf16 and CUDA's __nv_bfloat16 are the same 16 bits.
  static __nv_bfloat16* B(Bf16* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
  static const __nv_bfloat16* B(const Bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }

  // NF4 weights go through bf16 GEMMs when bf16 GEMMs are on (float32 weights keep the
  // float32-operand GEMM).
  bool Bf16Linear(const CudaLinear& lin) const { return options_.bf16_gemm && lin.quantized(); }

  // `n` floats rounded to bf16 in a scratch buffer (valid until the next call).
  const __nv_bfloat16* Bf16Copy(const float* x, int64_t n) {
    const auto timed = Time("round activations to bf16");
    auto* out = reinterpret_cast<__nv_bfloat16*>(Scratch(&act_bf16_, (n + 1) / 2));
    if (out == nullptr) return nullptr;
    Check(kc::ConvertToBf16(x, n, out, stream_), "to bf16");
    return out;
  }

  // Row-major C = alpha op(A) op(B) + beta C with bf16 A and B, float32 accumulation and a
  // float32 or bf16 C (C is read, accumulated in float32 and rounded once).
  template <typename C>
  void GemmBf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                const __nv_bfloat16* a, int64_t lda, const __nv_bfloat16* b, int64_t ldb,
                float beta, C* c, int64_t ldc) {
    static_assert(std::is_same_v<C, float> || std::is_same_v<C, __nv_bfloat16>);
    const auto timed = Time("gemm, bf16 operands");
    Enter();
    if (m == 0 || n == 0) return;
    const cudaDataType_t c_type = std::is_same_v<C, float> ? CUDA_R_32F : CUDA_R_16BF;
    const cublasStatus_t s = cublasGemmEx(
        blas_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
        static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b, CUDA_R_16BF,
        static_cast<int>(ldb), a, CUDA_R_16BF, static_cast<int>(lda), &beta, c, c_type,
        static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    CheckBlas(s, "cuBLAS bf16 GEMM");
  }

  // The weight of `lin` as bf16 [out, in] in the shared bf16 workspace (valid until the next
  // call): NF4 dequantized, float32 rounded; with `ld` > 0 its rows lie `ld` elements apart
  // (LinearLora's wider [W | scale B]).
  __nv_bfloat16* WeightsBf16(const CudaLinear& lin, int64_t ld = 0) {
    const auto timed = Time(lin.quantized() ? "nf4 dequantize to bf16" : "round weights to bf16");
    const int64_t out = lin.out_features(), in = lin.in_features();
    const int64_t elems = out * (ld > 0 ? ld : in);
    auto* ws = reinterpret_cast<__nv_bfloat16*>(Scratch(&workspace_bf16_, (elems + 1) / 2));
    if (ws == nullptr) return nullptr;
    if (!lin.quantized()) {  // float32 weights (bf16 activations only): rounded, not dequantized
      Check(kc::ConvertRowsToBf16(static_cast<const float*>(lin.values.get()), out, in, in, 1.0f,
                                  in, ws, ld > 0 ? ld : in, stream_),
            "weights to bf16");
      return ws;
    }
    kc::Nf4DqArgs a = DequantArgs(lin);
    if (ld > 0) {
      a.cols = lin.in_features();
      a.ld = ld;
    }
    Check(kc::Nf4DequantizeDoubleQuantBf16(a, ws, stream_), "nf4 dequantize");
    return ws;
  }

  // Two small LoRA operands rounded to bf16 side by side in one scratch buffer, the second
  // starting 16-byte aligned (valid until the next call); false after a failure.
  bool LoraOperandsBf16(const float* first, int64_t n1, const float* second, int64_t n2,
                        const __nv_bfloat16** first_bf16, const __nv_bfloat16** second_bf16) {
    const int64_t at = (n1 + 7) / 8 * 8;
    auto* p = reinterpret_cast<__nv_bfloat16*>(Scratch(&lora_bf16_, (at + n2 + 1) / 2));
    if (p == nullptr) return false;
    const auto timed = Time("round LoRA operands to bf16");
    Check(kc::ConvertToBf16(first, n1, p, stream_), "LoRA operand to bf16");
    Check(kc::ConvertToBf16(second, n2, p + at, stream_), "LoRA operand to bf16");
    *first_bf16 = p;
    *second_bf16 = p + at;
    return true;
  }

  // The backward of the LoRA linear with dy already bf16, rounded once for its three GEMMs
  // (dx = dy W, dB += scale dy^T h, dh = scale dy B); dx float32 or bf16.
  template <typename X>
  void LoraBackwardBf16(const CudaLinear& lin, const __nv_bfloat16* dyb, int64_t tokens,
                        const float* h, const float* b, int64_t r, float scale, X* dx,
                        bool accumulate, float* dh, float* db) {
    const int64_t out = lin.out_features();
    const __nv_bfloat16 *hb = nullptr, *bb = nullptr;
    if (!LoraOperandsBf16(h, tokens * r, b, out * r, &hb, &bb)) return;
    BackwardInputBf16(lin, dyb, tokens, dx, accumulate);
    GemmBf16(true, false, out, r, tokens, scale, dyb, out, hb, r, 1.0f, db, r);
    GemmBf16(false, false, tokens, r, out, scale, dyb, out, bb, r, 0.0f, dh, r);
  }

  // One bf16 GEMM over [x | h | 0] and [W | scale B | 0] (K = in + r rounded up to 8, so rows
  // stay 16-byte aligned): the LoRA term costs K columns more, not a second pass over y. The
  // weight is dequantized straight into its columns of the wider workspace; put_x(xs, K) writes
  // x into the first `in` columns of the [tokens, K] operand xs. y float32 or bf16.
  template <typename Y, typename PutX>
  void FusedLoraGemm(const CudaLinear& lin, int64_t tokens, const float* h, const float* b,
                     int64_t r, float scale, Y* y, PutX&& put_x) {
    const int64_t in = lin.in_features(), out = lin.out_features();
    const int64_t r8 = (r + 7) / 8 * 8, k = in + r8;
    __nv_bfloat16* ws = WeightsBf16(lin, k);
    auto* xs = reinterpret_cast<__nv_bfloat16*>(Scratch(&act_bf16_, (tokens * k + 1) / 2));
    if (ws == nullptr || xs == nullptr) return;
    put_x(xs, k);
    {
      const auto timed = Time("round LoRA operands to bf16");
      Check(kc::ConvertRowsToBf16(b, out, r, r, scale, r8, ws + in, k, stream_), "LoRA B to bf16");
      Check(kc::ConvertRowsToBf16(h, tokens, r, r, 1.0f, r8, xs + in, k, stream_),
            "LoRA h to bf16");
    }
    GemmBf16(false, true, tokens, out, k, 1.0f, xs, k, ws, k, 0.0f, y, out);
  }

  // The fused LoRA dropout kernels (kernels/cuda/lora_dropout.h) for x and dx of type X, sizes
  // already checked with LoraDropoutSupports.
  template <typename X>
  void FusedDropoutDown(const X* x, int64_t n, int64_t in, const float* a, int64_t r, float p,
                        uint64_t seed, uint64_t stream, float* h) {
    const auto timed = Time("lora dropout down-projection");
    Check(kc::LoraDropoutDown(x, n, in, a, r, p, seed, stream, h, stream_), "lora dropout down");
  }
  template <typename X>
  void FusedDropoutGradA(const X* x, const float* dh, int64_t n, int64_t in, int64_t r, float p,
                         uint64_t seed, uint64_t stream, float* da) {
    const auto timed = Time("lora dropout grad A");
    float* partial = Scratch(&lora_partial_, kc::LoraDropoutPartialFloats(n, in, r));
    if (partial == nullptr) return;
    Check(kc::LoraDropoutGradA(x, dh, n, in, r, p, seed, stream, partial, da, stream_),
          "lora dropout grad A");
  }
  template <typename X>
  void FusedDropoutBackwardInput(const float* dh, const float* a, int64_t n, int64_t in, int64_t r,
                                 float p, uint64_t seed, uint64_t stream, X* dx) {
    const auto timed = Time("lora dropout input gradient");
    Check(kc::LoraDropoutBackwardInput(dh, a, n, in, r, p, seed, stream, dx, stream_),
          "lora dropout input gradient");
  }

  // dx (=, or += when `accumulate`) dy W for a bf16 linear, dy already rounded to bf16; dx
  // float32 or bf16.
  template <typename C>
  void BackwardInputBf16(const CudaLinear& lin, const __nv_bfloat16* dyb, int64_t tokens, C* dx,
                         bool accumulate) {
    const __nv_bfloat16* wb = WeightsBf16(lin);
    if (wb == nullptr) return;
    const int64_t in = lin.in_features(), out = lin.out_features();
    GemmBf16(false, false, tokens, in, out, 1.0f, dyb, out, wb, in, accumulate ? 1.0f : 0.0f, dx,
             in);
  }

  kc::Nf4DqArgs DequantArgs(const CudaLinear& lin) const {
    kc::Nf4DqArgs a;
    a.packed = static_cast<const uint8_t*>(lin.packed.get());
    a.absmax_q = static_cast<const uint8_t*>(lin.absmax_q.get());
    a.nested_absmax = static_cast<const float*>(lin.nested.get());
    a.code8 = static_cast<const float*>(code8_.get());
    a.offset = lin.offset;
    a.n = lin.numel;
    a.blocksize = lin.blocksize;
    a.nested_blocksize = lin.nested_blocksize;
    return a;
  }

  // The weight of `lin` as float32 [out, in]: its own buffer, or dequantized into the shared
  // workspace (valid until the next dequantization).
  const float* Weights(const CudaLinear& lin) {
    if (!lin.quantized()) return static_cast<const float*>(lin.values.get());
    const auto timed = Time("nf4 dequantize to float32");
    float* ws = Scratch(&workspace_, lin.numel);
    if (ws == nullptr) return nullptr;
    Check(kc::Nf4DequantizeDoubleQuantF32(DequantArgs(lin), ws, stream_), "nf4 dequantize");
    return ws;
  }

  // Row-major C_i = alpha op(A_i) op(B_i) + beta C_i for i < batch, X_i = x + i * stride_x.
  void GemmBatched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, int64_t stride_a, const float* b, int64_t ldb,
                   int64_t stride_b, float beta, float* c, int64_t ldc, int64_t stride_c,
                   int64_t batch) {
    Enter();
    if (m == 0 || n == 0 || batch == 0) return;
    const cublasStatus_t s = cublasGemmStridedBatchedEx(
        blas_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
        static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b, CUDA_R_32F,
        static_cast<int>(ldb), stride_b, a, CUDA_R_32F, static_cast<int>(lda), stride_a, &beta, c,
        CUDA_R_32F, static_cast<int>(ldc), stride_c, static_cast<int>(batch),
        options_.bf16_gemm ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F_PEDANTIC,
        CUBLAS_GEMM_DEFAULT);
    CheckBlas(s, "cuBLAS batched GEMM");
  }

  // Per query head h (kv head g = h / (H/KV)): S = scale Q_h K_g^T, masked softmax, O_h = P V_g.
  // Heads h = g * group + j with the same j form one strided batch over g (all heads at once
  // without GQA), so a decode step is a few launches, not two per head.
  void AttentionCore(const float* q, const float* k, const float* v, int64_t H, int64_t KV,
                     int64_t hd, int64_t T, int64_t S, int64_t first_pos, const int32_t* segments,
                     float* probs, float* out) {
    const int64_t group = H / KV;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    for (int64_t j = 0; j < group; ++j) {
      GemmBatched(false, true, T, S, hd, scale, q + j * hd, H * hd, group * hd, k, KV * hd, hd,
                  0.0f, probs + j * T * S, S, group * T * S, KV);
    }
    Check(kc::MaskedSoftmaxRows(probs, H, T, S, first_pos, segments, stream_), "softmax");
    for (int64_t j = 0; j < group; ++j) {
      GemmBatched(false, false, T, hd, S, 1.0f, probs + j * T * S, S, group * T * S, v, KV * hd, hd,
                  0.0f, out + j * hd, H * hd, group * hd, KV);
    }
  }

  int ordinal_;
  CudaDeviceOptions options_;
  std::string device_name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  bool lost_ = false;
  bool pageable_ = true;       // the card can page managed memory: kPagedOptimizer buffers use it
  size_t prefetching_in_ = 0;  // bytes paged in since the stream last finished (SetResident)
  absl::Status error_;        // the first failure since TakeError last took one; reads are NaN then
  int max_shared_optin_ = 0;  // bytes of shared memory a block may opt in to
  std::shared_ptr<Counters> counters_ = std::make_shared<Counters>();  // before the memory below
  CudaOpProfiler profiler_;
  Counters* const c_ = counters_.get();
  CudaMemory code8_{c_}, partial_{c_}, workspace_{c_}, scores_{c_}, row_loss_{c_}, delta_{c_},
      workspace_bf16_{c_}, act_bf16_{c_}, lora_partial_{c_}, lora_bf16_{c_}, conversion_{c_};
  HostIntsCopy ids_{c_}, positions_{c_}, targets_{c_}, segments_{c_};
};

}  // namespace

int CudaDeviceCount(std::string* why_none) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  if (n == 0 && why_none != nullptr) {
    *why_none = e != cudaSuccess ? cudaGetErrorString(e) : "the driver sees no GPU";
  }
  return n;
}

bool StartCudaOpProfile(Device* device) {
  auto* cuda = dynamic_cast<CudaDevice*>(device);
  return cuda != nullptr && cuda->StartProfile();
}

std::vector<CudaOpTime> TakeCudaOpProfile(Device* device) {
  auto* cuda = dynamic_cast<CudaDevice*>(device);
  return cuda != nullptr ? cuda->TakeProfile() : std::vector<CudaOpTime>{};
}

absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(int ordinal,
                                                         const CudaDeviceOptions& options) {
  std::string why_none;
  const int n = CudaDeviceCount(&why_none);
  if (ordinal < 0 || ordinal >= n) {
    return absl::NotFoundError(absl::StrCat("cuda:", ordinal, ": no such device (", n,
                                            " CUDA devices usable", why_none.empty() ? "" : ": ",
                                            why_none, ")"));
  }
  return CudaDevice::Create(ordinal, options);
}

}  // namespace qlorad
