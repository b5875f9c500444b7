// CUDA NF4 + double-quant dequantization against its CPU twin, on fresh random inputs of many
// sizes (aligned and odd, one block to several nested blocks), for float32 and bf16 outputs.
// Every output element is checked, and the buffer is pre-filled with NaN so that an element
// the kernel forgets to write fails.
#include <cuda_bf16.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/nf4.h"
#include "kernels/cuda/nf4_dequant.h"
#include "tests/gpu/gpu_check.h"

namespace qlorad {
namespace {

using gpu_check::HaveCudaDevice;

struct Quantized {
  std::vector<uint8_t> packed, absmax_q;
  std::vector<float> nested;
  float offset = 0;
};

Quantized Quantize(const std::vector<float>& x) {
  const int64_t n = static_cast<int64_t>(x.size());
  const int64_t blocks = (n + 63) / 64;
  Quantized q;
  q.packed.assign((n + 1) / 2, 0);
  std::vector<float> absmax(blocks);
  kernels::Nf4QuantizeBlockwise(x.data(), n, 64, q.packed.data(), absmax.data());
  double sum = 0;
  for (float a : absmax) sum += a;
  q.offset = static_cast<float>(sum / blocks);
  for (float& a : absmax) a -= q.offset;
  q.absmax_q.resize(blocks);
  q.nested.resize((blocks + 255) / 256);
  kernels::QuantizeBlockwise8(absmax.data(), blocks, 256, kernels::SignedDynamicMap().data(),
                              q.absmax_q.data(), q.nested.data());
  return q;
}

template <typename T>
T* Upload(const std::vector<T>& v) {
  T* d = nullptr;
  CUDA_OK(cudaMalloc(&d, std::max<size_t>(1, v.size() * sizeof(T))));
  CUDA_OK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

void CheckSize(int64_t n, std::mt19937& rng, bool misalign_output) {
  std::normal_distribution<float> g(0.0f, 0.02f);
  std::vector<float> x(n);
  for (auto& v : x) v = g(rng);
  const Quantized q = Quantize(x);
  std::vector<float> ref(n);
  kernels::Nf4DequantizeDoubleQuant(q.packed.data(), q.absmax_q.data(), q.nested.data(),
                                    kernels::SignedDynamicMap().data(), q.offset, n, 64, 256,
                                    ref.data());
  const std::vector<float> code8(kernels::SignedDynamicMap().begin(),
                                 kernels::SignedDynamicMap().end());
  kernels::cuda::Nf4DqArgs a;
  a.packed = Upload(q.packed);
  a.absmax_q = Upload(q.absmax_q);
  a.nested_absmax = Upload(q.nested);
  a.code8 = Upload(code8);
  a.offset = q.offset;
  a.n = n;
  const int64_t shift = misalign_output ? 1 : 0;  // forces the scalar path
  std::vector<float> nan_f(n + shift, NAN);
  float* out_f = Upload(nan_f);
  std::vector<__nv_bfloat16> nan_b(n + shift, __float2bfloat16(NAN));
  __nv_bfloat16* out_b = Upload(nan_b);
  CUDA_OK(kernels::cuda::Nf4DequantizeDoubleQuantF32(a, out_f + shift, nullptr));
  CUDA_OK(kernels::cuda::Nf4DequantizeDoubleQuantBf16(a, out_b + shift, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> got_f(n);
  std::vector<__nv_bfloat16> got_b(n);
  CUDA_OK(cudaMemcpy(got_f.data(), out_f + shift, n * 4, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(got_b.data(), out_b + shift, n * 2, cudaMemcpyDeviceToHost));
  int64_t bad_f = 0, bad_b = 0;
  for (int64_t i = 0; i < n; ++i) {
    // The GPU may fuse the absmax multiply-add into one FMA: allow one rounding of float32.
    const float tol_f = 2e-7f * std::fabs(ref[i]) + 1e-12f;
    if (!(std::fabs(got_f[i] - ref[i]) <= tol_f)) ++bad_f;
    const float b = __bfloat162float(got_b[i]);
    if (!(std::fabs(b - ref[i]) <= std::fabs(ref[i]) / 256 + 1e-12f)) ++bad_b;
  }
  GPU_CHECK(bad_f == 0, "n=%lld misaligned=%d: %lld float32 outputs differ", (long long)n,
            misalign_output, (long long)bad_f);
  GPU_CHECK(bad_b == 0, "n=%lld misaligned=%d: %lld bf16 outputs differ", (long long)n,
            misalign_output, (long long)bad_b);
  for (void* p : {(void*)a.packed, (void*)a.absmax_q, (void*)a.nested_absmax, (void*)a.code8,
                  (void*)out_f, (void*)out_b})
    cudaFree(p);
}

void CheckBadArguments() {
  kernels::cuda::Nf4DqArgs a;  // null pointers
  float* out = nullptr;
  CUDA_OK(cudaMalloc(&out, 64));
  GPU_CHECK(kernels::cuda::Nf4DequantizeDoubleQuantF32(a, out, nullptr) == cudaErrorInvalidValue,
            "null inputs accepted");
  cudaFree(out);
}

}  // namespace
}  // namespace qlorad

int main() {
  if (!qlorad::gpu_check::HaveCudaDevice()) return 77;
  std::mt19937 rng(std::random_device{}());
  for (int64_t n : {1LL, 63LL, 64LL, 65LL, 4096LL, 64LL * 256LL, 64LL * 257LL + 3LL, 172LL * 64LL,
                    4096LL * 11008LL}) {
    qlorad::CheckSize(n, rng, false);
    if (n < 100000) qlorad::CheckSize(n, rng, true);
  }
  for (int i = 0; i < 4; ++i) qlorad::CheckSize(1 + rng() % 200000, rng, false);
  qlorad::CheckBadArguments();
  return qlorad::gpu_check::Finish("nf4_dequant_gpu_test");
}
