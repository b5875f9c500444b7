// Flash attention on the GPU at the Llama-7B training shape (T 2048, 32 heads of 128): forward
// and backward time and TFLOP/s (causal: half the T x T work; backward counted as 2.5 forwards,
// the FlashAttention papers' convention), with bf16 activations (as the training graph keeps
// them on the GPU) and float32 ones, against the bf16 tensor-core GEMM rate measured in the same
// run. One JSON line per activation type, and one with each kernel's registers, shared memory
// and resident blocks per SM on this card.
//   flash_attention_gpu_bench [--tokens 2048] [--heads 32] [--kv-heads 32] [--head-dim 128]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cuda/flash_attention.h"
#include "tests/gpu/gpu_bench.h"
#include "tests/gpu/gpu_check.h"

namespace {

namespace kc = qlorad::kernels::cuda;

// n random values in [-1.5, 1.5) as X (float or bf16) on the device.
template <typename X>
X* DevRandom(size_t n, unsigned seed) {
  std::vector<X> h(n);
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    const float x = (static_cast<float>(seed >> 8) / 16777216.0f - 0.5f) * 3.0f;
    if constexpr (std::is_same_v<X, float>) {
      h[i] = x;
    } else {
      h[i] = __float2bfloat16(x);
    }
  }
  X* d = nullptr;
  CUDA_OK(cudaMalloc(&d, n * sizeof(X)));
  CUDA_OK(cudaMemcpy(d, h.data(), n * sizeof(X), cudaMemcpyHostToDevice));
  return d;
}

// Forward and backward milliseconds with activations of type X (the training graph's bf16
// activations, or float32).
template <typename X>
void Run(int T, int H, int KV, int hd, const char* type, double gemm_tflops) {
  X* q = DevRandom<X>(size_t(T) * H * hd, 1);
  X* k = DevRandom<X>(size_t(T) * KV * hd, 2);
  X* v = DevRandom<X>(size_t(T) * KV * hd, 3);
  X* dout = DevRandom<X>(size_t(T) * H * hd, 4);
  X *out, *dq, *dk, *dv;
  float *lse, *delta;
  CUDA_OK(cudaMalloc(&out, size_t(T) * H * hd * sizeof(X)));
  CUDA_OK(cudaMalloc(&dq, size_t(T) * H * hd * sizeof(X)));
  CUDA_OK(cudaMalloc(&dk, size_t(T) * KV * hd * sizeof(X)));
  CUDA_OK(cudaMalloc(&dv, size_t(T) * KV * hd * sizeof(X)));
  CUDA_OK(cudaMalloc(&lse, size_t(H) * T * 4));
  CUDA_OK(cudaMalloc(&delta, size_t(H) * T * 4));
  const float fwd_ms = qlorad::gpu_bench::TimeMs(
      [&] {
        CUDA_OK(kc::FlashAttentionForward(q, k, v, nullptr, T, H, KV, hd, out, lse, nullptr));
      },
      20);
  const float bwd_ms = qlorad::gpu_bench::TimeMs(
      [&] {
        CUDA_OK(kc::FlashAttentionBackward(q, k, v, nullptr, out, lse, dout, T, H, KV, hd, delta,
                                           dq, dk, dv, nullptr));
      },
      20);
  CUDA_OK(cudaDeviceSynchronize());
  const double fwd_flops = 4.0 * T * double(T) * hd * H / 2.0;
  const double fwd_tf = fwd_flops / (fwd_ms * 1e-3) / 1e12;
  // FlashAttention-2's convention: the backward counts 2.5 forwards (5 products against 2);
  // with S and dP made again, the kernels execute 7, so the tensor cores do 1.4x this rate.
  const double bwd_tf = 2.5 * fwd_flops / (bwd_ms * 1e-3) / 1e12;
  std::printf(
      "{\"bench\": \"flash_attention\", \"activations\": \"%s\", \"T\": %d, \"H\": %d, "
      "\"KV\": %d, \"head_dim\": %d, \"forward_ms\": %.3f, \"forward_tflops\": %.1f, "
      "\"backward_ms\": %.3f, \"backward_tflops\": %.1f, \"bf16_gemm_tflops\": %s}\n",
      type, T, H, KV, hd, fwd_ms, fwd_tf, bwd_ms, bwd_tf,
      qlorad::gpu_bench::JsonNumber(gemm_tflops, 0).c_str());
  kc::FlashKernelInfo info[3];
  CUDA_OK(kc::FlashAttentionKernelInfo<X>(hd, info));
  std::printf("{\"bench\": \"flash_kernels\", \"activations\": \"%s\", \"head_dim\": %d", type, hd);
  for (const auto& k : info) {
    std::printf(", \"%s\": {\"registers\": %d, \"shared_bytes\": %d, \"blocks_per_sm\": %d}",
                k.name, k.registers, k.shared_bytes, k.blocks_per_sm);
  }
  std::printf("}\n");
  for (X* p : {q, k, v, dout, out, dq, dk, dv}) cudaFree(p);
  for (float* p : {lse, delta}) cudaFree(p);
}

}  // namespace

int main(int argc, char** argv) {
  if (!qlorad::gpu_check::HaveCudaDevice()) return 77;
  int T = 2048, H = 32, KV = 32, hd = 128;
  for (int i = 1; i + 1 < argc; i += 2) {
    int* dst = !std::strcmp(argv[i], "--tokens")     ? &T
               : !std::strcmp(argv[i], "--heads")    ? &H
               : !std::strcmp(argv[i], "--kv-heads") ? &KV
               : !std::strcmp(argv[i], "--head-dim") ? &hd
                                                     : nullptr;
    if (dst == nullptr) {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
    *dst = std::atoi(argv[i + 1]);
  }
  const double peak = qlorad::gpu_bench::MeasureBf16GemmTflops();
  Run<__nv_bfloat16>(T, H, KV, hd, "bf16", peak);
  Run<float>(T, H, KV, hd, "float32", peak);
  return 0;
}
