// ||got - want|| / ||want|| over n values, accumulated in double: how the engine's and the GPU's
// tests measure agreement with a reference. A NaN in `got` makes it NaN, which fails every `<`
// bound. Header-only and free of GoogleTest, so the GPU tests (plain executables) use it too.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace qlorad::testing {

inline double RelativeL2(const float* got, const float* want, int64_t n) {
  double diff = 0.0, norm = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    norm += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-30));
}

inline double RelativeL2(const std::vector<float>& got, const std::vector<float>& want) {
  return RelativeL2(got.data(), want.data(), static_cast<int64_t>(got.size()));
}

}  // namespace qlorad::testing
