// Flash attention on the GPU at the Llama-7B training shape (T 2048, 32 heads of 128): forward
// and backward time and TFLOP/s (causal: half the T x T work; backward counted as 2.5 forwards,
// the FlashAttention papers' convention), against the bf16 tensor-core GEMM rate measured in the
// same run.
//   flash_attention_gpu_bench [--tokens 2048] [--heads 32] [--kv-heads 32] [--head-dim 128]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cuda/flash_attention.h"
#include "tests/gpu/gpu_bench.h"
#include "tests/gpu/gpu_check.h"

namespace {

float* DevRandom(size_t n, unsigned seed) {
  std::vector<float> h(n);
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    h[i] = (static_cast<float>(seed >> 8) / 16777216.0f - 0.5f) * 3.0f;
  }
  float* d = nullptr;
  CUDA_OK(cudaMalloc(&d, n * 4));
  CUDA_OK(cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice));
  return d;
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
  namespace kc = qlorad::kernels::cuda;
  float* q = DevRandom(size_t(T) * H * hd, 1);
  float* k = DevRandom(size_t(T) * KV * hd, 2);
  float* v = DevRandom(size_t(T) * KV * hd, 3);
  float* dout = DevRandom(size_t(T) * H * hd, 4);
  float *out, *lse, *delta, *dq, *dk, *dv;
  CUDA_OK(cudaMalloc(&out, size_t(T) * H * hd * 4));
  CUDA_OK(cudaMalloc(&dq, size_t(T) * H * hd * 4));
  CUDA_OK(cudaMalloc(&dk, size_t(T) * KV * hd * 4));
  CUDA_OK(cudaMalloc(&dv, size_t(T) * KV * hd * 4));
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
  const double peak = qlorad::gpu_bench::MeasureBf16GemmTflops();
  const double fwd_tf = fwd_flops / (fwd_ms * 1e-3) / 1e12;
  const double bwd_tf = 2.5 * fwd_flops / (bwd_ms * 1e-3) / 1e12;
  std::printf(
      "flash attention T=%d H=%d KV=%d hd=%d: forward %.3f ms (%.1f TFLOP/s), backward %.3f ms "
      "(%.1f TFLOP/s); bf16 GEMM %.0f TFLOP/s\n",
      T, H, KV, hd, fwd_ms, fwd_tf, bwd_ms, bwd_tf, peak);
  for (float* p : {q, k, v, dout, out, lse, delta, dq, dk, dv}) cudaFree(p);
  return 0;
}
