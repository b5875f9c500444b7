// CUDA twin of kernels/cpu/nf4.h's Nf4DequantizeDoubleQuant: NF4 + double-quantized absmax
// to bf16 or float32, on a stream. Same contract as the CPU reference: the block absmax is
// code8[absmax_q[b]] * nested_absmax[b / nested_blocksize] + offset and
// out[i] = nf4_code[index_i] * absmax[i / blocksize].
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace qlorad::kernels::cuda {

struct Nf4DqArgs {
  const uint8_t* packed = nullptr;       // (n+1)/2 bytes, device
  const uint8_t* absmax_q = nullptr;     // ceil(n/blocksize) bytes, device
  const float* nested_absmax = nullptr;  // ceil(blocks/nested_blocksize) floats, device
  const float* code8 = nullptr;          // 256 floats (signed dynamic map), device
  float offset = 0.0f;
  int64_t n = 0;
  int blocksize = 64;  // must be 64 (the QLoRA default) for the vectorized path
  int nested_blocksize = 256;
  // Row-strided output, for a weight [n / cols, cols] placed in a wider matrix: element e goes
  // to out[(e / cols) * ld + e % cols]. cols = 0: contiguous (out[e]). The vectorized path
  // takes cols a multiple of 32 and ld a multiple of 16 bytes.
  int64_t cols = 0, ld = 0;
};

// Returns cudaErrorInvalidValue for bad arguments (null pointers, blocksize other than a
// positive even number, with cols > 0: ld < cols or n not whole rows of cols), otherwise the
// launch status.
cudaError_t Nf4DequantizeDoubleQuantBf16(const Nf4DqArgs& args, __nv_bfloat16* out,
                                         cudaStream_t stream);
cudaError_t Nf4DequantizeDoubleQuantF32(const Nf4DqArgs& args, float* out, cudaStream_t stream);

}  // namespace qlorad::kernels::cuda
