// The premises of the GPU check's real-model test (tests/gpu/real_model_gpu_test.cc), checked on
// the CPU where they cost nothing: stories260K learns the phrase fine-tune in its 16 steps, and
// its greedy story from BOS has no near tie in the first 32 tokens (the card must match those).
#include "tests/common/phrase_finetune.h"

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/llama2c_checkpoint.h"
#include "engine/llama_model.h"
#include "engine/trainer.h"
#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

absl::StatusOr<LlamaWeights> Stories() {
  return ReadLlama2cCheckpoint(testing::ModelsDir() + "/stories260K/stories260K.bin");
}

TEST(PhraseFineTune, Stories260KLearnsItInSixteenSteps) {
  auto weights = Stories();
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto device = CreateCpuDevice(2);
  auto model = LlamaModel::Create(*weights, device.get(), ModelOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  auto t = Trainer::Create(model->get(), testing::PhraseRows(32, 64), {},
                           testing::PhraseFineTuneOptions());
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<double> losses;
  ASSERT_TRUE((*t)->RunUntil((*t)->total_steps(),
                             [&](const StepReport& r) {
                               losses.push_back(r.loss);
                               return true;
                             })
                  .ok());
  ASSERT_EQ(losses.size(), 16u);
  EXPECT_LT(losses.back(), 0.7 * losses.front()) << losses.front() << " -> " << losses.back();
}

TEST(PhraseFineTune, Stories260KGreedyStoryHasNoNearTieEarly) {
  auto weights = Stories();
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto device = CreateCpuDevice(2);
  ModelOptions o;
  o.quantize = false;  // as the GPU check decodes it: float32 weights
  auto model = LlamaModel::Create(*weights, device.get(), o);
  ASSERT_TRUE(model.ok()) << model.status();
  auto cache = (*model)->NewKvCache(33);
  ASSERT_TRUE(cache.ok());
  std::vector<int32_t> next = {1};
  std::vector<float> logits;
  for (int i = 0; i < 32; ++i) {
    ASSERT_TRUE((*model)->Forward(next, cache->get(), false, &logits).ok());
    std::vector<float> sorted = logits;
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    EXPECT_GE(sorted[0] - sorted[1], 1e-3f) << "token " << i;
    next = {static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin())};
  }
}

}  // namespace
}  // namespace qlorad
