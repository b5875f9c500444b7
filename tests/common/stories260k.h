// The shared test models ($QLORAD_TEST_MODELS, else the folder the build was configured with,
// QLORAD_TEST_MODELS_DIR) and stories260K's published greedy output (SOURCE.md beside it), for
// the engine's tests, the daemon's and the GPU check's alike. Header-only, free of GoogleTest.
#pragma once

#include <cstdlib>
#include <string>

namespace qlorad::testing {

inline std::string ModelsDir() {
  if (const char* env = std::getenv("QLORAD_TEST_MODELS"); env != nullptr && *env) return env;
  return QLORAD_TEST_MODELS_DIR;
}

// The first 32 greedy token ids after BOS published for stories260K (float32 weights).
inline constexpr int kStoriesGreedy32[32] = {403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315,
                                             421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408,
                                             419, 292, 411, 322, 265, 282, 295, 433, 426, 385};

}  // namespace qlorad::testing
