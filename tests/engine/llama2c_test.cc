#include "engine/llama2c.h"

#include <filesystem>
#include <random>

#include "engine/device.h"
#include "engine/generate.h"
#include "engine/hf_model_io.h"
#include "engine/llama_model.h"
#include "engine/mapped_file.h"
#include "engine/model_source.h"
#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::GreedyFromBos;
using ::qlorad::testing::kStoriesGreedy32;
using ::qlorad::testing::kStoriesGreedyText;
using ::qlorad::testing::Stories260kDir;
using ::qlorad::testing::Stories260kHf;
using ::qlorad::testing::TempDir;

TEST(Llama2c, HeaderBecomesConfig) {
  auto w = ReadLlama2cCheckpoint(Stories260kDir() + "/stories260K.bin");
  ASSERT_TRUE(w.ok()) << w.status();
  const LlamaConfig& c = w->config;
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.ParameterCount(), 260032);  // SOURCE.md
}

TEST(Llama2c, RopePermutationIsABijectionAndInvertible) {
  std::mt19937 rng(std::random_device{}());
  std::vector<float> w(4 * 8 * 3);
  for (auto& v : w) v = static_cast<float>(rng() % 1000);
  const auto hf = PermuteMetaToHf(w, 4, 8, 3);
  EXPECT_EQ(PermuteHfToMeta(hf, 4, 8, 3), w);
  // Head 1, Meta row 2i+1 (second of pair i=2) lands at HF row half + i = 4 + 2.
  for (int col = 0; col < 3; ++col) EXPECT_EQ(hf[(8 + 4 + 2) * 3 + col], w[(8 + 5) * 3 + col]);
}

TEST(Llama2c, ConvertedDirectoryLoadsWithTokenizer) {
  auto src = OpenModelSource(Stories260kHf());
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ(src->format, "hf");
  ASSERT_NE(src->tokenizer, nullptr);
  EXPECT_EQ(src->weights.config.bos_token_id, 1);
  EXPECT_EQ(src->weights.config.eos_token_id, 2);
  auto direct = ReadLlama2cCheckpoint(Stories260kDir() + "/stories260K.bin");
  ASSERT_TRUE(direct.ok());
  EXPECT_EQ(src->weights.layers[3].k_proj, direct->layers[3].k_proj);
  EXPECT_EQ(src->weights.embed_tokens, direct->embed_tokens);
}

TEST(Llama2c, TruncatedCheckpointIsRejected) {
  auto full = ReadFileToString(Stories260kDir() + "/stories260K.bin");
  ASSERT_TRUE(full.ok());
  const std::string path = TempDir("l2c_trunc") + "/short.bin";
  ASSERT_TRUE(WriteStringToFile(path, full->substr(0, full->size() - 100)).ok());
  auto w = ReadLlama2cCheckpoint(path);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("floats after the header"), std::string::npos) << w.status();
}

// The acceptance test of the foundations issue: fp32 greedy decoding from BOS reproduces the
// text llama2.c publishes for this model.
TEST(Llama2c, Fp32GreedyMatchesThePublishedOutput) {
  auto src = OpenModelSource(Stories260kHf());
  ASSERT_TRUE(src.ok()) << src.status();
  ASSERT_EQ(src->tokenizer->bos_id(), 1);
  auto tokens = GreedyFromBos(std::move(src->weights), 200);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  for (int i = 0; i < 32; ++i) EXPECT_EQ((*tokens)[i], kStoriesGreedy32[i]) << "token " << i;
  auto text = src->tokenizer->Decode(*tokens);
  ASSERT_TRUE(text.ok());
  const std::string expected = kStoriesGreedyText;
  // Same text for as long as both run.
  const size_t n = std::min(text->size(), expected.size());
  EXPECT_GT(n, 400u);
  EXPECT_EQ(text->substr(0, n), expected.substr(0, n));
}

}  // namespace
}  // namespace qlorad
