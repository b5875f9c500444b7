#include "engine/generate.h"

#include <cmath>
#include <cstdio>
#include <random>

#include "engine/device.h"
#include "engine/evaluate.h"
#include "engine/llama_model.h"
#include "engine/model_source.h"
#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::Stories260kHf;

std::unique_ptr<LlamaModel> LoadStories(Device* device, bool quantize, Nf4Options nf4 = {}) {
  auto src = OpenModelSource(Stories260kHf());
  EXPECT_TRUE(src.ok()) << src.status();
  ModelOptions mo;
  mo.quantize = quantize;
  mo.nf4 = nf4;
  auto model = LlamaModel::Create(std::move(src->weights), device, mo);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(*model);
}

TEST(Sampling, GreedyTopPAndTemperature) {
  std::mt19937_64 rng(1);
  const float logits[4] = {0.0f, 3.0f, 2.9f, -1.0f};
  SamplingOptions greedy;
  EXPECT_EQ(SampleToken(logits, 4, greedy, rng), 1);
  SamplingOptions tiny_p;
  tiny_p.temperature = 1.0f;
  tiny_p.top_p = 0.01f;  // only the most likely token survives
  for (int i = 0; i < 20; ++i) EXPECT_EQ(SampleToken(logits, 4, tiny_p, rng), 1);
  SamplingOptions hot;
  hot.temperature = 1.0f;
  std::vector<int> counts(4);
  for (int i = 0; i < 4000; ++i) counts[SampleToken(logits, 4, hot, rng)]++;
  // p(1)/p(2) = e^0.1 ~ 1.105; p(0) ~ 0.0245 of the mass.
  EXPECT_NEAR(counts[1] / static_cast<double>(counts[2]), 1.105, 0.12);
  EXPECT_NEAR(counts[0] / 4000.0, 0.0245, 0.012);
  SamplingOptions bad;
  bad.top_p = 0.0f;
  EXPECT_FALSE(ValidateSamplingOptions(bad).ok());
  bad.top_p = 1.0f;
  bad.temperature = -1.0f;
  EXPECT_FALSE(ValidateSamplingOptions(bad).ok());
}

TEST(Generate, SameSeedSameTextOtherSeedOtherText) {
  auto device = CreateCpuDevice();
  auto model = LoadStories(device.get(), true);
  SamplingOptions so;
  so.temperature = 1.0f;
  so.top_p = 0.9f;
  so.max_new_tokens = 40;
  so.seed = 7;
  auto a = Generate(*model, {1}, so);
  auto b = Generate(*model, {1}, so);
  so.seed = 8;
  auto c = Generate(*model, {1}, so);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  EXPECT_NE(a->tokens, c->tokens);
}

TEST(Generate, IncrementalDecodingEqualsFullRecompute) {
  auto device = CreateCpuDevice();
  auto model = LoadStories(device.get(), false);
  const std::vector<int32_t> seq = {1, 403, 407, 261, 378, 432, 383, 286};
  auto full_cache = model->NewKvCache(16);
  std::vector<float> full, step;
  ASSERT_TRUE(model->Forward(seq, full_cache->get(), true, &full).ok());
  auto cache = model->NewKvCache(16);
  const int64_t V = model->config().vocab_size;
  for (size_t t = 0; t < seq.size(); ++t) {
    ASSERT_TRUE(model->Forward({seq[t]}, cache->get(), false, &step).ok());
    for (int64_t v = 0; v < V; ++v) ASSERT_NEAR(step[v], full[t * V + v], 1e-4) << t << " " << v;
  }
}

// Evaluation runs a long example through the KV cache a chunk at a time (never holding all its
// logits): the loss equals the one of a single forward pass over the whole example.
TEST(Generate, EvaluationInChunksEqualsOneForwardPass) {
  auto device = CreateCpuDevice();
  auto model = LoadStories(device.get(), false);
  const int64_t V = model->config().vocab_size, n = kEvalChunkTokens + 201;  // two chunks
  ASSERT_LE(n, model->config().max_position_embeddings);
  std::mt19937 rng(7);
  TokenizedExample ex;
  for (int64_t i = 0; i < n; ++i) {
    ex.tokens.push_back(i == 0 ? 1 : static_cast<int32_t>(3 + rng() % (V - 3)));
    ex.is_target.push_back(i > 0 && i % 3 != 0);  // some tokens are not targets
  }
  auto cache = model->NewKvCache(n);
  std::vector<float> logits;
  ASSERT_TRUE(model->Forward(ex.tokens, cache->get(), true, &logits).ok());
  double total = 0.0;
  int64_t targets = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (!ex.is_target[i]) continue;
    const float* row = logits.data() + (i - 1) * V;
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]));
    total += std::log(sum) - row[ex.tokens[i]];
    ++targets;
  }
  auto r = EvaluateExamples(*model, {ex}, n);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->target_tokens, targets);
  EXPECT_NEAR(r->loss, total / targets, 1e-5 * total / targets);
}

TEST(Generate, StopsAtTheTokenLimitAndRejectsBadInput) {
  auto device = CreateCpuDevice();
  auto model = LoadStories(device.get(), true);
  SamplingOptions so;
  so.temperature = 0;
  so.max_new_tokens = 5;
  auto r = Generate(*model, {1}, so);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tokens.size(), 5u);
  EXPECT_EQ(Generate(*model, {}, so).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Generate(*model, {1, 9999}, so).status().code(), absl::StatusCode::kInvalidArgument);
  so.max_new_tokens = 600;  // context is 512
  EXPECT_EQ(Generate(*model, {1}, so).status().code(), absl::StatusCode::kInvalidArgument);
}

// Acceptance: NF4+DQ loss on text the fp32 model samples itself, next to the fp32 loss. On this
// 64-wide model the gap is about 9% (a finding, see docs/engine.md): the test pins it, and checks
// that it is NF4's rounding, not a bug: double quantization adds almost nothing to plain NF4,
// and finer blocks shrink the gap.
TEST(Generate, Nf4LossStaysCloseToFp32OnSelfSampledText) {
  auto device = CreateCpuDevice();
  auto fp32 = LoadStories(device.get(), false);
  auto nf4_dq = LoadStories(device.get(), true);
  Nf4Options plain;
  plain.double_quant = false;
  auto nf4_plain = LoadStories(device.get(), true, plain);
  Nf4Options fine = plain;
  fine.blocksize = 16;
  auto nf4_fine = LoadStories(device.get(), true, fine);
  SamplingOptions so;
  so.temperature = 1.0f;
  so.max_new_tokens = 400;
  so.stop_at_eos = false;
  double base = 0, dq = 0, pl = 0, fn = 0;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    so.seed = seed;
    auto r = Generate(*fp32, {1}, so);
    ASSERT_TRUE(r.ok());
    std::vector<int32_t> seq = {1};
    seq.insert(seq.end(), r->tokens.begin(), r->tokens.end());
    base += *MeanNll(*fp32, seq);
    dq += *MeanNll(*nf4_dq, seq);
    pl += *MeanNll(*nf4_plain, seq);
    fn += *MeanNll(*nf4_fine, seq);
  }
  std::printf(
      "stories260K, 4x400 self-sampled tokens: fp32 %.4f nats/token; NF4+DQ %.4f (%+.2f%%); "
      "NF4 %.4f (%+.2f%%); NF4 blocks of 16 %.4f (%+.2f%%)\n",
      base / 4, dq / 4, 100 * (dq / base - 1), pl / 4, 100 * (pl / base - 1), fn / 4,
      100 * (fn / base - 1));
  EXPECT_GT(dq, base);  // quantization costs something
  EXPECT_LT(dq / base - 1, 0.12);
  EXPECT_LT(std::fabs(dq - pl) / base, 0.01);
  EXPECT_LT(fn, pl);
}

}  // namespace
}  // namespace qlorad
