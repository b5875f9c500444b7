// The CUDA NF4 + double quantization against the CPU reference (bit-compatible with
// bitsandbytes): packed codes, 8-bit absmax codes, nested absmax and offset must be identical,
// on fresh random weights each run (seed printed) with an odd length, a partial last block, an
// all-zero block and NaN weights (the CPU's clamp keeps NaN: code 15).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/nf4.h"
#include "kernels/cuda/nf4_quantize.h"
#include "tests/gpu/gpu_check.h"

namespace qlorad {
namespace {

void QuantizeMatchesCpu(std::mt19937_64& rng, int64_t n, bool with_nan = false) {
  const int bs = 64, nbs = 256;
  std::vector<float> x = gpu_check::Normal(rng, n, 0.02f);
  for (int64_t i = 64; i < 128 && i < n; ++i) x[i] = 0.0f;  // an all-zero block
  if (with_nan) {  // in a full block and in the partial last one
    x[200] = NAN;
    x[n - 1] = NAN;
  }
  const int64_t blocks = (n + bs - 1) / bs, nested = (blocks + nbs - 1) / nbs;

  // The CPU reference, step by step as engine/nf4_tensor.cc does it.
  std::vector<uint8_t> packed((n + 1) / 2), absmax_q(blocks);
  std::vector<float> absmax(blocks), nested_absmax(nested);
  kernels::Nf4QuantizeBlockwise(x.data(), n, bs, packed.data(), absmax.data());
  double sum = 0.0;
  for (float a : absmax) sum += a;
  const float offset = static_cast<float>(sum / static_cast<double>(blocks));
  for (float& a : absmax) a -= offset;
  kernels::QuantizeBlockwise8(absmax.data(), blocks, nbs, kernels::SignedDynamicMap().data(),
                              absmax_q.data(), nested_absmax.data());

  float *dx = nullptr, *dscratch = nullptr, *dnested = nullptr;
  uint8_t *dpacked = nullptr, *dq = nullptr;
  CUDA_OK(cudaMalloc(&dx, n * 4));
  CUDA_OK(cudaMalloc(&dscratch, blocks * 4));
  CUDA_OK(cudaMalloc(&dnested, nested * 4));
  CUDA_OK(cudaMalloc(&dpacked, packed.size()));
  CUDA_OK(cudaMalloc(&dq, blocks));
  CUDA_OK(cudaMemset(dpacked, 0xAB, packed.size()));
  CUDA_OK(cudaMemcpy(dx, x.data(), n * 4, cudaMemcpyHostToDevice));
  kernels::cuda::Nf4QuantizeOutputs out;
  out.packed = dpacked;
  out.absmax_q = dq;
  out.nested_absmax = dnested;
  out.absmax_scratch = dscratch;
  float* dcode8 = nullptr;
  CUDA_OK(cudaMalloc(&dcode8, 256 * 4));
  CUDA_OK(cudaMemcpy(dcode8, kernels::SignedDynamicMap().data(), 256 * 4, cudaMemcpyHostToDevice));
  out.code8 = dcode8;
  CUDA_OK(kernels::cuda::Nf4QuantizeDoubleQuant(dx, n, bs, nbs, &out, nullptr));
  std::vector<uint8_t> got_packed(packed.size()), got_q(blocks);
  std::vector<float> got_nested(nested);
  CUDA_OK(cudaMemcpy(got_packed.data(), dpacked, packed.size(), cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(got_q.data(), dq, blocks, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(got_nested.data(), dnested, nested * 4, cudaMemcpyDeviceToHost));
  GPU_CHECK(got_packed == packed, "n=%lld: packed NF4 codes differ", static_cast<long long>(n));
  GPU_CHECK(got_q == absmax_q, "n=%lld: 8-bit absmax codes differ", static_cast<long long>(n));
  GPU_CHECK(std::memcmp(got_nested.data(), nested_absmax.data(), nested * 4) == 0,
            "n=%lld: nested absmax differs", static_cast<long long>(n));
  GPU_CHECK(std::memcmp(&out.offset, &offset, 4) == 0, "offset %.9g, want %.9g", out.offset,
            offset);
  std::printf("  n=%lld: %lld blocks bit-exact\n", static_cast<long long>(n),
              static_cast<long long>(blocks));
  cudaFree(dx);
  cudaFree(dscratch);
  cudaFree(dnested);
  cudaFree(dpacked);
  cudaFree(dq);
  cudaFree(dcode8);
}

}  // namespace
}  // namespace qlorad

int main() {
  if (!qlorad::gpu_check::HaveCudaDevice()) return 77;
  const uint64_t seed = qlorad::gpu_check::FreshSeed();
  std::mt19937_64 rng(seed);
  qlorad::QuantizeMatchesCpu(rng, 4096 * 4096);
  qlorad::QuantizeMatchesCpu(rng, 11008 * 37 + 33);  // odd, partial last block
  qlorad::QuantizeMatchesCpu(rng, 64 * 9 + 5, /*with_nan=*/true);
  return qlorad::gpu_check::Finish("nf4_quantize_gpu_test");
}
