// The fused LoRA dropout kernels and the copy into the fused LoRA operand, one table line each,
// at the 7B step's shapes: n 2048 tokens, r 16, bf16 x, p 0.05, in 4096 (q, k, v, o, gate, up)
// and 11008 (down). Each figure is the mean of 20 calls after one (CUDA events):
//   down      h = dropout(x) A^T (LoraDropoutDown); x's bytes read over the time
//   dA        dA += dh^T dropout(x) (LoraDropoutGradA, its partial sums and their sum)
//   dx        dx += dropout(dh A) (LoraDropoutBackwardInput); dx read and written
//   copy      x's rows into [x | h] (CopyRowsBf16), beside cudaMemcpy2DAsync of the same rows
// At in 4096 the copy's source and destination (33 MB) fit the H200's 60 MB L2.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/cuda/attention_ops.h"
#include "kernels/cuda/lora_dropout.h"
#include "tests/gpu/gpu_bench.h"
#include "tests/gpu/gpu_check.h"

namespace {
namespace kc = qlorad::kernels::cuda;
using bf16 = __nv_bfloat16;
using qlorad::gpu_bench::TimeMs;
using qlorad::gpu_check::DeviceArray;

constexpr int64_t kTokens = 2048, kRank = 16, kWidest = 11008;
constexpr float kDropout = 0.05f;
constexpr int kCalls = 20;

void Line(const char* what, int64_t in, float ms, const char* rate_of, double bytes) {
  std::printf("| lora | %s [n %lld, in %lld, r %lld, bf16 x] | %.1f us | %s at %.0f GB/s |\n", what,
              static_cast<long long>(kTokens), static_cast<long long>(in),
              static_cast<long long>(kRank), ms * 1e3, rate_of, bytes / (ms * 1e-3) / 1e9);
}

}  // namespace

int main() {
  if (!qlorad::gpu_check::HaveCudaDevice()) return 77;
  std::mt19937 rng(qlorad::gpu_check::FreshSeed());
  const std::vector<float> values = qlorad::gpu_check::Normal(rng, kTokens * kWidest, 1.0f);
  std::vector<bf16> host_x(values.size());
  for (size_t i = 0; i < values.size(); ++i) host_x[i] = __float2bfloat16_rn(values[i]);
  DeviceArray<bf16> x(host_x), dx(host_x), wide(kTokens * (kWidest + kRank));
  DeviceArray<float> a(qlorad::gpu_check::Normal(rng, kRank * kWidest, 0.05f));
  DeviceArray<float> dh(qlorad::gpu_check::Normal(rng, kTokens * kRank, 0.5f));
  DeviceArray<float> h(kTokens * kRank), da(kRank * kWidest);
  DeviceArray<float> partial(kc::LoraDropoutPartialFloats(kTokens, kWidest, kRank));
  CUDA_OK(cudaMemset(da.p, 0, kRank * kWidest * sizeof(float)));
  std::printf("| what | shape | time | rate |\n|---|---|---|---|\n");
  for (const int64_t in : {int64_t{4096}, kWidest}) {
    const double x_bytes = 2.0 * kTokens * in;
    const int64_t k = in + kRank;  // [x | h], r 16: rows 16-byte aligned
    Line("down", in,
         TimeMs(
             [&] {
               CUDA_OK(
                   kc::LoraDropoutDown(x.p, kTokens, in, a.p, kRank, kDropout, 7, 3, h.p, nullptr));
             },
             kCalls),
         "x", x_bytes);
    Line("dA", in,
         TimeMs(
             [&] {
               CUDA_OK(kc::LoraDropoutGradA(x.p, dh.p, kTokens, in, kRank, kDropout, 7, 3,
                                            partial.p, da.p, nullptr));
             },
             kCalls),
         "x", x_bytes);
    Line("dx", in,
         TimeMs(
             [&] {
               CUDA_OK(kc::LoraDropoutBackwardInput(dh.p, a.p, kTokens, in, kRank, kDropout, 7, 3,
                                                    dx.p, nullptr));
             },
             kCalls),
         "dx read + written", 2 * x_bytes);
    Line("copy into [x | h], CopyRowsBf16", in,
         TimeMs([&] { CUDA_OK(kc::CopyRowsBf16(x.p, kTokens, in, in, wide.p, k, nullptr)); },
                kCalls),
         "read + written", 2 * x_bytes);
    Line("copy into [x | h], cudaMemcpy2DAsync", in,
         TimeMs(
             [&] {
               CUDA_OK(cudaMemcpy2DAsync(wide.p, k * 2, x.p, in * 2, in * 2, kTokens,
                                         cudaMemcpyDeviceToDevice, nullptr));
             },
             kCalls),
         "read + written", 2 * x_bytes);
  }
  return 0;
}
