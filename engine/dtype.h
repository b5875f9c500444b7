// Element types of checkpoint tensors and conversions between the 16-bit formats and float32.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace qlorad {

enum class DType { kF32, kF16, kBF16, kU8, kI32, kI64 };

// Safetensors spelling: "F32", "F16", "BF16", "U8", "I32", "I64".
const char* DTypeName(DType t);
absl::StatusOr<DType> DTypeFromName(std::string_view name);
int DTypeSize(DType t);

inline float Bf16ToF32(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, NaN kept a quiet NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

}  // namespace qlorad
