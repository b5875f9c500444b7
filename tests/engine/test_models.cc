#include "tests/engine/test_models.h"

#include <cstdlib>
#include <filesystem>

#include "engine/device.h"
#include "engine/generate.h"
#include "engine/llama2c.h"
#include "engine/llama_model.h"
#include "engine/status_macros.h"
#include "gtest/gtest.h"

namespace qlorad::testing {
namespace fs = std::filesystem;

const char kStoriesGreedyText[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n"
    "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. "
    "She said, \"I want to play with your ball, but I can't find it.\"\n"
    "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what "
    "to do.\"\n"
    "Lily didn't want to help her mom, so she said, \"I'm sorry, mom. I didn't know what to "
    "do.\" Her mom said, \"Don't worry, Lily. We can help you.";

std::string Stories260kDir() { return ModelsDir() + "/stories260K"; }
std::string Stories260kGguf() { return Stories260kDir() + "/stories260K.gguf"; }
std::string GoldenDir() { return QLORAD_GOLDEN_DIR; }

std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  fs::path dir = fs::path(base ? base : fs::temp_directory_path().string()) /
                 ("qlorad_test_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

std::string Stories260kHf() {
  static const std::string dir = [] {
    const std::string out = TempDir("stories260K_hf");
    const absl::Status s = ConvertLlama2cToHf(Stories260kDir() + "/stories260K.bin",
                                              Stories260kDir() + "/tok512.model", out);
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }();
  return dir;
}

absl::StatusOr<std::vector<int32_t>> GreedyFromBos(LlamaWeights weights, int64_t n, bool quantize) {
  auto device = CreateCpuDevice();
  ModelOptions mo;
  mo.quantize = quantize;
  ASSIGN_OR_RETURN(auto model, LlamaModel::Create(std::move(weights), device.get(), mo));
  SamplingOptions so;
  so.temperature = 0.0f;
  so.max_new_tokens = n;
  so.stop_at_eos = false;
  ASSIGN_OR_RETURN(GenerationResult r, Generate(*model, {1}, so));
  return r.tokens;
}

}  // namespace qlorad::testing
