// A frozen weight stored as NF4 in blocks of 64 with (by default) double-quantized absmax
// values, exactly as bitsandbytes lays it out (REFERENCE.md). Immutable once built.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace qlorad {

struct Nf4Options {
  int blocksize = 64;          // NF4 block (the QLoRA default)
  bool double_quant = true;    // quantize the absmax values to 8 bits
  int nested_blocksize = 256;  // block of the 8-bit absmax quantization
};

struct Nf4Tensor {
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int blocksize = 64;
  std::vector<uint8_t> packed;  // (numel+1)/2 bytes, first element in the high nibble
  bool double_quant = true;
  // Without double quantization: one float32 absmax per block.
  std::vector<float> absmax;
  // With double quantization: absmax = dynamic_map[absmax_q] * nested_absmax[b/256] + offset.
  std::vector<uint8_t> absmax_q;
  std::vector<float> nested_absmax;
  float offset = 0.0f;
  int nested_blocksize = 256;

  int64_t num_blocks() const { return (numel + blocksize - 1) / blocksize; }
  // Bytes this tensor occupies: packed codes and the absmax statistics (the 16- and 256-entry
  // code tables are shared by every tensor and not counted).
  int64_t StorageBytes() const;
  double BitsPerParameter() const { return 8.0 * StorageBytes() / static_cast<double>(numel); }
  // The per-block absmax values (decoded from the 8-bit form when double-quantized).
  std::vector<float> BlockAbsmax() const;
  // Writes numel float32 values.
  void DequantizeTo(float* out) const;
  std::vector<float> Dequantize() const;
  // Checks that the buffers have the sizes numel and the block sizes require.
  absl::Status Validate() const;
};

absl::StatusOr<Nf4Tensor> QuantizeNf4(const float* x, std::vector<int64_t> shape,
                                      const Nf4Options& options = {});

// The StorageBytes of the tensor QuantizeNf4 makes of `numel` values, without making it (the
// daemon's memory estimate of a base model).
int64_t Nf4StorageBytes(int64_t numel, const Nf4Options& options = {});

}  // namespace qlorad
