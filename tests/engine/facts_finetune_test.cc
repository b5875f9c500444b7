// Acceptance: a LoRA fine-tune of stories260K (NF4 + double-quantized base) on 40 made-up
// facts (tests/data/facts_train.jsonl) drives the training loss down, makes the greedy
// continuation of every training prompt begin with its taught completion, and lowers the loss
// on reworded prompts (tests/data/facts_valid.jsonl). Same recipe as the PyTorch reference
// bench/torch_facts_finetune.py: r 8, alpha 16, no dropout, lr 3e-3 constant, batch 8.
#include <algorithm>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "engine/device.h"
#include "engine/device_adapter.h"
#include "engine/generate.h"
#include "engine/mapped_file.h"
#include "engine/model_source.h"
#include "engine/trainer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

std::string DataFile(const std::string& name) {
  return std::string(QLORAD_TEST_DATA_DIR) + "/" + name;
}

TEST(FactsFinetune, LearnsTheFactsOnAnNf4Base) {
  auto src = OpenModelSource(::qlorad::testing::Stories260kHf());
  ASSERT_TRUE(src.ok()) << src.status();
  auto device = CreateCpuDevice();
  auto model = LlamaModel::Create(src->weights, device.get(), {});  // NF4 + DQ
  ASSERT_TRUE(model.ok());
  ASSERT_TRUE((*model)->quantized());
  const Tokenizer& tok = *src->tokenizer;
  auto train_text = ReadFileToString(DataFile("facts_train.jsonl"));
  auto valid_text = ReadFileToString(DataFile("facts_valid.jsonl"));
  ASSERT_TRUE(train_text.ok() && valid_text.ok());
  auto train = TokenizeJsonl(*train_text, tok, "facts_train.jsonl");
  auto valid = TokenizeJsonl(*valid_text, tok, "facts_valid.jsonl");
  ASSERT_TRUE(train.ok() && valid.ok());
  auto train_rows = BuildRows(*train, {64, false}, "train");
  auto valid_rows = BuildRows(*valid, {64, false}, "valid");
  ASSERT_TRUE(train_rows.ok() && valid_rows.ok());

  TrainerOptions o;
  o.lora.rank = 8;
  o.lora.alpha = 16;
  o.lora.dropout = 0.0f;
  o.learning_rate = 3e-3;
  o.schedule = LrSchedule::kConstant;
  o.warmup_ratio = 0.0;
  o.batch_size = 8;
  o.max_steps = 150;
  o.eval_every = 25;
  o.seed = 0;
  auto trainer = Trainer::Create(model->get(), *train_rows, *valid_rows, o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  auto initial_eval = (*trainer)->EvaluateLoss(*valid_rows);
  ASSERT_TRUE(initial_eval.ok());
  std::vector<double> losses, evals;
  ASSERT_TRUE((*trainer)
                  ->Run([&](const StepReport& r) {
                    losses.push_back(r.loss);
                    if (r.eval_loss) evals.push_back(*r.eval_loss);
                    return true;
                  })
                  .ok());
  double last10 = 0;
  for (size_t i = losses.size() - 10; i < losses.size(); ++i) last10 += losses[i] / 10;

  auto adapter = DeviceAdapter::Create(device.get(), (*model)->config(), (*trainer)->options().lora,
                                       (*trainer)->params());
  ASSERT_TRUE(adapter.ok());
  int correct = 0;
  for (absl::string_view line : absl::StrSplit(*train_text, '\n')) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    std::vector<int32_t> prompt = {tok.bos_id()};
    const auto ids = *tok.Encode(j["prompt"].get<std::string>());
    prompt.insert(prompt.end(), ids.begin(), ids.end());
    SamplingOptions so;
    so.temperature = 0;
    so.max_new_tokens = 8;
    auto r = Generate(**model, prompt, so, {}, (*adapter)->weights());
    ASSERT_TRUE(r.ok());
    const std::string text(absl::StripAsciiWhitespace(*tok.Decode(r->tokens)));
    const std::string want(absl::StripAsciiWhitespace(j["completion"].get<std::string>()));
    if (text.rfind(want, 0) == 0) {
      ++correct;
    } else {
      std::printf("  not learned: %s -> \"%s\" (taught \"%s\")\n",
                  j["prompt"].get<std::string>().c_str(), text.c_str(), want.c_str());
    }
  }
  std::printf(
      "facts fine-tune: first step loss %.4f, last 10 steps %.4f; valid loss %.4f -> best %.4f; "
      "%d/40 correct\n",
      losses.front(), last10, *initial_eval, *std::min_element(evals.begin(), evals.end()),
      correct);
  EXPECT_LT(last10, 0.25 * losses.front());
  EXPECT_LT(*std::min_element(evals.begin(), evals.end()), *initial_eval);
  EXPECT_GE(correct, 38);
}

}  // namespace
}  // namespace qlorad
