// CPU reference kernels for 4-bit NormalFloat (NF4) blockwise quantization and the 8-bit
// blockwise quantization that double quantization applies to the NF4 absmax values.
// Bit-compatible with bitsandbytes (see ../shared/REFERENCE.md). The CUDA kernels in
// kernels/cuda/ have the same contracts and are tested against these.
//
// All functions are pure and thread-safe; they parallelise over blocks internally.
#pragma once

#include <array>
#include <cstdint>

#include "kernels/nf4_code.h"

namespace qlorad::kernels {

// The 16 NF4 code values, index 0..15 (QLoRA appendix / bitsandbytes).
inline constexpr std::array<float, 16> kNf4Code = {QLORAD_NF4_CODE_VALUES};

// Index of the code 0.0, used for padding and all-zero blocks.
inline constexpr uint8_t kNf4ZeroIndex = 7;

// The signed dynamic 8-bit map of bitsandbytes' create_dynamic_map(signed=True), computed in
// float32 exactly as that function does (torch.linspace semantics included), sorted ascending:
// index 0 = -0.99296875, 127 = 0, 255 = 1.0.
const std::array<float, 256>& SignedDynamicMap();

// Index of the NF4 code nearest to `x` (x already divided by the block's absmax). Thresholds are
// the midpoints between adjacent codes; a value exactly on a midpoint takes the lower code, as
// the bitsandbytes decision tree does.
uint8_t Nf4Index(float x);

// Index into a sorted 256-entry `code` of the value nearest to `x`; on an exact midpoint the
// lower index wins.
uint8_t NearestCodeIndex(const float* code, float x);

// Quantizes n float32 values to NF4 in blocks of `blocksize` (the last block may be partial),
// bit-exactly as bitsandbytes' CPU quantize_4bit does. Writes (n+1)/2 bytes to `packed` (first
// element of a pair in the high nibble, an odd tail padded with the nibble of 0.0) and
// ceil(n/blocksize) float32 absmax values (a partial block stores max(absmax, 1e-38)).
void Nf4QuantizeBlockwise(const float* x, int64_t n, int blocksize, uint8_t* packed, float* absmax);

// Inverse of Nf4QuantizeBlockwise: out[i] = code[index] * absmax[i / blocksize].
void Nf4DequantizeBlockwise(const uint8_t* packed, const float* absmax, int64_t n, int blocksize,
                            float* out);

// 8-bit blockwise quantization on a sorted 256-entry `code` (bitsandbytes quantize_blockwise):
// each block of `blocksize` values keeps its absmax; each value stores the index of the code
// nearest to x * (1/absmax), as bitsandbytes' CUDA kernel does (its CPU library rounds through
// a 65536-entry table instead, which near zero can pick a farther code). An all-zero block
// stores index 0. Writes n bytes and ceil(n/blocksize) absmax values.
void QuantizeBlockwise8(const float* x, int64_t n, int blocksize, const float* code, uint8_t* q,
                        float* absmax);

// out[i] = code[q[i]] * absmax[i / blocksize] + offset.
void DequantizeBlockwise8(const uint8_t* q, const float* absmax, int64_t n, int blocksize,
                          const float* code, float offset, float* out);

// Fused NF4 + double-quantization dequantization, the hot path of the training forward pass:
// the block absmax is code8[absmax_q[b]] * nested_absmax[b / nested_blocksize] + offset.
void Nf4DequantizeDoubleQuant(const uint8_t* packed, const uint8_t* absmax_q,
                              const float* nested_absmax, const float* code8, float offset,
                              int64_t n, int blocksize, int nested_blocksize, float* out);

// y[t, o] = sum_i W[o, i] x[t, i] for a few rows of x (generation's one new token), W [out, in]
// NF4 + double quantization decoded block by block in registers and never written: a weight
// costs the half byte of its code where dequantizing first writes and reads back 8 bytes. The
// weights are exactly Nf4DequantizeDoubleQuant's; the sums' order is this function's (per
// block, then across blocks). Where Nf4MatVecSupports (rows of whole blocks, few tokens).
inline constexpr int64_t kNf4MatVecMaxTokens = 8;
bool Nf4MatVecSupports(int64_t in, int blocksize, int64_t tokens);
void Nf4DoubleQuantMatVec(const uint8_t* packed, const uint8_t* absmax_q,
                          const float* nested_absmax, const float* code8, float offset, int64_t out,
                          int64_t in, int blocksize, int nested_blocksize, const float* x,
                          int64_t tokens, float* y);

}  // namespace qlorad::kernels
