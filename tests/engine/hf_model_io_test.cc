#include "engine/hf_model_io.h"

#include <cmath>
#include <filesystem>
#include <functional>

#include "engine/device.h"
#include "engine/llama_model.h"
#include "engine/mapped_file.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {
namespace fs = std::filesystem;

using ::qlorad::testing::Stories260kHf;
using ::qlorad::testing::TempDir;

// Copies config.json and rewrites the tensors of the converted stories260K with `edit`.
std::string EditedCopy(
    const std::string& name,
    const std::function<void(SafetensorsWriter&, const SafetensorsFile&)>& edit) {
  const std::string dir = TempDir(name);
  fs::copy_file(Stories260kHf() + "/config.json", dir + "/config.json");
  auto src = SafetensorsFile::Open(Stories260kHf() + "/model.safetensors");
  EXPECT_TRUE(src.ok());
  SafetensorsWriter w;
  edit(w, **src);
  EXPECT_TRUE(w.WriteTo(dir + "/model.safetensors").ok());
  return dir;
}

TEST(HfModelIo, ShardedCheckpointLoadsLikeTheSingleFile) {
  const std::string dir = TempDir("sharded");
  fs::copy_file(Stories260kHf() + "/config.json", dir + "/config.json");
  auto src = SafetensorsFile::Open(Stories260kHf() + "/model.safetensors");
  ASSERT_TRUE(src.ok());
  SafetensorsWriter a, b;
  std::string index = R"({"metadata": {}, "weight_map": {)";
  bool first = true;
  for (const auto& [name, e] : (*src)->tensors()) {
    const bool in_a =
        name.find("layers.3") == std::string::npos && name.find("layers.4") == std::string::npos;
    (in_a ? a : b).Add(name, e.dtype, e.shape, e.data, e.bytes);
    index += std::string(first ? "" : ",") + "\"" + name + "\": \"" +
             (in_a ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors") +
             "\"";
    first = false;
  }
  index += "}}";
  ASSERT_TRUE(a.WriteTo(dir + "/model-00001-of-00002.safetensors").ok());
  ASSERT_TRUE(b.WriteTo(dir + "/model-00002-of-00002.safetensors").ok());
  ASSERT_TRUE(WriteStringToFile(dir + "/model.safetensors.index.json", index).ok());
  auto sharded = LoadHfWeights(dir);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  auto single = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(sharded->layers[4].down_proj, single->layers[4].down_proj);
  EXPECT_EQ(sharded->layers[0].q_proj, single->layers[0].q_proj);
}

TEST(HfModelIo, Bf16AndF16CheckpointsLoadAndRunClose) {
  auto w = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(w.ok());
  for (DType dt : {DType::kBF16, DType::kF16}) {
    const std::string dir = TempDir(std::string("half_") + std::string(DTypeName(dt)));
    LlamaWeights copy = *w;
    ASSERT_TRUE(SaveHfModel(copy, "", dir, dt).ok());
    auto loaded = LoadHfWeights(dir);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->config.torch_dtype, dt == DType::kBF16 ? "bfloat16" : "float16");
    const float tol = dt == DType::kBF16 ? 1.0f / 128 : 1.0f / 1024;
    for (size_t i = 0; i < w->embed_tokens.size(); ++i) {
      ASSERT_NEAR(loaded->embed_tokens[i], w->embed_tokens[i],
                  tol * std::fabs(w->embed_tokens[i]) + 1e-6);
    }
  }
}

void ExpectLoadError(const std::string& dir, const std::string& needle) {
  auto w = LoadHfWeights(dir);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument) << w.status();
  EXPECT_NE(w.status().message().find(needle), std::string::npos) << w.status();
}

TEST(HfModelIo, MissingWrongShapedAndUnexpectedTensorsAreNamed) {
  const std::string missing =
      EditedCopy("missing", [](SafetensorsWriter& w, const SafetensorsFile& f) {
        for (const auto& [n, e] : f.tensors())
          if (n != "model.layers.2.mlp.up_proj.weight") w.Add(n, e.dtype, e.shape, e.data, e.bytes);
      });
  ExpectLoadError(missing, "missing tensor 'model.layers.2.mlp.up_proj.weight'");
  const std::string shaped =
      EditedCopy("shaped", [](SafetensorsWriter& w, const SafetensorsFile& f) {
        for (const auto& [n, e] : f.tensors()) {
          auto shape = e.shape;
          if (n == "model.layers.1.self_attn.k_proj.weight") shape = {64, 32};
          w.Add(n, e.dtype, shape, e.data, e.bytes);
        }
      });
  ExpectLoadError(
      shaped,
      "'model.layers.1.self_attn.k_proj.weight' has shape [64, 32], config.json implies [32, 64]");
  const std::string extra = EditedCopy("extra", [](SafetensorsWriter& w, const SafetensorsFile& f) {
    for (const auto& [n, e] : f.tensors()) w.Add(n, e.dtype, e.shape, e.data, e.bytes);
    const float bias[64] = {};
    w.Add("model.layers.0.self_attn.q_proj.bias", DType::kF32, {64}, bias, sizeof(bias));
  });
  ExpectLoadError(extra, "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'");
  const std::string ints = EditedCopy("ints", [](SafetensorsWriter& w, const SafetensorsFile& f) {
    for (const auto& [n, e] : f.tensors()) {
      w.Add(n, n == "model.norm.weight" ? DType::kI32 : e.dtype, e.shape, e.data, e.bytes);
    }
  });
  ExpectLoadError(ints, "'model.norm.weight' has dtype I32");
  EXPECT_EQ(LoadHfWeights(TempDir("empty_dir")).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace qlorad
