// CUDA twin of the NF4 + double quantization of engine/nf4_tensor.cc (kernels/cpu/nf4.h):
// bit-exact with the CPU reference and so with bitsandbytes. Used when a model is loaded onto a
// GPU; the absmax mean (the double-quantization offset) is summed on the host in the CPU's
// order, so this call waits for the device once.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace qlorad::kernels::cuda {

struct Nf4QuantizeOutputs {
  uint8_t* packed = nullptr;        // (n+1)/2 bytes, device
  uint8_t* absmax_q = nullptr;      // ceil(n/blocksize) bytes, device
  float* nested_absmax = nullptr;   // ceil(blocks/nested_blocksize) floats, device
  float* absmax_scratch = nullptr;  // ceil(n/blocksize) floats, device (overwritten)
  // The 8-bit dynamic map (kernels::SignedDynamicMap), 256 floats on the device: a device keeps
  // one for all its weights, rather than one allocated (stream-ordered) per weight.
  const float* code8 = nullptr;
  float offset = 0.0f;  // written: the mean of the block absmax values
};

// x: n float32 values on the device. blocksize and nested_blocksize as in Nf4Options (64, 256).
cudaError_t Nf4QuantizeDoubleQuant(const float* x, int64_t n, int blocksize, int nested_blocksize,
                                   Nf4QuantizeOutputs* out, cudaStream_t stream);

}  // namespace qlorad::kernels::cuda
