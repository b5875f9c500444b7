// GPU ceilings and NF4+DQ dequantization bandwidth, one table line each:
//   copy      cudaMemcpy device-to-device, bytes read + written
//   dequant   NF4+DQ -> bf16 (and f32) for LLaMA-7B-shaped weights; bytes = packed + absmax
//             statistics read + outputs written; percent of the measured copy bandwidth
//   gemm      cuBLAS bf16 GEMM (fp32 accumulate) rate, the ceiling for training MFU
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cstdio>
#include <random>
#include <vector>

#include "kernels/cpu/nf4.h"
#include "kernels/cuda/nf4_dequant.h"
#include "tests/gpu/gpu_bench.h"
#include "tests/gpu/gpu_check.h"

namespace {
using qlorad::gpu_bench::TimeMs;

double CopyBandwidth() {
  const size_t bytes = size_t{1} << 30;
  void *src, *dst;
  CUDA_OK(cudaMalloc(&src, bytes));
  CUDA_OK(cudaMalloc(&dst, bytes));
  cudaMemset(src, 1, bytes);
  const float ms = TimeMs([&] { cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice); }, 20);
  cudaFree(src);
  cudaFree(dst);
  const double gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;
  std::printf("| copy | cudaMemcpy D2D 1 GiB | %.0f GB/s | 100%% |\n", gbs);
  return gbs;
}

void Dequant(int64_t rows, int64_t cols, double copy_gbs) {
  const int64_t n = rows * cols, blocks = n / 64, nested = (blocks + 255) / 256;
  // Random codes and statistics: the kernel's speed does not depend on the values.
  std::vector<uint8_t> packed(n / 2), absmax_q(blocks);
  std::mt19937 rng(1);
  for (auto& b : packed) b = rng() & 0xFF;
  for (auto& b : absmax_q) b = rng() & 0xFF;
  std::vector<float> nest(nested, 0.01f);
  const auto& map = qlorad::kernels::SignedDynamicMap();
  qlorad::kernels::cuda::Nf4DqArgs a;
  uint8_t *dp, *dq;
  float *dn, *dc;
  CUDA_OK(cudaMalloc(&dp, packed.size()));
  CUDA_OK(cudaMalloc(&dq, absmax_q.size()));
  CUDA_OK(cudaMalloc(&dn, nest.size() * 4));
  CUDA_OK(cudaMalloc(&dc, 1024));
  cudaMemcpy(dp, packed.data(), packed.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(dq, absmax_q.data(), absmax_q.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(dn, nest.data(), nest.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dc, map.data(), 1024, cudaMemcpyHostToDevice);
  a.packed = dp;
  a.absmax_q = dq;
  a.nested_absmax = dn;
  a.code8 = dc;
  a.offset = 0.02f;
  a.n = n;
  __nv_bfloat16* out_b;
  float* out_f;
  CUDA_OK(cudaMalloc(&out_b, n * 2));
  CUDA_OK(cudaMalloc(&out_f, n * 4));
  const double in_bytes = n / 2 + blocks + nested * 4.0;
  const float ms_b = TimeMs(
      [&] { CUDA_OK(qlorad::kernels::cuda::Nf4DequantizeDoubleQuantBf16(a, out_b, nullptr)); }, 50);
  const float ms_f = TimeMs(
      [&] { CUDA_OK(qlorad::kernels::cuda::Nf4DequantizeDoubleQuantF32(a, out_f, nullptr)); }, 50);
  const double gbs_b = (in_bytes + 2.0 * n) / (ms_b * 1e-3) / 1e9;
  const double gbs_f = (in_bytes + 4.0 * n) / (ms_f * 1e-3) / 1e9;
  std::printf("| dequant | NF4+DQ -> bf16 [%lld x %lld] | %.0f GB/s (%.3f ms) | %.0f%% |\n",
              (long long)rows, (long long)cols, gbs_b, ms_b, 100 * gbs_b / copy_gbs);
  std::printf("| dequant | NF4+DQ -> f32 [%lld x %lld] | %.0f GB/s (%.3f ms) | %.0f%% |\n",
              (long long)rows, (long long)cols, gbs_f, ms_f, 100 * gbs_f / copy_gbs);
  for (void* p : {(void*)dp, (void*)dq, (void*)dn, (void*)dc, (void*)out_b, (void*)out_f})
    cudaFree(p);
}

void GemmRate() {
  std::printf("| gemm | cuBLAS bf16 8192^3, fp32 accumulate | %.0f TFLOP/s | |\n",
              qlorad::gpu_bench::MeasureBf16GemmTflops());
}

}  // namespace

int main() {
  if (!qlorad::gpu_check::HaveCudaDevice()) return 77;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s, %d SMs, %.0f GiB\n", prop.name, prop.multiProcessorCount,
              prop.totalGlobalMem / 1073741824.0);
  std::printf("| what | shape | rate | of copy |\n|---|---|---|---|\n");
  const double copy = CopyBandwidth();
  Dequant(4096, 4096, copy);  // in and out (42 MB) fit the H200's 60 MB L2: not the target's
  Dequant(11008, 4096, copy);
  Dequant(32000, 4096, copy);
  GemmRate();
  return 0;
}
