#include "kernels/cpu/dropout.h"

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

}  // namespace
}  // namespace qlorad::kernels
