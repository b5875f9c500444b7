// Dropout with a counter-based random stream: element i of a stream keeps its value with
// probability 1-p, decided by a hash of (seed, stream, i). The same mask is reproduced in the
// backward pass, on any device and any thread count, with nothing stored.
#pragma once

#include <cstdint>

// The mask functions are shared, unchanged, with the CUDA kernels (kernels/cuda/dropout.cu).
#if defined(__CUDACC__)
#define QLORAD_HOST_DEVICE __host__ __device__
#else
#define QLORAD_HOST_DEVICE
#endif

namespace qlorad::kernels {

// The part of a pair's hash that is the same for a whole stream.
QLORAD_HOST_DEVICE inline uint64_t DropoutStreamKey(uint64_t seed, uint64_t stream) {
  return seed ^ (stream * 0x9E3779B97F4A7C15ull);
}

// The 64 random bits shared by elements 2*pair and 2*pair+1 of a stream (splitmix64
// finalizer over the three counters): bits 40..63 decide the even element, 16..39 the odd one.
QLORAD_HOST_DEVICE inline uint64_t DropoutPairBitsKeyed(uint64_t key, uint64_t pair) {
  uint64_t z = key ^ (pair * 0xD1B54A32D192ED03ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

QLORAD_HOST_DEVICE inline uint64_t DropoutPairBits(uint64_t seed, uint64_t stream, uint64_t pair) {
  return DropoutPairBitsKeyed(DropoutStreamKey(seed, stream), pair);
}

// The 24 bits of a pair's 64 that decide its even (odd = false) or odd element.
QLORAD_HOST_DEVICE inline uint32_t DropoutHalfBits(uint64_t pair_bits, bool odd) {
  return static_cast<uint32_t>(odd ? (pair_bits >> 16) & 0xFFFFFFull : pair_bits >> 40);
}

// The 24 random bits of element `index` of a stream.
QLORAD_HOST_DEVICE inline uint32_t DropoutBits(uint64_t key, uint64_t index) {
  return DropoutHalfBits(DropoutPairBitsKeyed(key, index >> 1), (index & 1) != 0);
}

// True when element `index` of `stream` is kept: its 24 random bits against p, the same
// comparison in float on every device. This is the definition; DropoutStreamMask decides the
// same in integers.
QLORAD_HOST_DEVICE inline bool DropoutKeep(uint64_t seed, uint64_t stream, uint64_t index,
                                           float p) {
  return static_cast<float>(DropoutBits(DropoutStreamKey(seed, stream), index)) >= p * 16777216.0f;
}

// The smallest 24-bit value DropoutKeep keeps at drop probability p: p 2^24 is exact in float
// (a power-of-two scaling, even of a subnormal p) and the bits are integers, so bits >= p 2^24
// exactly when bits >= ceil(p 2^24). 2^24 (nothing kept) for p >= 1 or NaN, 0 (everything kept)
// for p <= 0. (Built with flush-to-zero, a subnormal p would be 0 on the device and 1 on the
// CPU; the project does not build so.)
QLORAD_HOST_DEVICE inline uint32_t DropoutThreshold(float p) {
  const float t = p * 16777216.0f;
  if (!(t < 16777216.0f)) return 16777216u;  // also NaN: a comparison with NaN is false
  if (!(t > 0.0f)) return 0u;
  const uint32_t floor = static_cast<uint32_t>(t);
  return static_cast<float>(floor) < t ? floor + 1 : floor;
}

// DropoutKeep for one stream with the per-stream work done once (the hash's seed-and-stream
// part and the threshold): the kernels' inner loops hash and compare in integers only.
struct DropoutStreamMask {
  uint64_t key;
  uint32_t threshold;
  QLORAD_HOST_DEVICE DropoutStreamMask(uint64_t seed, uint64_t stream, float p)
      : key(DropoutStreamKey(seed, stream)), threshold(DropoutThreshold(p)) {}
  QLORAD_HOST_DEVICE bool Keep(uint64_t index) const { return KeepBits(DropoutBits(key, index)); }
  QLORAD_HOST_DEVICE bool KeepBits(uint32_t bits) const { return bits >= threshold; }
};

// out[i] = keep(i) ? x[i] / (1-p) : 0 (out may alias x). Used forward and, on the gradient,
// backward.
void DropoutApply(const float* x, int64_t n, float p, uint64_t seed, uint64_t stream, float* out);

// Element i of a stream as a value uniform in [-scale, scale): the top 24 bits of the hash of
// (seed, stream, i), exact in float until the one rounding of the product with `scale`. The
// CUDA twin (kernels/cuda/attention_ops.h FillUniform) makes the same bits.
QLORAD_HOST_DEVICE inline float UniformValue(uint64_t seed, uint64_t stream, uint64_t i,
                                             float scale) {
  const uint64_t z = DropoutPairBits(seed, stream, i);
  return scale * (static_cast<float>(z >> 40) / 8388608.0f - 1.0f);
}

// x[i] = UniformValue(seed, stream, i, scale) for i < n: random weights for benchmarks and tests,
// the same on every device and thread count.
void FillUniform(float* x, int64_t n, uint64_t seed, uint64_t stream, float scale);

}  // namespace qlorad::kernels
