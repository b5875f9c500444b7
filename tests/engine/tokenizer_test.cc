#include "engine/tokenizer.h"

#include "engine/sentencepiece_proto.h"
#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::Stories260kDir;

TEST(Tokenizer, EncodesThePublishedIds) {
  auto tok = Tokenizer::FromModelFile(Stories260kDir() + "/tok512.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 512);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  EXPECT_EQ(*(*tok)->Encode("Once upon a time"), (std::vector<int32_t>{403, 407, 261, 378}));
}

TEST(Tokenizer, RoundTripsTextIncludingByteFallback) {
  auto tok = Tokenizer::FromModelFile(Stories260kDir() + "/tok512.model");
  ASSERT_TRUE(tok.ok());
  for (const char* text : {"Lily saw a big, red ball.", "naïve café – 日本語 🙂",
                           "Tabs\tand\nnewlines", "x"}) {
    auto ids = (*tok)->Encode(text);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*(*tok)->Decode(*ids), std::string(text));
  }
  // Non-ASCII characters fall back to byte pieces <0xXX> (ids 3..258).
  auto ids = (*tok)->Encode("日本");  // not among the 512 pieces (é is)
  ASSERT_TRUE(ids.ok());
  bool has_byte = false;
  for (int32_t id : *ids) has_byte |= id >= 3 && id <= 258;
  EXPECT_TRUE(has_byte);
  EXPECT_EQ((*tok)->PieceText(403), " Once");
  EXPECT_EQ((*tok)->PieceText(3 + 0x41), "A");
  EXPECT_EQ((*tok)->PieceText(1), "");
}

TEST(Tokenizer, Llama2cTokenizerFileBehavesLikeTheModelFile) {
  auto spec = ReadLlama2cTokenizer(Stories260kDir() + "/tok512.bin", 512);
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto from_bin = Tokenizer::FromSerializedProto(SerializeSentencePieceModel(*spec));
  ASSERT_TRUE(from_bin.ok()) << from_bin.status();
  auto from_model = Tokenizer::FromModelFile(Stories260kDir() + "/tok512.model");
  ASSERT_TRUE(from_model.ok());
  for (const char* text : {"Once upon a time, there was a little girl named Lily.",
                           "She said, \"I'm sorry, mom.\"", "über 42 ✓"}) {
    EXPECT_EQ(*(*from_bin)->Encode(text), *(*from_model)->Encode(text)) << text;
  }
  EXPECT_EQ((*from_bin)->bos_id(), 1);
  EXPECT_EQ((*from_bin)->eos_id(), 2);
}

TEST(Tokenizer, BadInputsAreErrors) {
  EXPECT_FALSE(Tokenizer::FromModelFile("/nonexistent/tokenizer.model").ok());
  EXPECT_FALSE(Tokenizer::FromSerializedProto("not a proto").ok());
  auto tok = Tokenizer::FromModelFile(Stories260kDir() + "/tok512.model");
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ((*tok)->Decode({5, 512}).status().code(), absl::StatusCode::kInvalidArgument);
  // A llama2.c tokenizer read with the wrong vocabulary size is rejected.
  EXPECT_FALSE(ReadLlama2cTokenizer(Stories260kDir() + "/tok512.bin", 500).ok());
  EXPECT_FALSE(ReadLlama2cTokenizer(Stories260kDir() + "/tok512.bin", 600).ok());
}

}  // namespace
}  // namespace qlorad
