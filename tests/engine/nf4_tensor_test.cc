#include "engine/nf4_tensor.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "gtest/gtest.h"
#include "kernels/cpu/nf4.h"

namespace qlorad {
namespace {

std::vector<float> Gaussian(int64_t n, float sigma) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> g(0.0f, sigma);
  std::vector<float> x(n);
  for (auto& v : x) v = g(rng);
  return x;
}

double RelRms(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0, r = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    e += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    r += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(e / r);
}

// A plain 4-bit absmax integer quantizer (levels -7..7 times absmax/7) with the same blocks.
std::vector<float> Int4Absmax(const std::vector<float>& x, int block) {
  std::vector<float> out(x.size());
  for (size_t b = 0; b < x.size(); b += block) {
    const size_t e = std::min(x.size(), b + block);
    float amax = 0;
    for (size_t i = b; i < e; ++i) amax = std::max(amax, std::fabs(x[i]));
    for (size_t i = b; i < e; ++i) out[i] = amax == 0 ? 0 : std::round(x[i] / amax * 7) * amax / 7;
  }
  return out;
}

TEST(Nf4Tensor, GaussianRoundTripErrorIsSmallAndBelowInt4) {
  const auto x = Gaussian(4096 * 64 + 17, 0.02f);
  auto t = QuantizeNf4(x.data(), {static_cast<int64_t>(x.size())});
  ASSERT_TRUE(t.ok()) << t.status();
  const auto back = t->Dequantize();
  const double nf4_err = RelRms(back, x);
  const double int4_err = RelRms(Int4Absmax(x, 64), x);
  // NF4 on N(0, s): ~0.10 relative RMS error; a uniform int4 grid does markedly worse.
  EXPECT_LT(nf4_err, 0.12);
  EXPECT_LT(nf4_err, 0.9 * int4_err) << "nf4 " << nf4_err << " int4 " << int4_err;
  // Each block's decoded absmax is within the 8-bit rounding of double quantization: half the
  // widest gap of the dynamic map, times the block's nested scale (plus float rounding).
  const auto& map = kernels::SignedDynamicMap();
  float widest = 0;
  for (int i = 1; i < 256; ++i) widest = std::max(widest, map[i] - map[i - 1]);
  const auto absmax = t->BlockAbsmax();
  for (int64_t b = 0; b < t->num_blocks(); ++b) {
    float true_max = 0;
    for (int64_t i = b * 64; i < std::min<int64_t>(x.size(), (b + 1) * 64); ++i)
      true_max = std::max(true_max, std::fabs(x[i]));
    const float bound = 0.5f * widest * t->nested_absmax[b / 256] * 1.0001f + 1e-7f;
    ASSERT_NEAR(absmax[b], true_max, bound) << b;
  }
}

TEST(Nf4Tensor, StorageCostMatchesTheQLoRAFormula) {
  const int64_t out = 1024, in = 4096;  // 65536 blocks, 256 nested blocks
  const auto x = Gaussian(out * in, 1.0f);
  auto dq = QuantizeNf4(x.data(), {out, in});
  ASSERT_TRUE(dq.ok());
  EXPECT_DOUBLE_EQ(dq->BitsPerParameter(), 4.0 + 8.0 / 64 + 32.0 / (64 * 256) + 32.0 / (out * in));
  EXPECT_NEAR(dq->BitsPerParameter(), 4.127, 0.0005);
  Nf4Options plain;
  plain.double_quant = false;
  auto pq = QuantizeNf4(x.data(), {out, in}, plain);
  ASSERT_TRUE(pq.ok());
  EXPECT_DOUBLE_EQ(pq->BitsPerParameter(), 4.5);
  // Double quantization barely moves the weights.
  EXPECT_LT(RelRms(dq->Dequantize(), pq->Dequantize()), 0.01);
  // The size predicted without quantizing (the daemon's estimate) is the size made, also for
  // partial blocks and partial nested blocks.
  for (const int64_t n : {int64_t{1}, int64_t{63}, int64_t{65}, int64_t{64 * 256 + 1}, out * in}) {
    for (const bool double_quant : {true, false}) {
      Nf4Options o;
      o.double_quant = double_quant;
      auto t = QuantizeNf4(x.data(), {n}, o);
      ASSERT_TRUE(t.ok());
      EXPECT_EQ(Nf4StorageBytes(n, o), t->StorageBytes()) << n << " " << double_quant;
    }
  }
}

TEST(Nf4Tensor, DoubleQuantizationLayout) {
  const auto x = Gaussian(64 * 300, 1.0f);  // 300 blocks -> nested blocks of 256 and 44
  auto t = QuantizeNf4(x.data(), {300, 64});
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->packed.size(), 300u * 32);
  EXPECT_EQ(t->absmax_q.size(), 300u);
  EXPECT_EQ(t->nested_absmax.size(), 2u);
  // offset is the mean of the per-block absmax; nested_absmax the max |absmax - offset|.
  double mean = 0;
  std::vector<float> absmax(300);
  for (int b = 0; b < 300; ++b) {
    for (int i = 0; i < 64; ++i) absmax[b] = std::max(absmax[b], std::fabs(x[b * 64 + i]));
    mean += absmax[b];
  }
  mean /= 300;
  EXPECT_NEAR(t->offset, mean, 1e-6);
  float nested0 = 0, nested1 = 0;
  for (int b = 0; b < 256; ++b) nested0 = std::max(nested0, std::fabs(absmax[b] - t->offset));
  for (int b = 256; b < 300; ++b) nested1 = std::max(nested1, std::fabs(absmax[b] - t->offset));
  EXPECT_EQ(t->nested_absmax[0], nested0);
  EXPECT_EQ(t->nested_absmax[1], nested1);
  // The block holding the largest deviation stores code 1.0 or -0.99296875 (index 255 or 0).
  EXPECT_TRUE(std::any_of(t->absmax_q.begin(), t->absmax_q.begin() + 256,
                          [](uint8_t q) { return q == 0 || q == 255; }));
}

TEST(Nf4Tensor, ValidateCatchesInconsistentBuffers) {
  const auto x = Gaussian(640, 1.0f);
  auto t = QuantizeNf4(x.data(), {10, 64});
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->Validate().ok());
  Nf4Tensor broken = *t;
  broken.packed.pop_back();
  EXPECT_FALSE(broken.Validate().ok());
  broken = *t;
  broken.absmax_q.push_back(0);
  EXPECT_FALSE(broken.Validate().ok());
  broken = *t;
  broken.shape = {11, 64};
  EXPECT_FALSE(broken.Validate().ok());
  EXPECT_FALSE(QuantizeNf4(x.data(), {0, 64}).ok());
  Nf4Options odd;
  odd.blocksize = 63;
  EXPECT_FALSE(QuantizeNf4(x.data(), {10, 64}, odd).ok());
}

}  // namespace
}  // namespace qlorad
