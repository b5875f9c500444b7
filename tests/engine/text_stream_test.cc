// Streamed generation text against the whole decode, on the shared tokenizer (tok512, byte
// fallback): a character the vocabulary spells as byte pieces comes out whole, and the text
// after it still comes out.
#include "engine/text_stream.h"

#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// Pushes `ids` after BOS one by one; returns what each push handed out, then the rest.
std::vector<std::string> Stream(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  auto stream = TextStream::Start(tok, {tok.bos_id()});
  EXPECT_TRUE(stream.ok()) << stream.status();
  std::vector<std::string> out;
  for (int32_t id : ids) {
    auto text = stream->Push(id);
    EXPECT_TRUE(text.ok()) << text.status();
    out.push_back(text.ok() ? *text : "");
  }
  auto rest = stream->Rest();
  EXPECT_TRUE(rest.ok()) << rest.status();
  out.push_back(rest.ok() ? *rest : "");
  return out;
}

std::string Joined(const std::vector<std::string>& parts) {
  std::string all;
  for (const std::string& p : parts) all += p;
  return all;
}

// Ids whose piece alone is no character: byte pieces of a longer UTF-8 sequence.
int BytePieces(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  int n = 0;
  for (int32_t id : ids) n += *tok.Decode({id}) == kReplacement;
  return n;
}

TEST(TextStream, ACharacterOfBytePiecesComesOutWholeAndTheTextAfterItFollows) {
  auto tok = Tokenizer::FromModelFile(::qlorad::testing::Stories260kDir() + "/tok512.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text = "Tom saw a \xF0\x9F\x90\xB1 in the park.";  // a cat: no piece of its own
  auto ids = (*tok)->Encode(text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(BytePieces(**tok, *ids), 4);
  auto whole = (*tok)->Decode(*ids);
  ASSERT_TRUE(whole.ok());
  ASSERT_NE(whole->find("\xF0\x9F\x90\xB1 in the park."), std::string::npos) << *whole;
  const std::vector<std::string> parts = Stream(**tok, *ids);
  EXPECT_EQ(Joined(parts), *whole);
  for (const std::string& p : parts) EXPECT_EQ(p.find(kReplacement), std::string::npos) << p;
  EXPECT_EQ(parts.back(), "");  // nothing was left held back
}

TEST(TextStream, BytesThatNeverFormACharacterComeOutAtTheEnd) {
  auto tok = Tokenizer::FromModelFile(::qlorad::testing::Stories260kDir() + "/tok512.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("Tom saw a \xF0\x9F\x90\xB1");
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(BytePieces(**tok, *ids), 4);
  ids->pop_back();  // three bytes of the cat's four
  const std::string three = std::string(kReplacement) + kReplacement + kReplacement;
  auto whole = (*tok)->Decode(*ids);
  ASSERT_TRUE(whole.ok());
  ASSERT_EQ(whole->substr(whole->size() - three.size()), three);
  const std::vector<std::string> parts = Stream(**tok, *ids);
  EXPECT_EQ(Joined(parts), *whole);
  EXPECT_EQ(parts.back(), three);
}

}  // namespace
}  // namespace qlorad
