// compat/absl-lite (built with those headers first in the include path, not Abseil's): the
// behaviour the engine core relies on, as Abseil defines it.
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
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
  absl::StatusOr<int> from_ok_status = absl::OkStatus();  // a misuse: becomes an error
  EXPECT_TRUE(absl::IsInternal(from_ok_status.status()));
  EXPECT_EQ(absl::StatusOr<int>(absl::UnknownError("x")).value_or(7), 7);
  EXPECT_DEATH((void)absl::StatusOr<int>(absl::UnknownError("boom")).value(), "boom");
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

}  // namespace
