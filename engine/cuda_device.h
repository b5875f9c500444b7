// The CUDA backend of the engine (bf16 or float32 activations in device memory, NF4 linear
// weights dequantized layer by layer into one reusable bf16 workspace, cuBLAS for every GEMM,
// the kernels of kernels/cuda). Builds only where a CUDA compiler is found; elsewhere the factory
// says so. One device per ordinal; a Device is driven from one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/device.h"

namespace qlorad {

// Number of usable CUDA devices (0 when the build has no CUDA, no driver or no GPU; then
// `why_none`, if given, says which, with the runtime's words).
int CudaDeviceCount(std::string* why_none = nullptr);

struct CudaDeviceOptions {
  // GEMMs on bf16 tensor cores with float32 accumulation (cuBLAS's CUBLAS_COMPUTE_32F_FAST_16BF:
  // float32 data, inputs rounded to bf16 inside the GEMM), the QLoRA setting. false: plain
  // float32 GEMMs, for checks against the CPU reference.
  bool bf16_gemm = true;
  // Training attention by the flash kernels (kernels/cuda/flash_attention.h: bf16 tensor cores,
  // one log-sum-exp kept per query instead of [H, T, T] probabilities) where head_dim allows
  // and bf16 GEMMs are on; otherwise GEMM attention with a fused masked softmax.
  bool flash_attention = true;
  // Training graphs keep bf16 activations (Device::PrefersBf16Activations) where bf16 GEMMs
  // are on: half the activation memory and elementwise traffic of float32.
  bool bf16_activations = true;
  // The most memory this device object may hold, in bytes (weights, adapters, optimizer state,
  // activations, scratch; not the CUDA context nor cuBLAS's own workspace); 0: what the card
  // gives. Beyond it an allocation fails as out of memory, so a device object sharing a card
  // (the daemon's generation and evaluation beside training) keeps to its share.
  int64_t memory_limit_bytes = 0;
};

// The device `ordinal`. A CUDA error inside an operation is reported once on stderr and makes
// every later host read NaN, so the trainer's watchdog fails the job instead of training on
// garbage.
absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(int ordinal,
                                                         const CudaDeviceOptions& options = {});

// GPU time of one kind of device operation, summed over its calls.
struct CudaOpTime {
  std::string op;
  int64_t calls = 0;
  double ms = 0.0;
};

// For benchmarks: times the operations of CUDA `device` from now on (two CUDA events around
// each, recorded in stream order: no waits are added). False where `device` is no CUDA device.
bool StartCudaOpProfile(Device* device);
// Waits for the device and returns the GPU time by operation since StartCudaOpProfile, longest
// first; stops timing. Empty where nothing was timed.
std::vector<CudaOpTime> TakeCudaOpProfile(Device* device);

}  // namespace qlorad
