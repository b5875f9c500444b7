#include "engine/dataset.h"

#include "engine/trainer.h"
#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::Stories260kDir;

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = Tokenizer::FromModelFile(Stories260kDir() + "/tok512.model");
    ASSERT_TRUE(t.ok());
    tok_ = std::move(*t);
  }
  std::vector<int32_t> Enc(const std::string& s) { return *tok_->Encode(s); }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(DatasetTest, PromptCompletionMasksThePromptAndTrainsTheEos) {
  auto ex =
      TokenizeJsonl(R"({"prompt": "The dragon is", "completion": " Zorbo."})", *tok_, "d.jsonl");
  ASSERT_TRUE(ex.ok()) << ex.status();
  const auto p = Enc("The dragon is"), c = Enc(" Zorbo.");
  std::vector<int32_t> tokens = {1};
  tokens.insert(tokens.end(), p.begin(), p.end());
  tokens.insert(tokens.end(), c.begin(), c.end());
  tokens.push_back(2);
  EXPECT_EQ((*ex)[0].tokens, tokens);
  std::vector<uint8_t> mask(1 + p.size(), 0);
  mask.insert(mask.end(), c.size() + 1, 1);
  EXPECT_EQ((*ex)[0].is_target, mask);
  EXPECT_EQ((*ex)[0].line, 1);
}

TEST_F(DatasetTest, TextTrainsEverythingButBos) {
  auto ex = TokenizeJsonl("\n{\"text\": \"Lily ran.\"}\n", *tok_, "d.jsonl");
  ASSERT_TRUE(ex.ok()) << ex.status();
  EXPECT_EQ((*ex)[0].line, 2);
  EXPECT_EQ((*ex)[0].is_target.front(), 0);
  EXPECT_EQ((*ex)[0].num_targets(), static_cast<int64_t>(Enc("Lily ran.").size()) + 1);
}

TEST_F(DatasetTest, ChatTemplateTrainsAssistantTurnsOnly) {
  const std::string line =
      R"({"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},)"
      R"( {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},)"
      R"( {"role": "assistant", "content": "Bye!"}]})";
  auto ex = TokenizeJsonl(line, *tok_, "chat.jsonl");
  ASSERT_TRUE(ex.ok()) << ex.status();
  const auto a1 = Enc("Hello."), a2 = Enc("Bye!");
  EXPECT_EQ((*ex)[0].num_targets(), static_cast<int64_t>(a1.size() + 1 + a2.size() + 1));
  // The trained tokens are exactly the assistant contents, each followed by EOS.
  std::vector<int32_t> trained;
  for (size_t i = 0; i < (*ex)[0].tokens.size(); ++i) {
    if ((*ex)[0].is_target[i]) trained.push_back((*ex)[0].tokens[i]);
  }
  std::vector<int32_t> expected = a1;
  expected.push_back(2);
  expected.insert(expected.end(), a2.begin(), a2.end());
  expected.push_back(2);
  EXPECT_EQ(trained, expected);
  // A generation prompt is the layout docs/engine.md gives, each part tokenized on its own, up
  // to the assistant header: what training saw before the answer it learnt.
  auto prompt = ChatPromptTokens({{"system", "Be kind."}, {"user", "Hi"}}, *tok_);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  std::vector<int32_t> layout = {tok_->bos_id()};
  for (const char* part : {"### System:\nBe kind.\n\n", "### User:\nHi\n\n", "### Assistant:\n"}) {
    const auto ids = Enc(part);
    layout.insert(layout.end(), ids.begin(), ids.end());
  }
  EXPECT_EQ(*prompt, layout);
  auto trained_on = TokenizeJsonl(
      R"({"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},)"
      R"( {"role": "assistant", "content": "Hello."}]})",
      *tok_, "chat.jsonl");
  ASSERT_TRUE(trained_on.ok()) << trained_on.status();
  const std::vector<int32_t>& t = (*trained_on)[0].tokens;
  ASSERT_GT(t.size(), prompt->size());
  EXPECT_TRUE(std::equal(prompt->begin(), prompt->end(), t.begin()));
  EXPECT_EQ(std::vector<int32_t>(t.begin() + static_cast<int64_t>(prompt->size()), t.end() - 1),
            Enc("Hello."));
  EXPECT_EQ(ChatPromptTokens({{"narrator", "Hi"}}, *tok_).status().message(),
            "messages[0].role must be system, user or assistant, got 'narrator'");
}

TEST_F(DatasetTest, BadLinesAreNamedWithTheirNumber) {
  struct Case {
    std::string text, needle;
  };
  const Case cases[] = {
      {"{\"text\": \"ok\"}\n{\"text\": ", "bad.jsonl:2: not valid JSON"},
      {"[1, 2]", "bad.jsonl:1: not a JSON object"},
      {"{\"prompt\": \"a\"}", "bad.jsonl:1: missing field 'completion'"},
      {"{\"prompt\": \"a\", \"completion\": 3}", "field 'completion' must be a string"},
      {"{\"prompt\": \"a\", \"completion\": \"\"}", "field 'completion' is empty"},
      {"{\"text\": \"a\", \"label\": 1}", "unexpected field 'label'"},
      {"{\"foo\": 1}", "expected one of"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", "no assistant turn"},
      {"{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}",
       "messages[0].role must be system, user or assistant"},
      {"{\"messages\": [{\"role\": \"assistant\"}]}", "messages[0].content must be a string"},
      {"\n\n", "bad.jsonl: no examples"},
      // Nesting far past our formats' three levels is refused before it is parsed; brackets
      // inside strings do not count.
      {"{\"text\": \"[[[[[[[[[[\"}\n{\"text\": [[[[[[[[[[1]]]]]]]]]]}",
       "bad.jsonl:2: nested deeper than 8 levels"},
      {std::string(1 << 20, '['), "bad.jsonl:1: nested deeper than 8 levels"},
      {"{\"text\": \"" + std::string(kMaxExampleLineBytes, 'a') + "\"}",
       "bad.jsonl:1: longer than 16 MiB"},
      // Very many small values, each a node of the parsed tree: refused before it is built.
      {[] {
         std::string many = "{\"text\": [{}";
         for (int i = 0; i < 70000; ++i) many += ",{}";
         return many + "]}";
       }(),
       "bad.jsonl:1: more than 65536 JSON values in one example"},
  };
  // Commas inside a string are text, not values.
  EXPECT_TRUE(ValidateExampleJson("{\"text\": \"" + std::string(100000, ',') + "\"}").ok());
  for (const Case& c : cases) {
    auto ex = TokenizeJsonl(c.text, *tok_, "bad.jsonl");
    ASSERT_FALSE(ex.ok()) << c.text;
    EXPECT_EQ(ex.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(ex.status().message().find(c.needle), std::string::npos)
        << ex.status() << " / " << c.needle;
  }
}

// One error names the first ten bad lines and counts them all, so a file is fixed in one round.
TEST_F(DatasetTest, EveryBadLineIsCountedAndTheFirstTenNamed) {
  std::string text;
  for (int line = 1; line <= 26; ++line) {
    text += line % 2 ? "{\"text\": \"ok\"}\n" : "{\"txt\": \"typo\"}\n";  // even lines bad
  }
  auto ex = TokenizeJsonl(text, *tok_, "bad.jsonl");
  ASSERT_FALSE(ex.ok());
  const std::string message(ex.status().message());
  EXPECT_EQ(message.rfind("13 bad lines, the first 10: bad.jsonl:2: expected one of", 0), 0u)
      << message;
  EXPECT_NE(message.find("; bad.jsonl:20: expected one of"), std::string::npos) << message;
  EXPECT_EQ(message.find("bad.jsonl:22:"), std::string::npos) << message;
  EXPECT_EQ(message.find("bad.jsonl:1:"), std::string::npos) << message;

  // A field name of any length is cut, and never inside a UTF-8 character (3 bytes each here).
  std::string euros;
  for (int i = 0; i < 400; ++i) euros += "\u20ac";
  auto long_key = TokenizeJsonl("{\"text\": \"a\", \"" + euros + "\": 1}", *tok_, "k.jsonl");
  ASSERT_FALSE(long_key.ok());
  // "unexpected field '" is 18 bytes: 20 whole euro signs fit in the 80 shown, 21 do not.
  EXPECT_EQ(long_key.status().message(),
            "k.jsonl:1: unexpected field '" + euros.substr(0, 20 * 3) + "...");
}

TEST_F(DatasetTest, RowsTruncatePadAndRejectExamplesWithoutTargets) {
  auto ex = TokenizeJsonl(
      "{\"prompt\": \"Once upon a time there was a girl\", \"completion\": \" Lily.\"}\n"
      "{\"text\": \"Hi.\"}\n",
      *tok_, "r.jsonl");
  ASSERT_TRUE(ex.ok());
  auto rows = BuildRows(*ex, {16, false}, "r.jsonl");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 2u);
  const TrainingRow& r1 = (*rows)[1];
  const int64_t len = static_cast<int64_t>((*ex)[1].tokens.size());
  // The row keeps its example only; a batch pads it to 16.
  ASSERT_EQ(r1.tokens.size(), static_cast<size_t>(len));
  EXPECT_EQ(r1.length(), 16);
  EXPECT_EQ(r1.targets[len - 2], 2);  // the EOS is the last target
  EXPECT_EQ(r1.num_targets(), (*ex)[1].num_targets());
  const MicroBatch b = GatherRows(*rows, {1, 0}, 0, 2);  // the short row first
  ASSERT_EQ(b.seq_len, 16);
  ASSERT_EQ(b.tokens.size(), 32u);
  for (int64_t i = 0; i < 16; ++i) {
    EXPECT_EQ(b.tokens[i], i < len ? r1.tokens[i] : 0) << i;
    EXPECT_EQ(b.segments[i], i < len ? 0 : -1) << i;  // padding: no segment, no target
    EXPECT_EQ(b.targets[i], i < len ? r1.targets[i] : -1) << i;
    EXPECT_EQ(b.positions[i], i < len ? i : 0) << i;
  }
  const std::vector<int32_t>& r0 = (*rows)[0].tokens;
  EXPECT_EQ(std::vector<int32_t>(b.tokens.begin() + 16, b.tokens.begin() + 16 + r0.size()), r0);
  EXPECT_EQ(b.num_targets(), r1.num_targets() + (*rows)[0].num_targets());
  // A sequence length that cuts off the whole completion leaves nothing to learn: rejected.
  const int64_t prompt_len =
      static_cast<int64_t>(Enc("Once upon a time there was a girl").size()) + 1;
  auto cut = BuildRows(*ex, {prompt_len, false}, "r.jsonl");
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.status().message().find("r.jsonl:1: no target token within the sequence length"),
            std::string::npos)
      << cut.status();
  // Every example it cuts off is named, and CountRows says the same.
  auto three = TokenizeJsonl(
      "{\"prompt\": \"Once upon a time there was a girl\", \"completion\": \" Lily.\"}\n"
      "{\"text\": \"Hi\"}\n"
      "{\"prompt\": \"Once upon a time there was a boy\", \"completion\": \" Tom.\"}\n",
      *tok_, "r.jsonl");
  ASSERT_TRUE(three.ok()) << three.status();
  auto both = BuildRows(*three, {prompt_len, false}, "r.jsonl");
  ASSERT_FALSE(both.ok());
  const std::string message(both.status().message());
  EXPECT_EQ(message.rfind("2 bad lines: r.jsonl:1: no target", 0), 0u) << message;
  EXPECT_NE(message.find("; r.jsonl:3: no target"), std::string::npos) << message;
  EXPECT_EQ(message.find("r.jsonl:2:"), std::string::npos) << message;
  EXPECT_EQ(CountRows(*three, {prompt_len, false}, "r.jsonl").status(), both.status());
}

// CountRows is BuildRows without the rows: the same count, packed or not, at every length, and
// the same error for an example that keeps no target.
TEST_F(DatasetTest, CountRowsAgreesWithBuildRows) {
  auto ex = TokenizeJsonl(
      "{\"text\": \"Lily ran.\"}\n{\"text\": \"Tom sat.\"}\n{\"text\": \"A big red ball.\"}\n"
      "{\"prompt\": \"Once upon a time there was a girl\", \"completion\": \" Lily.\"}\n",
      *tok_, "c.jsonl");
  ASSERT_TRUE(ex.ok()) << ex.status();
  int checked = 0;
  for (const bool packing : {false, true}) {
    for (int64_t seq_len = 2; seq_len <= 40; ++seq_len) {
      auto built = BuildRows(*ex, {seq_len, packing}, "c.jsonl");
      auto counted = CountRows(*ex, {seq_len, packing}, "c.jsonl");
      ASSERT_EQ(built.ok(), counted.ok()) << seq_len << " " << packing;
      if (!built.ok()) {
        EXPECT_EQ(built.status(), counted.status());
        continue;
      }
      EXPECT_EQ(static_cast<int64_t>(built->size()), *counted) << seq_len << " " << packing;
      ++checked;
    }
  }
  EXPECT_GT(checked, 20);  // most lengths keep every example's targets
}

TEST_F(DatasetTest, PackingRestartsPositionsAndSeparatesSegments) {
  auto ex = TokenizeJsonl(
      "{\"text\": \"Lily ran.\"}\n{\"text\": \"Tom sat.\"}\n{\"text\": \"A big red ball.\"}\n",
      *tok_, "p.jsonl");
  ASSERT_TRUE(ex.ok());
  const int64_t a = (*ex)[0].tokens.size(), b = (*ex)[1].tokens.size(), c = (*ex)[2].tokens.size();
  auto rows = BuildRows(*ex, {a + b + 1, true}, "p.jsonl");
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 2u);  // a+b fit together, c starts a new row
  const TrainingRow& r = (*rows)[0];
  EXPECT_EQ(r.positions[a], 0);
  EXPECT_EQ(r.segments[a - 1], 0);
  EXPECT_EQ(r.segments[a], 1);
  EXPECT_EQ(r.targets[a - 1], -1);  // the last token of an example predicts nothing
  EXPECT_EQ(r.targets[a - 2], 2);
  EXPECT_EQ((*rows)[1].segments[c - 1], 0);
}

}  // namespace
}  // namespace qlorad
