#include "engine/dtype.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace qlorad {
namespace {

TEST(Dtype, F16KnownValues) {
  EXPECT_EQ(F32ToF16(1.0f), 0x3C00);
  EXPECT_EQ(F32ToF16(-2.0f), 0xC000);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(F32ToF16(1e6f), 0x7C00);            // overflow -> inf
  EXPECT_EQ(F32ToF16(5.9604645e-08f), 0x0001);  // smallest subnormal
  EXPECT_EQ(F16ToF32(0x3555), 0.333251953125f);
  EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(NAN))));
  EXPECT_EQ(F16ToF32(0x0001), 5.9604645e-08f);
}

TEST(Dtype, F16RoundTripsEveryFiniteHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if (((h >> 10) & 0x1F) == 0x1F) continue;  // inf/nan
    ASSERT_EQ(F32ToF16(F16ToF32(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

TEST(Dtype, Bf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3F80);
  // 1 + 2^-8 is exactly between two bf16 values: ties to even (1.0).
  EXPECT_EQ(F32ToBf16(1.00390625f), 0x3F80);
  EXPECT_EQ(F32ToBf16(1.01171875f), 0x3F82);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> g;
  for (int i = 0; i < 1000; ++i) {
    const float x = g(rng);
    EXPECT_NEAR(Bf16ToF32(F32ToBf16(x)), x, std::fabs(x) * (1.0f / 256));
  }
}

TEST(Dtype, Names) {
  EXPECT_EQ(*DTypeFromName("BF16"), DType::kBF16);
  EXPECT_STREQ(DTypeName(DType::kU8), "U8");
  EXPECT_EQ(DTypeFromName("Q4_K").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qlorad
