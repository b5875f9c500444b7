// Adapters made by HF PEFT itself (tests/golden/make_peft_golden.py) give in the engine the
// logits transformers + PEFT give: the engine reads PEFT's names, shapes, scalings (alpha/r, and
// rsLoRA's alpha/sqrt(r)), module subsets and grouped-query key/value shapes as PEFT means them.
// With the export's round trip (PeftAdapter.ExportImportRoundTripGivesIdenticalLogits), an
// adapter qlorad writes means in PEFT what it meant in training.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/device_adapter.h"
#include "engine/hf_model_io.h"
#include "engine/llama_model.h"
#include "engine/peft_adapter.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::GoldenDir;

class PeftGoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto weights = LoadHfWeights(GoldenDir() + "/tiny_llama_fp");
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = std::move(*weights);
    auto golden = SafetensorsFile::Open(GoldenDir() + "/tiny_llama_lora_logits.safetensors");
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = std::move(*golden);
    auto tokens = golden_->ReadF32("tokens");
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    for (float t : *tokens) tokens_.push_back(static_cast<int32_t>(t));
  }

  // The engine's logits, float32 weights as HF holds them (no NF4), with `lora` if given.
  std::vector<float> Logits(const LlamaWeights& weights, const PeftAdapter* lora) {
    ModelOptions options;
    options.quantize = false;
    auto model = LlamaModel::Create(weights, device_.get(), options);
    EXPECT_TRUE(model.ok()) << model.status();
    std::unique_ptr<DeviceAdapter> adapter;
    if (lora != nullptr) {
      auto placed =
          DeviceAdapter::Create(device_.get(), weights.config, lora->config, lora->params);
      EXPECT_TRUE(placed.ok()) << placed.status();
      adapter = std::move(*placed);
    }
    auto cache = (*model)->NewKvCache(static_cast<int64_t>(tokens_.size()));
    std::vector<float> out;
    const absl::Status s = (*model)->Forward(tokens_, cache->get(), /*all_logits=*/true, &out,
                                             adapter ? adapter->weights() : nullptr);
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  // Largest difference from PEFT's logits, relative to their largest magnitude.
  double RelativeError(const std::vector<float>& ours, const std::string& key) {
    auto theirs = golden_->ReadF32(key);
    EXPECT_TRUE(theirs.ok()) << theirs.status();
    EXPECT_EQ(ours.size(), theirs->size());
    if (ours.size() != theirs->size()) return 1e9;
    double diff = 0, scale = 0;
    for (size_t i = 0; i < ours.size(); ++i) {
      diff = std::max(diff, std::abs(static_cast<double>(ours[i]) - (*theirs)[i]));
      scale = std::max(scale, std::abs(static_cast<double>((*theirs)[i])));
    }
    return diff / scale;
  }

  // The adapters make_peft_golden.py wrote, by the key of their logits.
  static constexpr const char* kAdapters[] = {"lora", "rslora"};
  absl::StatusOr<PeftAdapter> GoldenAdapter(const std::string& name) const {
    return LoadPeftAdapter(GoldenDir() + "/tiny_llama_" + name, weights_.config);
  }

  std::unique_ptr<Device> device_ = CreateCpuDevice();
  LlamaWeights weights_;
  std::unique_ptr<SafetensorsFile> golden_;
  std::vector<int32_t> tokens_;
};

TEST_F(PeftGoldenTest, TheBaseModelGivesTransformersLogits) {
  EXPECT_LT(RelativeError(Logits(weights_, nullptr), "base"), 1e-5);
}

TEST_F(PeftGoldenTest, PeftAdaptersGivePeftLogits) {
  for (const char* name : kAdapters) {
    SCOPED_TRACE(name);
    auto adapter = GoldenAdapter(name);
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    const std::vector<float> ours = Logits(weights_, &*adapter);
    EXPECT_LT(RelativeError(ours, name), 1e-5);
    // The adapter matters: against the base logits the error is large.
    EXPECT_GT(RelativeError(ours, "base"), 1e-2);
  }
}

// qlora-engine merge folds W += scale * B A into the weights: the merged model must give
// PEFT's adapted logits with no adapter at all.
TEST_F(PeftGoldenTest, MergedAdaptersGivePeftLogits) {
  for (const char* name : kAdapters) {
    SCOPED_TRACE(name);
    auto adapter = GoldenAdapter(name);
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    LlamaWeights merged = weights_;
    ASSERT_TRUE(MergeAdapter(merged, adapter->config, adapter->params).ok());
    EXPECT_LT(RelativeError(Logits(merged, nullptr), name), 1e-5);
  }
}

}  // namespace
}  // namespace qlorad
