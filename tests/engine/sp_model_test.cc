// Our SentencePiece BPE tokenizer against libsentencepiece itself, on the shared tokenizer and
// on models built from GGUF and llama2.c vocabularies: identical ids and identical text.
#include "engine/sp_model.h"

#include <random>

#include "engine/gguf.h"
#include "engine/mapped_file.h"
#include "engine/sentencepiece_proto.h"
#include "gtest/gtest.h"
#include "tests/engine/sp_processor.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::Stories260kDir;

std::vector<std::string> Corpus() {
  std::vector<std::string> texts = {
      "Once upon a time, there was a little girl named Lily.",
      "She said, \"I'm sorry, mom. I didn't know what to do.\"",
      "  leading and   repeated   spaces  ",
      "Tabs\tand\nnew lines\n\nand\r\nCRLF",
      "naïve café – 日本語 🙂 ünïcödé",
      "x",
      "",
      " ",
      "a  b",
      "Zorbo. Mimsy! Pipville?",
      "The big door in the middle of Pipville is painted purple.",
      std::string("\xff\xfe bad utf-8 \xc3"),
  };
  auto facts = ReadFileToString(std::string(QLORAD_TEST_DATA_DIR) + "/facts_train.jsonl");
  if (facts.ok()) texts.push_back(*facts);
  std::mt19937 rng(std::random_device{}());
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyz ABCXYZ.,!?'\"0123456789\n\t-";
  for (int i = 0; i < 200; ++i) {
    std::string s;
    const int len = rng() % 60;
    for (int j = 0; j < len; ++j) s.push_back(alphabet[rng() % alphabet.size()]);
    texts.push_back(s);
  }
  return texts;
}

void ExpectSameAsLibsentencepiece(const std::string& proto, const std::string& what) {
  SpProcessor ref;
  ASSERT_EQ(ref.LoadFromSerializedProto(proto), "") << what;
  auto ours = SentencePieceModel::Parse(proto);
  ASSERT_TRUE(ours.ok()) << what << ": " << ours.status();
  EXPECT_EQ((*ours)->size(), ref.size());
  EXPECT_EQ((*ours)->bos_id(), ref.bos_id());
  EXPECT_EQ((*ours)->eos_id(), ref.eos_id());
  for (const std::string& text : Corpus()) {
    std::vector<int> ref_ids;
    ASSERT_EQ(ref.Encode(text, &ref_ids), "");
    const std::vector<int32_t> ids = (*ours)->Encode(text);
    ASSERT_EQ(ids, std::vector<int32_t>(ref_ids.begin(), ref_ids.end()))
        << what << ": \"" << text << "\"";
    std::string ref_text;
    ASSERT_EQ(ref.Decode(ref_ids, &ref_text), "");
    EXPECT_EQ((*ours)->Decode(ids), ref_text) << what << ": \"" << text << "\"";
  }
  // Decoding arbitrary id sequences, control and byte pieces included.
  std::mt19937 rng(std::random_device{}());
  for (int i = 0; i < 100; ++i) {
    std::vector<int> ids(1 + rng() % 20);
    for (int& id : ids) id = static_cast<int>(rng() % ref.size());
    std::string ref_text;
    ASSERT_EQ(ref.Decode(ids, &ref_text), "");
    EXPECT_EQ((*ours)->Decode(std::vector<int32_t>(ids.begin(), ids.end())), ref_text);
  }
}

TEST(SentencePieceModel, MatchesLibsentencepieceOnTheSharedTokenizer) {
  auto proto = ReadFileToString(Stories260kDir() + "/tok512.model");
  ASSERT_TRUE(proto.ok());
  ExpectSameAsLibsentencepiece(*proto, "tok512.model");
}

TEST(SentencePieceModel, MatchesLibsentencepieceOnBuiltVocabularies) {
  auto gguf = LoadGgufModel(::qlorad::testing::Stories260kGguf());
  ASSERT_TRUE(gguf.ok());
  ExpectSameAsLibsentencepiece(SerializeSentencePieceModel(gguf->tokenizer), "GGUF vocabulary");
  auto l2c = ReadLlama2cTokenizer(Stories260kDir() + "/tok512.bin", 512);
  ASSERT_TRUE(l2c.ok());
  ExpectSameAsLibsentencepiece(SerializeSentencePieceModel(*l2c), "llama2.c vocabulary");
}

TEST(SentencePieceModel, RejectsWhatItDoesNotImplement) {
  SentencePieceSpec spec;
  spec.pieces = {{"<unk>", 0, PieceType::kUnknown},
                 {"<s>", 0, PieceType::kControl},
                 {"</s>", 0, PieceType::kControl}};
  spec.bpe = false;  // unigram
  auto unigram = SentencePieceModel::Parse(SerializeSentencePieceModel(spec));
  ASSERT_FALSE(unigram.ok());
  EXPECT_NE(unigram.status().message().find("only BPE"), std::string::npos);
  EXPECT_FALSE(SentencePieceModel::Parse("").ok());
  EXPECT_FALSE(SentencePieceModel::Parse("\x0a\xff").ok());  // truncated
}

// A registered tokenizer comes from an admin's file: a piece spelled wrong is refused by name at
// parse time. A byte piece "<0x-1>" used to write before the byte table, one "<0xZZ>" or "ab" to
// throw (at parse or at the first decode of it), ending the daemon.
TEST(SentencePieceModel, MalformedPiecesAndIdsAreRefused) {
  auto parse_with = [](VocabPiece extra, int bos_id) {
    SentencePieceSpec spec;
    spec.pieces = {{"<unk>", 0, PieceType::kUnknown},
                   {"<s>", 0, PieceType::kControl},
                   {"</s>", 0, PieceType::kControl},
                   {"<0x41>", 0, PieceType::kByte},
                   std::move(extra)};
    spec.bos_id = bos_id;
    return SentencePieceModel::Parse(SerializeSentencePieceModel(spec));
  };
  auto good = parse_with({"<0x0a>", 0, PieceType::kByte}, 1);  // lower-case hex is fine
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ((*good)->Decode({3, 4}), "A\n");
  const std::pair<VocabPiece, const char*> refused[] = {
      {{"<0x-1>", 0, PieceType::kByte}, "byte piece 4 is not spelled <0xHH>"},
      {{"<0xZZ>", 0, PieceType::kByte}, "byte piece 4 is not spelled <0xHH>"},
      {{"ab", 0, PieceType::kByte}, "byte piece 4 is not spelled <0xHH>"},
      {{"<0x4142>", 0, PieceType::kByte}, "byte piece 4 is not spelled <0xHH>"},
      {{"\xff\xfe", 0, PieceType::kNormal}, "piece 4 is not UTF-8"},
      {{"x", 0, static_cast<PieceType>(9)}, "piece 4 has unknown type 9"},
  };
  for (const auto& [piece, message] : refused) {
    auto m = parse_with(piece, 1);
    ASSERT_FALSE(m.ok()) << message;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(m.status().message().find(message), std::string::npos) << m.status();
  }
  auto no_bos = parse_with({"x", 0, PieceType::kNormal}, -1);
  ASSERT_FALSE(no_bos.ok());
  EXPECT_NE(no_bos.status().message().find("special token id -1"), std::string::npos)
      << no_bos.status();
}

}  // namespace
}  // namespace qlorad
