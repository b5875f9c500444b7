#include "engine/gguf.h"

#include "engine/device.h"
#include "engine/generate.h"
#include "engine/llama2c.h"
#include "engine/mapped_file.h"
#include "engine/model_source.h"
#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::kStoriesGreedy32;
using ::qlorad::testing::Stories260kDir;
using ::qlorad::testing::Stories260kGguf;
using ::qlorad::testing::TempDir;

TEST(Gguf, ParsesHeaderMetadataAndTensors) {
  auto g = GgufFile::Open(Stories260kGguf());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ((*g)->version(), 3u);
  EXPECT_EQ((*g)->tensors().size(), 48u);
  EXPECT_EQ((*g)->metadata().at("general.architecture").strings[0], "llama");
  EXPECT_EQ((*g)->tensors().at("blk.0.ffn_gate.weight").shape, (std::vector<int64_t>{172, 64}));
}

TEST(Gguf, WeightsEqualTheLlama2cCheckpoint) {
  auto g = LoadGgufModel(Stories260kGguf());
  ASSERT_TRUE(g.ok()) << g.status();
  auto l = ReadLlama2cCheckpoint(Stories260kDir() + "/stories260K.bin");
  ASSERT_TRUE(l.ok());
  EXPECT_TRUE(g->weights.config.tie_word_embeddings);
  EXPECT_EQ(g->weights.config.num_key_value_heads, 4);
  EXPECT_EQ(g->weights.embed_tokens, l->embed_tokens);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(g->weights.layers[i].q_proj, l->layers[i].q_proj) << i;
    EXPECT_EQ(g->weights.layers[i].k_proj, l->layers[i].k_proj) << i;
    EXPECT_EQ(g->weights.layers[i].down_proj, l->layers[i].down_proj) << i;
  }
  EXPECT_EQ(g->tokenizer.pieces.size(), 512u);
  EXPECT_EQ(g->tokenizer.pieces[1].piece, "<s>");
}

TEST(Gguf, TokenizerAndGreedyTextMatchTheHfConversion) {
  auto src = OpenModelSource(Stories260kGguf());
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ(src->format, "gguf");
  EXPECT_EQ(*src->tokenizer->Encode("Once upon a time"),
            (std::vector<int32_t>{403, 407, 261, 378}));
  auto device = CreateCpuDevice();
  ModelOptions mo;
  mo.quantize = false;
  auto model = LlamaModel::Create(std::move(src->weights), device.get(), mo);
  ASSERT_TRUE(model.ok()) << model.status();
  SamplingOptions so;
  so.temperature = 0;
  so.max_new_tokens = 32;
  auto r = Generate(**model, {1}, so);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->tokens.size(), 32u);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(r->tokens[i], kStoriesGreedy32[i]) << i;
}

TEST(Gguf, CorruptFilesAreRejectedWithClearErrors) {
  auto full = ReadFileToString(Stories260kGguf());
  ASSERT_TRUE(full.ok());
  const std::string dir = TempDir("gguf_bad");
  ASSERT_TRUE(WriteStringToFile(dir + "/magic.gguf", "GGML" + full->substr(4)).ok());
  EXPECT_NE(GgufFile::Open(dir + "/magic.gguf").status().message().find("bad magic"),
            std::string::npos);
  ASSERT_TRUE(WriteStringToFile(dir + "/trunc.gguf", full->substr(0, 5000)).ok());
  auto t = GgufFile::Open(dir + "/trunc.gguf");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("truncated"), std::string::npos) << t.status();
  ASSERT_TRUE(WriteStringToFile(dir + "/short_data.gguf", full->substr(0, full->size() - 64)).ok());
  auto s = GgufFile::Open(dir + "/short_data.gguf");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("lies outside the file"), std::string::npos) << s.status();
}

}  // namespace
}  // namespace qlorad
