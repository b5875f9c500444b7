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

// The 64 random bits shared by elements 2*pair and 2*pair+1 of a stream (splitmix64
// finalizer over the three counters): bits 40..63 decide the even element, 16..39 the odd one.
QLORAD_HOST_DEVICE inline uint64_t DropoutPairBits(uint64_t seed, uint64_t stream, uint64_t pair) {
  uint64_t z = seed ^ (stream * 0x9E3779B97F4A7C15ull) ^ (pair * 0xD1B54A32D192ED03ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// True when element `index` of `stream` is kept: its 24 random bits against p, the same
// comparison in float on every device.
QLORAD_HOST_DEVICE inline bool DropoutKeep(uint64_t seed, uint64_t stream, uint64_t index, float p) {
  const uint64_t z = DropoutPairBits(seed, stream, index >> 1);
  const uint64_t bits = (index & 1) ? (z >> 16) & 0xFFFFFFull : z >> 40;
  return static_cast<float>(bits) >= p * 16777216.0f;
}

// out[i] = keep(i) ? x[i] / (1-p) : 0 (out may alias x). Used forward and, on the gradient,
// backward.
void DropoutApply(const float* x, int64_t n, float p, uint64_t seed, uint64_t stream, float* out);

}  // namespace qlorad::kernels
