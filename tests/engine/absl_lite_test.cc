// compat/absl-lite's behaviour that the engine relies on, as Abseil defines it: built twice, with
// absl-lite's headers first in the include path (absl_lite_test) and with the real Abseil
// (absl_lite_test_on_abseil), so that every expectation here is Abseil's too.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"

namespace {

struct Base {
  virtual ~Base() = default;
};
struct Derived : Base {};

absl::StatusOr<std::unique_ptr<Derived>> MakeDerived(bool ok) {
  if (!ok) return absl::NotFoundError("no such thing");
  return std::make_unique<Derived>();
}

TEST(AbslLite, StatusCarriesCodeAndMessage) {
  const absl::Status s = absl::InvalidArgumentError("rank: must be positive");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_EQ(s.message(), "rank: must be positive");
  EXPECT_EQ(s.ToString(), "INVALID_ARGUMENT: rank: must be positive");
  EXPECT_TRUE(absl::OkStatus().ok());
  EXPECT_EQ(absl::Status(absl::StatusCode::kOk, "ignored").message(), "");
}

TEST(AbslLite, StatusOrHoldsAValueOrTheReasonThereIsNone) {
  absl::StatusOr<std::unique_ptr<Base>> good = MakeDerived(true);  // Derived to Base
  ASSERT_TRUE(good.ok());
  EXPECT_NE(good->get(), nullptr);
  std::unique_ptr<Base> taken = std::move(good).value();
  EXPECT_NE(taken, nullptr);
  absl::StatusOr<std::unique_ptr<Base>> bad = MakeDerived(false);
  EXPECT_TRUE(absl::IsNotFound(bad.status()));
  EXPECT_EQ(absl::StatusOr<int>(absl::UnknownError("x")).value_or(7), 7);
}

TEST(AbslLite, StrCatFormatsAsAbseil) {
  enum Code { kThree = 3 };
  EXPECT_EQ(
      absl::StrCat("a", 1, "/", -2LL, " ", 2.5, " ", 1.0f / 3.0f, " ", kThree, std::string("!")),
      "a1/-2 2.5 0.333333 3!");
  std::string s = "x=";
  absl::StrAppend(&s, 1e-7, ",", 123456789.0);
  EXPECT_EQ(s, "x=1e-07,1.23457e+08");
}

TEST(AbslLite, StrSplitKeepsATemporaryInputAlive) {
  std::vector<std::string> parts;
  for (absl::string_view p : absl::StrSplit(std::string("q_proj, v_proj,,o_proj"), ',')) {
    parts.emplace_back(absl::StripAsciiWhitespace(p));
  }
  EXPECT_EQ(parts, (std::vector<std::string>{"q_proj", "v_proj", "", "o_proj"}));
  const std::vector<std::string> keys = absl::StrSplit(std::string("t/meta/id"), '/');
  EXPECT_EQ(keys, (std::vector<std::string>{"t", "meta", "id"}));
}

// As Abseil: the conversion follows the argument's type (%d of an int64_t, %lld of an int, %f
// of an int), flags, width and precision as printf's.
TEST(AbslLite, StrFormatConvertsByTheArgumentsType) {
  const int64_t big = 5000000000;
  EXPECT_EQ(absl::StrFormat("%02d:%02d:%02d", big / 3600, int64_t{7}, 5), "1388888:07:05");
  EXPECT_EQ(absl::StrFormat("step %lld/%lld | loss %.4f | lr %.2e", 3, int64_t{150}, 0.72371, 3e-3),
            "step 3/150 | loss 0.7237 | lr 3.00e-03");
  EXPECT_EQ(absl::StrFormat("%s|%-5s|%5.2s", std::string("ab"), "cd", absl::string_view("xyz")),
            "ab|cd   |   xy");
  EXPECT_EQ(absl::StrFormat("%x %u %.1f %%", 255u, -1 + 2, 2), "ff 1 2.0 %");
  std::string line = "eval";
  absl::StrAppendFormat(&line, " %.3f (%d)", 1.23456, int16_t{-4});
  EXPECT_EQ(line, "eval 1.235 (-4)");
}

TEST(AbslLite, SimpleAtoiAndAtodTakeTheWholeNumber) {
  int64_t i = 0;
  EXPECT_TRUE(absl::SimpleAtoi(" +42\n", &i));
  EXPECT_EQ(i, 42);
  EXPECT_TRUE(absl::SimpleAtoi("-9000000000", &i));
  EXPECT_EQ(i, -9000000000);
  int small = 7;
  for (const char* bad : {"", "  ", "4x", "1.5", "+-3", "0x10", "3000000000"}) {
    EXPECT_FALSE(absl::SimpleAtoi(bad, &small)) << bad;
  }
  double d = 0.0;
  EXPECT_TRUE(absl::SimpleAtod(" 3e-3 ", &d));
  EXPECT_EQ(d, 3e-3);
  EXPECT_TRUE(absl::SimpleAtod("+0.5", &d));
  EXPECT_EQ(d, 0.5);
  EXPECT_TRUE(absl::SimpleAtod("inf", &d));
  EXPECT_TRUE(std::isinf(d));
  EXPECT_TRUE(absl::SimpleAtod("1e999", &d));  // out of range: inf, as Abseil
  EXPECT_TRUE(std::isinf(d));
  EXPECT_TRUE(absl::SimpleAtod("1e-999", &d));
  EXPECT_EQ(d, 0.0);
  for (const char* bad : {"", "1e", "abc", "0.5.5", "1,5"}) {
    EXPECT_FALSE(absl::SimpleAtod(bad, &d)) << bad;
  }
}

TEST(AbslLite, MatchAndReplace) {
  EXPECT_TRUE(absl::StrContains("a/b", "/"));
  EXPECT_FALSE(absl::StrContains("ab", "/"));
  EXPECT_TRUE(absl::EndsWith("layers.0.rotary_emb.inv_freq", "rotary_emb.inv_freq"));
  EXPECT_FALSE(absl::EndsWith("freq", "inv_freq"));
  const std::string u = "\xE2\x96\x81";  // SentencePiece's space
  EXPECT_EQ(absl::StrReplaceAll(" a b  ", {{" ", u}}), u + "a" + u + "b" + u + u);
  // Replaced text is not matched again; the earliest match wins.
  EXPECT_EQ(absl::StrReplaceAll("aab", {{"a", "b"}, {"b", "c"}}), "bbc");
  EXPECT_EQ(absl::StrReplaceAll("abc", {{"", "x"}, {"bc", "B"}}), "aB");
  EXPECT_EQ(absl::StrReplaceAll("abab", {{"a", "1"}, {"ab", "X"}}), "XX");  // the longer match
}

}  // namespace
