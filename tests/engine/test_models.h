// Locates the shared test models (../shared/models or $QLORAD_TEST_MODELS) and converts
// stories260K to a Hugging Face directory once per test binary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/llama_weights.h"
#include "tests/common/stories260k.h"  // ModelsDir, kStoriesGreedy32

namespace qlorad::testing {

std::string Stories260kDir();  // the llama2.c fixture folder
std::string Stories260kHf();   // converted once, in a temp folder
std::string Stories260kGguf();
std::string GoldenDir();
std::string TempDir(const std::string& name);  // a fresh empty folder

// Greedy decoding of `n` tokens from BOS (id 1) with float32 (or NF4+DQ) base weights.
absl::StatusOr<std::vector<int32_t>> GreedyFromBos(LlamaWeights weights, int64_t n,
                                                   bool quantize = false);

// stories260K's published greedy text (SOURCE.md; its first 32 ids: kStoriesGreedy32).
extern const char kStoriesGreedyText[];

}  // namespace qlorad::testing
