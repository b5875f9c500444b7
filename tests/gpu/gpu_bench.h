// Timing and ceilings shared by the GPU benchmarks: a CUDA-event timer and the bf16 tensor-core
// GEMM rate that MFU figures are measured against (in the same run, on the same card).
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "tests/gpu/gpu_check.h"

namespace qlorad::gpu_bench {

// Milliseconds per call of `f` (work queued on the default stream), after one warm-up call. A
// launch that failed would time as nothing (an absurd rate): the program stops instead.
template <typename F>
float TimeMs(F&& f, int iters) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  f();
  cudaEventRecord(a);
  for (int i = 0; i < iters; ++i) f();
  cudaEventRecord(b);
  CUDA_OK(cudaEventSynchronize(b));
  CUDA_OK(cudaGetLastError());
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / iters;
}

// v for a JSON line with `decimals` digits after the point; null where it is not finite (JSON
// has no NaN), as when the GEMM rate could not be measured.
inline std::string JsonNumber(double v, int decimals) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

// TFLOP/s of a cuBLAS 8192^3 bf16 GEMM with float32 accumulation and output. The operands hold
// random values: all-zero operands draw less power and clock higher than real data.
inline double MeasureBf16GemmTflops() {
  const int n = 8192;
  const size_t count = size_t{1} * n * n;
  std::vector<__nv_bfloat16> host(count);
  uint32_t s = 12345;
  for (auto& x : host) {
    s = s * 1664525u + 1013904223u;
    x = __float2bfloat16(static_cast<float>(s >> 8) / 16777216.0f - 0.5f);
  }
  __nv_bfloat16 *a = nullptr, *b = nullptr;
  float* c = nullptr;
  CUDA_OK(cudaMalloc(&a, count * 2));
  CUDA_OK(cudaMalloc(&b, count * 2));
  CUDA_OK(cudaMalloc(&c, count * 4));
  CUDA_OK(cudaMemcpy(a, host.data(), count * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(b, host.data(), count * 2, cudaMemcpyHostToDevice));
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "cuBLAS did not start: no GEMM rate\n");
    return NAN;
  }
  const float one = 1.0f, zero = 0.0f;
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  auto run = [&] {
    const cublasStatus_t st =
        cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b, CUDA_R_16BF,
                     n, &zero, c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) status = st;
  };
  run();
  CUDA_OK(cudaDeviceSynchronize());
  // A failed GEMM would time as nothing: an absurd rate, and an MFU near zero beside it.
  const float ms = status == CUBLAS_STATUS_SUCCESS ? TimeMs(run, 20) : 0.0f;
  cublasDestroy(h);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  if (status != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "cuBLAS bf16 GEMM failed (status %d): no GEMM rate\n",
                 static_cast<int>(status));
    return NAN;
  }
  return 2.0 * n * n * static_cast<double>(n) / (ms * 1e-3) / 1e12;
}

}  // namespace qlorad::gpu_bench
