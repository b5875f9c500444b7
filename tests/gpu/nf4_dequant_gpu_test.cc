// CUDA NF4 + double-quant dequantization against its CPU twin, bit for bit, on fresh random inputs
// of many sizes (aligned and odd, one block to several nested blocks), for float32 and bf16
// outputs. Every output element is checked, and the buffer is pre-filled with NaN so that an
// element the kernel forgets to write fails.
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

// QLoRA's block sizes unless told: 64 values an absmax, 256 absmaxes a nested one.
Quantized Quantize(const std::vector<float>& x, int blocksize = 64, int nested_blocksize = 256) {
  const int64_t n = static_cast<int64_t>(x.size());
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  Quantized q;
  q.packed.assign((n + 1) / 2, 0);
  std::vector<float> absmax(blocks);
  kernels::Nf4QuantizeBlockwise(x.data(), n, blocksize, q.packed.data(), absmax.data());
  double sum = 0;
  for (float a : absmax) sum += a;
  q.offset = static_cast<float>(sum / blocks);
  for (float& a : absmax) a -= q.offset;
  q.absmax_q.resize(blocks);
  q.nested.resize((blocks + nested_blocksize - 1) / nested_blocksize);
  kernels::QuantizeBlockwise8(absmax.data(), blocks, nested_blocksize,
                              kernels::SignedDynamicMap().data(), q.absmax_q.data(),
                              q.nested.data());
  return q;
}

template <typename T>
T* Upload(const std::vector<T>& v) {
  T* d = nullptr;
  CUDA_OK(cudaMalloc(&d, std::max<size_t>(1, v.size() * sizeof(T))));
  CUDA_OK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// The quantized weight's arrays on the device (freed by the caller).
kernels::cuda::Nf4DqArgs DeviceArgs(const Quantized& q, int64_t n) {
  const std::vector<float> code8(kernels::SignedDynamicMap().begin(),
                                 kernels::SignedDynamicMap().end());
  kernels::cuda::Nf4DqArgs a;
  a.packed = Upload(q.packed);
  a.absmax_q = Upload(q.absmax_q);
  a.nested_absmax = Upload(q.nested);
  a.code8 = Upload(code8);
  a.offset = q.offset;
  a.n = n;
  return a;
}

// blocksize and nested_blocksize other than powers of two take the scalar path.
void CheckSize(int64_t n, std::mt19937& rng, bool misalign_output, int blocksize = 64,
               int nested_blocksize = 256) {
  std::normal_distribution<float> g(0.0f, 0.02f);
  std::vector<float> x(n);
  for (auto& v : x) v = g(rng);
  const Quantized q = Quantize(x, blocksize, nested_blocksize);
  std::vector<float> ref(n);
  kernels::Nf4DequantizeDoubleQuant(q.packed.data(), q.absmax_q.data(), q.nested.data(),
                                    kernels::SignedDynamicMap().data(), q.offset, n, blocksize,
                                    nested_blocksize, ref.data());
  kernels::cuda::Nf4DqArgs a = DeviceArgs(q, n);
  a.blocksize = blocksize;
  a.nested_blocksize = nested_blocksize;
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
  // Bit for bit: the same roundings in the same order (the block scale's product, then its
  // sum, then the code's product), and bf16 the float32 value rounded to nearest even.
  int64_t bad_f = 0, bad_b = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(&got_f[i], &ref[i], 4) != 0) ++bad_f;
    const __nv_bfloat16 want_b = __float2bfloat16_rn(ref[i]);
    if (std::memcmp(&got_b[i], &want_b, 2) != 0) ++bad_b;
  }
  GPU_CHECK(bad_f == 0, "n=%lld misaligned=%d blocks %d/%d: %lld float32 outputs differ",
            (long long)n, misalign_output, blocksize, nested_blocksize, (long long)bad_f);
  GPU_CHECK(bad_b == 0, "n=%lld misaligned=%d blocks %d/%d: %lld bf16 outputs differ", (long long)n,
            misalign_output, blocksize, nested_blocksize, (long long)bad_b);
  for (void* p : {(void*)a.packed, (void*)a.absmax_q, (void*)a.nested_absmax, (void*)a.code8,
                  (void*)out_f, (void*)out_b})
    cudaFree(p);
}

// The kernel for T: Nf4DequantizeDoubleQuantBf16 or ...F32.
cudaError_t Dequantize(const kernels::cuda::Nf4DqArgs& a, __nv_bfloat16* out) {
  return kernels::cuda::Nf4DequantizeDoubleQuantBf16(a, out, nullptr);
}
cudaError_t Dequantize(const kernels::cuda::Nf4DqArgs& a, float* out) {
  return kernels::cuda::Nf4DequantizeDoubleQuantF32(a, out, nullptr);
}
using gpu_check::FromFloat;

// A weight [rows, cols] dequantized into a wider matrix of T (leading dimension cols + pad; in
// bf16 the fused LoRA GEMM's workspace): every element where the contiguous output has it, bit
// for bit, and the padding columns untouched. cols a multiple of the vectorized path's unit (8
// bf16, 4 float32) takes that path.
template <typename T>
void CheckStrided(int64_t rows, int64_t cols, int64_t pad, std::mt19937& rng) {
  const int64_t n = rows * cols, ld = cols + pad;
  std::normal_distribution<float> g(0.0f, 0.02f);
  std::vector<float> x(n);
  for (auto& v : x) v = g(rng);
  const Quantized q = Quantize(x);
  kernels::cuda::Nf4DqArgs a = DeviceArgs(q, n);
  T* dense = Upload(std::vector<T>(n, FromFloat<T>(NAN)));
  const T sentinel = FromFloat<T>(12345.0f);
  T* wide = Upload(std::vector<T>(rows * ld, sentinel));
  CUDA_OK(Dequantize(a, dense));
  a.cols = cols;
  a.ld = ld;
  CUDA_OK(Dequantize(a, wide));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<T> got_dense(n), got_wide(rows * ld);
  CUDA_OK(cudaMemcpy(got_dense.data(), dense, n * sizeof(T), cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(got_wide.data(), wide, rows * ld * sizeof(T), cudaMemcpyDeviceToHost));
  int64_t bad = 0, pad_touched = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < ld; ++c) {
      if (c < cols) {
        bad += std::memcmp(&got_wide[r * ld + c], &got_dense[r * cols + c], sizeof(T)) != 0;
      } else {
        pad_touched += std::memcmp(&got_wide[r * ld + c], &sentinel, sizeof(T)) != 0;
      }
    }
  }
  GPU_CHECK(bad == 0 && pad_touched == 0,
            "strided %s %lld x %lld (+%lld): %lld elements differ, %lld padding elements written",
            sizeof(T) == 2 ? "bf16" : "float32", (long long)rows, (long long)cols, (long long)pad,
            (long long)bad, (long long)pad_touched);
  for (void* p : {(void*)a.packed, (void*)a.absmax_q, (void*)a.nested_absmax, (void*)a.code8,
                  (void*)dense, (void*)wide})
    cudaFree(p);
}

void CheckBadArguments() {
  kernels::cuda::Nf4DqArgs a;  // null pointers
  float* out = nullptr;
  CUDA_OK(cudaMalloc(&out, 64));
  GPU_CHECK(kernels::cuda::Nf4DequantizeDoubleQuantF32(a, out, nullptr) == cudaErrorInvalidValue,
            "null inputs accepted");
  const Quantized q = Quantize(std::vector<float>(128, 0.5f));
  kernels::cuda::Nf4DqArgs strided = DeviceArgs(q, 128);
  strided.cols = 64;
  strided.ld = 32;  // narrower than a row
  GPU_CHECK(
      kernels::cuda::Nf4DequantizeDoubleQuantF32(strided, out, nullptr) == cudaErrorInvalidValue,
      "a row stride below the row length accepted");
  strided.ld = 64;
  strided.cols = 48;  // 128 values are not whole rows of 48
  GPU_CHECK(
      kernels::cuda::Nf4DequantizeDoubleQuantF32(strided, out, nullptr) == cudaErrorInvalidValue,
      "a weight that is not whole rows accepted");
  for (const void* p : {(const void*)strided.packed, (const void*)strided.absmax_q,
                        (const void*)strided.nested_absmax, (const void*)strided.code8})
    cudaFree(const_cast<void*>(p));
  cudaFree(out);
}

}  // namespace
}  // namespace qlorad

int main() {
  if (!qlorad::gpu_check::HaveCudaDevice()) return 77;
  std::mt19937 rng(qlorad::gpu_check::FreshSeed());
  for (int64_t n : {1LL, 63LL, 64LL, 65LL, 4096LL, 64LL * 256LL, 64LL * 257LL + 3LL, 172LL * 64LL,
                    4096LL * 11008LL}) {
    qlorad::CheckSize(n, rng, false);
    if (n < 100000) qlorad::CheckSize(n, rng, true);
  }
  for (int i = 0; i < 4; ++i) qlorad::CheckSize(1 + rng() % 200000, rng, false);
  using bf16 = __nv_bfloat16;
  qlorad::CheckStrided<bf16>(4096, 4096, 16, rng);  // a 7B attention weight and r 16
  qlorad::CheckStrided<bf16>(37, 96, 8, rng);
  qlorad::CheckStrided<bf16>(41, 40, 8, rng);   // a multiple of 8, not of 32: vectorized
  qlorad::CheckStrided<bf16>(29, 100, 4, rng);  // not a multiple of 8: the scalar path
  qlorad::CheckStrided<float>(37, 96, 8, rng);
  qlorad::CheckStrided<float>(29, 100, 4, rng);  // a multiple of 4, not of 8: vectorized
  qlorad::CheckStrided<float>(23, 98, 4, rng);   // not a multiple of 4: the scalar path
  // Other power-of-two block sizes (vectorized, other shifts), and sizes that are not powers of
  // two (the scalar path): bitsandbytes takes blocksizes from 64 to 4096.
  for (int64_t n :
       {int64_t{4096}, int64_t{64 * 257 + 5}, static_cast<int64_t>(1 + rng() % 300000)}) {
    qlorad::CheckSize(n, rng, false, 128, 64);
    qlorad::CheckSize(n, rng, false, 4096, 256);
    qlorad::CheckSize(n, rng, false, 96, 256);
    qlorad::CheckSize(n, rng, false, 64, 100);
  }
  qlorad::CheckBadArguments();
  return qlorad::gpu_check::Finish("nf4_dequant_gpu_test");
}
