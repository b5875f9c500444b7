// Streamed generation text against the whole decode, on the shared tokenizer (tok512, byte
// fallback): a character the vocabulary spells as byte pieces comes out whole, and the text
// after it still comes out.
#include "engine/text_stream.h"

#include <algorithm>
#include <tuple>

#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// Pushes `ids` after `prompt` (BOS where empty) one by one; returns what each push handed out,
// then the rest.
std::vector<std::string> Stream(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                std::vector<int32_t> prompt = {}) {
  if (prompt.empty()) prompt = {tok.bos_id()};
  auto stream = TextStream::Start(tok, std::move(prompt));
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

// The stream keeps only the prompt's last tokens as context: what it hands out after a long
// prompt, or one ending in blanks, is still the whole decode's continuation, leading spaces and
// byte-piece characters included.
TEST(TextStream, AfterALongPromptTheTextIsTheWholeDecodesContinuation) {
  auto tok = Tokenizer::FromModelFile(::qlorad::testing::Stories260kDir() + "/tok512.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::string story;
  for (int i = 0; i < 40; ++i) story += "Tom saw a big dog in the park. ";
  auto answer = (*tok)->Encode(" The dog ran to \xF0\x9F\x90\xB1 and Tom laughed.");
  ASSERT_TRUE(answer.ok());
  // The last case ends in 20 control tokens, which decode to nothing: a context of those alone
  // would take the answer's first space for a dummy prefix.
  for (const auto& [prompt_text, trailing_controls] :
       {std::pair{story, 0},
        {std::string("Tom said") + std::string(40, ' '), 0},
        {std::string("Tom said"), 20}}) {
    auto prompt = (*tok)->Encode(prompt_text);
    ASSERT_TRUE(prompt.ok());
    prompt->insert(prompt->begin(), (*tok)->bos_id());
    prompt->insert(prompt->end(), trailing_controls, (*tok)->bos_id());
    std::vector<int32_t> all = *prompt;
    all.insert(all.end(), answer->begin(), answer->end());
    const std::string before = *(*tok)->Decode(*prompt), whole = *(*tok)->Decode(all);
    ASSERT_EQ(whole.compare(0, before.size(), before), 0);
    EXPECT_EQ(Joined(Stream(**tok, *answer, *prompt)), whole.substr(before.size()))
        << prompt->size() << " prompt tokens";
  }
}

// A long answer comes out as the whole decode's continuation while each push decodes only a
// few tokens besides the new one: decoding the whole answer at every token cost O(n^2).
TEST(TextStream, ALongAnswerIsStreamedWholeFromAShortContext) {
  auto tok = Tokenizer::FromModelFile(::qlorad::testing::Stories260kDir() + "/tok512.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::string long_text;
  for (int i = 0; i < 80; ++i) long_text += " Tom saw a \xF0\x9F\x90\xB1 in the park.";
  // The second answer starts with 3000 control tokens, which decode to nothing: the context
  // keeps them (dropping them would drop the space of " Tom.").
  for (const auto& [answer_text, blanks, most_context] :
       {std::tuple{long_text, 0, size_t{64}},
        std::tuple{std::string(" Tom."), 3000, size_t{3100}}}) {
    auto prompt = (*tok)->Encode("Once upon a time");
    auto answer = (*tok)->Encode(answer_text);
    ASSERT_TRUE(prompt.ok() && answer.ok());
    answer->insert(answer->begin(), blanks, (*tok)->bos_id());
    ASSERT_GT(answer->size(), 1000u);
    prompt->insert(prompt->begin(), (*tok)->bos_id());
    std::vector<int32_t> all = *prompt;
    all.insert(all.end(), answer->begin(), answer->end());
    const std::string before = *(*tok)->Decode(*prompt), whole = *(*tok)->Decode(all);
    auto stream = TextStream::Start(**tok, *prompt);
    ASSERT_TRUE(stream.ok());
    std::string streamed;
    size_t widest = 0;
    for (int32_t id : *answer) {
      widest = std::max(widest, stream->context_tokens());
      auto part = stream->Push(id);
      ASSERT_TRUE(part.ok()) << part.status();
      streamed += *part;
    }
    streamed += *stream->Rest();
    EXPECT_EQ(streamed, whole.substr(before.size()));
    EXPECT_LE(widest, most_context) << answer->size() << " tokens";
  }
}

}  // namespace
}  // namespace qlorad
