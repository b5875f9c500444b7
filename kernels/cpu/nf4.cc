#include "kernels/cpu/nf4.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace qlorad::kernels {
namespace {

// Midpoints between adjacent NF4 codes, computed in double and rounded once to float (the
// constants bitsandbytes hard-codes in its decision tree are these midpoints).
std::array<float, 15> Nf4Midpoints() {
  std::array<float, 15> mid{};
  for (int i = 0; i < 15; ++i) {
    mid[i] = static_cast<float>((static_cast<double>(kNf4Code[i]) + kNf4Code[i + 1]) / 2.0);
  }
  return mid;
}

const std::array<float, 15>& Nf4Thresholds() {
  static const std::array<float, 15> kMid = Nf4Midpoints();
  return kMid;
}

// torch.linspace(start, end, steps) for float32 on the CPU: the step is computed in float, the
// first half counts up from start and the second half down from end, each value one fused
// multiply-add (torch's vectorized kernel), so one rounding.
std::vector<float> TorchLinspaceF32(float start, float end, int steps) {
  std::vector<float> out(steps);
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int halfway = steps / 2;
  for (int i = 0; i < steps; ++i) {
    out[i] = i < halfway ? std::fma(step, static_cast<float>(i), start)
                         : std::fma(-step, static_cast<float>(steps - i - 1), end);
  }
  return out;
}

std::array<float, 256> BuildSignedDynamicMap() {
  // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8).
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int fraction_items = (1 << i) + 1;
    const std::vector<float> bounds = TorchLinspaceF32(0.1f, 1.0f, fraction_items);
    // The Python scale 10**(i-6) becomes a float32 scalar when it multiplies the tensor.
    const float scale = static_cast<float>(std::pow(10.0, i - 6));
    std::vector<float> means(fraction_items - 1);
    for (int j = 0; j + 1 < fraction_items; ++j) means[j] = (bounds[j] + bounds[j + 1]) / 2.0f;
    for (float m : means) data.push_back(scale * m);
    for (float m : means) data.push_back(-scale * m);
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  std::array<float, 256> out{};
  std::copy(data.begin(), data.end(), out.begin());
  return out;
}

int64_t NumBlocks(int64_t n, int blocksize) { return (n + blocksize - 1) / blocksize; }

}  // namespace

const std::array<float, 256>& SignedDynamicMap() {
  static const std::array<float, 256> kMap = BuildSignedDynamicMap();
  return kMap;
}

uint8_t Nf4Index(float x) {
  const auto& mid = Nf4Thresholds();
  // Count the thresholds strictly below x: a value equal to a midpoint keeps the lower code
  // (torch.bucketize with right=False, as bitsandbytes' CPU path does). NaN sorts past the end.
  if (std::isnan(x)) return 15;
  uint8_t idx = 0;
  for (int i = 0; i < 15; ++i) idx += x > mid[i] ? 1 : 0;
  return idx;
}

uint8_t NearestCodeIndex(const float* code, float x) {
  // First code >= x.
  const float* hi = std::lower_bound(code, code + 256, x);
  if (hi == code) return 0;
  if (hi == code + 256) return 255;
  const float* lo = hi - 1;
  // On a tie the lower index wins.
  return static_cast<uint8_t>((x - *lo) <= (*hi - x) ? lo - code : hi - code);
}

void Nf4QuantizeBlockwise(const float* x, int64_t n, int blocksize, uint8_t* packed,
                          float* absmax) {
  // bitsandbytes' rules (tests/golden/README.md, rule A): a full block multiplies by the float32
  // reciprocal of its absmax (at least 1e-38, so an all-zero block maps to code 0.0); the partial
  // last block divides by max(absmax, 1e-38) and stores that value; scaled values are clamped
  // to [-1, 1]; an odd count is padded with the code of 0.0 (nibble 7).
  constexpr float kTiny = 1e-38f;
  const int64_t blocks = NumBlocks(n, blocksize);
#pragma omp parallel for schedule(static) if ((n) >= kMinParallelWork)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t end = std::min<int64_t>(n, begin + blocksize);
    const bool full = end - begin == blocksize;
    float amax = 0.0f;
    for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float denom = std::max(amax, kTiny);
    absmax[b] = full ? amax : denom;
    const float inv = 1.0f / denom;
    for (int64_t i = begin; i < end; ++i) {
      const float scaled = std::clamp(full ? x[i] * inv : x[i] / denom, -1.0f, 1.0f);
      const uint8_t q = Nf4Index(scaled);
      uint8_t& byte = packed[i / 2];
      if (i % 2 == 0) {
        byte = static_cast<uint8_t>(q << 4 | (i + 1 == n ? kNf4ZeroIndex : 0));
      } else {
        byte = static_cast<uint8_t>(byte | q);
      }
    }
  }
}

void Nf4DequantizeBlockwise(const uint8_t* packed, const float* absmax, int64_t n, int blocksize,
                            float* out) {
  const int64_t blocks = NumBlocks(n, blocksize);
#pragma omp parallel for schedule(static) if ((n) >= kMinParallelWork)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t end = std::min<int64_t>(n, begin + blocksize);
    const float scale = absmax[b];
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t byte = packed[i / 2];
      const uint8_t q = (i % 2 == 0) ? (byte >> 4) : (byte & 0x0F);
      out[i] = kNf4Code[q] * scale;
    }
  }
}

void QuantizeBlockwise8(const float* x, int64_t n, int blocksize, const float* code, uint8_t* q,
                        float* absmax) {
  const int64_t blocks = NumBlocks(n, blocksize);
#pragma omp parallel for schedule(static) if ((n) >= kMinParallelWork)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t end = std::min<int64_t>(n, begin + blocksize);
    float amax = 0.0f;
    for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(x[i]));
    absmax[b] = amax;
    const float inv = 1.0f / amax;
    for (int64_t i = begin; i < end; ++i) q[i] = NearestCodeIndex(code, x[i] * inv);
  }
}

void DequantizeBlockwise8(const uint8_t* q, const float* absmax, int64_t n, int blocksize,
                          const float* code, float offset, float* out) {
#pragma omp parallel for schedule(static) if ((n) >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) out[i] = code[q[i]] * absmax[i / blocksize] + offset;
}

namespace {

// Block b's 16 dequantized values, code[c] * absmax_b, with the absmax decoded as bitsandbytes
// does: its product and its sum rounded apart (this file builds with -ffp-contract=off).
void BlockTable(const uint8_t* absmax_q, const float* nested_absmax, const float* code8,
                float offset, int nested_blocksize, int64_t b, float (&table)[16]) {
  const float scale = code8[absmax_q[b]] * nested_absmax[b / nested_blocksize] + offset;
  for (int c = 0; c < 16; ++c) table[c] = kNf4Code[c] * scale;
}

}  // namespace

void Nf4DequantizeDoubleQuant(const uint8_t* packed, const uint8_t* absmax_q,
                              const float* nested_absmax, const float* code8, float offset,
                              int64_t n, int blocksize, int nested_blocksize, float* out) {
  const int64_t blocks = NumBlocks(n, blocksize);
#pragma omp parallel for schedule(static) if ((n) >= kMinParallelWork)
  for (int64_t b = 0; b < blocks; ++b) {
    float table[16];
    BlockTable(absmax_q, nested_absmax, code8, offset, nested_blocksize, b, table);
    const int64_t begin = b * blocksize;
    const int64_t end = std::min<int64_t>(n, begin + blocksize);
    if (blocksize % 2 == 0 && end - begin == blocksize) {
      // Whole block, pairs aligned: two outputs per byte.
      const uint8_t* src = packed + begin / 2;
      float* dst = out + begin;
      for (int j = 0; j < blocksize / 2; ++j) {
        dst[2 * j] = table[src[j] >> 4];
        dst[2 * j + 1] = table[src[j] & 0x0F];
      }
    } else {
      for (int64_t i = begin; i < end; ++i) {
        const uint8_t byte = packed[i / 2];
        out[i] = table[(i % 2 == 0) ? (byte >> 4) : (byte & 0x0F)];
      }
    }
  }
}

bool Nf4MatVecSupports(int64_t in, int blocksize, int64_t tokens) {
  return blocksize > 0 && blocksize % 2 == 0 && in % blocksize == 0 && tokens >= 1 &&
         tokens <= kNf4MatVecMaxTokens;
}

void Nf4DoubleQuantMatVec(const uint8_t* packed, const uint8_t* absmax_q,
                          const float* nested_absmax, const float* code8, float offset, int64_t out,
                          int64_t in, int blocksize, int nested_blocksize, const float* x,
                          int64_t tokens, float* y) {
  const int64_t blocks_per_row = in / blocksize;
#pragma omp parallel for schedule(static) if ((out * in) >= kMinParallelWork)
  for (int64_t o = 0; o < out; ++o) {
    float acc[kNf4MatVecMaxTokens] = {};
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      const int64_t b = o * blocks_per_row + k;
      float table[16];
      BlockTable(absmax_q, nested_absmax, code8, offset, nested_blocksize, b, table);
      const uint8_t* src = packed + b * blocksize / 2;
      for (int64_t t = 0; t < tokens; ++t) {
        const float* xt = x + t * in + k * blocksize;
        // Two partial sums: the adds of a block do not wait on each other.
        float even = 0.0f, odd = 0.0f;
        for (int j = 0; j < blocksize / 2; ++j) {
          even += table[src[j] >> 4] * xt[2 * j];
          odd += table[src[j] & 0x0F] * xt[2 * j + 1];
        }
        acc[t] += even + odd;
      }
    }
    for (int64_t t = 0; t < tokens; ++t) y[t * out + o] = acc[t];
  }
}

}  // namespace qlorad::kernels
