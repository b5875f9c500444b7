// CUDA twin of kernels/cpu/nf4.h's Nf4DequantizeDoubleQuant: NF4 + double-quantized absmax
// to bf16 or float32, on a stream. Same contract as the CPU reference: the block absmax is
// code8[absmax_q[b]] * nested_absmax[b / nested_blocksize] + offset and
// out[i] = nf4_code[index_i] * absmax[i / blocksize].
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#if defined(QLORAD_CUDA_ON_CPU)
#include <utility>
#include <vector>
#endif

namespace qlorad::kernels::cuda {

struct Nf4DqArgs {
  const uint8_t* packed = nullptr;       // (n+1)/2 bytes, device
  const uint8_t* absmax_q = nullptr;     // ceil(n/blocksize) bytes, device
  const float* nested_absmax = nullptr;  // ceil(blocks/nested_blocksize) floats, device
  const float* code8 = nullptr;          // 256 floats (signed dynamic map), device
  float offset = 0.0f;
  int64_t n = 0;
  // The vectorized path takes power-of-two blocksize and nested_blocksize (QLoRA's: 64 and
  // 256), blocksize a multiple of 8 (bf16) or 4 (float32); other sizes are dequantized one
  // element per thread.
  int blocksize = 64;
  int nested_blocksize = 256;
  // Row-strided output, for a weight [n / cols, cols] placed in a wider matrix: element e goes
  // to out[(e / cols) * ld + e % cols]. cols = 0: contiguous (out[e]). The vectorized path
  // takes cols a multiple of 8 (bf16) or 4 (float32) and ld a multiple of 16 bytes.
  int64_t cols = 0, ld = 0;
};

#if defined(QLORAD_CUDA_ON_CPU)
// The pointers a launch hands the kernels inside Nf4DqArgs, for the CUDA stand-in's check that
// each is memory the card reaches (tests/cuda_on_cpu).
// The binding names every member, so one added to the struct stops this building until it is
// listed here too.
inline std::vector<std::pair<const char*, const void*>> KernelPointers(const Nf4DqArgs& args) {
  [[maybe_unused]] const auto& [packed, absmax_q, nested_absmax, code8, offset, n, blocksize,
                                nested_blocksize, cols, ld] = args;
  return {{"packed", packed},
          {"absmax_q", absmax_q},
          {"nested_absmax", nested_absmax},
          {"code8", code8}};
}
#endif

// Returns cudaErrorInvalidValue for bad arguments (null pointers, blocksize other than a
// positive even number, with cols > 0: ld < cols or n not whole rows of cols), otherwise the
// launch status.
cudaError_t Nf4DequantizeDoubleQuantBf16(const Nf4DqArgs& args, __nv_bfloat16* out,
                                         cudaStream_t stream);
cudaError_t Nf4DequantizeDoubleQuantF32(const Nf4DqArgs& args, float* out, cudaStream_t stream);

}  // namespace qlorad::kernels::cuda
