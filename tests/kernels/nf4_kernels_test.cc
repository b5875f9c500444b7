#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/nf4.h"

namespace qlorad::kernels {
namespace {

TEST(Nf4Index, EachCodeMapsToItself) {
  for (int i = 0; i < 16; ++i) EXPECT_EQ(Nf4Index(kNf4Code[i]), i) << kNf4Code[i];
}

TEST(Nf4Index, MidpointsGoToTheLowerCodeAndJustAboveToTheUpper) {
  for (int i = 0; i < 15; ++i) {
    const float mid =
        static_cast<float>((static_cast<double>(kNf4Code[i]) + kNf4Code[i + 1]) / 2.0);
    EXPECT_EQ(Nf4Index(mid), i);
    EXPECT_EQ(Nf4Index(std::nextafter(mid, 2.0f)), i + 1);
  }
  // bitsandbytes' first positive threshold, as its decision tree spells it.
  EXPECT_EQ(Nf4Index(0.03979014977812767f), 7);
  EXPECT_EQ(Nf4Index(0.0398f), 8);
}

TEST(SignedDynamicMap, HasTheDocumentedShape) {
  const auto& m = SignedDynamicMap();
  EXPECT_FLOAT_EQ(m[0], -0.99296875f);
  EXPECT_EQ(m[127], 0.0f);
  EXPECT_EQ(m[255], 1.0f);
  for (int i = 1; i < 256; ++i) EXPECT_LT(m[i - 1], m[i]) << i;
  // Smallest magnitudes are the i=0 midpoint 0.55 scaled by 1e-6.
  EXPECT_FLOAT_EQ(m[128], 0.55e-6f);
  EXPECT_FLOAT_EQ(m[126], -0.55e-6f);
}

TEST(Nf4Quantize, HandComputedBlockLayout) {
  // Block 0: absmax 2 (first value), values 2*code[i % 16]; block 1 (partial, 3 values):
  // absmax 0.5 -> codes 15, 0, 7.
  std::vector<float> x(67);
  for (int i = 0; i < 64; ++i) x[i] = 2.0f * kNf4Code[15 - i % 16];
  x[64] = 0.5f;
  x[65] = -0.5f;
  x[66] = 0.0f;
  std::vector<uint8_t> packed(34, 0xAA);
  std::vector<float> absmax(2);
  Nf4QuantizeBlockwise(x.data(), 67, 64, packed.data(), absmax.data());
  EXPECT_EQ(absmax[0], 2.0f);
  EXPECT_EQ(absmax[1], 0.5f);
  // Pairs (15,14), (13,12), ... high nibble first.
  EXPECT_EQ(packed[0], 0xFE);
  EXPECT_EQ(packed[1], 0xDC);
  EXPECT_EQ(packed[7], 0x10);
  EXPECT_EQ(packed[8], 0xFE);
  EXPECT_EQ(packed[32], 0xF0);  // 0.5 -> 15 (high), -0.5 -> 0 (low)
  EXPECT_EQ(packed[33], 0x77);  // 0.0 -> 7, padded with the nibble of 0.0 (7)
  std::vector<float> back(67);
  Nf4DequantizeBlockwise(packed.data(), absmax.data(), 67, 64, back.data());
  for (int i = 0; i < 67; ++i) EXPECT_EQ(back[i], x[i]) << i;
}

TEST(Nf4Quantize, AllZeroBlockDequantizesToZero) {
  std::vector<float> x(64, 0.0f);
  std::vector<uint8_t> packed(32);
  float absmax = -1;
  Nf4QuantizeBlockwise(x.data(), 64, 64, packed.data(), &absmax);
  EXPECT_EQ(absmax, 0.0f);
  for (uint8_t b : packed) EXPECT_EQ(b, 0x77);  // every value takes the code of 0.0
  std::vector<float> back(64, 1.0f);
  Nf4DequantizeBlockwise(packed.data(), &absmax, 64, 64, back.data());
  for (float v : back) EXPECT_EQ(v, 0.0f);
}

TEST(Blockwise8, NearestCodeAndRoundTrip) {
  const auto& map = SignedDynamicMap();
  for (int i = 0; i < 256; ++i) EXPECT_EQ(NearestCodeIndex(map.data(), map[i]), i);
  EXPECT_EQ(NearestCodeIndex(map.data(), -5.0f), 0);
  EXPECT_EQ(NearestCodeIndex(map.data(), 5.0f), 255);
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> u(-3, 3);
  std::vector<float> x(1000);
  for (auto& v : x) v = u(rng);
  std::vector<uint8_t> q(1000);
  std::vector<float> absmax(4), back(1000);
  QuantizeBlockwise8(x.data(), 1000, 256, map.data(), q.data(), absmax.data());
  DequantizeBlockwise8(q.data(), absmax.data(), 1000, 256, map.data(), 0.25f, back.data());
  for (int i = 0; i < 1000; ++i) {
    const float normed = x[i] / absmax[i / 256];
    // The chosen code is the nearest one: no other code is closer.
    const float chosen = map[q[i]];
    for (int c = 0; c < 256; ++c)
      ASSERT_LE(std::fabs(chosen - normed), std::fabs(map[c] - normed) + 1e-7f);
    EXPECT_NEAR(back[i] - 0.25f, x[i], 0.04f * absmax[i / 256]);
  }
}

TEST(Nf4DequantizeDoubleQuant, EqualsTheTwoStepDequantization) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> g(0, 1);
  const int64_t n = 64 * 600 + 10;  // 601 blocks: 3 nested blocks, last ones partial
  const int64_t blocks = (n + 63) / 64;
  std::vector<uint8_t> packed((n + 1) / 2), absmax_q(blocks);
  for (auto& b : packed) b = rng() & 0xFF;
  for (auto& b : absmax_q) b = rng() & 0xFF;
  std::vector<float> nested = {0.7f, 1.3f, 0.2f};
  const float offset = 0.05f;
  const auto& map = SignedDynamicMap();
  std::vector<float> absmax(blocks), two_step(n), fused(n);
  DequantizeBlockwise8(absmax_q.data(), nested.data(), blocks, 256, map.data(), offset,
                       absmax.data());
  Nf4DequantizeBlockwise(packed.data(), absmax.data(), n, 64, two_step.data());
  Nf4DequantizeDoubleQuant(packed.data(), absmax_q.data(), nested.data(), map.data(), offset, n, 64,
                           256, fused.data());
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(fused[i], two_step[i]) << i;
}

// The fused matrix-vector product against the dequantized weights times x, summed in double:
// random codes, absmax codes and inputs, rows of several blocks across nested blocks, one token
// and the most it takes; every output written (NaN-filled first).
TEST(Nf4DoubleQuantMatVec, EqualsTheDequantizedWeightsTimesX) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE(seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0, 1);
  const int64_t out = 37, in = 64 * 9;  // 333 blocks: two nested blocks of 256
  const int64_t n = out * in, blocks = n / 64;
  std::vector<uint8_t> packed(n / 2), absmax_q(blocks);
  for (auto& b : packed) b = rng() & 0xFF;
  for (auto& b : absmax_q) b = rng() & 0xFF;
  const std::vector<float> nested = {0.04f, 0.07f};
  const float offset = 0.03f;
  const auto& map = SignedDynamicMap();
  std::vector<float> w(n);
  Nf4DequantizeDoubleQuant(packed.data(), absmax_q.data(), nested.data(), map.data(), offset, n, 64,
                           256, w.data());
  EXPECT_FALSE(Nf4MatVecSupports(in + 32, 64, 1));  // a block across two rows
  EXPECT_FALSE(Nf4MatVecSupports(in, 64, kNf4MatVecMaxTokens + 1));
  for (const int64_t tokens : {int64_t{1}, kNf4MatVecMaxTokens}) {
    ASSERT_TRUE(Nf4MatVecSupports(in, 64, tokens));
    std::vector<float> x(tokens * in), y(tokens * out, NAN);
    for (float& v : x) v = g(rng);
    Nf4DoubleQuantMatVec(packed.data(), absmax_q.data(), nested.data(), map.data(), offset, out, in,
                         64, 256, x.data(), tokens, y.data());
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t o = 0; o < out; ++o) {
        double want = 0.0, scale = 0.0;
        for (int64_t i = 0; i < in; ++i) {
          want += double(w[o * in + i]) * x[t * in + i];
          scale += std::fabs(double(w[o * in + i]) * x[t * in + i]);
        }
        // float sums of `in` terms: within a few ulps of the sum of magnitudes
        ASSERT_NEAR(y[t * out + o], want, 1e-6 * scale) << "token " << t << " row " << o;
      }
    }
  }
}

}  // namespace
}  // namespace qlorad::kernels
