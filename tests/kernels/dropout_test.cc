#include "kernels/cpu/dropout.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace qlorad::kernels {
namespace {

TEST(Dropout, ApplyAgreesWithKeepAndDropsAboutP) {
  const int64_t n = 100001;  // odd: the last pair has one element
  std::vector<float> x(n, 2.0f), out(n);
  for (float p : {0.05f, 0.3f}) {
    DropoutApply(x.data(), n, p, /*seed=*/7, /*stream=*/3, out.data());
    int64_t dropped = 0;
    for (int64_t i = 0; i < n; ++i) {
      const bool keep = DropoutKeep(7, 3, i, p);
      ASSERT_EQ(out[i], keep ? 2.0f / (1.0f - p) : 0.0f) << i;
      dropped += !keep;
    }
    EXPECT_NEAR(static_cast<double>(dropped) / n, p, 0.01);
  }
  // Another stream or seed gives another mask.
  std::vector<float> other(n);
  DropoutApply(x.data(), n, 0.3f, 7, 4, other.data());
  EXPECT_NE(out, other);
  DropoutApply(x.data(), n, 0.3f, 8, 3, other.data());
  EXPECT_NE(out, other);
}

// Random weights: uniform over [-scale, scale) (mean 0, variance scale^2 / 3) on a grid of 2^24
// steps, and another stream or seed gives other values.
TEST(FillUniform, IsUniformOnAGridAndDependsOnSeedAndStream) {
  const int64_t n = 200001;
  std::vector<float> x(n);
  FillUniform(x.data(), n, /*seed=*/5, /*stream=*/9, 0.5f);
  double sum = 0.0, sq = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_GE(x[i], -0.5f) << i;
    ASSERT_LT(x[i], 0.5f) << i;
    const double step = (x[i] / 0.5 + 1.0) * 8388608.0;  // which of the 2^24 values
    ASSERT_EQ(step, std::floor(step)) << i;
    sum += x[i];
    sq += static_cast<double>(x[i]) * x[i];
  }
  EXPECT_NEAR(sum / n, 0.0, 0.005);
  EXPECT_NEAR(sq / n, 0.25 / 3.0, 0.002);
  std::vector<float> other(n);
  FillUniform(other.data(), n, 5, 10, 0.5f);
  EXPECT_NE(x, other);
  FillUniform(other.data(), n, 6, 9, 0.5f);
  EXPECT_NE(x, other);
}

// The kernels' integer form (DropoutStreamMask) decides exactly as the float definition: at the
// threshold's edges for awkward p (not multiples of 2^-24, tiny, subnormal, one ulp under 1,
// +-0, 1, out of range, infinite, NaN), and over a long stretch of a stream.
TEST(Dropout, IntegerThresholdDecidesAsTheFloatComparison) {
  using F = std::numeric_limits<float>;
  const float ps[] = {0.05f,
                      0.1f,
                      1.0f / 3.0f,
                      0.5f,
                      0.999f,
                      1e-7f,
                      3e-8f,
                      F::denorm_min(),
                      std::nextafter(1.0f, 0.0f),
                      0.0f,
                      -0.0f,
                      1.0f,
                      -0.5f,
                      2.0f,
                      F::infinity(),
                      -F::infinity(),
                      std::nanf("")};
  for (float p : ps) {
    const uint32_t th = DropoutThreshold(p);
    const int64_t kBits = int64_t{1} << 24;  // the random values are 0 .. 2^24 - 1
    const int64_t lo = th > 3 ? th - 3 : 0, hi = th + 3 < kBits ? th + 3 : kBits - 1;
    for (int64_t bits = lo; bits <= hi; ++bits) {
      ASSERT_EQ(static_cast<uint32_t>(bits) >= th, static_cast<float>(bits) >= p * 16777216.0f)
          << "p " << p << " bits " << bits << " threshold " << th;
    }
    const DropoutStreamMask mask(11, 5, p);
    for (uint64_t i = 0; i < 20000; ++i) {
      ASSERT_EQ(mask.Keep(i), DropoutKeep(11, 5, i, p)) << "p " << p << " index " << i;
    }
  }
  EXPECT_EQ(DropoutThreshold(0.5f), 1u << 23);
  // float(1/3) 2^24 = 5592405.5 exactly (float(1/3) is a little over 1/3).
  EXPECT_EQ(DropoutThreshold(1.0f / 3.0f), 5592406u);
}

// The mask against tests/golden/dropout_masks.txt, written by an independent implementation of
// the mask's definition (tests/golden/make_dropout_golden.py): the mask a resumed job regenerates
// must never change between versions.
TEST(Dropout, MasksMatchTheIndependentGolden) {
  std::ifstream in(std::string(QLORAD_GOLDEN_DIR) + "/dropout_masks.txt");
  ASSERT_TRUE(in) << "missing tests/golden/dropout_masks.txt";
  std::string line;
  int cases = 0;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    uint64_t seed = 0, stream = 0;
    std::string p_text, mask;
    int64_t n = 0;
    ASSERT_TRUE(fields >> seed >> stream >> p_text >> n >> mask) << line;
    ASSERT_EQ(static_cast<int64_t>(mask.size()), n) << line;
    const float p = std::stof(p_text);
    std::string got(n, '0');
    for (int64_t i = 0; i < n; ++i) got[i] = DropoutKeep(seed, stream, i, p) ? '1' : '0';
    EXPECT_EQ(got, mask) << "seed " << seed << " stream " << stream << " p " << p_text;
    ++cases;
  }
  EXPECT_EQ(cases, 4);
}

}  // namespace
}  // namespace qlorad::kernels
